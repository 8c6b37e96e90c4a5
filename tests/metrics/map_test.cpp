// Metrics against fixtures/metrics: per-class AP (both definitions), mAP, and the threshold metrics.
#include <gtest/gtest.h>

#include <filesystem>

#include "asl/io/npy.h"
#include "asl/metrics/map.h"
#include "test_util.h"

using asl::metrics::ApDefinition;
using asl::test::all_close;

namespace {

// The fixtures hold float64 results of float64 arithmetic: only summation order differs.
constexpr double kRtol = 1e-9;
constexpr double kAtol = 1e-12;  // for values that are exactly 0

::testing::AssertionResult close(double actual, double expected) {
  if (std::abs(actual - expected) <= kAtol + kRtol * std::abs(expected)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "actual " << actual << ", expected " << expected;
}

TEST(MetricsFixtures, EveryCase) {
  const nlohmann::json cases = asl::test::load_json(asl::test::fixtures_dir() / "metrics" / "cases.json");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    SCOPED_TRACE(c.at("case").get<std::string>());
    const torch::Tensor scores = asl::test::fixture_npy("metrics", c.at("scores"));
    const torch::Tensor targets = asl::test::fixture_npy("metrics", c.at("targets"));
    int checked = 0;
    if (c.contains("ap_reference")) {
      const auto ap = asl::metrics::average_precision(scores, targets, ApDefinition::Reference);
      EXPECT_TRUE(all_close(ap, asl::test::fixture_npy("metrics", c.at("ap_reference")), kAtol, kRtol));
      EXPECT_TRUE(close(asl::metrics::mean_average_precision(scores, targets), c.at("mAP_reference").get<double>()));
      ++checked;
    }
    if (c.contains("ap_sklearn")) {
      const auto ap = asl::metrics::average_precision(scores, targets, ApDefinition::TieAware);
      EXPECT_TRUE(all_close(ap, asl::test::fixture_npy("metrics", c.at("ap_sklearn")), kAtol, kRtol));
      EXPECT_TRUE(close(asl::metrics::mean_average_precision(scores, targets, ApDefinition::TieAware),
                        c.at("mAP_sklearn").get<double>()));
      ++checked;
    }
    for (const auto& [key, expected] : c.items()) {
      if (key.rfind("prf@", 0) != 0) continue;
      const double threshold = std::stod(key.substr(4));
      SCOPED_TRACE(key);
      const auto m = asl::metrics::threshold_metrics(scores, targets, threshold);
      EXPECT_TRUE(close(m.CP, expected.at("CP").get<double>()));
      EXPECT_TRUE(close(m.CR, expected.at("CR").get<double>()));
      EXPECT_TRUE(close(m.CF1, expected.at("CF1").get<double>()));
      EXPECT_TRUE(close(m.OP, expected.at("OP").get<double>()));
      EXPECT_TRUE(close(m.OR, expected.at("OR").get<double>()));
      EXPECT_TRUE(close(m.OF1, expected.at("OF1").get<double>()));
      ++checked;
    }
    EXPECT_GT(checked, 0) << "case has nothing to check";
  }
}

// Heavily tied scores (2 to 2^24 levels, constant, sorted and reverse-sorted columns) against the AP
// NumPy 1.24 gives with the reference's argsort()[::-1] ranking (scripts/make_map_ties_fixture.py).
TEST(Metrics, ReferenceTieOrderMatchesNumPy) {
  const std::filesystem::path dir = std::filesystem::path(ASL_SOURCE_DIR) / "tests" / "fixtures";
  const torch::Tensor scores = asl::io::load_npy((dir / "map_ties_scores.npy").string());
  const torch::Tensor targets = asl::io::load_npy((dir / "map_ties_targets.npy").string());
  const torch::Tensor expected = asl::io::load_npy((dir / "map_ties_ap.npy").string());
  ASSERT_EQ(scores.size(1), expected.size(0));
  const torch::Tensor ap = asl::metrics::average_precision(scores, targets, ApDefinition::Reference);
  for (int64_t k = 0; k < ap.size(0); ++k) {
    SCOPED_TRACE("class " + std::to_string(k));
    EXPECT_TRUE(close(ap[k].item<double>(), expected[k].item<double>()));
  }
  // Column order and a strided view change nothing: each class is ranked on its own.
  const torch::Tensor flipped = average_precision(scores.flip(1), targets.flip(1), ApDefinition::Reference).flip(0);
  EXPECT_TRUE(torch::equal(flipped, ap));
}

TEST(Metrics, HandComputedAndEdgeCases) {
  // One class, scores 0.9 (pos), 0.8 (neg), 0.7 (pos): precision@k at the positives = 1 and 2/3.
  const torch::Tensor s = torch::tensor({0.9f, 0.8f, 0.7f}).view({3, 1});
  const torch::Tensor t = torch::tensor({1.f, 0.f, 1.f}).view({3, 1});
  EXPECT_NEAR(asl::metrics::average_precision(s, t)[0].item<double>(), (1.0 + 2.0 / 3.0) / (2 + 1e-8), 1e-15);
  EXPECT_NEAR(asl::metrics::average_precision(s, t, ApDefinition::TieAware)[0].item<double>(), (1.0 + 2.0 / 3.0) / 2,
              1e-15);
  // All tied: the tie-aware AP is the positive rate; no positives scores 0.
  const torch::Tensor tied = torch::full({4, 2}, 0.5f);
  const torch::Tensor tt = torch::tensor({1.f, 0.f, 0.f, 0.f, 1.f, 0.f, 0.f, 0.f}).view({4, 2});
  const auto ap = asl::metrics::average_precision(tied, tt, ApDefinition::TieAware);
  EXPECT_DOUBLE_EQ(ap[0].item<double>(), 0.5);
  EXPECT_DOUBLE_EQ(ap[1].item<double>(), 0.0);
  EXPECT_EQ(asl::metrics::mean_average_precision(torch::zeros({0, 3}), torch::zeros({0, 3})), 0.0);
  EXPECT_THROW(asl::metrics::average_precision(torch::zeros({3, 2}), torch::zeros({3, 3})), c10::Error);
  // Negative and positive scores rank correctly through the radix keys.
  const torch::Tensor mixed = torch::tensor({-2.f, 3.f, -0.5f, 0.f}).view({4, 1});
  const torch::Tensor mt = torch::tensor({0.f, 1.f, 0.f, 1.f}).view({4, 1});
  EXPECT_NEAR(asl::metrics::average_precision(mixed, mt)[0].item<double>(), 2.0 / (2 + 1e-8), 1e-15);
}

}  // namespace
