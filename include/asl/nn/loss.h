// The Asymmetric Loss family: AsymmetricLoss, AsymmetricLossOptimized (fused CPU kernel), ASLSingleLabel.
#pragma once

#include <string>

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace asl::nn {

/// How the per-element (multi-label) or per-sample (single-label) losses are combined.
enum class Reduction { Sum, Mean, None };

/// Parses "sum", "mean" or "none"; throws std::invalid_argument naming the value otherwise.
Reduction parse_reduction(const std::string& name);
const char* to_string(Reduction reduction);

/// Options of the multi-label Asymmetric Loss (paper eq. 3-4). Defaults are the reference's.
struct AsymmetricLossOptions {
  /// Focusing parameter for negatives (gamma-).
  TORCH_ARG(double, gamma_neg) = 4;
  /// Focusing parameter for positives (gamma+).
  TORCH_ARG(double, gamma_pos) = 1;
  /// Probability margin m shifted onto negatives (paper eq. 2); 0 or none disables it.
  TORCH_ARG(c10::optional<double>, clip) = 0.05;
  /// Lower clamp of both probabilities before the log.
  TORCH_ARG(double, eps) = 1e-8;
  /// Treat the focusing weight (1 - p_t)^gamma as a constant in the backward pass.
  TORCH_ARG(bool, disable_torch_grad_focal_loss) = true;
  /// Sum (reference), mean over the counted labels, or the N x C element losses.
  TORCH_ARG(Reduction, reduction) = Reduction::Sum;
  /// Partial labels: a target of -1 is unknown and contributes neither loss nor gradient.
  TORCH_ARG(bool, ignore_unknown) = false;
};

/// Same fields; the reference's optimized class lets the gradient flow through the focusing weight.
struct AsymmetricLossOptimizedOptions : AsymmetricLossOptions {
  AsymmetricLossOptimizedOptions() { disable_torch_grad_focal_loss(false); }
};

/// Options of the single-label (softmax) ASL with label smoothing.
struct ASLSingleLabelOptions {
  /// Focusing parameter for the target class.
  TORCH_ARG(double, gamma_pos) = 0;
  /// Focusing parameter for the other classes.
  TORCH_ARG(double, gamma_neg) = 4;
  /// Label smoothing: the target distribution is (1 - eps) one-hot + eps / C.
  TORCH_ARG(double, eps) = 0.1;
  /// Mean (reference), sum, or the per-sample vector.
  TORCH_ARG(Reduction, reduction) = Reduction::Mean;
};

namespace functional {

/// Multi-label ASL from composite ATen ops: any device, any floating dtype; autograd does the backward.
/// logits and targets are N x C (targets in [0, 1], or -1 for unknown with ignore_unknown).
/// NaN logits give a NaN loss.
torch::Tensor asymmetric_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                              const AsymmetricLossOptions& options = {});

/// The same function as one fused CPU kernel (float32/float64, vectorised, multi-threaded) with a
/// one-pass custom backward. Half/bfloat16 logits are computed in float32; other devices fall back to
/// asymmetric_loss.
torch::Tensor asymmetric_loss_optimized(const torch::Tensor& logits, const torch::Tensor& targets,
                                        const AsymmetricLossOptions& options = AsymmetricLossOptimizedOptions());

/// Single-label ASL: logits N x C, target N class indices (any integer dtype).
torch::Tensor asl_single_label(const torch::Tensor& logits, const torch::Tensor& target,
                               const ASLSingleLabelOptions& options = {});

}  // namespace functional

/// Module form of functional::asymmetric_loss.
class AsymmetricLossImpl : public torch::nn::Cloneable<AsymmetricLossImpl> {
 public:
  explicit AsymmetricLossImpl(AsymmetricLossOptions options = {});
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& logits, const torch::Tensor& targets);
  AsymmetricLossOptions options;
};
TORCH_MODULE(AsymmetricLoss);

/// Module form of functional::asymmetric_loss_optimized.
class AsymmetricLossOptimizedImpl : public torch::nn::Cloneable<AsymmetricLossOptimizedImpl> {
 public:
  explicit AsymmetricLossOptimizedImpl(AsymmetricLossOptions options = AsymmetricLossOptimizedOptions());
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& logits, const torch::Tensor& targets);
  AsymmetricLossOptions options;
};
TORCH_MODULE(AsymmetricLossOptimized);

/// Module form of functional::asl_single_label.
class ASLSingleLabelImpl : public torch::nn::Cloneable<ASLSingleLabelImpl> {
 public:
  explicit ASLSingleLabelImpl(ASLSingleLabelOptions options = {});
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& logits, const torch::Tensor& target);
  ASLSingleLabelOptions options;
};
TORCH_MODULE(ASLSingleLabel);

}  // namespace asl::nn
