#include "asl/nn/layers.h"

#include "asl/nn/packed_conv.h"
#include "autograd/batch_norm_act.h"
#include "autograd/pointwise_conv.h"
#include "autograd/winograd_conv.h"
#include "cpu/cl_kernels.h"
#include "asl/runtime.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

namespace asl::nn {

Activation parse_activation(const std::string& name) {
  if (name == "identity") return Activation::Identity;
  if (name == "leaky_relu") return Activation::LeakyReLU;
  if (name == "elu") return Activation::ELU;
  throw std::invalid_argument("activation: unknown value '" + name + "' (expected identity, leaky_relu or elu)");
}

const char* to_string(Activation activation) {
  switch (activation) {
    case Activation::Identity: return "identity";
    case Activation::LeakyReLU: return "leaky_relu";
    case Activation::ELU: return "elu";
  }
  return "?";
}

namespace {

// Only for tensors this file just created: the in-place forms save a copy and keep autograd correct for
// slope/alpha >= 0 because their backward is written in terms of the result.
torch::Tensor activation_inplace(torch::Tensor x, Activation activation, double param) {
  switch (activation) {
    case Activation::Identity: return x;
    case Activation::LeakyReLU: return torch::leaky_relu_(x, param);
    case Activation::ELU: return torch::elu_(x, param);
  }
  return x;
}

torch::nn::Conv2d make_conv(const ConvNormActOptions& o) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels(), o.out_channels(), o.kernel_size())
                               .stride(o.stride())
                               .padding(o.kernel_size() / 2)
                               .groups(o.groups())
                               .bias(o.fused()));
}

}  // namespace

namespace functional {

bool emulates_bf16(const torch::Tensor& input) {
  if (cpu_info().onednn_bf16 || !input.device().is_cpu()) return false;
  if (input.scalar_type() == torch::kBFloat16) return true;
  return input.scalar_type() == torch::kFloat32 && at::autocast::is_cpu_enabled() &&
         at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
}

namespace {

// The value a bfloat16 kernel would see, held in float32 (no-op for an undefined bias).
torch::Tensor bf16_rounded(const torch::Tensor& t) {
  return t.defined() ? t.to(torch::kBFloat16).to(torch::kFloat32) : t;
}

}  // namespace

namespace {
std::atomic<bool> winograd_training_enabled{true};
std::atomic<bool> pointwise_training_enabled{true};

bool all_equal(torch::IntArrayRef values, int64_t v) {
  return std::all_of(values.begin(), values.end(), [v](int64_t x) { return x == v; });
}
}  // namespace

void set_winograd_training(bool enabled) { winograd_training_enabled.store(enabled); }
bool winograd_training() { return winograd_training_enabled.load(); }
void set_pointwise_conv_training(bool enabled) { pointwise_training_enabled.store(enabled); }
bool pointwise_conv_training() { return pointwise_training_enabled.load(); }

torch::Tensor conv2d(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                     torch::IntArrayRef stride, torch::IntArrayRef padding, torch::IntArrayRef dilation,
                     int64_t groups) {
  const bool plain_training_call = torch::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad()) &&
                                   !bias.defined() && groups == 1 && all_equal(stride, 1) && all_equal(dilation, 1);
  if (plain_training_call && winograd_training() && all_equal(padding, 1) &&
      autograd::winograd_conv3x3_supported(input, weight)) {
    return autograd::winograd_conv3x3(input, weight);  // training's 3x3 convs on oneDNN's Winograd kernels
  }
  if (plain_training_call && pointwise_conv_training() && all_equal(padding, 0) && cpu_info().onednn_bf16 &&
      weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 &&
      input.is_contiguous(torch::MemoryFormat::ChannelsLast)) {
    // Training's 1x1 convs as matrix products; under bfloat16 autocast cast as autocast would.
    const bool autocast_bf16 = at::autocast::is_cpu_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
    const auto x = autocast_bf16 ? input.to(torch::kBFloat16) : input;
    const auto w = autocast_bf16 ? weight.to(torch::kBFloat16) : weight;
    if (autograd::pointwise_conv_supported(x, w)) return autograd::pointwise_conv(x, w);
  }
  if (!emulates_bf16(input)) return torch::conv2d(input, weight, bias, stride, padding, dilation, groups);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return torch::conv2d(bf16_rounded(input), bf16_rounded(weight), bf16_rounded(bias), stride, padding, dilation,
                       groups)
      .to(torch::kBFloat16);
}

