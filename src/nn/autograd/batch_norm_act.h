// Training-mode batch norm with its activation in one autograd node (CPU, float32 or bfloat16 values with
// float32 parameters and statistics, as LibTorch's batch_norm under autocast): one pass for the
// statistics, one for normalise + scale + shift + activation; in the backward one pass for the two
// per-channel sums and one for the input's gradient, the activation's derivative taken at the
// recomputed pre-activation. LibTorch runs the same as batch_norm, then the activation, then their two
// backwards (twice the passes over the activations).
#pragma once

#include <torch/types.h>

namespace asl::nn::autograd {

/// Activation after the norm: 0 identity, 1 leaky ReLU (negative slope `param`), 2 ELU (alpha `param`).
/// Whether batch_norm_act_train takes this input: CPU float32 or bfloat16, 4-d, contiguous NCHW or
/// channels-last, more than one value per channel. bfloat16 values are computed in float32 and each
/// output (y, dx) rounded once; dscale and dbias are float32.
bool batch_norm_act_supported(const torch::Tensor& input);

/// act((x - mean) / sqrt(var + eps) * scale + bias) with the batch's mean and biased variance per
/// channel; running_mean / running_var (if defined) are updated in place as torch::batch_norm does
/// ((1 - momentum) * running + momentum * statistic, unbiased variance). `scale` and `bias` are C-vectors
/// (scale may be a function of a parameter: its gradient flows through autograd). The output has the
/// input's layout. Differentiable once in input, scale and bias.
torch::Tensor batch_norm_act_train(const torch::Tensor& input, const torch::Tensor& scale, const torch::Tensor& bias,
                                   const torch::Tensor& running_mean, const torch::Tensor& running_var,
                                   double momentum, double eps, int act, double param);

}  // namespace asl::nn::autograd
