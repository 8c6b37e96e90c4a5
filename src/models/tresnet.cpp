#include "asl/models/tresnet.h"

#include <algorithm>
#include <string>

#include <torch/torch.h>

namespace asl::models {

using asl::nn::Activation;
using asl::nn::BlurPool;
using asl::nn::BlurPoolOptions;
using asl::nn::ConvNormAct;
using asl::nn::ConvNormActOptions;
using asl::nn::SqueezeExcite;
using asl::nn::SqueezeExciteOptions;

namespace {

// Leaky-ReLU slope inside residual blocks (the stem uses 1e-2).
constexpr double kBlockSlope = 1e-3;

ConvNormActOptions leaky(int64_t in, int64_t out, int64_t kernel, const TResNetBlockOptions& o) {
  return ConvNormActOptions(in, out, kernel)
      .activation(Activation::LeakyReLU)
      .activation_param(kBlockSlope)
      .fused(o.fused())
      .abs_weight(o.abs_weight());
}

ConvNormActOptions identity(int64_t in, int64_t out, int64_t kernel, const TResNetBlockOptions& o) {
  return ConvNormActOptions(in, out, kernel).activation(Activation::Identity).fused(o.fused()).abs_weight(o.abs_weight());
}

// The 3x3 conv of a block: a ConvNormAct, or when strided a stride-1 ConvNormAct followed by BlurPool.
torch::nn::AnyModule maybe_blurred(torch::nn::Module& parent, const std::string& name, ConvNormActOptions conv,
                                   int64_t stride) {
  if (stride == 1) return torch::nn::AnyModule(parent.register_module(name, ConvNormAct(conv)));
  TORCH_CHECK(stride == 2, "TResNet block: stride must be 1 or 2, got ", stride);
  return torch::nn::AnyModule(parent.register_module(name, ConvBlur(conv)));
}

torch::nn::Sequential make_downsample(const TResNetBlockOptions& o, int64_t out_channels) {
  torch::nn::Sequential seq;
  if (o.stride() == 2) {
    seq->push_back(torch::nn::AvgPool2d(
        torch::nn::AvgPool2dOptions(2).stride(2).ceil_mode(true).count_include_pad(false)));
  }
  seq->push_back(ConvNormAct(identity(o.inplanes(), out_channels, 1, o)));
  return seq;
}

// Fused blocks without autograd (inference) finish in place on their fresh conv outputs: channels-last
// out-of-place products and sums are several times slower in LibTorch 1.13 than the in-place forms.
bool in_place(const TResNetBlockOptions& o) { return o.fused() && !torch::GradMode::is_enabled(); }

torch::Tensor fused_tail(torch::Tensor& out, SqueezeExcite& se, const torch::Tensor& residual) {
  if (se) return se->scale_residual_relu_(out, residual);
  return out.add_(residual).relu_();
}

void print_block(std::ostream& stream, const char* kind, const TResNetBlockOptions& o) {
  stream << "asl::models::" << kind << "(inplanes=" << o.inplanes() << ", planes=" << o.planes()
         << ", stride=" << o.stride() << ", downsample=" << (o.downsample() ? "true" : "false")
         << ", use_se=" << (o.use_se() ? "true" : "false") << ")";
}

}  // namespace

// ---- ConvBlur -----------------------------------------------------------

ConvBlurImpl::ConvBlurImpl(ConvNormActOptions options_) : options(options_) { reset(); }

void ConvBlurImpl::reset() {
  conv = register_module("0", ConvNormAct(options));
  blur = register_module("1", BlurPool(BlurPoolOptions(options.out_channels())));
}

void ConvBlurImpl::pretty_print(std::ostream& stream) const { stream << "asl::models::ConvBlur"; }

torch::Tensor ConvBlurImpl::forward(const torch::Tensor& input) { return blur->forward(conv->forward(input)); }

// ---- BasicBlock ----------------------------------------------------------

BasicBlockImpl::BasicBlockImpl(TResNetBlockOptions options_) : options(options_) { reset(); }

void BasicBlockImpl::reset() {
  const auto& o = options;
  // Registration order is the reference's: conv1, conv2, downsample, se.
  conv1 = maybe_blurred(*this, "conv1", leaky(o.inplanes(), o.planes(), 3, o), o.stride());
  conv2 = register_module("conv2", ConvNormAct(identity(o.planes(), o.planes(), 3, o)));
  downsample = o.downsample() ? register_module("downsample", make_downsample(o, o.planes() * expansion))
                              : torch::nn::Sequential(nullptr);
  se = o.use_se() ? register_module("se", SqueezeExcite(SqueezeExciteOptions(
                                              o.planes(), std::max<int64_t>(o.planes() * expansion / 4, 64))))
                  : SqueezeExcite(nullptr);
}

void BasicBlockImpl::pretty_print(std::ostream& stream) const { print_block(stream, "BasicBlock", options); }

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& input) {
  const auto residual = downsample ? downsample->forward(input) : input;
  auto out = conv1.forward<torch::Tensor>(input);
  out = conv2->forward(out);
  if (in_place(options)) return fused_tail(out, se, residual);
  if (se) out = se->forward(out);
  // out is a fresh result no backward node keeps (the norm, the conv and SE's product save their inputs):
  // the sum is taken in place, which LibTorch 1.13 runs several times faster than `+` in channels-last.
  return out.add_(residual).relu_();
}

