#include "asl/models/weights.h"

#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/safetensors.h"
#include "asl/nn/layers.h"

namespace asl::models {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool is_conv_unit_name(const std::string& s) { return s.size() > 4 && s.compare(0, 4, "conv") == 0 && is_digits(s.substr(4)); }

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(key);
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

std::string join_key(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ".") + p;
  return out;
}

// Module keys "<norm>.weight" of the model's norms, with the norm's eps.
std::unordered_map<std::string, double> norm_weight_keys(const TResNet& model) {
  std::unordered_map<std::string, double> out;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    if (const auto* norm = item.value()->as<asl::nn::ActivatedBatchNorm>()) {
      out.emplace(item.key() + ".weight", norm->options.eps());
    }
  }
  return out;
}

// plain weight -> InPlaceABN weight w - eps; every w must be >= eps.
torch::Tensor plain_to_abs(const torch::Tensor& w, double eps, const std::string& what, const std::string& key) {
  const torch::Tensor f = w.to(torch::kFloat32);
  const torch::Tensor below = (f < eps).nonzero();
  if (below.size(0) > 0) {
    const int64_t i = below[0][0].item<int64_t>();
    std::ostringstream msg;
    msg << what << ": norm weight '" << key << "'[" << i << "] is " << f[i].item<double>() << ", below eps " << eps
        << ": InPlaceABN (|w| + eps, the published layout) cannot represent it; keep timm's layout (plain batch norms)";
    throw std::runtime_error(msg.str());
  }
  return f - eps;
}

torch::Tensor abs_to_plain(const torch::Tensor& w, double eps) { return w.to(torch::kFloat32).abs() + eps; }

c10::optional<int64_t> parse_count(const std::string& text) {
  if (!is_digits(text) || text.size() > 12) return c10::nullopt;
  return std::stoll(text);
}

}  // namespace

const char* to_string(Layout layout) { return layout == Layout::Timm ? "timm" : "asl"; }

Layout parse_layout(const std::string& name) {
  if (name == "asl" || name == "published") return Layout::Published;
  if (name == "timm") return Layout::Timm;
  throw std::invalid_argument("layout: unknown value '" + name + "' (known: asl, timm)");
}

WeightsFormat parse_weights_format(const std::string& name) {
  if (name == "pth") return WeightsFormat::Pth;
  if (name == "safetensors") return WeightsFormat::Safetensors;
  throw std::invalid_argument("format: unknown value '" + name + "' (known: pth, safetensors)");
}

WeightsFormat format_for_path(const std::string& path) {
  return ends_with(path, ".safetensors") ? WeightsFormat::Safetensors : WeightsFormat::Pth;
}

std::string timm_key(const std::string& published_key) {
  std::vector<std::string> p = split_key(published_key);
  const size_t n = p.size();
  for (size_t i = 0; i + 2 < n; ++i) {
    // The conv unit's own index segment: after "convN", or after "downsample.K".
    size_t unit;
    if (is_conv_unit_name(p[i])) {
      unit = i + 1;
    } else if (p[i] == "downsample" && is_digits(p[i + 1])) {
      unit = i + 2;
    } else {
      continue;
    }
    // ".0.0."/".0.1." + parameter (anti-aliased unit: Sequential(conv unit, blur)), or ".0."/".1." + parameter.
    if (unit + 2 == n - 1 && p[unit] == "0" && (p[unit + 1] == "0" || p[unit + 1] == "1")) {
      const std::string role = p[unit + 1] == "0" ? "conv" : "bn";
      p.erase(p.begin() + static_cast<std::ptrdiff_t>(unit));
      p[unit] = role;
      return join_key(p);
    }
    if (unit + 1 == n - 1 && (p[unit] == "0" || p[unit] == "1")) {
      p[unit] = p[unit] == "0" ? "conv" : "bn";
      return join_key(p);
    }
  }
  return published_key;
}