torch::Tensor conv2d(const torch::nn::Conv2dImpl& conv, const torch::Tensor& input) {
  const auto& o = conv.options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(padding != nullptr && c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()) != nullptr,
              "conv2d: the module must have numeric zero padding");
  return conv2d(input, conv.weight, conv.bias, o.stride(), *padding, o.dilation(), o.groups());
}

torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!emulates_bf16(input)) return torch::linear(input, weight, bias);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return torch::linear(bf16_rounded(input), bf16_rounded(weight), bf16_rounded(bias)).to(torch::kBFloat16);
}

torch::Tensor linear(const torch::nn::LinearImpl& module, const torch::Tensor& input) {
  return linear(input, module.weight, module.bias);
}

torch::Tensor space_to_depth(const torch::Tensor& input, int64_t block_size) {
  TORCH_CHECK(input.dim() == 4, "space_to_depth: input must be N x C x H x W, got shape ", input.sizes());
  TORCH_CHECK(block_size >= 1, "space_to_depth: block_size must be >= 1, got ", block_size);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), b = block_size;
  TORCH_CHECK(h % b == 0 && w % b == 0, "space_to_depth: H and W must be multiples of block_size ", b,
              ", got shape ", input.sizes());
  if (input.suggest_memory_format() == torch::MemoryFormat::ChannelsLast && c > 1) {
    // Same channel order, written straight into channels-last layout (one copy instead of two).
    auto x = input.view({n, c, h / b, b, w / b, b}).permute({0, 2, 4, 3, 5, 1}).contiguous();
    return x.view({n, h / b, w / b, b * b * c}).permute({0, 3, 1, 2});
  }
  return input.contiguous().view({n, c, h / b, b, w / b, b}).permute({0, 3, 5, 1, 2, 4}).reshape(
      {n, c * b * b, h / b, w / b});
}

torch::Tensor blur_filter(int64_t channels, const torch::TensorOptions& options) {
  const auto a = torch::tensor({1.0, 2.0, 1.0}, torch::kFloat64);
  const auto filt = (a.unsqueeze(1) * a.unsqueeze(0)) / 16.0;
  return filt.view({1, 1, 3, 3}).expand({channels, 1, 3, 3}).to(options).contiguous();
}

torch::Tensor blur_pool(const torch::Tensor& input, int64_t stride) {
  TORCH_CHECK(input.dim() == 4, "blur_pool: input must be N x C x H x W, got shape ", input.sizes());
  const int64_t c = input.size(1);
  TORCH_CHECK(input.size(2) >= 2 && input.size(3) >= 2, "blur_pool: reflect padding needs H, W >= 2, got shape ",
              input.sizes());
  torch::Tensor padded;
  const bool channels_last = input.suggest_memory_format() == torch::MemoryFormat::ChannelsLast;
  if ((input.scalar_type() == torch::kFloat || input.scalar_type() == torch::kDouble) && !channels_last) {
    padded = torch::nn::functional::pad(input, torch::nn::functional::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReflect));
  } else if (input.scalar_type() != torch::kFloat) {
    // LibTorch 1.13's CPU reflection_pad2d has no bfloat16/half kernel: the same padding by concatenation.
    const int64_t h = input.size(2), w = input.size(3);
    auto x = torch::cat({input.narrow(2, 1, 1), input, input.narrow(2, h - 2, 1)}, 2);
    padded = torch::cat({x.narrow(3, 1, 1), x, x.narrow(3, w - 2, 1)}, 3);
  } else {
    // Channels-last float32: reflection_pad2d would return NCHW (switching the rest of the block back to
    // NCHW), and cat along H or W is ~50x slower here than copies into a padded tensor of the same layout.
    const int64_t n = input.size(0), h = input.size(2), w = input.size(3);
    padded = torch::empty({n, c, h + 2, w + 2}, input.options().memory_format(input.suggest_memory_format()));
    padded.narrow(2, 1, h).narrow(3, 1, w).copy_(input);
    padded.narrow(2, 0, 1).narrow(3, 1, w).copy_(input.narrow(2, 1, 1));
    padded.narrow(2, h + 1, 1).narrow(3, 1, w).copy_(input.narrow(2, h - 2, 1));
    padded.narrow(3, 0, 1).copy_(padded.narrow(3, 2, 1));
    padded.narrow(3, w + 1, 1).copy_(padded.narrow(3, w - 1, 1));
  }
  const auto weight = blur_filter(c, input.options()).contiguous(input.suggest_memory_format());
  return conv2d(padded, weight, torch::Tensor(), torch::IntArrayRef{stride}, torch::IntArrayRef{0},
                torch::IntArrayRef{1}, c);
}

