// ASL losses against the reference fixtures (float32 and float64), against each other, and against
// finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <mutex>
#include <set>
#include <vector>

#include <ATen/Parallel.h>

#include "asl/nn/loss.h"
#include "nn/cpu/asl_loss_blocks.h"
#include "nn/cpu/asl_loss_kernel.h"
#include "test_util.h"

namespace fn = asl::nn::functional;
using asl::nn::AsymmetricLossOptions;
using asl::nn::Reduction;
using asl::test::all_close;
using asl::test::rel_close;

namespace {

// Tolerances (stated once). Float32 runs are compared with the reference's float32 run: they differ
// only in the last bits of exp/log and in summation order. The float64 fixtures were computed by the
// reference from float64 inputs that were stored rounded to float32 (the reference itself, run on the
// stored inputs, misses them by up to ~2e-7 in the loss, see the issue note), so they are compared at
// the float32 tolerance, and the float64 arithmetic is checked at 1e-10 against an independent
// long-double evaluation of the formula on the stored inputs. The gradient's absolute floor in
// float64 covers elements that are exactly 0 in one run and ~1e-17 in the other.
constexpr double kLossRtolF32 = 1e-5;
constexpr double kGradAtolF32 = 1e-6, kGradRtolF32 = 1e-4;
constexpr double kRtolF64 = 1e-10, kGradAtolF64 = 1e-14;
// Composite vs fused in float32 on random logits: their sigmoids may differ in the last bit (Sleef vs
// libmvec exp), and where sigmoid(x) is within a few ulp of the clip margin, 1 - p_t cancels, so a
// 1-ulp difference moves the focusing weight's gradient by up to ~2e-6 (seen: 1.9e-6 at 0.005).
constexpr double kAgreeGradAtolF32 = 1e-5;

// Paper eq. 1-4 per element in long double, written directly from the formula.
long double reference_asl_sum(const torch::Tensor& logits, const torch::Tensor& targets, const nlohmann::json& c) {
  const torch::Tensor x = logits.to(torch::kFloat64).contiguous(), y = targets.to(torch::kFloat64).contiguous();
  const double* xp = x.data_ptr<double>();
  const double* yp = y.data_ptr<double>();
  const long double gn = c.at("gamma_neg").get<double>(), gp = c.at("gamma_pos").get<double>();
  const long double clip = c.at("clip").is_null() ? 0.0L : c.at("clip").get<double>();
  const long double eps = c.at("eps").get<double>();
  long double total = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const long double xi = xp[i], yi = yp[i];
    const long double p = 1.0L / (1.0L + std::exp(-xi));
    long double q = 1.0L - p;
    if (clip > 0) q = std::min(q + clip, 1.0L);
    long double l = yi * std::log(std::max(p, eps)) + (1 - yi) * std::log(std::max(q, eps));
    if (gn > 0 || gp > 0) l *= std::pow(1 - (p * yi + q * (1 - yi)), gp * yi + gn * (1 - yi));
    total -= l;
  }
  return total;
}

enum class Impl { Composite, Fused };
const char* name(Impl i) { return i == Impl::Composite ? "AsymmetricLoss" : "AsymmetricLossOptimized"; }

torch::Tensor run(Impl impl, const torch::Tensor& x, const torch::Tensor& y, const AsymmetricLossOptions& o) {
  return impl == Impl::Composite ? fn::asymmetric_loss(x, y, o) : fn::asymmetric_loss_optimized(x, y, o);
}

AsymmetricLossOptions options_from(const nlohmann::json& c) {
  AsymmetricLossOptions o;
  o.gamma_neg(c.at("gamma_neg").get<double>())
      .gamma_pos(c.at("gamma_pos").get<double>())
      .eps(c.at("eps").get<double>())
      .disable_torch_grad_focal_loss(c.at("disable_torch_grad_focal_loss").get<bool>());
  if (c.at("clip").is_null()) o.clip(c10::nullopt);
  else o.clip(c.at("clip").get<double>());
  return o;
}

struct LossAndGrad {
  torch::Tensor loss, grad;
};

