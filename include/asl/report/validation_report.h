// The validation report a person reads in a browser: one self-contained index.html (inline SVG and CSS,
// embedded thumbnails, no scripts or network) and report.json with the same numbers.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

namespace asl::report {

/// What a validation run measured, and on what.
struct ValidationRun {
  std::string checkpoint, architecture, dataset, precision;
  int64_t image_size = 0;
  double threshold = 0.8;                 ///< of CP/CR/CF1/OP/OR/OF1 (positive when score > it)
  std::vector<std::string> class_names;   ///< C
  std::vector<std::string> image_paths;   ///< N, for the thumbnails
  torch::Tensor scores, targets;          ///< N x C sigmoid scores and 0/1 targets
};

/// Writes DIR/index.html and DIR/report.json (each atomically; DIR is created):
/// the header (checkpoint, architecture, dataset, images, input size, precision, mAP and the threshold
/// metrics), per-class AP as a sorted bar chart with positive counts, precision–recall curves (every
/// class faint, the 5 worst and 5 best highlighted and labelled), CP/CR/CF1/OF1 against the threshold
/// (0.01–0.99), a per-class table (AP, positives, best-F1 threshold and its P/R/F1), and the most
/// confident false positives and missed positives as thumbnails (up to 24 in all) with class and score.
void write_validation_report(const std::string& dir, const ValidationRun& run);

}  // namespace asl::report