// ---- Bottleneck ----------------------------------------------------------

BottleneckImpl::BottleneckImpl(TResNetBlockOptions options_) : options(options_) { reset(); }

void BottleneckImpl::reset() {
  const auto& o = options;
  // Registration order is the reference's: conv1, conv2, conv3, downsample, se.
  conv1 = register_module("conv1", ConvNormAct(leaky(o.inplanes(), o.planes(), 1, o)));
  conv2 = maybe_blurred(*this, "conv2", leaky(o.planes(), o.planes(), 3, o), o.stride());
  conv3 = register_module("conv3", ConvNormAct(identity(o.planes(), o.planes() * expansion, 1, o)));
  downsample = o.downsample() ? register_module("downsample", make_downsample(o, o.planes() * expansion))
                              : torch::nn::Sequential(nullptr);
  se = o.use_se() ? register_module("se", SqueezeExcite(SqueezeExciteOptions(
                                              o.planes(), std::max<int64_t>(o.planes() * expansion / 8, 64))))
                  : SqueezeExcite(nullptr);
}

void BottleneckImpl::pretty_print(std::ostream& stream) const { print_block(stream, "Bottleneck", options); }

torch::Tensor BottleneckImpl::forward(const torch::Tensor& input) {
  const auto residual = downsample ? downsample->forward(input) : input;
  auto out = conv1->forward(input);
  out = conv2.forward<torch::Tensor>(out);
  if (se) out = in_place(options) ? se->scale_(out) : se->forward(out);
  // Fused for inference: one convolution with the residual sum and relu, written over the residual (the
  // downsample's output, or the block's input, which nothing reads after the block).
  if (in_place(options)) return conv3->forward_residual_relu(out, residual);
  return conv3->forward(out).add_(residual).relu_();  // in place, as in BasicBlock
}

// ---- TResNetStage --------------------------------------------------------

TResNetStageImpl::TResNetStageImpl(TResNetStageOptions options_) : options(options_) { reset(); }

int64_t TResNetStageImpl::out_channels() const {
  return options.planes() * (options.bottleneck() ? BottleneckImpl::expansion : BasicBlockImpl::expansion);
}

void TResNetStageImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.blocks() >= 1, "TResNetStage: blocks must be >= 1, got ", o.blocks());
  blocks.clear();
  int64_t inplanes = o.inplanes();
  for (int64_t i = 0; i < o.blocks(); ++i) {
    const int64_t stride = i == 0 ? o.stride() : 1;
    // The first block's shortcut is a conv whenever the resolution or the width changes (reference _make_layer).
    const auto block = TResNetBlockOptions(inplanes, o.planes())
                           .stride(stride)
                           .downsample(stride != 1 || inplanes != out_channels())
                           .use_se(o.use_se())
                           .fused(o.fused())
                           .abs_weight(o.abs_weight());
    const std::string name = std::to_string(i);
    if (o.bottleneck()) {
      blocks.emplace_back(register_module(name, Bottleneck(block)));
    } else {
      blocks.emplace_back(register_module(name, BasicBlock(block)));
    }
    inplanes = out_channels();
  }
}

void TResNetStageImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::models::TResNetStage(" << (options.bottleneck() ? "Bottleneck" : "BasicBlock")
         << ", blocks=" << options.blocks() << ")";
}

torch::Tensor TResNetStageImpl::forward(const torch::Tensor& input) {
  auto x = input;
  for (auto& block : blocks) x = block.forward<torch::Tensor>(x);
  return x;
}

// ---- BottleneckHead ------------------------------------------------------

BottleneckHeadImpl::BottleneckHeadImpl(int64_t in_features_, int64_t num_classes_, int64_t bottleneck_features_)
    : in_features(in_features_), num_classes(num_classes_), bottleneck_features(bottleneck_features_) {
  reset();
}