LossAndGrad loss_and_grad(Impl impl, const torch::Tensor& logits, const torch::Tensor& targets,
                          const AsymmetricLossOptions& o, const torch::Tensor& grad_out = {}) {
  torch::Tensor x = logits.detach().clone().requires_grad_(true);
  torch::Tensor loss = run(impl, x, targets, o);
  if (grad_out.defined()) loss.backward(grad_out);
  else loss.backward();
  return {loss.detach(), x.grad()};
}

TEST(AsymmetricLossFixtures, EveryCaseBothImplementationsBothDtypes) {
  const nlohmann::json cases = asl::test::load_json(asl::test::fixtures_dir() / "loss" / "cases.json");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    const std::string id = c.at("case").get<std::string>();
    const torch::Tensor logits = asl::test::fixture_npy("loss", c.at("logits"));
    const torch::Tensor targets = asl::test::fixture_npy("loss", c.at("targets"));
    const AsymmetricLossOptions o = options_from(c);
    for (Impl impl : {Impl::Composite, Impl::Fused}) {
      SCOPED_TRACE(id + " via " + name(impl));
      {
        SCOPED_TRACE("float32");
        auto r = loss_and_grad(impl, logits.to(torch::kFloat32), targets.to(torch::kFloat32), o);
        EXPECT_EQ(r.loss.scalar_type(), torch::kFloat32);
        EXPECT_TRUE(rel_close(r.loss.item<double>(), c.at("loss_f32").get<double>(), kLossRtolF32));
        EXPECT_TRUE(all_close(r.grad, asl::test::fixture_npy("loss", c.at("grad_f32")), kGradAtolF32, kGradRtolF32));
      }
      {
        SCOPED_TRACE("float64");
        auto r = loss_and_grad(impl, logits.to(torch::kFloat64), targets.to(torch::kFloat64), o);
        EXPECT_EQ(r.loss.scalar_type(), torch::kFloat64);
        EXPECT_TRUE(rel_close(r.loss.item<double>(), c.at("loss_f64").get<double>(), kLossRtolF32));
        EXPECT_TRUE(all_close(r.grad, asl::test::fixture_npy("loss", c.at("grad_f64")), kGradAtolF32, kGradRtolF32));
        const double independent = static_cast<double>(reference_asl_sum(logits, targets, c));
        EXPECT_TRUE(rel_close(r.loss.item<double>(), independent, kRtolF64));
        if (impl == Impl::Fused) {
          // The fused backward against autograd through the composite graph, on the fixture's inputs.
          auto a = loss_and_grad(Impl::Composite, logits.to(torch::kFloat64), targets.to(torch::kFloat64), o);
          EXPECT_TRUE(all_close(r.grad, a.grad, kGradAtolF64, kRtolF64));
        }
      }
    }
  }
}

// Single-label ASL per sample in long double, from the formula.
std::vector<long double> reference_single_label(const torch::Tensor& logits, const torch::Tensor& target,
                                                const asl::nn::ASLSingleLabelOptions& o) {
  const torch::Tensor x = logits.to(torch::kFloat64).contiguous();
  const int64_t n = x.size(0), c = x.size(1);
  std::vector<long double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double* row = x.data_ptr<double>() + i * c;
    long double mx = row[0];
    for (int64_t j = 1; j < c; ++j) mx = std::max<long double>(mx, row[j]);
    long double z = 0;
    for (int64_t j = 0; j < c; ++j) z += std::exp(row[j] - mx);
    const int64_t t = target[i].item<int64_t>();
    long double loss = 0;
    for (int64_t j = 0; j < c; ++j) {
      const long double logp = row[j] - mx - std::log(z);
      const long double prob = std::exp(logp);
      const bool is_t = j == t;
      const long double w = std::pow(is_t ? 1 - prob : prob, is_t ? o.gamma_pos() : o.gamma_neg());
      const long double smooth = (is_t ? 1.0L : 0.0L) * (1 - o.eps()) + o.eps() / c;
      loss -= smooth * logp * w;
    }
    out[static_cast<size_t>(i)] = loss;
  }
  return out;
}

