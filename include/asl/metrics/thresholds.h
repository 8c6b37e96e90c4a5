// Per-class decision thresholds: the best-F1 search, and the JSON file validate writes and infer reads.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

namespace asl::metrics {

/// The threshold of one class with the highest F1 on a set (a prediction is positive when score > t).
struct ClassThreshold {
  double threshold = 0;
  double precision = 0, recall = 0, f1 = 0;  ///< at that threshold, fractions in [0, 1]
  int64_t positives = 0;
  bool tuned = false;  ///< false for a class without positives: it keeps the global threshold
};

/// For every class, the threshold in {0} ∪ {its distinct float32 scores} with the highest F1 (these
/// give every split of the ranked scores that "score > t" can make); ties go to the higher threshold;
/// a class without positives keeps `global_threshold`. scores, targets: N x C (target 1 = positive).
std::vector<ClassThreshold> tune_thresholds(const torch::Tensor& scores, const torch::Tensor& targets,
                                            double global_threshold);

/// Thresholds with the class names they belong to, as `asl validate --tune-thresholds` writes them.
struct ThresholdFile {
  std::vector<std::string> class_names;
  std::vector<double> thresholds;
  double global_threshold = 0;
};

/// Writes {"format": "asl-thresholds", "version": 1, "global_threshold", "classes": [{"name",
/// "threshold", "tuned", "precision", "recall", "f1", "positives"}...]} atomically.
void save_thresholds(const std::string& path, const std::vector<std::string>& class_names,
                     const std::vector<ClassThreshold>& thresholds, double global_threshold);

/// Reads a file written by save_thresholds and checks it against a model's class names: a different
/// count or the first differing name is an error naming the file, the index and both names.
ThresholdFile load_thresholds(const std::string& path, const std::vector<std::string>& class_names);

}  // namespace asl::metrics
