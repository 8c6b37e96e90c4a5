#include "asl/nn/loss.h"

#include <stdexcept>

#include "autograd/asl_loss_autograd.h"

namespace asl::nn {

Reduction parse_reduction(const std::string& name) {
  if (name == "sum") return Reduction::Sum;
  if (name == "mean") return Reduction::Mean;
  if (name == "none") return Reduction::None;
  throw std::invalid_argument("reduction: expected 'sum', 'mean' or 'none', got '" + name + "'");
}

const char* to_string(Reduction reduction) {
  switch (reduction) {
    case Reduction::Sum: return "sum";
    case Reduction::Mean: return "mean";
    case Reduction::None: return "none";
  }
  return "?";
}

namespace {

// Shared argument checks; returns the targets in the logits' dtype.
torch::Tensor checked_targets(const torch::Tensor& logits, const torch::Tensor& targets, const char* who) {
  TORCH_CHECK(logits.defined() && targets.defined(), who, ": logits and targets must be defined");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), who, ": logits must be a floating-point tensor, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.sizes() == targets.sizes(), who, ": logits shape ", logits.sizes(),
              " differs from targets shape ", targets.sizes());
  TORCH_CHECK(logits.device() == targets.device(), who, ": logits on ", logits.device(), " but targets on ",
              targets.device());
  return targets.scalar_type() == logits.scalar_type() ? targets : targets.to(logits.scalar_type());
}

torch::Tensor reduce(const torch::Tensor& neg_loss, const torch::Tensor& count, Reduction reduction) {
  switch (reduction) {
    case Reduction::Sum: return neg_loss.sum();
    case Reduction::Mean: return neg_loss.sum() / count;
    case Reduction::None: return neg_loss;
  }
  return neg_loss;
}

void print_options(std::ostream& s, const char* name, const AsymmetricLossOptions& o) {
  s << "asl::nn::" << name << "(gamma_neg=" << o.gamma_neg() << ", gamma_pos=" << o.gamma_pos()
    << ", clip=" << o.clip().value_or(0.0) << ", eps=" << o.eps()
    << ", disable_torch_grad_focal_loss=" << o.disable_torch_grad_focal_loss()
    << ", reduction=" << to_string(o.reduction()) << ", ignore_unknown=" << o.ignore_unknown() << ")";
}

}  // namespace