TEST(ASLSingleLabelFixtures, EveryCaseBothDtypes) {
  const nlohmann::json cases = asl::test::load_json(asl::test::fixtures_dir() / "single_label" / "cases.json");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    const std::string id = c.at("case").get<std::string>();
    const torch::Tensor logits = asl::test::fixture_npy("single_label", c.at("logits"));
    const torch::Tensor target = asl::test::fixture_npy("single_label", c.at("target"));
    asl::nn::ASLSingleLabelOptions o;
    o.gamma_pos(c.at("gamma_pos").get<double>())
        .gamma_neg(c.at("gamma_neg").get<double>())
        .eps(c.at("eps").get<double>())
        .reduction(asl::nn::parse_reduction(c.at("reduction").get<std::string>()));
    for (auto [dtype, suffix] : {std::pair{torch::kFloat32, "_f32"}, std::pair{torch::kFloat64, "_f64"}}) {
      SCOPED_TRACE(id + suffix);
      torch::Tensor x = logits.to(dtype).clone().requires_grad_(true);
      torch::Tensor loss = fn::asl_single_label(x, target, o);
      loss.sum().backward();  // the fixture's gradient is of the summed loss for reduction "none"
      const auto& expected_loss = c.at(std::string("loss") + suffix);
      if (expected_loss.is_string()) {
        const torch::Tensor e = asl::test::fixture_npy("single_label", expected_loss.get<std::string>());
        EXPECT_TRUE(all_close(loss.detach(), e, 0, kLossRtolF32));
      } else {
        EXPECT_TRUE(rel_close(loss.item<double>(), expected_loss.get<double>(), kLossRtolF32));
      }
      const torch::Tensor eg = asl::test::fixture_npy("single_label", c.at(std::string("grad") + suffix));
      EXPECT_TRUE(all_close(x.grad(), eg, kGradAtolF32, kGradRtolF32));
      if (dtype != torch::kFloat64) continue;
      // Float64 arithmetic against the independent long-double evaluation on the stored inputs.
      const std::vector<long double> per_sample = reference_single_label(logits, target, o);
      long double total = 0;
      for (long double v : per_sample) total += v;
      const torch::Tensor ours = fn::asl_single_label(logits.to(dtype), target,
                                                      asl::nn::ASLSingleLabelOptions(o).reduction(Reduction::None));
      for (size_t i = 0; i < per_sample.size(); ++i) {
        EXPECT_TRUE(rel_close(ours[static_cast<int64_t>(i)].item<double>(), static_cast<double>(per_sample[i]), kRtolF64));
      }
      EXPECT_GT(total, 0);
      // Autograd's gradient against central differences at a sample of elements.
      torch::Tensor xd = logits.to(dtype);
      const int64_t count = std::min<int64_t>(20, xd.numel());
      for (int64_t k = 0; k < count; ++k) {
        const int64_t idx = (k * 7919) % xd.numel();
        const double h = 1e-6;
        torch::Tensor xp = xd.clone(), xm = xd.clone();
        xp.view(-1)[idx] += h;
        xm.view(-1)[idx] -= h;
        const double numeric = (fn::asl_single_label(xp, target, o).sum().item<double>() -
                                fn::asl_single_label(xm, target, o).sum().item<double>()) / (2 * h);
        EXPECT_NEAR(x.grad().view(-1)[idx].item<double>(), numeric, 1e-7 + 1e-6 * std::abs(numeric)) << "element " << idx;
      }
    }
  }
}

TEST(ASLSingleLabel, SumReductionAndModuleForm) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({5, 7}, torch::kFloat64);
  const torch::Tensor t = torch::randint(0, 7, {5}, torch::kLong);
  const auto none = fn::asl_single_label(x, t, asl::nn::ASLSingleLabelOptions().reduction(Reduction::None));
  const auto sum = fn::asl_single_label(x, t, asl::nn::ASLSingleLabelOptions().reduction(Reduction::Sum));
  EXPECT_TRUE(rel_close(sum.item<double>(), none.sum().item<double>(), 1e-14));
  asl::nn::ASLSingleLabel module;
  EXPECT_TRUE(rel_close(module(x, t).item<double>(), none.mean().item<double>(), 1e-14));
  EXPECT_THROW(fn::asl_single_label(x, torch::full({5}, 7, torch::kLong)), c10::Error);
}

