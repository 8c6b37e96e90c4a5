// The validation report as a person sees it: headless Chromium (Debian's chromium) renders index.html to a
// PNG that is not blank, and its DOM holds the charts (bars, curves, sweep) and every class name;
// report.json holds the library's numbers.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/data/image.h"
#include "asl/io/file.h"
#include "asl/metrics/map.h"
#include "asl/report/validation_report.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

std::string read(const fs::path& p) { return asl::io::read_file(p.string()); }


size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
  return n;
}

// Headless Chromium; its own messages (D-Bus, GPU) go to a log file.
int chromium(const std::string& args, const fs::path& log) {
  const std::string cmd = "timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars " + args +
                          " 2>" + log.string();
  return std::system(cmd.c_str());
}

TEST(ValidationReport, RendersInChromiumWithEveryChartAndClass) {
  const asl::test::TempDir tmp("asl_report_test");
  const fs::path dir = tmp.path() / "report";
  // The fixture's medium case: real scores and targets; class names with characters HTML must escape.
  const torch::Tensor scores = asl::test::fixture_npy("metrics", "medium_scores.npy");
  const torch::Tensor targets = asl::test::fixture_npy("metrics", "medium_targets.npy");
  asl::report::ValidationRun run;
  run.checkpoint = "model.pth";
  run.architecture = "tresnet_m";
  run.dataset = "fixture medium";
  run.precision = "fp32";
  run.image_size = 224;
  for (int64_t k = 0; k < scores.size(1); ++k) run.class_names.push_back("class<" + std::to_string(k) + ">&co");
  const std::vector<std::string> photos = {"000000000885.jpg", "dog.jpg", "person.jpg"};
  for (int64_t i = 0; i < scores.size(0); ++i) {
    run.image_paths.push_back((asl::test::fixtures_dir() / "images" / photos[static_cast<size_t>(i % 3)]).string());
  }
  run.scores = scores;
  run.targets = targets;
  asl::report::write_validation_report(dir.string(), run);

  // report.json: the library's numbers.
  const nlohmann::json j = nlohmann::json::parse(read(dir / "report.json"));
  EXPECT_NEAR(j.at("mAP").get<double>(), asl::metrics::mean_average_precision(scores, targets), 1e-9);
  EXPECT_EQ(j.at("classes").size(), static_cast<size_t>(scores.size(1)));
  EXPECT_EQ(j.at("threshold_sweep").size(), 99u);
  EXPECT_NEAR(j.at("at_threshold").at("CF1").get<double>(), asl::metrics::threshold_metrics(scores, targets, 0.8).CF1, 1e-9);
  EXPECT_GT(j.at("false_positives").size(), 0u);
  EXPECT_LE(j.at("false_positives").size() + j.at("missed_positives").size(), 24u);
  // Self-contained: no scripts, no external resources.
  const std::string html = read(dir / "index.html");
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://www.w3.org/2000/svg") == std::string::npos, false);
  EXPECT_EQ(count(html, "src=\"http"), 0u);
  EXPECT_EQ(count(html, "href="), 0u);

  // The DOM as Chromium parsed it.
  const fs::path dom = dir / "dom.html";
  ASSERT_EQ(chromium("--dump-dom file://" + (dir / "index.html").string() + " >" + dom.string(), dir / "chromium.log"), 0)
      << read(dir / "chromium.log");
  const std::string d = read(dom);
  EXPECT_EQ(count(d, "class=\"bar\""), static_cast<size_t>(scores.size(1)));
  EXPECT_EQ(count(d, "class=\"highlight\""), 10u);  // 5 worst + 5 best
  // One faint curve per class, the 10 highlighted again, and CP/CR/CF1/OF1 against the threshold.
  EXPECT_EQ(count(d, "<polyline"), static_cast<size_t>(scores.size(1) + 10 + 4));
  EXPECT_EQ(count(d, "class=\"sweep\""), 1u);
  EXPECT_EQ(count(d, "class=\"pr\""), 1u);
  EXPECT_GT(count(d, "data:image/jpeg;base64,"), 0u);
  for (const auto& name : run.class_names) {
    std::string escaped = name;
    escaped.replace(escaped.find('<'), 1, "&lt;");
    escaped.replace(escaped.find('>'), 1, "&gt;");
    escaped.replace(escaped.find('&', escaped.find("&gt;") + 4), 1, "&amp;");
    EXPECT_NE(d.find(escaped), std::string::npos) << name;
  }

  // The picture: rendered, and not blank (dark text, coloured bars, white page).
  const fs::path png = dir / "report.png";
  ASSERT_EQ(chromium("--window-size=1100,2000 --screenshot=" + png.string() + " file://" + (dir / "index.html").string(),
                     dir / "chromium.log"),
            0)
      << read(dir / "chromium.log");
  const asl::data::Image shot = asl::data::load_image(png.string());
  EXPECT_EQ(shot.width, 1100);
  EXPECT_EQ(shot.height, 2000);
  int64_t white = 0, dark = 0, coloured = 0;
  for (size_t i = 0; i + 2 < shot.pixels.size(); i += 3) {
    const int r = shot.pixels[i], g = shot.pixels[i + 1], b = shot.pixels[i + 2];
    if (r > 245 && g > 245 && b > 245) ++white;
    if (r < 80 && g < 80 && b < 80) ++dark;
    if (std::max({r, g, b}) - std::min({r, g, b}) > 60) ++coloured;
  }
  const double total = static_cast<double>(shot.width * shot.height);
  EXPECT_GT(white / total, 0.3);
  EXPECT_GT(dark / total, 0.002);
  EXPECT_GT(coloured / total, 0.01);
}

}  // namespace
