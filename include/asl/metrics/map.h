// Multi-label metrics: average precision (reference and tie-aware), mAP, CP/CR/CF1/OP/OR/OF1.
#pragma once

#include <torch/types.h>

namespace asl::metrics {

/// Which average precision to compute.
enum class ApDefinition {
  /// The reference's: mean of precision@k over the positives after a descending sort, divided by
  /// (positives + 1e-8), so a class with no positives scores 0. Equal scores are ranked in the
  /// order of the reference's NumPy argsort()[::-1] (NumPy 1.24's introsort, reproduced).
  Reference,
  /// scikit-learn's average_precision_score: tie-aware (one precision-recall point per distinct
  /// score); 0 for a class with no positives.
  TieAware,
};

/// Per-class average precision as fractions in [0, 1]: a float64 tensor of C values. Scores are
/// ranked as float32 (the dtype the models produce).
/// scores, targets: N x C (any real dtype); a target counts as positive when it equals 1.
/// Classes are computed in parallel.
torch::Tensor average_precision(const torch::Tensor& scores, const torch::Tensor& targets,
                                ApDefinition definition = ApDefinition::Reference);

/// Mean of average_precision over all classes, in percent (0 for an empty input, as the reference).
double mean_average_precision(const torch::Tensor& scores, const torch::Tensor& targets,
                              ApDefinition definition = ApDefinition::Reference);

/// Threshold metrics in percent; a prediction is positive when score > threshold.
struct ThresholdMetrics {
  double CP = 0;   ///< per-class precision, averaged over classes (a class with no true positive: 0)
  double CR = 0;   ///< per-class recall, averaged
  double CF1 = 0;  ///< per-class F1, averaged
  double OP = 0;   ///< overall precision from summed counts
  double OR = 0;   ///< overall recall
  double OF1 = 0;  ///< overall F1
};

ThresholdMetrics threshold_metrics(const torch::Tensor& scores, const torch::Tensor& targets, double threshold);

/// The same with one threshold per class (a tensor of C values, e.g. from tune_thresholds).
ThresholdMetrics threshold_metrics(const torch::Tensor& scores, const torch::Tensor& targets,
                                   const torch::Tensor& thresholds);

}  // namespace asl::metrics