// Random logits spread over the saturating range, hard targets, and optionally unknown labels.
struct Inputs {
  torch::Tensor x, y;
};
Inputs random_inputs(int64_t n, int64_t c, torch::Dtype dtype, bool unknown, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor x = (torch::randn({n, c}, torch::kFloat64) * 4).to(dtype);
  torch::Tensor y = (torch::rand({n, c}) < 0.1).to(dtype);
  if (unknown) y = torch::where(torch::rand({n, c}) < 0.2, torch::full_like(y, -1), y);
  return {x, y};
}

TEST(AsymmetricLossAgreement, CompositeAndFusedOverShapesModesReductions) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{0, 80}, {1, 1}, {7, 13}, {128, 80}, {64, 9605}};
  uint64_t seed = 0;
  for (auto [n, c] : shapes) {
    for (bool detach : {true, false}) {
      for (Reduction red : {Reduction::Sum, Reduction::Mean, Reduction::None}) {
        for (bool unknown : {false, true}) {
          for (torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) {
            SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(c) + " detach=" + std::to_string(detach) +
                         " reduction=" + asl::nn::to_string(red) + " unknown=" + std::to_string(unknown) +
                         (dtype == torch::kFloat64 ? " f64" : " f32"));
            const Inputs in = random_inputs(n, c, dtype, unknown, ++seed);
            AsymmetricLossOptions o;
            o.gamma_neg(4).gamma_pos(1).clip(0.05).disable_torch_grad_focal_loss(detach).reduction(red).ignore_unknown(
                unknown);
            torch::Tensor grad_out;
            if (red == Reduction::None) grad_out = torch::rand({n, c}, torch::TensorOptions().dtype(dtype));
            const auto a = loss_and_grad(Impl::Composite, in.x, in.y, o, grad_out);
            const auto b = loss_and_grad(Impl::Fused, in.x, in.y, o, grad_out);
            const bool f64 = dtype == torch::kFloat64;
            if (n == 0 && red == Reduction::Mean) {
              EXPECT_TRUE(a.loss.isnan().item<bool>());  // torch's mean of nothing
              EXPECT_TRUE(b.loss.isnan().item<bool>());
              continue;
            }
            EXPECT_TRUE(all_close(b.loss, a.loss, f64 ? 1e-12 : 1e-6, f64 ? 1e-12 : 1e-5));
            EXPECT_TRUE(all_close(b.grad, a.grad, f64 ? 1e-14 : kAgreeGradAtolF32, f64 ? 1e-11 : kGradRtolF32));
            if (unknown && n > 0) {
              const torch::Tensor mask = in.y.eq(-1);
              const torch::Tensor unknown_grad = b.grad.masked_select(mask);
              if (unknown_grad.numel() > 0) EXPECT_EQ(unknown_grad.abs().max().item<double>(), 0.0);
            }
          }
        }
      }
    }
  }
}

TEST(AsymmetricLossAgreement, NonContiguousInputsAndSoftTargets) {
  torch::manual_seed(11);
  const torch::Tensor x = (torch::randn({80, 32}, torch::kFloat64) * 3).t();  // 32 x 80, transposed view
  const torch::Tensor y = torch::rand({80, 32}, torch::kFloat64).t();
  ASSERT_FALSE(x.is_contiguous());
  for (bool detach : {true, false}) {
    AsymmetricLossOptions o;
    o.gamma_neg(3).gamma_pos(0.5).clip(0.1).disable_torch_grad_focal_loss(detach);
    const auto a = loss_and_grad(Impl::Composite, x, y, o);
    const auto b = loss_and_grad(Impl::Fused, x, y, o);
    EXPECT_TRUE(all_close(b.loss, a.loss, 0, 1e-12));
    EXPECT_TRUE(all_close(b.grad, a.grad, 1e-14, 1e-11));
  }
}

