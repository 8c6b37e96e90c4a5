// A ready-to-run classifier from a checkpoint file: architecture, weights, class names, optional fusion.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

#include "asl/models/fuse.h"
#include "asl/models/tresnet.h"
#include "asl/models/weights.h"

namespace asl::models {

/// Options of load_classifier.
struct ClassifierOptions {
  /// A registered name (tresnet_m, ...) or "auto": the architecture is read from the checkpoint.
  std::string model_name = "auto";
  /// Fold the norms into the convs and run channels-last (inference only).
  bool fuse = true;
  /// Compute in bfloat16: a bfloat16 fused model, or bfloat16 autocast without fuse. Emulated (correct,
  /// slow) where the CPU has no native bfloat16 (asl::cpu_info()).
  bool bf16 = false;
  /// timm training checkpoints: the EMA weights (state_dict_ema).
  bool use_ema = false;
};

/// A model in eval mode with what the checkpoint says about its classes.
struct Classifier {
  /// The architecture's registered name, or "custom" for an unregistered layout.
  std::string model_name;
  /// The options the model was built with.
  TResNetOptions options;
  /// The unfused model with the checkpoint's weights (eval mode).
  TResNet model{nullptr};
  /// Its fused form when ClassifierOptions::fuse, else empty.
  FusedTResNet fused{nullptr};
  /// Computes in bfloat16 (ClassifierOptions::bf16).
  bool bf16 = false;
  /// The weights' layout (published/asl or timm) and what held them in the file (Weights::container).
  Layout layout = Layout::Published;
  std::string container;
  /// Class names by index: the checkpoint's idx_to_class, "class_<i>" where it has none.
  std::vector<std::string> class_names;
  /// The checkpoint named its classes (else class_names are "class_<i>", to be replaced by the caller's).
  bool has_class_names = false;
  /// Per-class decision thresholds (e.g. metrics::load_thresholds(file, class_names).thresholds); empty:
  /// every class uses the caller's global threshold.
  std::vector<double> thresholds;
  int64_t num_classes() const { return options.num_classes(); }
  /// Class k's threshold: thresholds[k] when set, else `global`. A class is detected when score > it.
  double threshold(int64_t k, double global) const {
    return thresholds.empty() ? global : thresholds[static_cast<size_t>(k)];
  }
  /// N x 3 x S x S float -> N x C float32 logits, without autograd.
  torch::Tensor logits(const torch::Tensor& images);
};

/// Reads weights in any form read_weights accepts (.pth zip/legacy or .safetensors; published or timm layout;
/// published, bare or timm training checkpoint), builds the model (detected, or `model_name` checked against
/// the weights; plain norms for timm's layout), loads the weights strictly and switches to eval mode.
/// Throws std::runtime_error naming the file and the cause.
Classifier load_classifier(const std::string& checkpoint_path, const ClassifierOptions& options = {});

}  // namespace asl::models