namespace functional {

torch::Tensor asymmetric_loss(const torch::Tensor& logits, const torch::Tensor& targets_in,
                              const AsymmetricLossOptions& o) {
  torch::Tensor y = checked_targets(logits, targets_in, "asymmetric_loss");
  torch::Tensor known;
  if (o.ignore_unknown()) {
    known = y.ne(-1);
    y = torch::where(known, y, torch::zeros_like(y));
  }
  // Paper eq. 1-4, in the reference's order of operations.
  torch::Tensor xs_pos = torch::sigmoid(logits);
  torch::Tensor xs_neg = 1 - xs_pos;
  const double clip = o.clip().has_value() ? *o.clip() : 0.0;
  if (clip > 0) xs_neg = (xs_neg + clip).clamp_max(1);
  const torch::Tensor anti = 1 - y;
  torch::Tensor loss = y * torch::log(xs_pos.clamp_min(o.eps())) + anti * torch::log(xs_neg.clamp_min(o.eps()));
  if (o.gamma_neg() > 0 || o.gamma_pos() > 0) {
    const bool detach = o.disable_torch_grad_focal_loss();
    const torch::Tensor p = detach ? xs_pos.detach() : xs_pos;
    const torch::Tensor q = detach ? xs_neg.detach() : xs_neg;
    const torch::Tensor pt = p * y + q * anti;
    const torch::Tensor gamma = o.gamma_pos() * y + o.gamma_neg() * anti;
    loss = loss * torch::pow(1 - pt, gamma);
  }
  torch::Tensor neg = -loss;
  torch::Tensor count;
  if (o.ignore_unknown()) {
    neg = torch::where(known, neg, torch::zeros_like(neg));
    count = known.sum().to(logits.scalar_type());
  } else {
    count = torch::full({}, static_cast<double>(logits.numel()), logits.options());
  }
  return reduce(neg, count, o.reduction());
}

torch::Tensor asymmetric_loss_optimized(const torch::Tensor& logits, const torch::Tensor& targets,
                                        const AsymmetricLossOptions& o) {
  torch::Tensor y = checked_targets(logits, targets, "asymmetric_loss_optimized");
  torch::Tensor x = logits;
  if (x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kBFloat16) {
    x = x.to(torch::kFloat32);  // as the reference's training computes the loss on output.float()
    y = y.to(torch::kFloat32);
  }
  if (!x.device().is_cpu() || (x.scalar_type() != torch::kFloat32 && x.scalar_type() != torch::kFloat64)) {
    return asymmetric_loss(x, y, o);
  }
  return autograd::asl_fused(x.contiguous(), y.contiguous(), o);
}

torch::Tensor asl_single_label(const torch::Tensor& logits, const torch::Tensor& target,
                               const ASLSingleLabelOptions& o) {
  TORCH_CHECK(logits.defined() && target.defined(), "asl_single_label: logits and target must be defined");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "asl_single_label: logits must be floating-point, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.dim() == 2, "asl_single_label: logits must be N x C, got shape ", logits.sizes());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), "asl_single_label: target must hold N = ",
              logits.size(0), " class indices, got shape ", target.sizes());
  const int64_t num_classes = logits.size(1);
  const torch::Tensor index = target.to(torch::kLong);
  if (index.numel() > 0) {
    const int64_t lo = index.min().item<int64_t>(), hi = index.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_classes, "asl_single_label: target class index out of range [0, ", num_classes,
                "): found ", lo < 0 ? lo : hi);
  }
  const torch::Tensor log_preds = torch::log_softmax(logits, -1);
  torch::Tensor onehot = torch::zeros_like(logits).scatter_(1, index.unsqueeze(1), 1);
  const torch::Tensor anti = 1 - onehot;
  const torch::Tensor xs_pos = torch::exp(log_preds);
  const torch::Tensor xs_neg = 1 - xs_pos;
  const torch::Tensor weight =
      torch::pow(1 - xs_pos * onehot - xs_neg * anti, o.gamma_pos() * onehot + o.gamma_neg() * anti);
  const torch::Tensor weighted = log_preds * weight;
  if (o.eps() > 0) onehot = onehot.mul(1 - o.eps()).add(o.eps() / static_cast<double>(num_classes));
  const torch::Tensor per_sample = -(onehot.mul(weighted)).sum(-1);
  switch (o.reduction()) {
    case Reduction::Mean: return per_sample.mean();
    case Reduction::Sum: return per_sample.sum();
    case Reduction::None: return per_sample;
  }
  return per_sample;
}

}  // namespace functional

AsymmetricLossImpl::AsymmetricLossImpl(AsymmetricLossOptions options_) : options(std::move(options_)) {}

void AsymmetricLossImpl::pretty_print(std::ostream& s) const { print_options(s, "AsymmetricLoss", options); }

torch::Tensor AsymmetricLossImpl::forward(const torch::Tensor& logits, const torch::Tensor& targets) {
  return functional::asymmetric_loss(logits, targets, options);
}

AsymmetricLossOptimizedImpl::AsymmetricLossOptimizedImpl(AsymmetricLossOptions options_)
    : options(std::move(options_)) {}

void AsymmetricLossOptimizedImpl::pretty_print(std::ostream& s) const {
  print_options(s, "AsymmetricLossOptimized", options);
}

torch::Tensor AsymmetricLossOptimizedImpl::forward(const torch::Tensor& logits, const torch::Tensor& targets) {
  return functional::asymmetric_loss_optimized(logits, targets, options);
}

ASLSingleLabelImpl::ASLSingleLabelImpl(ASLSingleLabelOptions options_) : options(std::move(options_)) {}

void ASLSingleLabelImpl::pretty_print(std::ostream& s) const {
  s << "asl::nn::ASLSingleLabel(gamma_pos=" << options.gamma_pos() << ", gamma_neg=" << options.gamma_neg()
    << ", eps=" << options.eps() << ", reduction=" << to_string(options.reduction()) << ")";
}

torch::Tensor ASLSingleLabelImpl::forward(const torch::Tensor& logits, const torch::Tensor& target) {
  return functional::asl_single_label(logits, target, options);
}

}  // namespace asl::nn