// The fused kernel takes a faster path for chunks whose targets are all 0 or 1 (or -1 where unknown
// labels are ignored), with integer focusing powers and eps >= FLT_MIN. Everything else must still
// follow the formula: -1 targets when unknown labels are NOT ignored (y = -1 is then just a number), a
// lone soft target among hard ones (one chunk of a block takes the general path), eps of 0 or below
// FLT_MIN, and focusing powers of every kind.
TEST(AsymmetricLossAgreement, TargetsAndParametersOutsideTheHardPath) {
  torch::manual_seed(12);
  const torch::Tensor x = torch::randn({3, 1000}, torch::kFloat64) * 4;  // 3 blocks of 1024, 12 chunks
  torch::Tensor hard = (torch::rand({3, 1000}) < 0.1).to(torch::kFloat64);
  torch::Tensor minus_one = hard.clone();
  minus_one.view(-1).slice(0, 0, 3000, 7).fill_(-1);
  torch::Tensor lone_soft = hard.clone();
  lone_soft.view(-1)[1300] = 0.25;
  lone_soft.view(-1)[2999] = 0.75;
  struct Powers {
    double gp, gn;
  };
  for (const auto& [name, y] : {std::pair<const char*, torch::Tensor>{"hard", hard}, {"minus one", minus_one},
                               {"lone soft", lone_soft}}) {
    for (Powers g : {Powers{0, 4}, Powers{1, 4}, Powers{2, 2}, Powers{3, 5}, Powers{0, 0}, Powers{1.5, 4}}) {
      for (double eps : {1e-8, 0.0, 1e-40}) {
        for (torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) {
          const bool f64 = dtype == torch::kFloat64;
          SCOPED_TRACE(c10::str(name, " gamma_pos=", g.gp, " gamma_neg=", g.gn, " eps=", eps, f64 ? " f64" : " f32"));
          AsymmetricLossOptions o;
          o.gamma_pos(g.gp).gamma_neg(g.gn).clip(0.05).eps(eps).disable_torch_grad_focal_loss(false);
          const auto a = loss_and_grad(Impl::Composite, x.to(dtype), y.to(dtype), o);
          const auto b = loss_and_grad(Impl::Fused, x.to(dtype), y.to(dtype), o);
          EXPECT_TRUE(all_close(b.loss, a.loss, 0, f64 ? 1e-12 : kLossRtolF32));
          EXPECT_TRUE(all_close(b.grad, a.grad, f64 ? 1e-14 : kAgreeGradAtolF32, f64 ? 1e-11 : kGradRtolF32));
        }
      }
    }
  }
}

// The fused kernel's float32 sigmoid has its own exp: logits around its range limits (1 + exp(-x)
// rounding to 1, exp's clamp at 80, underflow near 87.3, overflow at 88.72, infinities) give the
// composite implementation's losses and gradients, per element.
TEST(AsymmetricLossAgreement, SigmoidRangeEdgesFloat32) {
  std::vector<float> edges = {0.0f, 16.6f, 17.0f, 79.9f, 80.0f, 80.1f, 87.3f, 87.4f, 88.72f, 88.7229f,
                              88.75f, 89.0f, 103.9f, 104.0f, 150.0f, std::numeric_limits<float>::infinity()};
  std::vector<float> values;
  for (float e : edges) {
    values.push_back(e);
    values.push_back(-e);
  }
  const int64_t n = static_cast<int64_t>(values.size());
  const torch::Tensor x = torch::from_blob(values.data(), {1, n}, torch::kFloat32).clone().repeat({2, 1});
  const torch::Tensor y = torch::cat({torch::zeros({1, n}), torch::ones({1, n})});  // every logit with 0 and 1
  for (bool detach : {true, false}) {
    AsymmetricLossOptions o;
    o.gamma_neg(4).gamma_pos(1).clip(0.05).disable_torch_grad_focal_loss(detach).reduction(Reduction::None);
    const auto a = loss_and_grad(Impl::Composite, x, y, o, torch::ones({2, n}));
    const auto b = loss_and_grad(Impl::Fused, x, y, o, torch::ones({2, n}));
    EXPECT_TRUE(all_close(b.loss, a.loss, 1e-6, kLossRtolF32));
    EXPECT_TRUE(all_close(b.grad, a.grad, kAgreeGradAtolF32, kGradRtolF32));
  }
}

