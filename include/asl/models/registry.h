// Model registry: name -> TResNet factory, and architecture detection from a checkpoint's state dict.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/ordered_dict.h>
#include <torch/types.h>

#include "asl/models/tresnet.h"

namespace asl::models {

/// Per-call overrides of a registered architecture.
struct ModelOptions {
  /// Input channels.
  TORCH_ARG(int64_t, in_chans) = 3;
  /// Force the bottleneck head on or off; unset keeps the registered model's choice.
  TORCH_ARG(c10::optional<bool>, do_bottleneck_head) = c10::nullopt;
  /// Width of the bottleneck head's embedding.
  TORCH_ARG(int64_t, bottleneck_features) = 512;
};

/// The registered names: tresnet_m, tresnet_l, tresnet_xl, tresnet_l_openimages, tresnet_v2_l (timm's; plain
/// batch norms).
std::vector<std::string> model_names();

/// The TResNetOptions of a registered name; throws std::invalid_argument listing the known names.
TResNetOptions model_options(const std::string& name, int64_t num_classes, const ModelOptions& options = {});

/// Builds a registered model with the reference's initialisation.
TResNet create_model(const std::string& name, int64_t num_classes, const ModelOptions& options = {});

/// What detect_model found in a state dict.
struct DetectedModel {
  /// The registered name with these block counts, width and head, or empty for a custom layout.
  std::string name;
  /// Options that build a model whose state dict has the same keys and shapes.
  TResNetOptions options;
};

/// Reads block counts (body.layerN.<i>.), width (body.conv1.0.weight, or timm's body.conv1.conv.weight,
/// which also sets plain_norms), input channels, v2 (Bottlenecks in layer1) and head (head.fc.weight or
/// head.fc.embedding_generator.0.weight / head.fc.FC.weight) from published- or timm-layout keys.
/// Throws std::runtime_error naming the missing or inconsistent key.
DetectedModel detect_model(const torch::OrderedDict<std::string, torch::Tensor>& state_dict);

}  // namespace asl::models
