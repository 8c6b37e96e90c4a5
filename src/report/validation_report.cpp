#include "asl/report/validation_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/data/annotate.h"
#include "asl/data/image.h"
#include "asl/io/file.h"
#include "asl/metrics/map.h"
#include "asl/metrics/thresholds.h"
#include "asl/train/svg_plot.h"

namespace asl::report {
namespace {

using train::xml_escape;

std::string fixed(double v, int digits = 2) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string base64(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) | (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                       static_cast<uint8_t>(bytes[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += table[(v >> k) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? table[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Precision and recall after each distinct score of one class, best first (ties form one point).
struct Curve {
  std::vector<double> precision, recall;
};
Curve pr_curve(const float* s, const bool* y, int64_t n, int64_t stride, int64_t positives) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a * stride] > s[b * stride]; });
  Curve c;
  int64_t tp = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    tp += y[order[i] * stride];
    if (i + 1 < order.size() && s[order[i + 1] * stride] == s[order[i] * stride]) continue;
    c.precision.push_back(static_cast<double>(tp) / static_cast<double>(i + 1));
    c.recall.push_back(positives > 0 ? static_cast<double>(tp) / static_cast<double>(positives) : 0.0);
  }
  return c;
}

const char* kPalette[] = {"#d62728", "#ff7f0e", "#bcbd22", "#8c564b", "#e377c2",
                          "#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#393b79"};

std::string pr_svg(const std::vector<Curve>& curves, const std::vector<std::string>& names,
                   const std::vector<int64_t>& worst, const std::vector<int64_t>& best) {
  const int W = 640, H = 420, L = 50, T = 20, PW = 400, PH = 360;
  std::ostringstream s;
  s << "<svg class=\"pr\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\">\n";
  s << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << PW << "\" height=\"" << PH
    << "\" fill=\"#fff\" stroke=\"#999\"/>\n";
  for (int k = 0; k <= 10; k += 2) {
    const double v = k / 10.0;
    s << "<text x=\"" << L + v * PW << "\" y=\"" << T + PH + 16 << "\" font-size=\"11\" text-anchor=\"middle\">"
      << fixed(v, 1) << "</text><text x=\"" << L - 6 << "\" y=\"" << T + PH - v * PH + 4
      << "\" font-size=\"11\" text-anchor=\"end\">" << fixed(v, 1) << "</text>\n";
  }
  s << "<text x=\"" << L + PW / 2 << "\" y=\"" << H - 2 << "\" font-size=\"12\" text-anchor=\"middle\">recall</text>\n";
  s << "<text x=\"12\" y=\"" << T + PH / 2 << "\" font-size=\"12\" transform=\"rotate(-90 12 " << T + PH / 2
    << ")\" text-anchor=\"middle\">precision</text>\n";
  auto polyline = [&](const Curve& c, const std::string& attrs) {
    s << "<polyline fill=\"none\" " << attrs << " points=\"";
    const size_t step = std::max<size_t>(1, c.recall.size() / 300);  // at most ~300 points a class
    for (size_t i = 0; i < c.recall.size(); i += step) {
      s << fixed(L + c.recall[i] * PW, 1) << "," << fixed(T + PH - c.precision[i] * PH, 1) << " ";
    }
    if (!c.recall.empty()) s << fixed(L + c.recall.back() * PW, 1) << "," << fixed(T + PH - c.precision.back() * PH, 1);
    s << "\"/>\n";
  };
  for (const auto& c : curves) polyline(c, "stroke=\"#888\" stroke-opacity=\"0.18\" stroke-width=\"1\"");
  int legend = 0;
  for (const auto* group : {&worst, &best}) {
    for (int64_t k : *group) {
      const std::string color = kPalette[legend % 10];
      polyline(curves[static_cast<size_t>(k)], "class=\"highlight\" stroke=\"" + color + "\" stroke-width=\"2\"");
      s << "<text class=\"legend\" x=\"" << L + PW + 12 << "\" y=\"" << T + 14 + 18 * legend << "\" font-size=\"12\" fill=\""
        << color << "\">" << (group == &worst ? "worst: " : "best: ") << xml_escape(names[static_cast<size_t>(k)])
        << "</text>\n";
      ++legend;
    }
  }
  s << "</svg>\n";
  return s.str();
}

std::string ap_bars_svg(const std::vector<int64_t>& order, const std::vector<double>& ap,
                        const std::vector<int64_t>& positives, const std::vector<std::string>& names) {
  const int row = 18, label_w = 260, bar_w = 360;
  const int H = static_cast<int>(order.size()) * row + 10;
  std::ostringstream s;
  s << "<svg class=\"ap-bars\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << label_w + bar_w + 70 << "\" height=\"" << H
    << "\">\n";
  int y = 5;
  for (int64_t k : order) {
    const double v = ap[static_cast<size_t>(k)];
    s << "<text x=\"" << label_w - 6 << "\" y=\"" << y + 13 << "\" font-size=\"12\" text-anchor=\"end\">"
      << xml_escape(names[static_cast<size_t>(k)]) << " (" << positives[static_cast<size_t>(k)] << ")</text>"
      << "<rect class=\"bar\" x=\"" << label_w << "\" y=\"" << y + 2 << "\" width=\"" << fixed(v * bar_w, 1)
      << "\" height=\"" << row - 4 << "\" fill=\"" << (v >= 0.5 ? "#4c78a8" : "#e45756") << "\"/>"
      << "<text x=\"" << label_w + v * bar_w + 4 << "\" y=\"" << y + 13 << "\" font-size=\"11\">" << fixed(100 * v, 1)
      << "</text>\n";
    y += row;
  }
  s << "</svg>\n";
  return s.str();
}

// A thumbnail (longest side 160 px) as a data URI, or "" when the image cannot be read.
std::string thumbnail(const std::string& path) {
  try {
    const data::Image im = data::load_image(path);
    const double f = 160.0 / static_cast<double>(std::max(im.width, im.height));
    const int64_t w = std::max<int64_t>(1, std::lround(im.width * std::min(1.0, f)));
    const int64_t h = std::max<int64_t>(1, std::lround(im.height * std::min(1.0, f)));
    const data::Image small = f < 1 ? data::resize(im, w, h, data::ResampleFilter::bilinear) : im;
    return "data:image/jpeg;base64," + base64(data::encode_jpeg(small));
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace

void write_validation_report(const std::string& dir, const ValidationRun& run) {
  const torch::Tensor scores = run.scores.to(torch::kCPU, torch::kFloat32).contiguous();
  const torch::Tensor targets = run.targets.to(torch::kCPU).eq(1).contiguous();
  const int64_t n = scores.size(0), c = scores.size(1);
  TORCH_CHECK(static_cast<int64_t>(run.class_names.size()) == c, "validation report: ", run.class_names.size(),
              " class names for ", c, " classes");
  const torch::Tensor ap_t = metrics::average_precision(scores, targets.to(torch::kFloat32));
  const double map = 100.0 * ap_t.mean().item<double>();
  const metrics::ThresholdMetrics m = metrics::threshold_metrics(scores, targets.to(torch::kFloat32), run.threshold);
  const auto tuned = metrics::tune_thresholds(scores, targets, run.threshold);
  std::vector<double> ap(static_cast<size_t>(c));
  std::vector<int64_t> positives(static_cast<size_t>(c));
  const float* s = scores.data_ptr<float>();
  const bool* y = targets.data_ptr<bool>();
  std::vector<Curve> curves;
  for (int64_t k = 0; k < c; ++k) {
    ap[static_cast<size_t>(k)] = ap_t[k].item<double>();
    positives[static_cast<size_t>(k)] = tuned[static_cast<size_t>(k)].positives;
    curves.push_back(pr_curve(s + k, y + k, n, c, positives[static_cast<size_t>(k)]));
  }
  std::vector<int64_t> order(static_cast<size_t>(c));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ap[a] > ap[b]; });
  std::vector<int64_t> with_pos;
  for (int64_t k : order) {
    if (positives[static_cast<size_t>(k)] > 0) with_pos.push_back(k);
  }
  const size_t pick = std::min<size_t>(5, with_pos.size() / 2);
  std::vector<int64_t> best(with_pos.begin(), with_pos.begin() + static_cast<std::ptrdiff_t>(pick));
  std::vector<int64_t> worst(with_pos.end() - static_cast<std::ptrdiff_t>(pick), with_pos.end());
  std::reverse(worst.begin(), worst.end());

  // CP, CR, CF1, OF1 against the threshold.
  train::PlotPanel sweep{"threshold metrics", "threshold", "%", {}};
  train::PlotSeries cp{"CP", "#1f77b4", {}, {}}, cr{"CR", "#ff7f0e", {}, {}}, cf1{"CF1", "#2ca02c", {}, {}},
      of1{"OF1", "#d62728", {}, {}};
  nlohmann::json sweep_json = nlohmann::json::array();
  for (int i = 1; i <= 99; ++i) {
    const double t = i / 100.0;
    const metrics::ThresholdMetrics tm = metrics::threshold_metrics(scores, targets.to(torch::kFloat32), t);
    for (auto* series : {&cp, &cr, &cf1, &of1}) series->x.push_back(t);
    cp.y.push_back(tm.CP);
    cr.y.push_back(tm.CR);
    cf1.y.push_back(tm.CF1);
    of1.y.push_back(tm.OF1);
    sweep_json.push_back({{"threshold", t}, {"CP", tm.CP}, {"CR", tm.CR}, {"CF1", tm.CF1}, {"OF1", tm.OF1}});
  }
  sweep.series = {cp, cr, cf1, of1};
  std::string sweep_svg = train::svg_line_charts({sweep}, 640, 360);
  if (sweep_svg.rfind("<?xml", 0) == 0) sweep_svg = sweep_svg.substr(sweep_svg.find('\n') + 1);
  sweep_svg.insert(4, " class=\"sweep\"");

  // The most confident mistakes at the threshold: false positives by descending score, missed positives
  // by ascending score.
  struct Mistake {
    int64_t image, cls;
    float score;
  };
  std::vector<Mistake> fps, misses;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c; ++k) {
      const float v = s[i * c + k];
      if (!y[i * c + k] && v > run.threshold) fps.push_back({i, k, v});
      if (y[i * c + k] && !(v > run.threshold)) misses.push_back({i, k, v});
    }
  }
  std::sort(fps.begin(), fps.end(), [](const Mistake& a, const Mistake& b) { return a.score > b.score; });
  std::sort(misses.begin(), misses.end(), [](const Mistake& a, const Mistake& b) { return a.score < b.score; });
  fps.resize(std::min<size_t>(fps.size(), 12));
  misses.resize(std::min<size_t>(misses.size(), 12));

