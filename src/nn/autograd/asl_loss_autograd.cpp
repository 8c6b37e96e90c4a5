#include "asl_loss_autograd.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include "../cpu/asl_loss_kernel.h"

namespace asl::nn::autograd {
namespace {

cpu::AslParams to_params(const AsymmetricLossOptions& o) {
  cpu::AslParams p;
  p.gamma_neg = o.gamma_neg();
  p.gamma_pos = o.gamma_pos();
  p.clip = o.clip().has_value() ? *o.clip() : 0.0;
  p.eps = o.eps();
  p.detach_weight = o.disable_torch_grad_focal_loss();
  p.ignore_unknown = o.ignore_unknown();
  return p;
}

// The backward node, written directly against autograd's Node (rather than torch::autograd::Function,
// whose context keeps parameters in a string-keyed map): at COCO size the loss costs microseconds, so
// the bookkeeping around the two kernel passes is a visible share of it.
struct AslFusedBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable logits, targets;
  cpu::AslParams params;
  double scale = 1.0;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::Tensor grad;
    if (grads[0].defined() && task_should_compute_output(0)) {
      grad = cpu::asl_backward_cpu(grads[0], logits.unpack(), targets.unpack(), params, scale);
    }
    return {grad};
  }

  std::string name() const override { return "AslFusedBackward"; }

  void release_variables() override {
    logits.reset_data();
    targets.reset_data();
  }
};

}  // namespace

torch::Tensor asl_fused(const torch::Tensor& logits, const torch::Tensor& targets, const AsymmetricLossOptions& options) {
  const cpu::AslParams p = to_params(options);
  const Reduction reduction = options.reduction();
  const bool track = torch::autograd::compute_requires_grad(logits);
  torch::Tensor loss;
  double scale = 1.0;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the result gets its history below
    cpu::AslForward f = cpu::asl_forward_cpu(logits, targets, p, reduction == Reduction::None);
    if (reduction == Reduction::Mean) {
      scale = 1.0 / static_cast<double>(f.count);  // 0 counted labels: inf * 0 = NaN, as torch's mean of nothing
      f.loss.mul_(scale);
    }
    loss = std::move(f.loss);
  }
  if (track) {
    auto node = std::shared_ptr<AslFusedBackward>(new AslFusedBackward(), torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(logits));
    node->logits = torch::autograd::SavedVariable(logits, /*is_output=*/false);
    node->targets = torch::autograd::SavedVariable(targets, /*is_output=*/false);
    node->params = p;
    node->scale = scale;
    torch::autograd::set_history(loss, node);
  }
  return loss;
}

}  // namespace asl::nn::autograd
