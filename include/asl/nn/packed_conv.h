// A CPU convolution whose weight oneDNN has reordered once, ahead of time (LibTorch's
// mkldnn_prepacked ops): the plain path reorders every conv weight on every call, which at batch 1
// costs about as much as the arithmetic of the large late-stage convs.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/ivalue.h>
#include <torch/types.h>

namespace asl::nn {

class PackedConv2d {
 public:
  /// Whether this LibTorch has the prepacked oneDNN convolution (built with oneDNN).
  static bool available();

  /// Packs weight (out x in/groups x kh x kw, float32 or bfloat16, CPU) and an optional bias of the
  /// same dtype. input_size (N, C, H, W) only guides oneDNN's choice of weight layout; any input size
  /// gives the same results as torch::conv2d. Throws if not available(), or for bfloat16 where oneDNN
  /// cannot run it (asl::cpu_info().onednn_bf16 false).
  PackedConv2d(const torch::Tensor& weight, const torch::Tensor& bias, std::vector<int64_t> stride,
               std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
               std::vector<int64_t> input_size);

  /// conv2d(input, weight, bias, ...) for a CPU input of the packed dtype; channels-last in, channels-last out.
  torch::Tensor operator()(const torch::Tensor& input) const;

  torch::ScalarType dtype() const { return dtype_; }

 private:
  c10::IValue context_;
  torch::ScalarType dtype_;
};

}  // namespace asl::nn