  nlohmann::json classes = nlohmann::json::array();
  for (int64_t k = 0; k < c; ++k) {
    const auto& t = tuned[static_cast<size_t>(k)];
    classes.push_back({{"name", run.class_names[static_cast<size_t>(k)]}, {"AP", 100 * ap[static_cast<size_t>(k)]},
                       {"positives", t.positives}, {"best_f1_threshold", t.threshold}, {"best_f1_tuned", t.tuned},
                       {"precision", 100 * t.precision}, {"recall", 100 * t.recall}, {"f1", 100 * t.f1}});
  }
  auto mistakes_json = [&](const std::vector<Mistake>& list) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& e : list) {
      a.push_back({{"image", run.image_paths.empty() ? std::string() : run.image_paths[static_cast<size_t>(e.image)]},
                   {"class", run.class_names[static_cast<size_t>(e.cls)]}, {"score", e.score}});
    }
    return a;
  };
  const nlohmann::json doc = {
      {"checkpoint", run.checkpoint}, {"architecture", run.architecture}, {"dataset", run.dataset},
      {"images", n}, {"image_size", run.image_size}, {"precision", run.precision}, {"mAP", map},
      {"threshold", run.threshold},
      {"at_threshold", {{"CP", m.CP}, {"CR", m.CR}, {"CF1", m.CF1}, {"OP", m.OP}, {"OR", m.OR}, {"OF1", m.OF1}}},
      {"classes", classes}, {"threshold_sweep", sweep_json}, {"false_positives", mistakes_json(fps)},
      {"missed_positives", mistakes_json(misses)}};

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>asl validation report</title>\n"
    << "<style>body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}h1{font-size:22px}"
       "h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:13px}"
       "td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}td:first-child,th:first-child{text-align:left}"
       ".kv td{text-align:left}.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumbs figure{margin:0;width:170px;"
       "font-size:12px}.thumbs img{max-width:160px;max-height:160px;display:block;border:1px solid #ccc}"
       ".note{color:#666;font-size:13px}</style></head><body>\n";
  h << "<h1>asl validation report</h1>\n<table class=\"kv\">\n";
  const std::vector<std::pair<std::string, std::string>> header = {
      {"checkpoint", run.checkpoint}, {"architecture", run.architecture}, {"dataset", run.dataset},
      {"images", std::to_string(n)}, {"input size", std::to_string(run.image_size) + "x" + std::to_string(run.image_size)},
      {"precision", run.precision}, {"mAP", fixed(map)},
      {"at threshold " + fixed(run.threshold), "CP " + fixed(m.CP) + " &middot; CR " + fixed(m.CR) + " &middot; CF1 " +
                                                   fixed(m.CF1) + " &middot; OP " + fixed(m.OP) + " &middot; OR " + fixed(m.OR) +
                                                   " &middot; OF1 " + fixed(m.OF1)}};
  for (const auto& [k, v] : header) {
    h << "<tr><th>" << xml_escape(k) << "</th><td>" << (k.rfind("at threshold", 0) == 0 ? v : xml_escape(v))
      << "</td></tr>\n";
  }
  // Up to 100 bars: with more classes, the 50 best and the 50 worst (the table below lists every class).
  std::vector<int64_t> bars = order;
  if (bars.size() > 100) {
    bars.erase(bars.begin() + 50, bars.end() - 50);
  }
  h << "</table>\n<h2>Average precision per class</h2>\n<p class=\"note\">Sorted; positives in brackets."
    << (bars.size() < order.size() ? " The 50 best and the 50 worst of " + std::to_string(order.size()) + " classes." : "")
    << "</p>\n" << ap_bars_svg(bars, ap, positives, run.class_names);
  h << "<h2>Precision&ndash;recall curves</h2>\n<p class=\"note\">Every class faint; the 5 worst and 5 best classes "
       "(with positives) highlighted.</p>\n"
    << pr_svg(curves, run.class_names, worst, best);
  h << "<h2>Metrics against the threshold</h2>\n" << sweep_svg;
  h << "<h2>Per class</h2>\n<p class=\"note\">Best-F1 threshold: chosen on these same images, so its F1 is "
       "optimistic (asl validate --tune-thresholds --tune-fraction tunes and scores on separate images).</p>\n"
    << "<table class=\"classes\"><tr><th>class</th><th>AP</th><th>positives</th><th>best-F1 threshold</th>"
       "<th>P</th><th>R</th><th>F1</th></tr>\n";
  for (int64_t k : order) {
    const auto& t = tuned[static_cast<size_t>(k)];
    h << "<tr><td>" << xml_escape(run.class_names[static_cast<size_t>(k)]) << "</td><td>"
      << fixed(100 * ap[static_cast<size_t>(k)]) << "</td><td>" << t.positives << "</td><td>"
      << (t.tuned ? fixed(t.threshold, 4) : "&ndash;") << "</td><td>" << fixed(100 * t.precision) << "</td><td>"
      << fixed(100 * t.recall) << "</td><td>" << fixed(100 * t.f1) << "</td></tr>\n";
  }
  h << "</table>\n";
  auto thumbs = [&](const char* title, const std::vector<Mistake>& list) {
    h << "<h2>" << title << "</h2>\n<div class=\"thumbs\">\n";
    if (list.empty()) h << "<p class=\"note\">none</p>\n";
    for (const auto& e : list) {
      const std::string path = run.image_paths.empty() ? std::string() : run.image_paths[static_cast<size_t>(e.image)];
      const std::string uri = path.empty() ? std::string() : thumbnail(path);
      h << "<figure>";
      if (!uri.empty()) h << "<img alt=\"" << xml_escape(std::filesystem::path(path).filename().string()) << "\" src=\"" << uri << "\">";
      h << "<figcaption>" << xml_escape(run.class_names[static_cast<size_t>(e.cls)]) << " " << fixed(e.score, 3) << "<br>"
        << xml_escape(std::filesystem::path(path).filename().string()) << "</figcaption></figure>\n";
    }
    h << "</div>\n";
  };
  thumbs("Most confident false positives", fps);
  thumbs("Most confidently missed positives", misses);
  h << "</body></html>\n";

  std::filesystem::create_directories(dir);
  io::write_file_atomic((std::filesystem::path(dir) / "report.json").string(), doc.dump(1) + "\n");
  io::write_file_atomic((std::filesystem::path(dir) / "index.html").string(), h.str());
}

}  // namespace asl::report
