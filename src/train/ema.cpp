// ModelEma: a cloned model whose tensors are blended toward the training model after every step.
#include "asl/train/ema.h"

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace asl::train {
namespace {

// Parameters then buffers, by name, in registration order (the order of a state_dict).
std::vector<std::pair<std::string, torch::Tensor>> state_tensors(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes() << " " << t.dtype();
  return s.str();
}

}  // namespace

ModelEma::ModelEma(const torch::nn::Module& model, double decay) : decay_(decay) {
  if (!(decay >= 0.0 && decay <= 1.0)) {
    throw std::runtime_error("ModelEma: decay value " + std::to_string(decay) + " is outside [0, 1]");
  }
  module_ = model.clone();
  module_->eval();
  for (auto& p : module_->parameters(true)) p.set_requires_grad(false);
}

template <typename Blend>
void ModelEma::blend(const torch::nn::Module& model, const char* what, Blend&& fn) {
  torch::NoGradGuard no_grad;
  const auto ema = state_tensors(*module_);
  const auto src = state_tensors(model);
  if (ema.size() != src.size()) {
    throw std::runtime_error(std::string("ModelEma::") + what + ": the model has " + std::to_string(src.size()) +
                             " parameters and buffers, the EMA copy " + std::to_string(ema.size()));
  }
  for (size_t i = 0; i < ema.size(); ++i) {
    const auto& [name, e] = ema[i];
    const auto& [src_name, m] = src[i];
    if (name != src_name || e.sizes() != m.sizes() || e.scalar_type() != m.scalar_type()) {
      throw std::runtime_error(std::string("ModelEma::") + what + ": tensor " + std::to_string(i) + " is '" +
                               src_name + "' " + shape_of(m) + " in the model but '" + name + "' " + shape_of(e) +
                               " in the EMA copy");
    }
    torch::Tensor target = e;  // shares storage with the copy's tensor
    target.copy_(fn(e, m.to(e.device())));
  }
}

void ModelEma::update(const torch::nn::Module& model) {
  const double d = decay_;
  // Same expression as the reference: for an integer buffer, scalar · tensor gives float32 and
  // copy_ truncates it back.
  blend(model, "update", [d](const torch::Tensor& e, const torch::Tensor& m) { return d * e + (1.0 - d) * m; });
}

void ModelEma::set(const torch::nn::Module& model) {
  blend(model, "set", [](const torch::Tensor&, const torch::Tensor& m) { return m; });
}

}  // namespace asl::train
