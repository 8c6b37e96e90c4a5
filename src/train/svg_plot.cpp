// SVG line charts written by hand: axes with "nice" ticks, grid, polylines, dots and a legend.
#include "asl/train/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace asl::train {

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string tick_label(double v, double step) {
  char buf[32];
  const int decimals = step >= 1 ? 0 : std::min(6, static_cast<int>(std::ceil(-std::log10(step))));
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// A tick spacing of 1, 2 or 5 × 10^k giving about `target` intervals over [lo, hi].
double nice_step(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

void panel_svg(std::ostringstream& s, const PlotPanel& p, double ox, int w, int h) {
  const double left = ox + 60, right = ox + w - 15, top = 30, bottom = h - 45;
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  for (const auto& line : p.series) {
    for (size_t i = 0; i < line.x.size() && i < line.y.size(); ++i) {
      if (!std::isfinite(line.x[i]) || !std::isfinite(line.y[i])) continue;
      xmin = std::min(xmin, line.x[i]);
      xmax = std::max(xmax, line.x[i]);
      ymin = std::min(ymin, line.y[i]);
      ymax = std::max(ymax, line.y[i]);
    }
  }
  if (!std::isfinite(xmin)) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (xmax - xmin < 1e-12) xmin -= 0.5, xmax += 0.5;
  if (ymax - ymin < 1e-12) {
    const double pad = std::max(1e-6, std::abs(ymin) * 0.05);
    ymin -= pad, ymax += pad;
  }
  const double ystep = nice_step(ymin, ymax, 5);
  ymin = std::floor(ymin / ystep) * ystep;
  ymax = std::ceil(ymax / ystep) * ystep;
  const double xstep = std::max(1.0, nice_step(xmin, xmax, 6));
  const auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * (right - left); };
  const auto py = [&](double y) { return bottom - (y - ymin) / (ymax - ymin) * (bottom - top); };

  s << "<text x=\"" << num(left) << "\" y=\"18\" text-anchor=\"start\" font-size=\"14\" "
    << "font-weight=\"bold\">" << xml_escape(p.title) << "</text>\n";
  for (double y = ymin; y <= ymax + ystep * 1e-6; y += ystep) {
    s << "<line x1=\"" << num(left) << "\" y1=\"" << num(py(y)) << "\" x2=\"" << num(right) << "\" y2=\"" << num(py(y))
      << "\" stroke=\"#e0e0e0\"/>\n";
    s << "<text x=\"" << num(left - 6) << "\" y=\"" << num(py(y) + 4) << "\" text-anchor=\"end\" font-size=\"11\">"
      << tick_label(y, ystep) << "</text>\n";
  }
  for (double x = std::ceil(xmin / xstep) * xstep; x <= xmax + xstep * 1e-6; x += xstep) {
    s << "<line x1=\"" << num(px(x)) << "\" y1=\"" << num(bottom) << "\" x2=\"" << num(px(x)) << "\" y2=\""
      << num(bottom + 4) << "\" stroke=\"#333\"/>\n";
    s << "<text x=\"" << num(px(x)) << "\" y=\"" << num(bottom + 17) << "\" text-anchor=\"middle\" font-size=\"11\">"
      << tick_label(x, xstep) << "</text>\n";
  }
  s << "<rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\"" << num(right - left) << "\" height=\""
    << num(bottom - top) << "\" fill=\"none\" stroke=\"#333\"/>\n";
  s << "<text x=\"" << num((left + right) / 2) << "\" y=\"" << num(h - 8.0) << "\" text-anchor=\"middle\" "
    << "font-size=\"12\">" << xml_escape(p.x_label) << "</text>\n";
  s << "<text transform=\"translate(" << num(ox + 14) << "," << num((top + bottom) / 2) << ") rotate(-90)\" "
    << "text-anchor=\"middle\" font-size=\"12\">" << xml_escape(p.y_label) << "</text>\n";
  // The legend sits in the top margin, right-aligned, so that it never hides a line.
  double legend_x = right;
  for (auto it = p.series.rbegin(); it != p.series.rend(); ++it) legend_x -= 26 + 6.5 * it->label.size();
  for (const auto& line : p.series) {
    std::string points;
    for (size_t i = 0; i < line.x.size() && i < line.y.size(); ++i) {
      if (!std::isfinite(line.x[i]) || !std::isfinite(line.y[i])) continue;
      points += num(px(line.x[i])) + "," + num(py(line.y[i])) + " ";
      s << "<circle cx=\"" << num(px(line.x[i])) << "\" cy=\"" << num(py(line.y[i])) << "\" r=\"2.5\" fill=\""
        << xml_escape(line.color) << "\"/>\n";
    }
    if (!points.empty()) {
      points.pop_back();
      s << "<polyline points=\"" << points << "\" fill=\"none\" stroke=\"" << xml_escape(line.color)
        << "\" stroke-width=\"2\"/>\n";
    }
    s << "<line x1=\"" << num(legend_x) << "\" y1=\"14\" x2=\"" << num(legend_x + 16)
      << "\" y2=\"14\" stroke=\"" << xml_escape(line.color) << "\" stroke-width=\"2\"/>\n";
    s << "<text x=\"" << num(legend_x + 20) << "\" y=\"18\" font-size=\"11\">" << xml_escape(line.label) << "</text>\n";
    legend_x += 26 + 6.5 * line.label.size();
  }
}

}  // namespace

std::string svg_line_charts(const std::vector<PlotPanel>& panels, int panel_width, int panel_height) {
  std::ostringstream s;
  const int width = panel_width * std::max<int>(1, static_cast<int>(panels.size()));
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << panel_height
    << "\" viewBox=\"0 0 " << width << " " << panel_height << "\" font-family=\"sans-serif\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t i = 0; i < panels.size(); ++i) {
    panel_svg(s, panels[i], static_cast<double>(i) * panel_width, panel_width, panel_height);
  }
  s << "</svg>\n";
  return s.str();
}

std::string training_svg(const std::vector<EpochRecord>& history) {
  PlotSeries loss{"train loss", "#d62728", {}, {}};
  PlotSeries regular{"model", "#1f77b4", {}, {}};
  PlotSeries ema{"EMA", "#2ca02c", {}, {}};
  for (const auto& r : history) {
    const double e = static_cast<double>(r.epoch);
    loss.x.push_back(e);
    loss.y.push_back(r.train_loss);
    regular.x.push_back(e);
    regular.y.push_back(r.map_regular);
    ema.x.push_back(e);
    ema.y.push_back(r.map_ema);
  }
  return svg_line_charts({PlotPanel{"Training loss (per image)", "epoch", "loss", {loss}},
                          PlotPanel{"Validation mAP", "epoch", "mAP (%)", {regular, ema}}});
}

}  // namespace asl::train
