// TResNet building blocks: SpaceToDepth, BlurPool (anti-alias downsample), SqueezeExcite, ActivatedBatchNorm, ConvNormAct.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace asl::nn {

class PackedConv2d;
struct ConvEpilogue;

/// The activation fused into an ActivatedBatchNorm (the reference's InPlaceABN choices).
enum class Activation { Identity, LeakyReLU, ELU };

/// Parses "identity", "leaky_relu" or "elu"; throws std::invalid_argument naming the value otherwise.
Activation parse_activation(const std::string& name);
const char* to_string(Activation activation);

/// Options of SpaceToDepth.
struct SpaceToDepthOptions {
  /// Side of the square block moved into channels; H and W must be multiples of it.
  TORCH_ARG(int64_t, block_size) = 4;
};

/// Options of BlurPool, the anti-aliased stride-2 downsample (3x3 binomial filter, reflect padding).
struct BlurPoolOptions {
  BlurPoolOptions(int64_t channels) : channels_(channels) {}
  /// Input (= output) channels; the filter is depthwise.
  TORCH_ARG(int64_t, channels);
  /// Downsampling factor.
  TORCH_ARG(int64_t, stride) = 2;
};

/// Options of SqueezeExcite.
struct SqueezeExciteOptions {
  SqueezeExciteOptions(int64_t channels, int64_t reduction_channels)
      : channels_(channels), reduction_channels_(reduction_channels) {}
  /// Channels of the input and of the gate.
  TORCH_ARG(int64_t, channels);
  /// Width of the bottleneck between fc1 and fc2.
  TORCH_ARG(int64_t, reduction_channels);
};

/// Options of ActivatedBatchNorm (in-place activated batch norm, InPlaceABN).
struct ActivatedBatchNormOptions {
  ActivatedBatchNormOptions(int64_t num_features) : num_features_(num_features) {}
  /// Channels C of the N x C x ... input.
  TORCH_ARG(int64_t, num_features);
  /// Added to the variance and to |weight|.
  TORCH_ARG(double, eps) = 1e-5;
  /// Running-statistics update rate.
  TORCH_ARG(double, momentum) = 0.1;
  /// Activation applied after the affine transform.
  TORCH_ARG(Activation, activation) = Activation::LeakyReLU;
  /// Negative slope of leaky ReLU, or alpha of ELU.
  TORCH_ARG(double, activation_param) = 0.01;
  /// true: InPlaceABN's scale |weight| + eps (the published TResNets). false: plain batch norm, weight
  /// used as is with either sign, plus a num_batches_tracked buffer (timm's TResNets, BatchNorm2d).
  TORCH_ARG(bool, abs_weight) = true;
};

/// Options of ConvNormAct: the reference's conv2d_ABN, Sequential(Conv2d without bias, InPlaceABN).
struct ConvNormActOptions {
  ConvNormActOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  /// Square kernel; padding is kernel_size / 2.
  TORCH_ARG(int64_t, kernel_size);
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(Activation, activation) = Activation::LeakyReLU;
  /// Negative slope of leaky ReLU, or alpha of ELU.
  TORCH_ARG(double, activation_param) = 0.01;
  /// Inference form: the norm is folded into a conv bias and only the activation remains (child "1" is absent).
  TORCH_ARG(bool, fused) = false;
  /// The norm's weight semantics (ActivatedBatchNormOptions::abs_weight).
  TORCH_ARG(bool, abs_weight) = true;
};

namespace functional {

/// Whether a convolution or matrix product on `input` computes in bfloat16 (a bfloat16 CPU input, or a
/// float32 one under bfloat16 CPU autocast) on a CPU where oneDNN cannot run bfloat16 primitives
/// (asl::cpu_info().onednn_bf16 false: no AVX-512, or DNNL_MAX_CPU_ISA below AVX512_CORE). LibTorch
/// would either throw oneDNN's "could not create a primitive descriptor" there or take its scalar
/// bfloat16 kernels (an order of magnitude slower); conv2d and linear below emulate instead.
bool emulates_bf16(const torch::Tensor& input);

/// torch::conv2d, except where emulates_bf16(input): then computed in float32 from the bfloat16-rounded
/// input, weight and bias (autocast off) and rounded to bfloat16 — a bfloat16 convolution with float32
/// accumulation, as oneDNN's, on any CPU. Differentiable either way.
torch::Tensor conv2d(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                     torch::IntArrayRef stride, torch::IntArrayRef padding, torch::IntArrayRef dilation,
                     int64_t groups);
/// The module's convolution (zero padding given as numbers) through conv2d above.
torch::Tensor conv2d(const torch::nn::Conv2dImpl& conv, const torch::Tensor& input);

/// torch::nn::functional::linear with the same bfloat16 emulation as conv2d.
torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);
torch::Tensor linear(const torch::nn::LinearImpl& linear, const torch::Tensor& input);

