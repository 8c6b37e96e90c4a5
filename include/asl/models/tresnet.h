// TResNet (M/L/XL and the Open Images bottleneck-head variant) with the reference's state-dict key names.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "asl/nn/layers.h"

namespace asl::models {

/// Options of a residual block (BasicBlock or Bottleneck).
struct TResNetBlockOptions {
  TResNetBlockOptions(int64_t inplanes, int64_t planes) : inplanes_(inplanes), planes_(planes) {}
  /// Input channels.
  TORCH_ARG(int64_t, inplanes);
  /// Inner width; the output has planes * expansion channels.
  TORCH_ARG(int64_t, planes);
  /// 1 or 2; stride 2 downsamples with BlurPool after a stride-1 conv.
  TORCH_ARG(int64_t, stride) = 1;
  /// Adds the average-pool + 1x1 ConvNormAct shortcut (needed when stride != 1 or channels change).
  TORCH_ARG(bool, downsample) = false;
  /// Squeeze-excite in the residual branch.
  TORCH_ARG(bool, use_se) = true;
  /// Inference form: every ConvNormAct has its norm folded into the conv (see fuse_for_inference).
  TORCH_ARG(bool, fused) = false;
  /// Norm semantics (asl::nn::ActivatedBatchNormOptions::abs_weight).
  TORCH_ARG(bool, abs_weight) = true;
};

/// A stride-1 ConvNormAct followed by BlurPool, as children "0" and "1" (the reference's
/// nn.Sequential(conv2d_ABN, AntiAliasDownsampleLayer)).
class ConvBlurImpl : public torch::nn::Cloneable<ConvBlurImpl> {
 public:
  explicit ConvBlurImpl(asl::nn::ConvNormActOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  asl::nn::ConvNormActOptions options;
  asl::nn::ConvNormAct conv{nullptr};
  asl::nn::BlurPool blur{nullptr};
};
TORCH_MODULE(ConvBlur);

/// Two 3x3 ConvNormActs (expansion 1); SE reduction max(planes / 4, 64).
class BasicBlockImpl : public torch::nn::Cloneable<BasicBlockImpl> {
 public:
  static constexpr int64_t expansion = 1;
  explicit BasicBlockImpl(TResNetBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  TResNetBlockOptions options;
  /// ConvNormAct, or ConvBlur when strided.
  torch::nn::AnyModule conv1;
  asl::nn::ConvNormAct conv2{nullptr};
  torch::nn::Sequential downsample{nullptr};
  asl::nn::SqueezeExcite se{nullptr};
};
TORCH_MODULE(BasicBlock);

/// 1x1, 3x3, 1x1 ConvNormActs (expansion 4); SE on the 3x3 output with reduction max(planes * 4 / 8, 64).
class BottleneckImpl : public torch::nn::Cloneable<BottleneckImpl> {
 public:
  static constexpr int64_t expansion = 4;
  explicit BottleneckImpl(TResNetBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  TResNetBlockOptions options;
  asl::nn::ConvNormAct conv1{nullptr};
  /// ConvNormAct, or ConvBlur when strided.
  torch::nn::AnyModule conv2;
  asl::nn::ConvNormAct conv3{nullptr};
  torch::nn::Sequential downsample{nullptr};
  asl::nn::SqueezeExcite se{nullptr};
};
TORCH_MODULE(Bottleneck);

/// Options of one TResNet stage (body.layerN).
struct TResNetStageOptions {
  TResNetStageOptions(bool bottleneck, int64_t inplanes, int64_t planes, int64_t blocks)
      : bottleneck_(bottleneck), inplanes_(inplanes), planes_(planes), blocks_(blocks) {}
  /// Bottleneck blocks (expansion 4) instead of BasicBlocks.
  TORCH_ARG(bool, bottleneck);
  TORCH_ARG(int64_t, inplanes);
  TORCH_ARG(int64_t, planes);
  TORCH_ARG(int64_t, blocks);
  /// Stride of the first block.
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(bool, use_se) = true;
  TORCH_ARG(bool, fused) = false;
  TORCH_ARG(bool, abs_weight) = true;
};

/// A stage (body.layerN): blocks registered as children "0", "1", ... and applied in order.
class TResNetStageImpl : public torch::nn::Cloneable<TResNetStageImpl> {
 public:
  explicit TResNetStageImpl(TResNetStageOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  int64_t out_channels() const;
  TResNetStageOptions options;
  std::vector<torch::nn::AnyModule> blocks;
};
TORCH_MODULE(TResNetStage);

/// The Open Images head: Linear(in, features) then Linear(features, classes), no activation between.
class BottleneckHeadImpl : public torch::nn::Cloneable<BottleneckHeadImpl> {
 public:
  BottleneckHeadImpl(int64_t in_features, int64_t num_classes, int64_t bottleneck_features = 512);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  int64_t in_features, num_classes, bottleneck_features;
  /// Sequential holding the first Linear as child "0" (key head.fc.embedding_generator.0.weight).
  torch::nn::Sequential embedding_generator{nullptr};
  torch::nn::Linear FC{nullptr};
};
TORCH_MODULE(BottleneckHead);

/// Options of TResNet. Defaults are the reference's constructor defaults (TResNet-M layout without width).
struct TResNetOptions {
  /// Blocks per stage: layer1/2 BasicBlocks (Bottlenecks with v2), layer3/4 Bottlenecks.
  TORCH_ARG(std::vector<int64_t>, layers) = std::vector<int64_t>{3, 4, 11, 3};
  TORCH_ARG(int64_t, num_classes) = 1000;
  TORCH_ARG(int64_t, in_chans) = 3;
  /// Base width int(64 * width_factor) (v2: rounded down to a multiple of 8).
  TORCH_ARG(double, width_factor) = 1.0;
  /// TResNet-v2 (timm's tresnet_v2_l): Bottleneck blocks in all four stages, base width a multiple of 8.
  TORCH_ARG(bool, v2) = false;
  /// Plain batch norms (timm's layout and semantics: weights of either sign, num_batches_tracked) instead
  /// of InPlaceABN's |weight| + eps (the published checkpoints). See asl/models/weights.h.
  TORCH_ARG(bool, plain_norms) = false;
  /// Open Images head (BottleneckHead) instead of a single Linear.
  TORCH_ARG(bool, do_bottleneck_head) = false;
  TORCH_ARG(int64_t, bottleneck_features) = 512;
  /// Inference form with folded norms; build it with fuse_for_inference.
  TORCH_ARG(bool, fused) = false;
};

/// The stem's width: int(64 * width_factor), rounded down to a multiple of 8 for v2.
int64_t base_width(const TResNetOptions& options);

/// The feature extractor, children SpaceToDepth, conv1, layer1..layer4 (a named module rather than a
/// torch::nn::Sequential, whose clone() would rename the children "0".."5").
class TResNetBodyImpl : public torch::nn::Cloneable<TResNetBodyImpl> {
 public:
  explicit TResNetBodyImpl(TResNetOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  TResNetOptions options;
  asl::nn::SpaceToDepth space_to_depth{nullptr};
  asl::nn::ConvNormAct conv1{nullptr};
  TResNetStage layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
};
TORCH_MODULE(TResNetBody);

/// The classifier, child "fc": a Linear, or a BottleneckHead with do_bottleneck_head.
class TResNetHeadImpl : public torch::nn::Cloneable<TResNetHeadImpl> {
 public:
  TResNetHeadImpl(int64_t in_features, TResNetOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  int64_t in_features;
  TResNetOptions options;
  torch::nn::AnyModule fc;
};
TORCH_MODULE(TResNetHead);

/// TResNet (Ridnik et al., WACV 2021) as in the ASL reference: children body, global_pool, head.
class TResNetImpl : public torch::nn::Cloneable<TResNetImpl> {
 public:
  explicit TResNetImpl(TResNetOptions options = {});
  void reset() override;
  /// The reference's initialisation: Kaiming normal (fan out, leaky_relu) convs, norms weight 1 / bias 0,
  /// the last norm of each residual branch weight 0, Linear weights N(0, 0.01).
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  /// N x in_chans x H x W (H, W multiples of 32) -> N x num_classes logits.
  torch::Tensor forward(const torch::Tensor& input);
  /// The pooled N x num_features embedding (input of the head).
  torch::Tensor forward_features(const torch::Tensor& input);
  int64_t planes() const { return base_width(options); }
  int64_t num_features() const;
  TResNetOptions options;
  TResNetBody body{nullptr};
  TResNetHead head{nullptr};
};
TORCH_MODULE(TResNet);

/// Multiply-adds of one forward pass of a single image (convs incl. SE and shortcut, blur, linear layers;
/// norms, activations and pools excluded).
int64_t count_multiply_adds(const TResNetOptions& options, int64_t height, int64_t width);

}  // namespace asl::models
