// One-cycle schedule vs PyTorch 1.13 OneCycleLR (tests/fixtures/onecycle.json, from scripts/make_onecycle_fixture.py).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "asl/train/schedule.h"

namespace {

// Same formulas in the same order as PyTorch, both in double: agreement to the last bits; 1e-12 leaves
// room for a different libm cos.
constexpr double kRelTol = 1e-12;

nlohmann::json load_fixture() {
  const std::filesystem::path path = std::filesystem::path(ASL_SOURCE_DIR) / "tests" / "fixtures" / "onecycle.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return nlohmann::json::parse(in);
}

asl::train::OneCycleOptions options_of(const nlohmann::json& c) {
  asl::train::OneCycleOptions o;
  o.max_lr = c.at("max_lr").get<double>();
  o.total_steps = c.at("total_steps").get<int64_t>();
  o.pct_start = c.at("pct_start").get<double>();
  o.anneal = c.at("anneal_strategy").get<std::string>() == "cos" ? asl::train::Anneal::cos : asl::train::Anneal::linear;
  o.div_factor = c.at("div_factor").get<double>();
  o.final_div_factor = c.at("final_div_factor").get<double>();
  o.cycle_momentum = c.at("cycle_momentum").get<bool>();
  o.base_momentum = c.at("base_momentum").get<double>();
  o.max_momentum = c.at("max_momentum").get<double>();
  o.three_phase = c.at("three_phase").get<bool>();
  return o;
}

bool close(double a, double e) { return std::abs(a - e) <= kRelTol * std::abs(e); }

TEST(OneCycleSchedule, MatchesPyTorchAtEveryStep) {
  const nlohmann::json doc = load_fixture();
  int checked_cases = 0;
  for (const auto& c : doc.at("cases")) {
    const asl::train::OneCycleOptions o = options_of(c);
    SCOPED_TRACE("total_steps " + std::to_string(o.total_steps) + " max_lr " + std::to_string(o.max_lr));
    if (c.contains("error")) continue;  // covered by RefusesWhatPyTorchCannotCompute
    const asl::train::OneCycleSchedule schedule(o);
    const auto& lr = c.at("lr");
    const auto& beta1 = c.at("beta1");
    ASSERT_EQ(lr.size(), static_cast<size_t>(o.total_steps + 1));
    for (int64_t step = 0; step <= o.total_steps; ++step) {
      const asl::train::OneCyclePoint p = schedule.at(step);
      EXPECT_TRUE(close(p.lr, lr[step].get<double>()))
          << "lr at step " << step << ": " << p.lr << " vs " << lr[step].get<double>();
      if (o.cycle_momentum) {
        EXPECT_TRUE(close(p.momentum, beta1[step].get<double>()))
            << "beta1 at step " << step << ": " << p.momentum << " vs " << beta1[step].get<double>();
      }
    }
    ++checked_cases;
  }
  EXPECT_GE(checked_cases, 10);
}

TEST(OneCycleSchedule, RefusesWhatPyTorchCannotCompute) {
  const nlohmann::json doc = load_fixture();
  int refused = 0;
  for (const auto& c : doc.at("cases")) {
    if (!c.contains("error")) continue;
    EXPECT_THROW(asl::train::OneCycleSchedule{options_of(c)}, std::runtime_error);
    ++refused;
  }
  EXPECT_GE(refused, 1);
}

TEST(OneCycleSchedule, ReferenceRecipeEndpoints) {
  asl::train::OneCycleOptions o;
  o.max_lr = 2e-4;
  o.total_steps = 1000;
  const asl::train::OneCycleSchedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 2e-4 / 25);
  EXPECT_DOUBLE_EQ(s.momentum(0), 0.95);
  EXPECT_DOUBLE_EQ(s.lr(199), 2e-4);  // the peak at pct_start · total − 1
  EXPECT_DOUBLE_EQ(s.momentum(199), 0.85);
  EXPECT_DOUBLE_EQ(s.lr(999), 2e-4 / 25 / 1e4);
  EXPECT_DOUBLE_EQ(s.momentum(999), 0.95);
  EXPECT_NO_THROW(s.at(1000));
  EXPECT_THROW(s.at(1001), std::runtime_error);
  EXPECT_THROW(s.at(-1), std::runtime_error);
}

TEST(OneCycleSchedule, RejectsBadOptions) {
  asl::train::OneCycleOptions o;
  o.total_steps = 0;
  EXPECT_THROW(asl::train::OneCycleSchedule{o}, std::runtime_error);
  o.total_steps = 100;
  o.pct_start = 1.5;
  EXPECT_THROW(asl::train::OneCycleSchedule{o}, std::runtime_error);
  o.pct_start = 0.2;
  o.max_lr = 0;
  EXPECT_THROW(asl::train::OneCycleSchedule{o}, std::runtime_error);
}

}  // namespace