torch::Tensor activation(const torch::Tensor& input, Activation activation, double param) {
  switch (activation) {
    case Activation::Identity: return input;
    case Activation::LeakyReLU: return torch::leaky_relu(input, param);
    case Activation::ELU: return torch::elu(input, param);
  }
  return input;
}

torch::Tensor activated_batch_norm(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                                   const torch::Tensor& running_mean, const torch::Tensor& running_var,
                                   bool training, double momentum, double eps, Activation activation,
                                   double activation_param, bool abs_weight) {
  TORCH_CHECK(input.dim() >= 2, "activated_batch_norm: input must be N x C x ..., got shape ", input.sizes());
  if (training && fused_norm_training() && autograd::batch_norm_act_supported(input) && weight.defined() && bias.defined() &&
      weight.scalar_type() == torch::kFloat32 && bias.scalar_type() == torch::kFloat32 &&
      weight.numel() == input.size(1) && bias.numel() == input.size(1)) {
    // One autograd node for norm and activation, half the passes of batch_norm + activation.
    const int act = activation == Activation::LeakyReLU ? 1 : activation == Activation::ELU ? 2 : 0;
    return autograd::batch_norm_act_train(input, norm_scale(weight, eps, abs_weight), bias, running_mean, running_var,
                                          momentum, eps, act, activation_param);
  }
  auto y = torch::batch_norm(input, norm_scale(weight, eps, abs_weight), bias, running_mean, running_var, training,
                             momentum, eps, /*cudnn_enabled=*/true);
  return activation_inplace(y, activation, activation_param);
}

namespace {
std::atomic<bool> fused_norm_training_enabled{true};
}  // namespace

void set_fused_norm_training(bool enabled) { fused_norm_training_enabled.store(enabled); }
bool fused_norm_training() { return fused_norm_training_enabled.load(); }

torch::Tensor norm_scale(const torch::Tensor& weight, double eps, bool abs_weight) {
  // InPlaceABN scales by |w| + eps so that its activation stays invertible; autograd gives sign(w) for free.
  return abs_weight ? weight.abs() + eps : weight;
}

}  // namespace functional

// ---- SpaceToDepth --------------------------------------------------------

SpaceToDepthImpl::SpaceToDepthImpl(SpaceToDepthOptions options_) : options(options_) {}

void SpaceToDepthImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::nn::SpaceToDepth(block_size=" << options.block_size() << ")";
}

torch::Tensor SpaceToDepthImpl::forward(const torch::Tensor& input) {
  return functional::space_to_depth(input, options.block_size());
}

// ---- BlurPool ------------------------------------------------------------

BlurPoolImpl::BlurPoolImpl(BlurPoolOptions options_) : options(options_) {}

void BlurPoolImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::nn::BlurPool(channels=" << options.channels() << ", stride=" << options.stride() << ")";
}

