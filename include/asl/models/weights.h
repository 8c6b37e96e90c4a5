// The one place that knows the two state-dict layouts of TResNet weights and moves between them.
//
// published (asl's own): the ASL reference's keys (conv units as Sequential children "0"/"1", anti-aliased
//   ones nested one deeper), InPlaceABN norms that scale by |w| + eps, no num_batches_tracked.
// timm: timm's keys (conv units ".conv"/".bn", "downsample.K.conv/bn"), plain BatchNorm2d norms whose
//   weights have either sign, a num_batches_tracked counter per norm. TResNet-v2 exists only here.
//
// Files: .pth (zip or legacy; a published {"model", "num_classes", "idx_to_class"} dict, a bare state
// dict, or a timm training checkpoint with state_dict / state_dict_ema and DataParallel's "module."
// prefix) and .safetensors (class names in "__metadata__").
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <c10/util/Optional.h>

#include "asl/io/checkpoint.h"
#include "asl/models/registry.h"
#include "asl/models/tresnet.h"

namespace asl::models {

enum class Layout { Published, Timm };

/// "asl" for Published, "timm".
const char* to_string(Layout layout);
/// "asl" or "published" -> Published, "timm" -> Timm; throws std::invalid_argument naming the value.
Layout parse_layout(const std::string& name);

/// A published key (the module's own) -> timm's key: conv units "X.convN.0." / ".1." (anti-aliased:
/// ".0.0." / ".0.1.") and "downsample.K.0." / ".1." become ".conv." / ".bn."; other keys are unchanged.
std::string timm_key(const std::string& published_key);

/// The weights file formats.
enum class WeightsFormat { Pth, Safetensors };
/// "pth" or "safetensors"; throws std::invalid_argument naming the value.
WeightsFormat parse_weights_format(const std::string& name);
/// Safetensors for a name ending in ".safetensors", else Pth.
WeightsFormat format_for_path(const std::string& path);

struct ReadWeightsOptions {
  /// timm training checkpoints: take state_dict_ema instead of state_dict (an error where it is absent).
  TORCH_ARG(bool, use_ema) = false;
};

/// A weights file as read.
struct Weights {
  std::string path;
  /// "zip", "legacy" (.pth) or "safetensors".
  std::string format;
  /// What held the state dict: "published checkpoint {model, num_classes, idx_to_class}", "bare state dict",
  /// "timm training checkpoint, state_dict", "... state_dict_ema", "safetensors".
  std::string container;
  Layout layout = Layout::Published;
  /// The tensors under the file's own names ("module." prefixes stripped).
  io::StateDict state;
  c10::optional<int64_t> num_classes;
  std::map<int64_t, std::string> idx_to_class;
  /// The architecture name the file states (timm's "arch", safetensors metadata "arch"), else empty.
  std::string arch;
  /// A timm training checkpoint that also holds state_dict_ema.
  bool has_ema = false;
  /// Keys that had DataParallel's "module." prefix.
  int64_t prefixed_keys = 0;
  /// The unpickled object (.pth only).
  io::PyValue root;
  /// The safetensors "__metadata__".
  std::map<std::string, std::string> metadata;
};

/// Reads any supported weights file; throws std::runtime_error naming the file and the cause (no state
/// dict, not a TResNet state dict, --use-ema without EMA weights, bad metadata, or the reader's errors).
Weights read_weights(const std::string& path, const ReadWeightsOptions& options = {});

/// The architecture of the weights (detect_model on their keys; timm's layout gives plain_norms), with the
/// file named in errors.
DetectedModel detect_weights(const Weights& weights);

/// `state` (in `from`'s names and norm semantics) under `model`'s key names and semantics, ready for
/// io::load_state_dict: timm keys renamed; norm weights converted where the semantics differ (InPlaceABN
/// -> plain: |w| + eps; plain -> InPlaceABN: w - eps, only where every w >= eps, else an error naming the
/// first key, index and value). Keys that match nothing are passed through unchanged (load_state_dict
/// reports them). `what` names the source in errors.
io::StateDict state_for_model(const io::StateDict& state, Layout from, const TResNet& model,
                              const std::string& what);

/// The model's weights in `layout`: published needs InPlaceABN semantics, so plain-norm weights become
/// w - eps (an error naming the first weight below eps, and always for v2, which has no published layout);
/// timm gives |w| + eps for InPlaceABN norms and num_batches_tracked (0 where the model has none).
io::StateDict state_in_layout(const TResNet& model, Layout layout);

/// The layout a model is written in by default: timm for plain norms, else published.
Layout natural_layout(const TResNetOptions& options);

struct SaveWeightsOptions {
  TORCH_ARG(Layout, layout) = Layout::Published;
  TORCH_ARG(WeightsFormat, format) = WeightsFormat::Pth;
  /// Architecture name recorded in the file ("arch"), e.g. "tresnet_m"; empty: none.
  TORCH_ARG(std::string, arch) = "";
};

/// Writes `state` (already in options.layout) atomically: .pth as {"model", "num_classes", "idx_to_class"}
/// (the published container, which timm's load_checkpoint also reads), safetensors with "__metadata__"
/// {"format": "pt", "layout", "num_classes", "idx_to_class" (JSON), "arch"}.
void save_weights(const std::string& path, const io::StateDict& state, int64_t num_classes,
                  const std::map<int64_t, std::string>& idx_to_class, const SaveWeightsOptions& options);

/// The model's weights written in options.layout (state_in_layout, then save_weights).
void save_model(const std::string& path, const TResNet& model, const std::map<int64_t, std::string>& idx_to_class,
                const SaveWeightsOptions& options);

/// One class name per line (trailing "\r" and a final empty line ignored); throws naming the file and line
/// for an empty name, or for a count other than `expected` (when expected >= 0).
std::vector<std::string> read_class_names(const std::string& path, int64_t expected = -1);

}  // namespace asl::models
