#include "asl/models/fuse.h"

#include <string>

#include <torch/torch.h>

#include "blocked16.h"

namespace asl::models {

FusedTResNetImpl::FusedTResNetImpl(TResNetOptions model_options_, FuseOptions options_)
    : model_options(std::move(model_options_)), options(options_) {
  reset();
}

void FusedTResNetImpl::reset() {
  pack_once_ = std::make_shared<std::once_flag>();  // new parameters (construction, clone): pack again
  blocked16_active_ = false;
  TORCH_CHECK(options.dtype() == torch::kFloat32 || options.dtype() == torch::kBFloat16,
              "FusedTResNet: dtype must be float32 or bfloat16, got ", c10::toString(options.dtype()));
  model = register_module("model", TResNet(TResNetOptions(model_options).fused(true)));
  model->eval();
  model->to(options.dtype());
  if (options.channels_last()) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
  for (auto& p : model->parameters()) p.set_requires_grad(false);
}

void FusedTResNetImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::models::FusedTResNet(dtype=" << c10::toString(options.dtype())
         << ", channels_last=" << (options.channels_last() ? "true" : "false") << ")";
}

torch::Tensor FusedTResNetImpl::forward(const torch::Tensor& input) {
  if (options.prepack()) ensure_packed();
  c10::InferenceMode guard;
  auto x = input.to(options.dtype());
  if (options.channels_last()) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  if (blocked16_active_) return blocked16::forward(*model, x).to(torch::kFloat32);
  return model->forward(x).to(torch::kFloat32);
}

void FusedTResNetImpl::prepack() {
  blocked16_active_ = options.blocked16() && options.channels_last() &&
                      blocked16::supported(*model, options.dtype());
  if (blocked16_active_) {
    blocked16::pack(*model, options.winograd());
    return;
  }
  for (const auto& module : model->modules(false)) {
    if (auto* conv = module->as<asl::nn::ConvNormAct>()) {
      // The layout hint: a mid-network size; any input size runs correctly.
      conv->pack({1, conv->options.in_channels(), 28, 28}, options.winograd());
    }
  }
}

void FusedTResNetImpl::ensure_packed() {
  std::call_once(*pack_once_, [this] { prepack(); });
}

FusedTResNet fuse_for_inference(const TResNet& model, const FuseOptions& options) {
  TORCH_CHECK(!model->options.fused(), "fuse_for_inference: the model is already fused");
  const auto source_params = model->named_parameters();
  const auto source_modules = model->named_modules();
  const auto device = source_params.is_empty() ? torch::Device(torch::kCPU) : source_params[0].value().device();

  FusedTResNet fused(model->options, FuseOptions(options));
  fused->to(device);
  torch::NoGradGuard no_grad;
  // Parameters other than the conv/norm pairs (SE convs, linear layers) keep their names and values.
  for (auto& item : fused->model->named_parameters()) {
    if (const auto* src = source_params.find(item.key())) {
      if (src->sizes() == item.value().sizes()) item.value().copy_(*src);
    }
  }
  for (const auto& item : fused->model->named_modules()) {
    auto* target = item.value()->as<asl::nn::ConvNormAct>();
    if (target == nullptr) continue;
    const auto* src_module = source_modules.find(item.key());
    TORCH_CHECK(src_module != nullptr, "fuse_for_inference: no module '", item.key(), "' in the source model");
    auto* source = (*src_module)->as<asl::nn::ConvNormAct>();
    TORCH_CHECK(source != nullptr && source->norm, "fuse_for_inference: '", item.key(),
                "' is not an unfused ConvNormAct in the source model");
    const auto folded = source->folded_weight_and_bias();
    target->conv->weight.copy_(folded.first);
    target->conv->bias.copy_(folded.second);
  }
  if (options.prepack()) fused->ensure_packed();
  return fused;
}

}  // namespace asl::models
