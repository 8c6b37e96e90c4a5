// Hand-written SVG line charts: the training history (loss and mAP per epoch) as training.svg.
#pragma once

#include <string>
#include <vector>

#include "asl/train/trainer.h"

namespace asl::train {

/// Text made safe for XML/HTML content and attribute values (& < > ").
std::string xml_escape(const std::string& text);

/// One line of a chart.
struct PlotSeries {
  std::string label;
  /// An SVG colour ("#1f77b4").
  std::string color;
  std::vector<double> x, y;
};

/// One chart: a title, axis labels and its lines (the axes span every series' values).
struct PlotPanel {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<PlotSeries> series;
};

/// The panels side by side in one standalone SVG document (each panel_width × panel_height pixels),
/// with ticks, grid lines, a legend and a dot per point. Non-finite values are skipped.
std::string svg_line_charts(const std::vector<PlotPanel>& panels, int panel_width = 480, int panel_height = 320);

/// training.svg: training loss per epoch (left) and validation mAP of the model and of the EMA (right).
std::string training_svg(const std::vector<EpochRecord>& history);

}  // namespace asl::train
