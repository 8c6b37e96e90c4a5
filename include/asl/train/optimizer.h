// Adam with L2 weight decay through two parameter groups (the reference's add_weight_decay), and per-step lr/beta1.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/adam.h>
#include <torch/types.h>

namespace asl::train {

/// A module's trainable parameters split as the reference's `add_weight_decay` splits them.
struct WeightDecayGroups {
  /// 1-D parameters (biases, normalisation weights), names ending in ".bias" and names in the skip
  /// list: no weight decay. Group 0 of make_adam.
  std::vector<torch::Tensor> no_decay;
  std::vector<std::string> no_decay_names;
  /// Everything else (conv and linear weights): L2 weight decay. Group 1 of make_adam.
  std::vector<torch::Tensor> decay;
  std::vector<std::string> decay_names;
};

/// Splits `model.named_parameters()` (in registration order) into WeightDecayGroups, leaving out
/// parameters with requires_grad false (frozen), as the reference does.
WeightDecayGroups split_weight_decay(const torch::nn::Module& model, const std::vector<std::string>& skip = {});

/// Options of make_adam.
struct AdamConfig {
  /// Learning rate of both groups until set_lr_beta1 changes it.
  double lr = 1e-4;
  /// L2 weight decay of the decayed group (added to the gradient: grad + weight_decay · w).
  double weight_decay = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  /// Parameter names that get no weight decay besides the 1-D ones and the ".bias" ones.
  std::vector<std::string> skip;
};

/// torch::optim::Adam over the two groups of split_weight_decay, in the reference's order: group 0 the
/// no-decay parameters (weight_decay 0), group 1 the decayed ones. Both groups always exist, possibly
/// empty, so that group indices are stable (optimizer-state checkpoints depend on them).
std::unique_ptr<torch::optim::Adam> make_adam(const torch::nn::Module& model, const AdamConfig& config);

/// Sets the learning rate and Adam's beta1 of every parameter group (what OneCycleLR does each step
/// with cycle_momentum); beta2 is kept. Throws std::runtime_error for beta1 outside [0, 1).
void set_lr_beta1(torch::optim::Adam& optimizer, double lr, double beta1);

/// Sets the learning rate of every parameter group.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

}  // namespace asl::train