void BottleneckHeadImpl::reset() {
  embedding_generator = register_module(
      "embedding_generator", torch::nn::Sequential(torch::nn::Linear(in_features, bottleneck_features)));
  FC = register_module("FC", torch::nn::Linear(bottleneck_features, num_classes));
}

void BottleneckHeadImpl::pretty_print(std::ostream& stream) const {
  stream << "asl::models::BottleneckHead(in_features=" << in_features
         << ", bottleneck_features=" << bottleneck_features << ", num_classes=" << num_classes << ")";
}

torch::Tensor BottleneckHeadImpl::forward(const torch::Tensor& input) {
  const auto& first = *embedding_generator->ptr(0)->as<torch::nn::Linear>();
  return asl::nn::functional::linear(*FC, asl::nn::functional::linear(first, input));
}

// ---- TResNetBody / TResNetHead -------------------------------------------

TResNetBodyImpl::TResNetBodyImpl(TResNetOptions options_) : options(std::move(options_)) { reset(); }

void TResNetBodyImpl::reset() {
  const auto& o = options;
  const int64_t base = base_width(o);
  space_to_depth = register_module("SpaceToDepth", asl::nn::SpaceToDepth());
  conv1 = register_module("conv1", ConvNormAct(ConvNormActOptions(o.in_chans() * 16, base, 3)
                                                   .activation(Activation::LeakyReLU)
                                                   .activation_param(1e-2)
                                                   .fused(o.fused())
                                                   .abs_weight(!o.plain_norms())));
  int64_t inplanes = base;
  auto stage = [&](const char* name, bool bottleneck, int64_t planes, int64_t blocks, int64_t stride, bool use_se) {
    auto layer = register_module(name, TResNetStage(TResNetStageOptions(bottleneck, inplanes, planes, blocks)
                                                        .stride(stride)
                                                        .use_se(use_se)
                                                        .fused(o.fused())
                                                        .abs_weight(!o.plain_norms())));
    inplanes = layer->out_channels();
    return layer;
  };
  layer1 = stage("layer1", o.v2(), base, o.layers()[0], 1, true);
  layer2 = stage("layer2", o.v2(), base * 2, o.layers()[1], 2, true);
  layer3 = stage("layer3", true, base * 4, o.layers()[2], 2, true);
  layer4 = stage("layer4", true, base * 8, o.layers()[3], 2, false);
}

void TResNetBodyImpl::pretty_print(std::ostream& stream) const { stream << "asl::models::TResNetBody"; }

torch::Tensor TResNetBodyImpl::forward(const torch::Tensor& input) {
  auto x = conv1->forward(space_to_depth->forward(input));
  x = layer1->forward(x);
  x = layer2->forward(x);
  x = layer3->forward(x);
  return layer4->forward(x);
}

TResNetHeadImpl::TResNetHeadImpl(int64_t in_features_, TResNetOptions options_)
    : in_features(in_features_), options(std::move(options_)) {
  reset();
}

void TResNetHeadImpl::reset() {
  if (options.do_bottleneck_head()) {
    fc = torch::nn::AnyModule(register_module(
        "fc", BottleneckHead(in_features, options.num_classes(), options.bottleneck_features())));
  } else {
    fc = torch::nn::AnyModule(register_module("fc", torch::nn::Linear(in_features, options.num_classes())));
  }
}

void TResNetHeadImpl::pretty_print(std::ostream& stream) const { stream << "asl::models::TResNetHead"; }

torch::Tensor TResNetHeadImpl::forward(const torch::Tensor& input) {
  if (const auto* linear = fc.ptr()->as<torch::nn::Linear>()) return asl::nn::functional::linear(*linear, input);
  return fc.forward<torch::Tensor>(input);
}

// ---- TResNet -------------------------------------------------------------

TResNetImpl::TResNetImpl(TResNetOptions options_) : options(std::move(options_)) { reset(); }

int64_t base_width(const TResNetOptions& options) {
  const auto base = static_cast<int64_t>(64 * options.width_factor());
  return options.v2() ? base / 8 * 8 : base;
}

int64_t TResNetImpl::num_features() const { return planes() * 8 * BottleneckImpl::expansion; }

void TResNetImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.layers().size() == 4, "TResNet: layers must have 4 entries, got ", o.layers().size());
  for (size_t i = 0; i < 4; ++i) {
    TORCH_CHECK(o.layers()[i] >= 1, "TResNet: layers[", i, "] must be >= 1, got ", o.layers()[i]);
  }
  TORCH_CHECK(o.num_classes() >= 1, "TResNet: num_classes must be >= 1, got ", o.num_classes());
  TORCH_CHECK(o.in_chans() >= 1, "TResNet: in_chans must be >= 1, got ", o.in_chans());
  const int64_t base = planes();
  TORCH_CHECK(base >= 1, "TResNet: width_factor ", o.width_factor(), " gives no channels");

  body = register_module("body", TResNetBody(o));
  head = register_module("head", TResNetHead(num_features(), o));
  reset_parameters();
}

void TResNetImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kLeakyReLU);
    } else if (auto* norm = m->as<asl::nn::ActivatedBatchNorm>()) {
      norm->reset_parameters();
    } else if (auto* linear = m->as<torch::nn::Linear>()) {
      linear->weight.normal_(0, 0.01);
    }
  }
  // Zero the last norm of each residual branch so that every block starts as the identity.
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* block = m->as<BasicBlock>()) {
      if (block->conv2->norm) block->conv2->norm->weight.zero_();
    } else if (auto* block = m->as<Bottleneck>()) {
      if (block->conv3->norm) block->conv3->norm->weight.zero_();
    }
  }
}

void TResNetImpl::pretty_print(std::ostream& stream) const {
  const auto& l = options.layers();
  stream << "asl::models::TResNet(layers=[" << l[0] << ", " << l[1] << ", " << l[2] << ", " << l[3]
         << "], width_factor=" << options.width_factor() << ", num_classes=" << options.num_classes()
         << ", in_chans=" << options.in_chans();
  if (options.v2()) stream << ", v2";
  if (options.plain_norms()) stream << ", plain_norms";
  if (options.do_bottleneck_head()) stream << ", bottleneck_head=" << options.bottleneck_features();
  if (options.fused()) stream << ", fused";
  stream << ")";
}

torch::Tensor TResNetImpl::forward_features(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == options.in_chans(), "TResNet: expected N x ",
              options.in_chans(), " x H x W input, got shape ", input.sizes());
  return nn::functional::spatial_mean(body->forward(input));
}

torch::Tensor TResNetImpl::forward(const torch::Tensor& input) { return head->forward(forward_features(input)); }

// ---- multiply-adds -------------------------------------------------------

int64_t count_multiply_adds(const TResNetOptions& options, int64_t height, int64_t width) {
  TORCH_CHECK(height % 4 == 0 && width % 4 == 0 && height > 0 && width > 0,
              "count_multiply_adds: height and width must be positive multiples of 4, got ", height, "x", width);
  TORCH_CHECK(options.layers().size() == 4, "count_multiply_adds: layers must have 4 entries");
  const int64_t base = base_width(options);
  int64_t h = height / 4, w = width / 4;
  int64_t macs = options.in_chans() * 16 * base * 9 * h * w;  // stem conv
  int64_t inplanes = base;
  auto half = [](int64_t v) { return (v + 1) / 2; };  // both the blur (pad 1, k 3, s 2) and ceil-mode pooling

  auto stage = [&](bool bottleneck, int64_t planes, int64_t blocks, int64_t stride, bool use_se) {
    const int64_t expansion = bottleneck ? 4 : 1;
    const int64_t out_ch = planes * expansion;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t s = i == 0 ? stride : 1;
      const int64_t ho = s == 2 ? half(h) : h, wo = s == 2 ? half(w) : w;
      if (bottleneck) {
        macs += inplanes * planes * h * w;             // conv1 1x1
        macs += planes * planes * 9 * h * w;           // conv2 3x3, stride 1
        if (s == 2) macs += planes * 9 * ho * wo;      // blur
        macs += planes * out_ch * ho * wo;             // conv3 1x1
        if (use_se) macs += 2 * planes * std::max<int64_t>(planes * expansion / 8, 64);
      } else {
        macs += inplanes * planes * 9 * h * w;         // conv1 3x3, stride 1
        if (s == 2) macs += planes * 9 * ho * wo;      // blur
        macs += planes * planes * 9 * ho * wo;         // conv2
        if (use_se) macs += 2 * planes * std::max<int64_t>(planes * expansion / 4, 64);
      }
      if (s != 1 || inplanes != out_ch) macs += inplanes * out_ch * ho * wo;  // shortcut 1x1
      inplanes = out_ch;
      h = ho;
      w = wo;
    }
  };
  stage(options.v2(), base, options.layers()[0], 1, true);
  stage(options.v2(), base * 2, options.layers()[1], 2, true);
  stage(true, base * 4, options.layers()[2], 2, true);
  stage(true, base * 8, options.layers()[3], 2, false);
  const int64_t features = base * 8 * 4;
  if (options.do_bottleneck_head()) {
    macs += features * options.bottleneck_features() + options.bottleneck_features() * options.num_classes();
  } else {
    macs += features * options.num_classes();
  }
  return macs;
}

}  // namespace asl::models
