// Fused CPU kernels of the multi-label ASL: forward (loss) and backward (d loss / d logits).
#pragma once

#include <torch/types.h>

namespace asl::nn::cpu {

/// Scalars of one ASL evaluation, as the kernels consume them.
struct AslParams {
  double gamma_neg = 4;
  double gamma_pos = 1;
  double clip = 0.05;  // <= 0: no clipping
  double eps = 1e-8;
  bool detach_weight = false;
  bool ignore_unknown = false;
};

/// Result of the forward kernel. With per_element, `loss` is N x C (-loss per element) and `count`
/// is unused; otherwise `loss` is the 0-d sum of -loss and `count` the number of counted labels.
struct AslForward {
  torch::Tensor loss;
  int64_t count = 0;
};

/// logits, targets: contiguous CPU tensors of one dtype (float32 or float64), same shape.
AslForward asl_forward_cpu(const torch::Tensor& logits, const torch::Tensor& targets, const AslParams& p,
                           bool per_element);

/// d(sum of grad_out * -loss)/d logits. grad_out is 0-d (times `scale`) or N x C.
torch::Tensor asl_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& logits,
                               const torch::Tensor& targets, const AslParams& p, double scale);

}  // namespace asl::nn::cpu