TEST(AsymmetricLossOptimized, FiniteDifferenceGradientFloat64) {
  torch::manual_seed(5);
  // Logits kept away from the clip kink at sigmoid(x) = clip and from saturation.
  torch::Tensor x = torch::rand({3, 5}, torch::kFloat64) * 6 - 2;
  const torch::Tensor y = (torch::rand({3, 5}) < 0.4).to(torch::kFloat64);
  for (auto o : {AsymmetricLossOptions().disable_torch_grad_focal_loss(false),
                 AsymmetricLossOptions().gamma_neg(2).gamma_pos(2).clip(c10::nullopt).disable_torch_grad_focal_loss(false),
                 AsymmetricLossOptions().gamma_neg(4).gamma_pos(0).clip(0.05).disable_torch_grad_focal_loss(false)
                     .reduction(Reduction::Mean)}) {
    const auto r = loss_and_grad(Impl::Fused, x, y, o);
    const double h = 1e-6;
    torch::Tensor numeric = torch::zeros_like(x);
    for (int64_t i = 0; i < x.numel(); ++i) {
      torch::Tensor xp = x.clone(), xm = x.clone();
      xp.view(-1)[i] += h;
      xm.view(-1)[i] -= h;
      numeric.view(-1)[i] = (fn::asymmetric_loss_optimized(xp, y, o).item<double>() -
                             fn::asymmetric_loss_optimized(xm, y, o).item<double>()) /
                            (2 * h);
    }
    EXPECT_TRUE(all_close(r.grad, numeric, 1e-8, 1e-6));
  }
}

TEST(AsymmetricLossOptimized, HalfAndBFloat16ComputeInFloat32) {
  const Inputs in = random_inputs(16, 80, torch::kFloat32, false, 42);
  for (torch::Dtype low : {torch::kHalf, torch::kBFloat16}) {
    const torch::Tensor xl = in.x.to(low);
    torch::Tensor x = xl.clone().requires_grad_(true);
    torch::Tensor loss = fn::asymmetric_loss_optimized(x, in.y);
    loss.backward();
    EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
    EXPECT_EQ(x.grad().scalar_type(), low);
    const auto ref = loss_and_grad(Impl::Composite, xl.to(torch::kFloat32), in.y, asl::nn::AsymmetricLossOptimizedOptions());
    EXPECT_TRUE(rel_close(loss.item<double>(), ref.loss.item<double>(), 1e-5));
    // Only the final rounding to the low-precision gradient differs: bfloat16 keeps 8 significant bits.
    EXPECT_TRUE(all_close(x.grad().to(torch::kFloat32), ref.grad, 1e-6, 1.0 / 128));
  }
}

TEST(AsymmetricLossModules, DefaultsAreTheReferences) {
  asl::nn::AsymmetricLoss a;
  asl::nn::AsymmetricLossOptimized b;
  EXPECT_EQ(a->options.gamma_neg(), 4);
  EXPECT_EQ(a->options.gamma_pos(), 1);
  EXPECT_EQ(a->options.clip().value(), 0.05);
  EXPECT_EQ(a->options.eps(), 1e-8);
  EXPECT_TRUE(a->options.disable_torch_grad_focal_loss());
  EXPECT_FALSE(b->options.disable_torch_grad_focal_loss());
  const Inputs in = random_inputs(4, 6, torch::kFloat64, false, 9);
  EXPECT_TRUE(rel_close(a(in.x, in.y).item<double>(), fn::asymmetric_loss(in.x, in.y).item<double>(), 0));
  std::ostringstream s;
  s << *b;
  EXPECT_NE(s.str().find("AsymmetricLossOptimized(gamma_neg=4"), std::string::npos) << s.str();
}