/// (N, C, H, W) -> (N, C*b*b, H/b, W/b), channel index (row-in-block * b + col-in-block) * C + c, as the
/// reference's SpaceToDepthModule. A channels-last input gives a channels-last output.
torch::Tensor space_to_depth(const torch::Tensor& input, int64_t block_size = 4);

/// The normalised 3x3 binomial filter [1,2,1]^T [1,2,1] / 16 as a (channels, 1, 3, 3) depthwise weight.
torch::Tensor blur_filter(int64_t channels, const torch::TensorOptions& options);

/// Reflect-pad by 1, then depthwise-convolve with blur_filter at the given stride.
torch::Tensor blur_pool(const torch::Tensor& input, int64_t stride = 2);

/// Applies the activation (in place when the input does not need a gradient graph kept intact).
torch::Tensor activation(const torch::Tensor& input, Activation activation, double param);

/// act((|weight| + eps) * (x - mean) / sqrt(var + eps) + bias), or with abs_weight false plain batch norm
/// act(weight * (x - mean) / sqrt(var + eps) + bias). In training the batch statistics normalise (biased
/// variance) and the running statistics are updated with `momentum` (unbiased variance). Training on CPU
/// float32 (NCHW or channels-last, outside autocast) runs as one autograd node (autograd/batch_norm_act.h)
/// unless set_fused_norm_training(false).
torch::Tensor activated_batch_norm(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                                   const torch::Tensor& running_mean, const torch::Tensor& running_var,
                                   bool training, double momentum, double eps, Activation activation,
                                   double activation_param, bool abs_weight = true);

/// Whether training-mode norms use asl's one-node kernel where it applies (default true) or LibTorch's
/// batch_norm followed by the activation (the same results to float32 rounding; for A/B measurements,
/// e.g. tresnet_bench's *_aten_norm row). Process-wide.
void set_fused_norm_training(bool enabled);
bool fused_norm_training();

/// Whether conv2d runs 3x3 stride-1 convolutions that need a gradient (training, CPU float32,
/// channels-last, no bias) on oneDNN's Winograd kernels where it has them (AVX-512;
/// autograd/winograd_conv.h), default true, or on LibTorch's convolution. Process-wide; for A/B
/// measurements (tresnet_bench's *_direct_conv row).
void set_winograd_training(bool enabled);
bool winograd_training();

/// Whether conv2d runs 1x1 stride-1 convolutions that need a gradient (training, CPU, channels-last, no
/// bias; float32, or bfloat16 directly or under autocast) as matrix products on oneDNN's matmul where
/// oneDNN runs AVX-512 (autograd/pointwise_conv.h), default true, or on LibTorch's convolution.
/// Process-wide; for A/B measurements (tresnet_bench's *_aten_1x1 rows).
void set_pointwise_conv_training(bool enabled);
bool pointwise_conv_training();

/// input.mean({2, 3}) (N x C x H x W -> N x C) whose gradient keeps the input's layout: the broadcast
/// (grad / HW) expanded, where LibTorch's mean gives a fresh NCHW tensor (which turned the gradient sums
/// of channels-last training into slow mixed-layout ones). The global pool and squeeze-excite use it.
torch::Tensor spatial_mean(const torch::Tensor& input);

/// The per-channel scale a norm applies to (x - mean) / sqrt(var + eps): |weight| + eps, or weight.
torch::Tensor norm_scale(const torch::Tensor& weight, double eps, bool abs_weight);

}  // namespace functional

/// Rearranges blocks of pixels into channels (the TResNet stem).
class SpaceToDepthImpl : public torch::nn::Cloneable<SpaceToDepthImpl> {
 public:
  explicit SpaceToDepthImpl(SpaceToDepthOptions options = {});
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  SpaceToDepthOptions options;
};
TORCH_MODULE(SpaceToDepth);

/// Anti-aliased downsampling. Holds no parameters or buffers: the filter is built per call in the input's
/// dtype and device (9 * C numbers), so it follows .to() and is absent from the state dict as in the reference.
class BlurPoolImpl : public torch::nn::Cloneable<BlurPoolImpl> {
 public:
  explicit BlurPoolImpl(BlurPoolOptions options);
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  BlurPoolOptions options;
};
TORCH_MODULE(BlurPool);

/// Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1/fc2 being 1x1 convs with bias.
class SqueezeExciteImpl : public torch::nn::Cloneable<SqueezeExciteImpl> {
 public:
  explicit SqueezeExciteImpl(SqueezeExciteOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  /// The per-channel gate sigmoid(fc2(relu(fc1(mean(input))))), N x C x 1 x 1: forward is input * gate.
  torch::Tensor gate(const torch::Tensor& input);
  /// input *= gate(input), in place, for a tensor outside autograd (inference); channels-last CPU
  /// float32/bfloat16 runs asl's own loop (float32 sums, one rounding), anything else mul_.
  torch::Tensor& scale_(torch::Tensor& input);
  /// input = relu(input * gate(input) + residual), in place (a residual block's tail outside autograd):
  /// one pass of asl's loop where scale_ runs it and residual is channels-last of input's shape and dtype
  /// (bfloat16 rounded once), else scale_, add_, relu_.
  torch::Tensor& scale_residual_relu_(torch::Tensor& input, const torch::Tensor& residual);
  SqueezeExciteOptions options;
  torch::nn::Conv2d fc1{nullptr};
  torch::nn::Conv2d fc2{nullptr};
};
TORCH_MODULE(SqueezeExcite);

/// Batch norm with |weight| + eps scaling and a fused activation; state dict weight, bias, running_mean,
/// running_var (no num_batches_tracked, as InPlaceABN). With abs_weight false a plain BatchNorm2d followed
/// by the activation, state dict as BatchNorm2d's (num_batches_tracked counted in training).
class ActivatedBatchNormImpl : public torch::nn::Cloneable<ActivatedBatchNormImpl> {
 public:
  explicit ActivatedBatchNormImpl(ActivatedBatchNormOptions options);
  void reset() override;
  /// Weight 1, bias 0, running mean 0, running var 1.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  ActivatedBatchNormOptions options;
  torch::Tensor weight, bias, running_mean, running_var;
  /// int64 0-d counter of training forwards; defined only with abs_weight false.
  torch::Tensor num_batches_tracked;
};
TORCH_MODULE(ActivatedBatchNorm);

/// Conv2d (no bias) then ActivatedBatchNorm, registered as children "0" and "1" like the reference's
/// nn.Sequential. In the fused form child "0" carries a bias and child "1" does not exist.
class ConvNormActImpl : public torch::nn::Cloneable<ConvNormActImpl> {
 public:
  explicit ConvNormActImpl(ConvNormActOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& input);
  /// The conv weight and bias equivalent to conv + norm in eval mode, in float64:
  /// scale = norm_scale(w) / sqrt(running_var + eps), weight * scale, bias - running_mean * scale.
  std::pair<torch::Tensor, torch::Tensor> folded_weight_and_bias() const;
  /// Folds the norm (running statistics, |weight| + eps or weight) into the conv weight and a new conv bias and
  /// switches to the fused form. Throws if already fused.
  void fuse();
  /// Fused form only: from now on the conv runs oneDNN's prepacked convolution with a copy of the
  /// current weight and bias (reordered once; input_size only guides the layout choice). Later
  /// changes to conv's parameters are not seen until pack() or unpack() is called again. A no-op
  /// where LibTorch lacks the prepacked op, the weight is not a float32/bfloat16 CPU tensor, or it is
  /// bfloat16 and oneDNN cannot run bfloat16 on this CPU (asl::cpu_info().onednn_bf16).
  /// blocked16: packed for the blocked layout instead (PackedConv2d::Layout::Blocked16; forward_blocked16
  /// runs it, forward and forward_residual_relu then take LibTorch's convolution).
  void pack(std::vector<int64_t> input_size, bool winograd = true, bool blocked16 = false);
  void unpack();
  /// relu(forward(input) + residual), a residual block's tail. Packed: one oneDNN convolution with the
  /// sum and relu fused, written into `residual` when it is a channels-last tensor of the output's shape
  /// and dtype outside autograd (it is overwritten: pass a tensor nothing else reads afterwards);
  /// otherwise computed out of place.
  torch::Tensor forward_residual_relu(const torch::Tensor& input, const torch::Tensor& residual);
  /// The packed convolution on `batch` images in the blocked form (PackedConv2d::blocked16), with the
  /// residual tail when `residual` is defined; needs pack(..., blocked16 = true).
  /// pending: as in PackedConv2d::blocked16.
  torch::Tensor forward_blocked16(const torch::Tensor& input, int64_t batch, const torch::Tensor& residual = {},
                                  ConvEpilogue* pending = nullptr);
  bool packed() const { return packed_ != nullptr; }
  bool packed_blocked16() const;
  ConvNormActOptions options;
  torch::nn::Conv2d conv{nullptr};
  ActivatedBatchNorm norm{nullptr};

 private:
  std::shared_ptr<const PackedConv2d> packed_;
};
TORCH_MODULE(ConvNormAct);

}  // namespace asl::nn
