#include "asl_loss_autograd.h"

#include <torch/autograd.h>

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

class AslFusedFunction : public torch::autograd::Function<AslFusedFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, const AsymmetricLossOptions& options) {
    const cpu::AslParams p = to_params(options);
    const Reduction reduction = options.reduction();
    cpu::AslForward f = cpu::asl_forward_cpu(logits, targets, p, reduction == Reduction::None);
    double scale = 1.0;
    if (reduction == Reduction::Mean) {
      scale = 1.0 / static_cast<double>(f.count);  // 0 counted labels: inf * 0 = NaN, as torch's mean of nothing
      f.loss = f.loss * scale;
    }
    ctx->save_for_backward({logits, targets});
    ctx->saved_data["gamma_neg"] = p.gamma_neg;
    ctx->saved_data["gamma_pos"] = p.gamma_pos;
    ctx->saved_data["clip"] = p.clip;
    ctx->saved_data["eps"] = p.eps;
    ctx->saved_data["detach"] = p.detach_weight;
    ctx->saved_data["ignore"] = p.ignore_unknown;
    ctx->saved_data["scale"] = scale;
    return f.loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    cpu::AslParams p;
    p.gamma_neg = ctx->saved_data["gamma_neg"].toDouble();
    p.gamma_pos = ctx->saved_data["gamma_pos"].toDouble();
    p.clip = ctx->saved_data["clip"].toDouble();
    p.eps = ctx->saved_data["eps"].toDouble();
    p.detach_weight = ctx->saved_data["detach"].toBool();
    p.ignore_unknown = ctx->saved_data["ignore"].toBool();
    const double scale = ctx->saved_data["scale"].toDouble();
    torch::Tensor grad = cpu::asl_backward_cpu(grad_outputs[0], saved[0], saved[1], p, scale);
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor asl_fused(const torch::Tensor& logits, const torch::Tensor& targets, const AsymmetricLossOptions& options) {
  return AslFusedFunction::apply(logits, targets, options);
}

}  // namespace asl::nn::autograd