TEST(AsymmetricLossErrors, BadInputsAreClearErrors) {
  const torch::Tensor x = torch::randn({4, 3});
  for (Impl impl : {Impl::Composite, Impl::Fused}) {
    try {
      run(impl, x, torch::zeros({4, 2}), {});
      ADD_FAILURE() << "shape mismatch accepted";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("differs from targets shape"), std::string::npos) << e.what();
    }
    try {
      run(impl, torch::ones({4, 3}, torch::kLong), torch::zeros({4, 3}), {});
      ADD_FAILURE() << "integer logits accepted";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("floating-point"), std::string::npos) << e.what();
    }
  }
  // The kernel itself refuses a tensor that is not on the CPU (no CUDA here: the meta device stands in).
  const torch::Tensor meta = torch::empty({4, 3}, torch::TensorOptions().device(torch::kMeta));
  try {
    asl::nn::cpu::asl_forward_cpu(meta, meta, {}, false);
    ADD_FAILURE() << "non-CPU tensor accepted by the CPU kernel";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be on the CPU"), std::string::npos) << e.what();
  }
  EXPECT_THROW(asl::nn::parse_reduction("avg"), std::invalid_argument);
}

TEST(AsymmetricLossErrors, NaNLogitsGiveNaNLoss) {
  torch::Tensor x = torch::randn({2, 5});
  x[1][2] = std::numeric_limits<float>::quiet_NaN();
  const torch::Tensor y = torch::zeros({2, 5});
  EXPECT_TRUE(fn::asymmetric_loss(x, y).isnan().item<bool>());
  EXPECT_TRUE(fn::asymmetric_loss_optimized(x, y).isnan().item<bool>());
}

}  // namespace

namespace {

// Every instruction-set build of the fused loops (the one the dispatcher picks and the others this
// CPU can run) against the composite implementation, float64 and float32, hard and soft targets.
TEST(AsymmetricLossKernels, EveryInstructionSetAgreesWithComposite) {
  namespace cpu = asl::nn::cpu;
  __builtin_cpu_init();
  std::vector<cpu::BlockKernels> variants = {cpu::isa_base::kernels()};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) variants.push_back(cpu::isa_avx2::kernels());
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    variants.push_back(cpu::isa_avx512::kernels());
  }
  for (bool soft : {false, true}) {
    torch::manual_seed(soft ? 21 : 20);
    const torch::Tensor x = torch::randn({33, 97}, torch::kFloat64) * 4;
    torch::Tensor y = soft ? torch::rand({33, 97}, torch::kFloat64) : (torch::rand({33, 97}) < 0.2).to(torch::kFloat64);
    y.view(-1)[5] = -1;  // one unknown label
    for (bool detach : {true, false}) {
      const AsymmetricLossOptions o =
          AsymmetricLossOptions().gamma_neg(4).gamma_pos(1).clip(0.05).disable_torch_grad_focal_loss(detach)
              .reduction(Reduction::None).ignore_unknown(true);
      torch::Tensor xr = x.clone().requires_grad_(true);
      const torch::Tensor expected = fn::asymmetric_loss(xr, y, o);
      expected.sum().backward();
      cpu::BlockParams p;
      p.clip = 0.05;
      p.gamma_neg = 4;
      p.gamma_pos = 1;
      p.detach = detach;
      p.ignore_unknown = true;
      for (const auto& k : variants) {
        SCOPED_TRACE(std::string(k.isa) + (soft ? " soft" : " hard") + (detach ? " detach" : ""));
        const int64_t n = x.numel();
        torch::Tensor loss64 = torch::empty_like(x), grad64 = torch::empty_like(x);
        k.forward_f64(x.data_ptr<double>(), y.data_ptr<double>(), loss64.data_ptr<double>(), n, p);
        k.backward_f64(x.data_ptr<double>(), y.data_ptr<double>(), nullptr, 1.0, grad64.data_ptr<double>(), n, p);
        EXPECT_TRUE(all_close(loss64, expected.detach(), 1e-14, 1e-12));
        EXPECT_TRUE(all_close(grad64, xr.grad(), 1e-14, 1e-11));
        const double sum64 = k.forward_f64(x.data_ptr<double>(), y.data_ptr<double>(), nullptr, n, p);
        EXPECT_TRUE(rel_close(sum64, expected.sum().item<double>(), 1e-12));
        const torch::Tensor xf = x.to(torch::kFloat32), yf = y.to(torch::kFloat32);
        torch::Tensor loss32 = torch::empty_like(xf), grad32 = torch::empty_like(xf);
        k.forward_f32(xf.data_ptr<float>(), yf.data_ptr<float>(), loss32.data_ptr<float>(), n, p);
        k.backward_f32(xf.data_ptr<float>(), yf.data_ptr<float>(), nullptr, 1.0f, grad32.data_ptr<float>(), n, p);
        EXPECT_TRUE(all_close(loss32, expected.detach(), 1e-6, kLossRtolF32));
        EXPECT_TRUE(all_close(grad32, xr.grad(), kAgreeGradAtolF32, kGradRtolF32));
        const double sum32 = k.forward_f32(xf.data_ptr<float>(), yf.data_ptr<float>(), nullptr, n, p);
        EXPECT_TRUE(rel_close(sum32, expected.sum().item<double>(), kLossRtolF32));
      }
    }
  }
}

}  // namespace