torch::Tensor BlurPoolImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == options.channels(), "BlurPool: expected N x ",
              options.channels(), " x H x W input, got shape ", input.sizes());
  // asl's one-pass loop (one autograd node where a gradient is needed, no padded copies): bfloat16 always,
  // float32 outside autocast (under it LibTorch's path computes in bfloat16).
  if (options.stride() == 2 && cpu::channels_last_kernel_input(input) && input.size(2) >= 2 && input.size(3) >= 2 &&
      (input.scalar_type() == torch::kBFloat16 || !at::autocast::is_cpu_enabled())) {
    return cpu::blur_pool2_differentiable(input);
  }
  return functional::blur_pool(input, options.stride());
}

// ---- SqueezeExcite -------------------------------------------------------

SqueezeExciteImpl::SqueezeExciteImpl(SqueezeExciteOptions options_) : options(options_) { reset(); }

void SqueezeExciteImpl::reset() {
  fc1 = register_module("fc1", torch::nn::Conv2d(torch::nn::Conv2dOptions(options.channels(),
                                                                          options.reduction_channels(), 1)
                                                     .bias(true)));
  fc2 = register_module("fc2", torch::nn::Conv2d(torch::nn::Conv2dOptions(options.reduction_channels(),
                                                                          options.channels(), 1)
                                                     .bias(true)));
}

void SqueezeExciteImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::nn::SqueezeExcite(channels=" << options.channels()
         << ", reduction_channels=" << options.reduction_channels() << ")";
}

namespace {
// mean over H, W whose gradient is the broadcast view (grad / HW) expanded to the input's shape. LibTorch's
// MeanBackward divides the expanded gradient into a fresh NCHW tensor whatever the input's layout; added
// to the product's channels-last gradient (autograd sums the two paths into the input) that mixed-layout
// sum ran ~8x slower than a channels-last one (5.0 vs 0.65 ms at 16x1024x14x14 bfloat16), and its NCHW
// result was copied back to channels-last by the next node.
struct SpatialMean : public torch::autograd::Function<SpatialMean> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input) {
    ctx->saved_data["sizes"] = input.sizes().vec();
    return input.mean({2, 3});
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto g = grads[0] / static_cast<double>(sizes[2] * sizes[3]);
    return {g.view({sizes[0], sizes[1], 1, 1}).expand(sizes)};
  }
};
}  // namespace

torch::Tensor functional::spatial_mean(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "spatial_mean: input must be N x C x H x W, got shape ", input.sizes());
  const bool needs_grad = torch::GradMode::is_enabled() && input.requires_grad();
  return needs_grad ? SpatialMean::apply(input) : input.mean({2, 3});
}

torch::Tensor SqueezeExciteImpl::gate(const torch::Tensor& input) {
  // The 1x1 convolutions of the pooled 1x1 map are matrix products on N x C: linear (GEMM), where the conv
  // path would run an im2col kernel per call.
  auto s = functional::spatial_mean(input);
  s = functional::linear(s, fc1->weight.flatten(1), fc1->bias).relu_();
  s = functional::linear(s, fc2->weight.flatten(1), fc2->bias).sigmoid_();
  return s.view({s.size(0), s.size(1), 1, 1});
}

torch::Tensor SqueezeExciteImpl::forward(const torch::Tensor& input) { return input * gate(input); }

namespace {
bool own_squeeze_excite(const torch::Tensor& input, const torch::nn::Conv2d& fc1, const torch::nn::Conv2d& fc2) {
  return cpu::channels_last_kernel_input(input) &&
         !(torch::GradMode::is_enabled() && (input.requires_grad() || fc1->weight.requires_grad())) &&
         fc1->weight.scalar_type() == input.scalar_type() && fc2->weight.scalar_type() == input.scalar_type();
}
}  // namespace

torch::Tensor& SqueezeExciteImpl::scale_(torch::Tensor& input) {
  if (!own_squeeze_excite(input, fc1, fc2)) return input.mul_(gate(input));
  cpu::squeeze_excite_(input, fc1->weight, fc1->bias, fc2->weight, fc2->bias);
  return input;
}

