// Inference-only TResNet: norms folded into conv biases, channels-last, optional bfloat16, under InferenceMode.
#pragma once

#include <memory>
#include <mutex>
#include <ostream>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "asl/models/tresnet.h"

namespace asl::models {

/// Options of fuse_for_inference.
struct FuseOptions {
  /// Compute dtype: kFloat32 or kBFloat16. Inputs are converted to it; logits come back as float32.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  /// Run the convs in channels-last layout (oneDNN's fast path on CPU).
  TORCH_ARG(bool, channels_last) = true;
  /// Reorder every conv weight for oneDNN once, at fusing time, instead of on every forward
  /// (FusedTResNetImpl::prepack). Same results; faster, most at small batches.
  TORCH_ARG(bool, prepack) = true;
  /// Prepacked float32 3x3 stride-1 convolutions run oneDNN's Winograd kernels where this CPU has them
  /// (AVX-512; not AVX2): TResNet-M 1.14x (batch 1) to 1.4x (batch 16) faster in tresnet_bench, within
  /// the fused model's test tolerances. false: the direct kernels only.
  TORCH_ARG(bool, winograd) = true;
  /// Prepacked float32 on AVX-512 oneDNN: the whole body runs in oneDNN's blocked nChw16c layout, from
  /// the stem to the pooled features (no layout conversion between convolutions; asl's loops for
  /// squeeze-excite and the blur pool read it as well). Same arithmetic as the channels-last path (the
  /// kernels' summation order aside). Needs channel counts that are multiples of 16 (every published
  /// TResNet); elsewhere, or false, the channels-last path.
  TORCH_ARG(bool, blocked16) = true;
};

/// A fused TResNet (child "model", built with TResNetOptions::fused) plus the dtype/layout conversion.
/// forward runs under torch::InferenceMode, so its outputs cannot take part in autograd.
class FusedTResNetImpl : public torch::nn::Cloneable<FusedTResNetImpl> {
 public:
  FusedTResNetImpl(TResNetOptions model_options, FuseOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// N x in_chans x H x W, any floating dtype and layout -> N x num_classes float32 logits.
  torch::Tensor forward(const torch::Tensor& input);
  /// Packs every conv+norm for oneDNN (ConvNormActImpl::pack) with the current weights; call it again
  /// after changing them (not while another thread runs forward). With options.prepack() set, a new
  /// or cloned model packs itself once, on its first forward (fuse_for_inference does it at once).
  void prepack();
  /// prepack() once per set of parameters (thread-safe); what forward calls when options.prepack() is set.
  void ensure_packed();
  /// Whether the last prepack() chose the blocked layout (FuseOptions::blocked16).
  bool blocked16_active() const { return blocked16_active_; }
  TResNetOptions model_options;
  FuseOptions options;
  TResNet model{nullptr};

 private:
  std::shared_ptr<std::once_flag> pack_once_;
  bool blocked16_active_ = false;
};
TORCH_MODULE(FusedTResNet);

/// Folds every norm of `model` into its conv (scale (|w| + eps) / sqrt(running_var + eps), bias
/// b - running_mean * scale; the activation stays), then converts to the dtype and layout of `options`.
/// `model` is left unchanged; it must be an unfused TResNet on the CPU or any device.
FusedTResNet fuse_for_inference(const TResNet& model, const FuseOptions& options = {});

}  // namespace asl::models
