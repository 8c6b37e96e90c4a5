// Weight-decay parameter groups and the Adam optimizer built on them.
#include "asl/train/optimizer.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

namespace asl::train {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

WeightDecayGroups split_weight_decay(const torch::nn::Module& model, const std::vector<std::string>& skip) {
  WeightDecayGroups groups;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const torch::Tensor& p = item.value();
    if (!p.requires_grad()) continue;
    const std::string& name = item.key();
    const bool no_decay = p.dim() == 1 || ends_with(name, ".bias") ||
                          std::find(skip.begin(), skip.end(), name) != skip.end();
    if (no_decay) {
      groups.no_decay.push_back(p);
      groups.no_decay_names.push_back(name);
    } else {
      groups.decay.push_back(p);
      groups.decay_names.push_back(name);
    }
  }
  return groups;
}

std::unique_ptr<torch::optim::Adam> make_adam(const torch::nn::Module& model, const AdamConfig& config) {
  WeightDecayGroups groups = split_weight_decay(model, config.skip);
  if (groups.no_decay.empty() && groups.decay.empty()) {
    throw std::runtime_error("make_adam: module '" + model.name() + "' has no trainable parameter");
  }
  auto options = [&](double weight_decay) {
    auto o = std::make_unique<torch::optim::AdamOptions>(config.lr);
    o->betas(std::make_tuple(config.beta1, config.beta2)).eps(config.eps).weight_decay(weight_decay);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  param_groups.emplace_back(std::move(groups.no_decay), options(0.0));
  param_groups.emplace_back(std::move(groups.decay), options(config.weight_decay));
  torch::optim::AdamOptions defaults(config.lr);
  defaults.betas(std::make_tuple(config.beta1, config.beta2)).eps(config.eps).weight_decay(0.0);
  return std::make_unique<torch::optim::Adam>(std::move(param_groups), defaults);
}

void set_lr_beta1(torch::optim::Adam& optimizer, double lr, double beta1) {
  if (!(beta1 >= 0.0 && beta1 < 1.0)) {
    throw std::runtime_error("set_lr_beta1: beta1 value " + std::to_string(beta1) + " is outside [0, 1)");
  }
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<torch::optim::AdamOptions&>(group.options());
    o.lr(lr);
    o.betas(std::make_tuple(beta1, std::get<1>(o.betas())));
  }
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace asl::train
