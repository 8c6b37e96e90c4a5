// Exponential moving average of a model's parameters and buffers (the reference's ModelEma).
#pragma once

#include <memory>
#include <string>

#include <torch/nn/module.h>

namespace asl::train {

/// A copy of a model whose parameters and buffers follow the model as an exponential moving average:
/// after each optimizer step, `update(model)` sets every tensor to decay · ema + (1 − decay) · model
/// (the reference's ModelEma, decay 0.9997). Integer buffers (BatchNorm's num_batches_tracked) follow
/// the same formula computed in float32 and stored back truncated, as PyTorch's in-place copy_ does in
/// the reference. The copy is kept in eval mode and needs no gradients.
class ModelEma {
 public:
  /// Deep-copies `model` with Module::clone() (the module must be Cloneable, as every asl model is).
  /// Throws std::runtime_error for a decay outside [0, 1].
  explicit ModelEma(const torch::nn::Module& model, double decay = 0.9997);

  /// ema = decay · ema + (1 − decay) · model for every parameter and buffer, under no_grad. Throws
  /// std::runtime_error naming the tensor when the model's tensors do not match the copy's by name,
  /// shape or dtype.
  void update(const torch::nn::Module& model);

  /// Copies every parameter and buffer of `model` (the reference's ModelEma.set).
  void set(const torch::nn::Module& model);

  /// The averaged copy (in eval mode).
  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }

  /// The averaged copy as its concrete type, e.g. `ema.module_as<asl::models::TResNetImpl>()`;
  /// nullptr when the type does not match.
  template <typename ModuleType>
  std::shared_ptr<ModuleType> module_as() const {
    return std::dynamic_pointer_cast<ModuleType>(module_);
  }

  double decay() const { return decay_; }

 private:
  template <typename Blend>
  void blend(const torch::nn::Module& model, const char* what, Blend&& fn);

  std::shared_ptr<torch::nn::Module> module_;
  double decay_;
};

}  // namespace asl::train