Weights read_weights(const std::string& path, const ReadWeightsOptions& options) {
  Weights w;
  w.path = path;
  if (format_for_path(path) == WeightsFormat::Safetensors) {
    io::SafetensorsFile f = io::load_safetensors(path);
    w.format = "safetensors";
    w.container = "safetensors";
    w.state = std::move(f.tensors);
    w.metadata = std::move(f.metadata);
    if (options.use_ema()) {
      throw std::runtime_error(path + ": --use-ema needs a timm training checkpoint with state_dict_ema; a "
                               "safetensors file holds one set of weights");
    }
    if (const auto it = w.metadata.find("num_classes"); it != w.metadata.end()) {
      w.num_classes = parse_count(it->second);
      if (!w.num_classes) {
        throw std::runtime_error(path + ": __metadata__ field 'num_classes' is '" + it->second +
                                 "', expected a non-negative integer");
      }
    }
    if (const auto it = w.metadata.find("idx_to_class"); it != w.metadata.end()) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(it->second);
      } catch (const std::exception& e) {
        throw std::runtime_error(path + ": __metadata__ field 'idx_to_class' is not JSON: " + e.what());
      }
      if (!j.is_object()) throw std::runtime_error(path + ": __metadata__ field 'idx_to_class' is not a JSON object");
      for (const auto& [k, v] : j.items()) {
        const auto index = parse_count(k);
        if (!index || !v.is_string()) {
          throw std::runtime_error(path + ": __metadata__ field 'idx_to_class' entry '" + k +
                                   "' is not an index with a string name");
        }
        w.idx_to_class[*index] = v.get<std::string>();
      }
    }
    if (const auto it = w.metadata.find("arch"); it != w.metadata.end()) w.arch = it->second;
  } else {
    io::LoadedCheckpoint ck = io::load_checkpoint(path);
    w.format = ck.format;
    w.root = ck.root;
    w.num_classes = ck.num_classes;
    w.idx_to_class = std::move(ck.idx_to_class);
    const io::PyDict* root = w.root.is_dict() ? &w.root.as_dict() : nullptr;
    const auto field = [&](const char* name) { return root != nullptr ? root->find(name) : nullptr; };
    const io::PyValue* ema = field("state_dict_ema");
    w.has_ema = ema != nullptr && ema->is_dict();
    if (const io::PyValue* arch = field("arch"); arch != nullptr && arch->is_str()) w.arch = arch->as_str();
    if (options.use_ema()) {
      if (!w.has_ema) {
        throw std::runtime_error(path + ": --use-ema: the file has no 'state_dict_ema' (only timm training "
                                 "checkpoints with model EMA have one)");
      }
      w.state = io::state_dict_from_value(*ema, path + ": state_dict_ema");
      w.container = "timm training checkpoint, state_dict_ema";
    } else {
      w.state = std::move(ck.model);
      if (field("model") != nullptr) {
        w.container = "published checkpoint {model, num_classes, idx_to_class}";
      } else if (field("state_dict") != nullptr) {
        w.container = std::string("timm training checkpoint, state_dict") + (w.has_ema ? " (state_dict_ema also present)" : "");
      } else {
        w.container = "bare state dict";
      }
    }
    if (w.state.is_empty()) {
      throw std::runtime_error(path + ": no state dict found (expected a 'model', 'state_dict' or 'state_dict_ema' "
                               "entry, or a dict of tensors)");
    }
  }
  // DataParallel's prefix, stripped as timm's loader does.
  static const std::string prefix = "module.";
  io::StateDict stripped;
  for (const auto& item : w.state) {
    const bool has = item.key().compare(0, prefix.size(), prefix) == 0;
    w.prefixed_keys += has;
    const std::string key = has ? item.key().substr(prefix.size()) : item.key();
    if (stripped.contains(key)) throw std::runtime_error(path + ": key '" + key + "' appears twice (with and without 'module.')");
    stripped.insert(key, item.value());
  }
  w.state = std::move(stripped);
  if (w.state.contains("body.conv1.conv.weight")) {
    w.layout = Layout::Timm;
  } else if (w.state.contains("body.conv1.0.weight")) {
    w.layout = Layout::Published;
  } else {
    throw std::runtime_error(path + ": not a TResNet state dict: it has neither 'body.conv1.0.weight' (asl/published "
                             "layout) nor 'body.conv1.conv.weight' (timm layout); first key '" +
                             w.state.begin()->key() + "'");
  }
  return w;
}

DetectedModel detect_weights(const Weights& weights) {
  try {
    return detect_model(weights.state);
  } catch (const std::exception& e) {
    throw std::runtime_error(weights.path + ": cannot recognise the architecture: " + e.what());
  }
}

