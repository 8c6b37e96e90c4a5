// Training-mode 1x1 stride-1 convolution as three matrix products on oneDNN's matmul (forward,
// backward data, backward weights), one autograd node. On channels-last activations a 1x1 convolution
// is Y[M, O] = X[M, C] W[O, C]^T with M = N*H*W: oneDNN 2.6's convolution backward-weights for this case
// (`jit:avx512_core_amx_bf16` in bfloat16) runs at a quarter of its forward's rate, its matmul does not.
#pragma once

#include <torch/types.h>

namespace asl::nn::autograd {

/// Whether pointwise_conv takes this call: CPU, oneDNN running AVX-512 (asl::cpu_info().onednn_bf16),
/// input N x C x H x W channels-last contiguous (NCHW too where the two coincide: H = W = 1 or C = 1),
/// weight O x C x 1 x 1, both float32 or both bfloat16. The caller casts for autocast; this does not.
bool pointwise_conv_supported(const torch::Tensor& input, const torch::Tensor& weight);

/// conv2d(input, weight, no bias, stride 1, padding 0), channels-last out, the inputs' dtype; differentiable
/// once in input and weight. Sums run in float32 (bfloat16 inputs round each result once).
torch::Tensor pointwise_conv(const torch::Tensor& input, const torch::Tensor& weight);

}  // namespace asl::nn::autograd
