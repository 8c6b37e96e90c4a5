// Tensor-level wrappers (checks, threads) of the channels-last loops of cl_blocks.h, for inference:
// squeeze-excite in place, the stride-2 blur pool, and the blocked-to-channels-last copy that finishes a
// Winograd convolution. Only blur_pool2_differentiable records autograd; the others are for callers outside it.
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace asl::nn::cpu {

/// Whether x is a CPU float32/bfloat16 4-d tensor in channels-last contiguous layout.
bool channels_last_kernel_input(const torch::Tensor& x);

/// x *= sigmoid(fc2(relu(fc1(mean over H, W of x)))) in place, per image and channel; fc weights
/// (rows x in, any trailing 1 x 1) and biases of x's dtype. Requires channels_last_kernel_input(x).
/// With `residual` defined (channels-last, x's shape and dtype): x = relu(x * gate + residual) in the same pass.
void squeeze_excite_(torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                     const torch::Tensor& b2, const torch::Tensor& residual = {});

/// squeeze_excite_ for `batch` images in PackedConv2d's blocked form: x (and residual) (batch * C / 16) x 16 x
/// H x W channels-last (nChw16c), the gate computed over each image's C channels. act != 0 (as in unblock16):
/// x = act(x) first, in the pass that pools it (a convolution's activation its kernel could not fuse).
void squeeze_excite_blocked16_(torch::Tensor& x, int64_t batch, const torch::Tensor& w1, const torch::Tensor& b1,
                               const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& residual = {},
                               int act = 0, float slope = 0.0f);

/// x = act(x) in place over a dense float32/bfloat16 CPU tensor (act as in unblock16; 0 does nothing).
void activate_(torch::Tensor& x, int act, float slope);

/// The anti-aliased downsample: 3x3 binomial blur, reflect padding 1, stride 2, depthwise; channels-last
/// out. Requires channels_last_kernel_input(x) and H, W >= 2.
torch::Tensor blur_pool2(const torch::Tensor& x);

/// blur_pool2 with its backward where a gradient is needed (bfloat16 gradients through the float32 loop,
/// rounded once) (one autograd node; asl's adjoint loop): the training path,
/// where LibTorch's padding by copies into slices records a node per copy.
torch::Tensor blur_pool2_differentiable(const torch::Tensor& x);

/// dst (n x hw x c, channels-last) = act(src) for src in nChw16c (ceil(c / 16) blocks, the last one
/// padded when c % 16 != 0); dtype float32 or
/// bfloat16 (`bf16`); act 0 none, 1 leaky ReLU (slope), 2 ELU (alpha = slope).
void unblock16(bool bf16, const void* src, void* dst, int64_t n, int64_t hw, int64_t c, int act, float slope);

}  // namespace asl::nn::cpu