io::StateDict state_for_model(const io::StateDict& state, Layout from, const TResNet& model, const std::string& what) {
  const bool from_plain = from == Layout::Timm;
  const bool to_plain = model->options.plain_norms();
  const auto norms = norm_weight_keys(model);
  std::unordered_map<std::string, std::string> to_module;
  for (const auto& item : io::module_state_dict(*model)) {
    to_module.emplace(from == Layout::Timm ? timm_key(item.key()) : item.key(), item.key());
  }
  io::StateDict out;
  for (const auto& item : state) {
    const auto it = to_module.find(item.key());
    const std::string& key = it != to_module.end() ? it->second : item.key();
    torch::Tensor value = item.value();
    if (const auto n = norms.find(key); n != norms.end() && from_plain != to_plain) {
      value = to_plain ? abs_to_plain(value, n->second) : plain_to_abs(value, n->second, what, item.key());
    }
    if (out.contains(key)) throw std::runtime_error(what + ": keys '" + item.key() + "' and another map to '" + key + "'");
    out.insert(key, value);
  }
  return out;
}

Layout natural_layout(const TResNetOptions& options) { return options.plain_norms() ? Layout::Timm : Layout::Published; }

io::StateDict state_in_layout(const TResNet& model, Layout layout) {
  const bool plain = model->options.plain_norms();
  const auto norms = norm_weight_keys(model);
  io::StateDict out;
  if (layout == Layout::Published) {
    if (model->options.v2()) {
      throw std::runtime_error("TResNet-v2 has no published (asl) layout: the ASL reference has no such model; write "
                               "it in timm's layout (--layout timm / --save-layout timm)");
    }
    for (const auto& item : io::module_state_dict(*model)) {
      // Contiguous, as the published files are, whatever memory format the model computes in.
      torch::Tensor value = item.value().contiguous();
      if (plain) {
        if (ends_with(item.key(), ".num_batches_tracked")) continue;
        if (const auto n = norms.find(item.key()); n != norms.end()) {
          value = plain_to_abs(value, n->second, "the model", timm_key(item.key()));
        }
      }
      out.insert(item.key(), value);
    }
    return out;
  }
  for (const auto& item : io::module_state_dict(*model)) {
    torch::Tensor value = item.value().contiguous();
    if (!plain) {
      if (const auto n = norms.find(item.key()); n != norms.end()) value = abs_to_plain(value, n->second);
    }
    out.insert(timm_key(item.key()), value);
    // BatchNorm2d's counter follows running_var; InPlaceABN models have none, timm starts it at 0.
    if (!plain && ends_with(item.key(), ".running_var") &&
        norms.count(item.key().substr(0, item.key().size() - 11) + "weight") > 0) {
      const std::string key = timm_key(item.key());
      out.insert(key.substr(0, key.size() - 11) + "num_batches_tracked", torch::zeros({}, torch::kLong));
    }
  }
  return out;
}

void save_weights(const std::string& path, const io::StateDict& state, int64_t num_classes,
                  const std::map<int64_t, std::string>& idx_to_class, const SaveWeightsOptions& options) {
  if (options.format() == WeightsFormat::Pth) {
    io::save_checkpoint(path, state, num_classes, idx_to_class);
    return;
  }
  std::map<std::string, std::string> meta{{"format", "pt"}, {"layout", to_string(options.layout())},
                                          {"num_classes", std::to_string(num_classes)}};
  if (!options.arch().empty()) meta["arch"] = options.arch();
  if (!idx_to_class.empty()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [i, name] : idx_to_class) j[std::to_string(i)] = name;
    meta["idx_to_class"] = j.dump();
  }
  io::StateDict contiguous;
  for (const auto& item : state) contiguous.insert(item.key(), item.value().contiguous());
  io::save_safetensors(path, contiguous, meta);
}

void save_model(const std::string& path, const TResNet& model, const std::map<int64_t, std::string>& idx_to_class,
                const SaveWeightsOptions& options) {
  save_weights(path, state_in_layout(model, options.layout()), model->options.num_classes(), idx_to_class, options);
}

std::vector<std::string> read_class_names(const std::string& path, int64_t expected) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the class-names file");
  std::vector<std::string> names;
  std::string line;
  int64_t number = 0;
  std::vector<std::pair<int64_t, std::string>> lines;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.emplace_back(number, line);
  }
  if (!lines.empty() && lines.back().second.empty()) lines.pop_back();
  for (const auto& [n, name] : lines) {
    if (name.empty()) throw std::runtime_error(path + ": line " + std::to_string(n) + " is empty (one class name per line)");
    names.push_back(name);
  }
  if (expected >= 0 && static_cast<int64_t>(names.size()) != expected) {
    throw std::runtime_error(path + ": has " + std::to_string(names.size()) + " class names, the model has " +
                             std::to_string(expected) + " classes");
  }
  return names;
}

}  // namespace asl::models
