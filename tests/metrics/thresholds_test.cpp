// Per-class thresholds: the best-F1 search against a brute-force float64 search on the fixture scores,
// the per-class threshold metrics against the fixtures' global ones, and the thresholds file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "asl/metrics/map.h"
#include "asl/metrics/thresholds.h"
#include "test_util.h"

namespace {

// Every threshold "score > t" can act on: 0 and each distinct score; F1 counted directly in float64 for
// each; the best one with ties to the higher threshold. O(N^2) per class: independent of the sort the
// library uses.
struct Best {
  double threshold, f1;
};
Best brute_force(const std::vector<float>& s, const std::vector<bool>& y) {
  std::set<double> candidates{0.0};
  for (float v : s) candidates.insert(static_cast<double>(v));
  Best best{-1, -1};
  for (auto it = candidates.rbegin(); it != candidates.rend(); ++it) {
    double tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const bool predicted = static_cast<double>(s[i]) > *it;
      tp += predicted && y[i];
      fp += predicted && !y[i];
      fn += !predicted && y[i];
    }
    const double f1 = tp > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;
    if (f1 > best.f1) best = {*it, f1};
  }
  return best;
}

TEST(Thresholds, BestF1MatchesBruteForceOnEveryFixture) {
  const nlohmann::json cases = asl::test::load_json(asl::test::fixtures_dir() / "metrics" / "cases.json");
  int classes_checked = 0, untuned = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.at("case").get<std::string>());
    const torch::Tensor scores = asl::test::fixture_npy("metrics", c.at("scores")).to(torch::kFloat32);
    const torch::Tensor targets = asl::test::fixture_npy("metrics", c.at("targets"));
    const auto tuned = asl::metrics::tune_thresholds(scores, targets, 0.8);
    ASSERT_EQ(static_cast<int64_t>(tuned.size()), scores.size(1));
    const int64_t classes = std::min<int64_t>(scores.size(1), 40);  // the O(N^2) search on the first 40
    for (int64_t k = 0; k < classes; ++k) {
      std::vector<float> s;
      std::vector<bool> y;
      for (int64_t i = 0; i < scores.size(0); ++i) {
        s.push_back(scores[i][k].item<float>());
        y.push_back(targets[i][k].item<double>() == 1);
      }
      const auto& t = tuned[static_cast<size_t>(k)];
      const int64_t positives = std::count(y.begin(), y.end(), true);
      EXPECT_EQ(t.positives, positives);
      if (positives == 0) {
        EXPECT_FALSE(t.tuned);
        EXPECT_EQ(t.threshold, 0.8);  // keeps the global one
        ++untuned;
        continue;
      }
      const Best b = brute_force(s, y);
      EXPECT_EQ(t.threshold, b.threshold) << "class " << k;
      EXPECT_NEAR(t.f1, b.f1, 1e-12) << "class " << k;
      EXPECT_NEAR(2 * t.precision * t.recall / std::max(1e-300, t.precision + t.recall), t.f1, 1e-12);
      ++classes_checked;
    }
  }
  EXPECT_GT(classes_checked, 40);
  EXPECT_GT(untuned, 0) << "the empty_class fixture should exercise a class without positives";
}

TEST(Thresholds, TiesGoToTheHigherThreshold) {
  // Scores 0.9 (positive), 0.6 and 0.6 (negatives), 0.3 (positive). t = 0.6 predicts {0.9}: F1 = 2/(2+0+1)
  // = 2/3; t = 0.3 predicts three: 2/(2+2+1) = 0.4; t = 0 predicts all four: 4/(4+2+0) = 2/3. The tie
  // between 0.6 and 0 goes to 0.6.
  const auto scores = torch::tensor({0.9f, 0.6f, 0.6f, 0.3f}).view({4, 1});
  const auto targets = torch::tensor({1.0f, 0.0f, 0.0f, 1.0f}).view({4, 1});
  const auto t = asl::metrics::tune_thresholds(scores, targets, 0.5)[0];
  EXPECT_FLOAT_EQ(static_cast<float>(t.threshold), 0.6f);
  EXPECT_NEAR(t.f1, 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(t.precision, 1.0, 1e-12);
  EXPECT_NEAR(t.recall, 0.5, 1e-12);
}

TEST(Thresholds, PerClassMetricsEqualTheGlobalOnesForEqualThresholds) {
  const nlohmann::json cases = asl::test::load_json(asl::test::fixtures_dir() / "metrics" / "cases.json");
  for (const auto& c : cases) {
    if (!c.contains("prf@0.7")) continue;
    SCOPED_TRACE(c.at("case").get<std::string>());
    const torch::Tensor scores = asl::test::fixture_npy("metrics", c.at("scores"));
    const torch::Tensor targets = asl::test::fixture_npy("metrics", c.at("targets"));
    const auto m = asl::metrics::threshold_metrics(scores, targets, torch::full({scores.size(1)}, 0.7, torch::kFloat64));
    const auto& e = c.at("prf@0.7");
    EXPECT_NEAR(m.CF1, e.at("CF1").get<double>(), 1e-9);
    EXPECT_NEAR(m.OF1, e.at("OF1").get<double>(), 1e-9);
    EXPECT_NEAR(m.CP, e.at("CP").get<double>(), 1e-9);
  }
}

TEST(Thresholds, FileRoundTripAndMismatchedClasses) {
  const auto dir = std::filesystem::temp_directory_path() / "asl_thresholds_test";
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "t.json").string();
  std::vector<asl::metrics::ClassThreshold> t(2);
  t[0].threshold = 0.25;
  t[0].tuned = true;
  t[1].threshold = 0.7;
  asl::metrics::save_thresholds(file, {"cat", "dog"}, t, 0.7);
  const auto f = asl::metrics::load_thresholds(file, {"cat", "dog"});
  EXPECT_EQ(f.thresholds, (std::vector<double>{0.25, 0.7}));
  EXPECT_EQ(f.global_threshold, 0.7);
  const auto error_of = [&](const std::vector<std::string>& names) {
    try {
      asl::metrics::load_thresholds(file, names);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"cat", "bird"}).find("class 1 is 'dog' but the model's is 'bird'"), std::string::npos);
  EXPECT_NE(error_of({"cat"}).find("2 classes but the model has 1"), std::string::npos);
  std::ofstream(dir / "bad.json") << "{\"classes\": 3}";
  try {
    asl::metrics::load_thresholds((dir / "bad.json").string(), {"cat"});
    ADD_FAILURE();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
