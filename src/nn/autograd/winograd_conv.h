// Training-mode 3x3 stride-1 convolution on oneDNN's Winograd kernels (F(4x4, 3x3); forward, backward
// data and backward weights), one autograd node. LibTorch 1.13 runs these convolutions on oneDNN's direct
// kernels only; where oneDNN has Winograd (AVX-512, float32) the three passes take about half the time.
#pragma once

#include <torch/types.h>

namespace asl::nn::autograd {

/// Whether winograd_conv3x3 takes this call: CPU float32, input channels-last contiguous (N x C x H x W),
/// weight O x C x 3 x 3, outside autocast, and oneDNN has the Winograd kernels for the shape here.
bool winograd_conv3x3_supported(const torch::Tensor& input, const torch::Tensor& weight);

/// conv2d(input, weight, no bias, stride 1, padding 1), channels-last out; differentiable once in input
/// and weight. Results equal torch::conv2d up to Winograd's rounding (relative ~1e-5 in float32).
torch::Tensor winograd_conv3x3(const torch::Tensor& input, const torch::Tensor& weight);

}  // namespace asl::nn::autograd