torch::Tensor& SqueezeExciteImpl::scale_residual_relu_(torch::Tensor& input, const torch::Tensor& residual) {
  if (!own_squeeze_excite(input, fc1, fc2) || !cpu::channels_last_kernel_input(residual) ||
      residual.sizes() != input.sizes() || residual.scalar_type() != input.scalar_type()) {
    return scale_(input).add_(residual).relu_();
  }
  cpu::squeeze_excite_(input, fc1->weight, fc1->bias, fc2->weight, fc2->bias, residual);
  return input;
}

// ---- ActivatedBatchNorm --------------------------------------------------

ActivatedBatchNormImpl::ActivatedBatchNormImpl(ActivatedBatchNormOptions options_) : options(options_) { reset(); }

void ActivatedBatchNormImpl::reset() {
  const int64_t c = options.num_features();
  TORCH_CHECK(c > 0, "ActivatedBatchNorm: num_features must be positive, got ", c);
  weight = register_parameter("weight", torch::ones({c}));
  bias = register_parameter("bias", torch::zeros({c}));
  running_mean = register_buffer("running_mean", torch::zeros({c}));
  running_var = register_buffer("running_var", torch::ones({c}));
  num_batches_tracked =
      options.abs_weight() ? torch::Tensor() : register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
}

void ActivatedBatchNormImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1);
  bias.zero_();
  running_mean.zero_();
  running_var.fill_(1);
  if (num_batches_tracked.defined()) num_batches_tracked.zero_();
}

void ActivatedBatchNormImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::nn::ActivatedBatchNorm(" << options.num_features() << (options.abs_weight() ? "" : ", plain")
         << ", eps=" << options.eps()
         << ", momentum=" << options.momentum() << ", activation=" << to_string(options.activation());
  if (options.activation() != Activation::Identity) stream << ", activation_param=" << options.activation_param();
  stream << ")";
}

