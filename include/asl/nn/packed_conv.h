// A CPU convolution run by oneDNN (the libdnnl.so.2 LibTorch links) with its weight reordered once, ahead
// of time, into the layout the chosen kernel reads, and the activation (and a residual sum) fused into it.
// LibTorch's own conv path reorders every weight on every call (mkldnn_prepacked guesses the layout from
// the shape alone and misses the channels-last kernels' one), which at batch 1 costs about a tenth of the
// forward.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <torch/types.h>

namespace asl::nn {

/// What the convolution applies to conv + bias before writing its output.
struct ConvEpilogue {
  enum class Eltwise { None, LeakyReLU, ELU };
  Eltwise eltwise = Eltwise::None;
  /// LeakyReLU's negative slope, ELU's alpha.
  double alpha = 0;
  /// The activation as asl's loops number it (cl_kernels.h): 0 none, 1 leaky ReLU, 2 ELU.
  int code() const { return eltwise == Eltwise::LeakyReLU ? 1 : eltwise == Eltwise::ELU ? 2 : 0; }
};

class PackedConv2d {
 public:
  /// The activations' layout. ChannelsLast: 4-d channels-last tensors. Blocked16: oneDNN's nChw16c
  /// (16-channel blocks, each block's H x W x 16 values contiguous), held as a channels-last tensor of
  /// shape (N * C / 16) x 16 x H x W; its kernels need no layout conversion (Winograd included), which
  /// a network that stays in this layout from conv to conv saves. Needs C and the output channels to be
  /// multiples of 16 and groups 1.
  enum class Layout { ChannelsLast, Blocked16 };

  /// Whether packed convolutions can run here (oneDNN is linked: always).
  static bool available();

  /// Packs weight (out x in/groups x kh x kw, float32 or bfloat16, CPU) and an optional bias of the
  /// same dtype. input_size (N, C, H, W) is the shape prepared at once; other shapes are prepared on
  /// their first call (and kept). Results equal torch::conv2d followed by the epilogue's activation up
  /// to the summation order of the kernels (and, with `winograd`, the rounding of oneDNN's Winograd
  /// kernel for float32 3x3 stride-1 convolutions where this CPU has one). Throws
  /// for another dtype or device, or for bfloat16 where oneDNN cannot run it
  /// (asl::cpu_info().onednn_bf16 false).
  PackedConv2d(const torch::Tensor& weight, const torch::Tensor& bias, std::vector<int64_t> stride,
               std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
               std::vector<int64_t> input_size, ConvEpilogue epilogue = {}, bool winograd = true,
               Layout layout = Layout::ChannelsLast);
  ~PackedConv2d();

  /// activation(conv2d(input, weight, bias, ...)) for a CPU input of the packed dtype (made channels-last
  /// if it is not); channels-last out.
  torch::Tensor operator()(const torch::Tensor& input) const;

  /// relu(activation(conv2d(input, ...)) + residual), written into `residual` (a channels-last contiguous
  /// tensor of the output's shape and dtype, which is overwritten) and returned: a residual block's tail.
  torch::Tensor residual_relu(const torch::Tensor& input, torch::Tensor residual) const;

  /// Layout::Blocked16 only: the convolution of `batch` images held in the blocked form (see Layout),
  /// input (batch * C / 16) x 16 x H x W, channels-last contiguous; returns the output in the same form.
  /// With `residual` defined (the output's blocked form, dtype and shape): relu(activation(conv) +
  /// residual), written into `residual` and returned. With `pending` non-null and no residual, an
  /// activation the kernel could not fuse (oneDNN's Winograd kernels take no leaky ReLU or ELU) is left to
  /// the caller instead of applied in a pass of its own: *pending is that activation (Eltwise::None when
  /// none is left) and the output is conv + bias.
  torch::Tensor blocked16(const torch::Tensor& input, int64_t batch, const torch::Tensor& residual = {},
                          ConvEpilogue* pending = nullptr) const;

  Layout layout() const { return layout_; }

  torch::ScalarType dtype() const { return dtype_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  torch::ScalarType dtype_;
  Layout layout_;
};

}  // namespace asl::nn
