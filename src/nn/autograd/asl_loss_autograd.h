// Autograd wrapper of the fused multi-label ASL kernel.
#pragma once

#include <torch/types.h>

#include "asl/nn/loss.h"

namespace asl::nn::autograd {

/// Fused forward + one-pass backward on CPU float32/float64 inputs (already contiguous, same dtype).
torch::Tensor asl_fused(const torch::Tensor& logits, const torch::Tensor& targets, const AsymmetricLossOptions& options);

}  // namespace asl::nn::autograd