torch::Tensor ActivatedBatchNormImpl::forward(const torch::Tensor& input) {
  if (num_batches_tracked.defined() && is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  return functional::activated_batch_norm(input, weight, bias, running_mean, running_var, is_training(),
                                          options.momentum(), options.eps(), options.activation(),
                                          options.activation_param(), options.abs_weight());
}

// ---- ConvNormAct ---------------------------------------------------------

ConvNormActImpl::ConvNormActImpl(ConvNormActOptions options_) : options(options_) { reset(); }

void ConvNormActImpl::reset() {
  packed_.reset();  // a clone or re-initialised module has new parameters
  conv = register_module("0", make_conv(options));
  if (!options.fused()) {
    norm = register_module("1", ActivatedBatchNorm(ActivatedBatchNormOptions(options.out_channels())
                                                       .activation(options.activation())
                                                       .activation_param(options.activation_param())
                                                       .abs_weight(options.abs_weight())));
  } else {
    norm = nullptr;
  }
}

void ConvNormActImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::nn::ConvNormAct(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride()
         << ", activation=" << to_string(options.activation());
  if (options.fused()) stream << ", fused";
  stream << ")";
}

torch::Tensor ConvNormActImpl::forward(const torch::Tensor& input) {
  if (options.fused()) {
    const bool use_packed = packed_ && !packed_blocked16() && input.device().is_cpu() &&
                            input.scalar_type() == packed_->dtype() &&
                            !(torch::GradMode::is_enabled() && input.requires_grad());
    if (use_packed) return (*packed_)(input);  // the activation is fused into the convolution
    return activation_inplace(functional::conv2d(*conv, input), options.activation(), options.activation_param());
  }
  return norm->forward(functional::conv2d(*conv, input));
}

torch::Tensor ConvNormActImpl::forward_residual_relu(const torch::Tensor& input, const torch::Tensor& residual) {
  const bool outside_autograd = !torch::GradMode::is_enabled() || (!input.requires_grad() && !residual.requires_grad());
  if (options.fused() && packed_ && !packed_blocked16() && outside_autograd && input.device().is_cpu() &&
      input.scalar_type() == packed_->dtype() && residual.scalar_type() == packed_->dtype() &&
      residual.is_contiguous(torch::MemoryFormat::ChannelsLast) && residual.dim() == 4 &&
      residual.size(1) == options.out_channels()) {
    return packed_->residual_relu(input, residual);
  }
  if (!torch::GradMode::is_enabled()) return forward(input).add_(residual).relu_();
  return (forward(input) + residual).relu_();
}

std::pair<torch::Tensor, torch::Tensor> ConvNormActImpl::folded_weight_and_bias() const {
  TORCH_CHECK(!options.fused() && norm, "ConvNormAct: already fused, there is no norm to fold");
  torch::NoGradGuard no_grad;
  const double eps = norm->options.eps();
  // Folded in float64 so that fusing adds no rounding beyond the final cast.
  const auto scale = functional::norm_scale(norm->weight.to(torch::kFloat64), eps, norm->options.abs_weight()) /
                     (norm->running_var.to(torch::kFloat64) + eps).sqrt();
  auto weight = conv->weight.to(torch::kFloat64) * scale.view({-1, 1, 1, 1});
  auto bias = norm->bias.to(torch::kFloat64) - norm->running_mean.to(torch::kFloat64) * scale;
  return {std::move(weight), std::move(bias)};
}

bool ConvNormActImpl::packed_blocked16() const {
  return packed_ != nullptr && packed_->layout() == PackedConv2d::Layout::Blocked16;
}

torch::Tensor ConvNormActImpl::forward_blocked16(const torch::Tensor& input, int64_t batch, const torch::Tensor& residual,
                                                 ConvEpilogue* pending) {
  TORCH_CHECK(packed_blocked16(), "ConvNormAct: forward_blocked16 needs pack(..., blocked16 = true)");
  return packed_->blocked16(input, batch, residual, pending);
}

void ConvNormActImpl::pack(std::vector<int64_t> input_size, bool winograd, bool blocked16) {
  TORCH_CHECK(options.fused(), "ConvNormAct: pack() needs the fused form");
  packed_.reset();
  const auto& w = conv->weight;
  // bfloat16 is packed only where oneDNN runs it; elsewhere forward emulates it (functional::conv2d).
  if (!PackedConv2d::available() || !w.device().is_cpu() ||
      (w.scalar_type() != torch::kFloat32 && w.scalar_type() != torch::kBFloat16) ||
      (w.scalar_type() == torch::kBFloat16 && !cpu_info().onednn_bf16)) {
    return;
  }
  const auto& o = conv->options;
  const auto to_vector = [](torch::ExpandingArray<2> a) { return std::vector<int64_t>{(*a)[0], (*a)[1]}; };
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(padding != nullptr, "ConvNormAct: pack() needs an explicit padding");
  ConvEpilogue epilogue;
  epilogue.alpha = options.activation_param();
  switch (options.activation()) {
    case Activation::Identity: epilogue.eltwise = ConvEpilogue::Eltwise::None; break;
    case Activation::LeakyReLU: epilogue.eltwise = ConvEpilogue::Eltwise::LeakyReLU; break;
    case Activation::ELU: epilogue.eltwise = ConvEpilogue::Eltwise::ELU; break;
  }
  packed_ = std::make_shared<const PackedConv2d>(w, conv->bias, to_vector(o.stride()), to_vector(*padding),
                                                 to_vector(o.dilation()), o.groups(), std::move(input_size), epilogue,
                                                 winograd,
                                                 blocked16 ? PackedConv2d::Layout::Blocked16
                                                           : PackedConv2d::Layout::ChannelsLast);
}

void ConvNormActImpl::unpack() { packed_.reset(); }

void ConvNormActImpl::fuse() {
  const auto folded = folded_weight_and_bias();
  const auto tensor_options = conv->weight.options();
  options.fused(true);
  auto fused_conv = make_conv(options);
  fused_conv->to(tensor_options.device(), tensor_options.dtype().toScalarType());
  torch::NoGradGuard no_grad;
  fused_conv->weight.copy_(folded.first);
  fused_conv->bias.copy_(folded.second);
  conv = replace_module("0", fused_conv);
  unregister_module("1");
  norm = nullptr;
}

}  // namespace asl::nn
