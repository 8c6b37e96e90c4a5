#include "asl/metrics/thresholds.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/file.h"

namespace asl::metrics {

std::vector<ClassThreshold> tune_thresholds(const torch::Tensor& scores_in, const torch::Tensor& targets_in,
                                            double global_threshold) {
  TORCH_CHECK(scores_in.dim() == 2 && scores_in.sizes() == targets_in.sizes(),
              "tune_thresholds: scores and targets must be N x C of one shape, got ", scores_in.sizes(), " and ",
              targets_in.sizes());
  // Compared in float32, as the metrics compare the models' float32 scores.
  const torch::Tensor scores = scores_in.to(torch::kCPU, torch::kFloat32).contiguous();
  const torch::Tensor targets = targets_in.to(torch::kCPU).eq(1).contiguous();
  const int64_t n = scores.size(0), c = scores.size(1);
  const auto s = scores.accessor<float, 2>();
  const auto y = targets.accessor<bool, 2>();
  std::vector<ClassThreshold> out(static_cast<size_t>(c));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t k = 0; k < c; ++k) {
    ClassThreshold& r = out[static_cast<size_t>(k)];
    int64_t positives = 0;
    for (int64_t i = 0; i < n; ++i) positives += y[i][k];
    r.positives = positives;
    r.threshold = global_threshold;
    if (positives == 0) continue;
    r.tuned = true;
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a][k] > s[b][k]; });
    // Walk the thresholds from the highest: at t = a distinct score v, everything above v is positive.
    int64_t tp = 0, predicted = 0;
    double best_f1 = -1;
    auto consider = [&](double t) {
      const double f1 = tp > 0 ? 2.0 * static_cast<double>(tp) / static_cast<double>(predicted + positives) : 0.0;
      if (f1 > best_f1) {  // strictly better: ties keep the higher threshold found first
        best_f1 = f1;
        r.threshold = t;
        r.f1 = f1;
        r.precision = predicted > 0 ? static_cast<double>(tp) / static_cast<double>(predicted) : 0.0;
        r.recall = static_cast<double>(tp) / static_cast<double>(positives);
      }
    };
    size_t i = 0;
    while (i < order.size()) {
      const float v = s[order[i]][k];
      consider(v);
      for (; i < order.size() && s[order[i]][k] == v; ++i) {
        ++predicted;
        tp += y[order[i]][k];
      }
    }
    if (s[order.back()][k] > 0.0f) consider(0.0);  // everything positive
  }
  return out;
}

void save_thresholds(const std::string& path, const std::vector<std::string>& class_names,
                     const std::vector<ClassThreshold>& thresholds, double global_threshold) {
  TORCH_CHECK(class_names.size() == thresholds.size(), "save_thresholds: ", class_names.size(), " names for ",
              thresholds.size(), " thresholds");
  nlohmann::json classes = nlohmann::json::array();
  for (size_t k = 0; k < thresholds.size(); ++k) {
    const ClassThreshold& t = thresholds[k];
    classes.push_back({{"name", class_names[k]}, {"threshold", t.threshold}, {"tuned", t.tuned},
                       {"precision", t.precision}, {"recall", t.recall}, {"f1", t.f1}, {"positives", t.positives}});
  }
  const nlohmann::json doc = {{"format", "asl-thresholds"}, {"version", 1}, {"global_threshold", global_threshold},
                              {"classes", classes}};
  io::write_file_atomic(path, doc.dump(1) + "\n");
}

ThresholdFile load_thresholds(const std::string& path, const std::vector<std::string>& class_names) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(io::read_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  if (!doc.is_object() || doc.value("format", "") != "asl-thresholds" || !doc.contains("classes") ||
      !doc.at("classes").is_array()) {
    throw std::runtime_error(path + ": not a thresholds file (expected \"format\": \"asl-thresholds\" and a "
                                    "\"classes\" list, as asl validate --tune-thresholds writes)");
  }
  const auto& classes = doc.at("classes");
  ThresholdFile f;
  f.global_threshold = doc.value("global_threshold", 0.0);
  for (size_t k = 0; k < classes.size(); ++k) {
    const auto& e = classes[k];
    if (!e.is_object() || !e.contains("name") || !e.at("name").is_string() || !e.contains("threshold") ||
        !e.at("threshold").is_number()) {
      throw std::runtime_error(path + ": field classes[" + std::to_string(k) + "] needs a string \"name\" and a "
                               "number \"threshold\"");
    }
    f.class_names.push_back(e.at("name").get<std::string>());
    f.thresholds.push_back(e.at("threshold").get<double>());
  }
  for (size_t k = 0; k < std::min(f.class_names.size(), class_names.size()); ++k) {
    if (f.class_names[k] != class_names[k]) {
      throw std::runtime_error(path + ": class " + std::to_string(k) + " is '" + f.class_names[k] +
                               "' but the model's is '" + class_names[k] + "'");
    }
  }
  if (f.class_names.size() != class_names.size()) {
    throw std::runtime_error(path + ": " + std::to_string(f.class_names.size()) + " classes but the model has " +
                             std::to_string(class_names.size()));
  }
  return f;
}

}  // namespace asl::metrics
