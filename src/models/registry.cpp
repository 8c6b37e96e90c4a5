#include "asl/models/registry.h"

#include <array>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

namespace asl::models {

namespace {

struct Preset {
  const char* name;
  std::array<int64_t, 4> layers;
  double width_factor;
  bool bottleneck_head;
  bool v2;
};

// The reference's variants (TResNet paper, table 1); the Open Images model is TResNet-L with the bottleneck head.
// TResNet-v2-L exists only as timm's model (plain batch norms, timm layout).
constexpr std::array<Preset, 5> kPresets{{
    {"tresnet_m", {3, 4, 11, 3}, 1.0, false, false},
    {"tresnet_l", {4, 5, 18, 3}, 1.2, false, false},
    {"tresnet_xl", {4, 5, 24, 3}, 1.3, false, false},
    {"tresnet_l_openimages", {4, 5, 18, 3}, 1.2, true, false},
    {"tresnet_v2_l", {3, 4, 23, 3}, 1.0, false, true},
}};

const Preset& find_preset(const std::string& name) {
  for (const auto& p : kPresets) {
    if (name == p.name) return p;
  }
  std::string known;
  for (const auto& p : kPresets) known += std::string(known.empty() ? "" : ", ") + p.name;
  throw std::invalid_argument("model name: unknown value '" + name + "' (known: " + known + ")");
}

const torch::Tensor& require(const torch::OrderedDict<std::string, torch::Tensor>& sd, const std::string& key,
                             int64_t dim) {
  const auto* t = sd.find(key);
  if (t == nullptr) throw std::runtime_error("detect_model: state dict has no key '" + key + "'");
  if (t->dim() != dim) {
    throw std::runtime_error("detect_model: '" + key + "' has " + std::to_string(t->dim()) + " dimensions, expected " +
                             std::to_string(dim));
  }
  return *t;
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& p : kPresets) names.emplace_back(p.name);
  return names;
}

TResNetOptions model_options(const std::string& name, int64_t num_classes, const ModelOptions& options) {
  const Preset& p = find_preset(name);
  if (num_classes < 1) {
    throw std::invalid_argument("num_classes: must be >= 1, got " + std::to_string(num_classes));
  }
  return TResNetOptions()
      .layers({p.layers.begin(), p.layers.end()})
      .width_factor(p.width_factor)
      .v2(p.v2)
      .plain_norms(p.v2)
      .num_classes(num_classes)
      .in_chans(options.in_chans())
      .do_bottleneck_head(options.do_bottleneck_head().value_or(p.bottleneck_head))
      .bottleneck_features(options.bottleneck_features());
}

TResNet create_model(const std::string& name, int64_t num_classes, const ModelOptions& options) {
  return TResNet(model_options(name, num_classes, options));
}

DetectedModel detect_model(const torch::OrderedDict<std::string, torch::Tensor>& state_dict) {
  std::array<int64_t, 4> layers{0, 0, 0, 0};
  for (const auto& item : state_dict) {
    const std::string& key = item.key();
    const std::string prefix = "body.layer";
    if (key.compare(0, prefix.size(), prefix) != 0 || key.size() < prefix.size() + 3) continue;
    const int stage = key[prefix.size()] - '1';
    if (stage < 0 || stage > 3 || key[prefix.size() + 1] != '.') continue;
    const size_t start = prefix.size() + 2;
    const size_t dot = key.find('.', start);
    if (dot == std::string::npos) continue;
    try {
      const int64_t index = std::stoll(key.substr(start, dot - start));
      layers[stage] = std::max(layers[stage], index + 1);
    } catch (const std::exception&) {
      throw std::runtime_error("detect_model: key '" + key + "' has no block index after body.layerN.");
    }
  }
  for (int i = 0; i < 4; ++i) {
    if (layers[i] == 0) {
      throw std::runtime_error("detect_model: state dict has no body.layer" + std::to_string(i + 1) + " blocks");
    }
  }
  // The stem's name tells the layout: published "conv1.0" (Sequential), timm "conv1.conv" (plain norms).
  const bool timm = state_dict.contains("body.conv1.conv.weight");
  const std::string stem_key = timm ? "body.conv1.conv.weight" : "body.conv1.0.weight";
  const auto& stem = require(state_dict, stem_key, 4);
  const int64_t planes = stem.size(0);
  if (stem.size(1) % 16 != 0) {
    throw std::runtime_error("detect_model: '" + stem_key + "' has " + std::to_string(stem.size(1)) +
                             " input channels, expected a multiple of 16 (SpaceToDepth)");
  }
  // v2 has Bottleneck blocks (conv3) in layer1 as well.
  bool v2 = false;
  for (const auto& item : state_dict) v2 = v2 || item.key().rfind("body.layer1.0.conv3.", 0) == 0;
  if (v2 && planes % 8 != 0) {
    throw std::runtime_error("detect_model: '" + stem_key + "' has " + std::to_string(planes) +
                             " outputs, but a TResNet-v2 stem width is a multiple of 8");
  }
  DetectedModel out;
  // planes / 64 is exact in binary, so int(64 * width_factor) gives planes back.
  out.options.layers({layers.begin(), layers.end()})
      .width_factor(static_cast<double>(planes) / 64.0)
      .in_chans(stem.size(1) / 16)
      .v2(v2)
      .plain_norms(timm);
  const int64_t num_features = planes * 8 * 4;
  if (state_dict.contains("head.fc.FC.weight")) {
    const auto& emb = require(state_dict, "head.fc.embedding_generator.0.weight", 2);
    const auto& fc = require(state_dict, "head.fc.FC.weight", 2);
    out.options.do_bottleneck_head(true).bottleneck_features(emb.size(0)).num_classes(fc.size(0));
    if (emb.size(1) != num_features) {
      throw std::runtime_error("detect_model: 'head.fc.embedding_generator.0.weight' has " +
                               std::to_string(emb.size(1)) + " inputs, expected " + std::to_string(num_features));
    }
  } else {
    const auto& fc = require(state_dict, "head.fc.weight", 2);
    out.options.num_classes(fc.size(0));
    if (fc.size(1) != num_features) {
      throw std::runtime_error("detect_model: 'head.fc.weight' has " + std::to_string(fc.size(1)) +
                               " inputs, expected " + std::to_string(num_features));
    }
  }
  for (const auto& p : kPresets) {
    if (p.layers == layers && p.v2 == v2 && base_width(TResNetOptions().width_factor(p.width_factor).v2(p.v2)) == planes &&
        p.bottleneck_head == out.options.do_bottleneck_head()) {
      out.name = p.name;
      break;
    }
  }
  return out;
}

}  // namespace asl::models