namespace {

// at::parallel_for is a header template around '#pragma omp parallel': code built without -fopenmp
// compiles it to a serial loop without a word. The fused kernel and the metrics rely on it.
TEST(Build, ParallelForRunsOnSeveralThreads) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<int> threads;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(at::get_thread_num());
  });
  at::set_num_threads(before);
  EXPECT_EQ(threads.size(), 2u);
}

}  // namespace

namespace {

TEST(AsymmetricLossOptimized, AutogradGraphBehavesLikeBuiltInOps) {
  torch::manual_seed(5);
  const torch::Tensor x0 = torch::randn({6, 9}) * 2;
  const torch::Tensor y = (torch::rand({6, 9}) < 0.3).to(torch::kFloat32);
  const auto o = asl::nn::AsymmetricLossOptions().gamma_neg(4).gamma_pos(1).clip(0.05);
  // retain_graph: a second backward accumulates the same gradient again.
  torch::Tensor x = x0.clone().requires_grad_(true);
  torch::Tensor loss = asl::nn::functional::asymmetric_loss_optimized(x, y, o);
  EXPECT_EQ(loss.grad_fn()->name(), "AslFusedBackward");
  loss.backward({}, /*retain_graph=*/true);
  const torch::Tensor once = x.grad().clone();
  loss.backward();
  EXPECT_TRUE(torch::allclose(x.grad(), 2 * once, 1e-6, 1e-7));
  // Without it, the saved inputs are released and a second backward is a clear error.
  torch::Tensor x2 = x0.clone().requires_grad_(true);
  torch::Tensor loss2 = asl::nn::functional::asymmetric_loss_optimized(x2 * 1.0, y, o);
  loss2.backward();
  EXPECT_THROW(loss2.backward(), c10::Error);
  // Logits changed in place after the forward: autograd refuses, as for its own ops.
  torch::Tensor x3 = x0.clone().requires_grad_(true);
  torch::Tensor z = x3 * 1.0;
  torch::Tensor loss3 = asl::nn::functional::asymmetric_loss_optimized(z, y, o);
  {
    torch::NoGradGuard no_grad;
    z.add_(1.0);
  }
  EXPECT_THROW(loss3.backward(), c10::Error);
  // Targets that require grad get none; the logits' gradient is unchanged.
  torch::Tensor x4 = x0.clone().requires_grad_(true);
  torch::Tensor y4 = y.clone().requires_grad_(true);
  asl::nn::functional::asymmetric_loss_optimized(x4, y4, o).backward();
  EXPECT_FALSE(y4.grad().defined());
  EXPECT_TRUE(torch::allclose(x4.grad(), once, 1e-6, 1e-7));
  // No graph when grad mode is off.
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(asl::nn::functional::asymmetric_loss_optimized(x, y, o).requires_grad());
}

}  // namespace
