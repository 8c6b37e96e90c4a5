// ASL losses against the reference fixtures (float32 and float64), against each other, and against
// finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "asl/nn/loss.h"
#include "nn/cpu/asl_loss_kernel.h"
#include "test_util.h"

namespace fn = asl::nn::functional;
using asl::nn::AsymmetricLossOptions;
using asl::nn::Reduction;
using asl::test::all_close;
using asl::test::rel_close;

namespace {

// Tolerances (stated once): float32 runs are compared with the reference's float32 run, so they only
// differ by the last bits of exp/log and summation order; float64 runs agree to ~1e-15, and 1e-10
// leaves room for summation order over 1.2M elements. The gradient's absolute floor in float64 covers
// elements that are exactly 0 in one run and ~1e-17 in the other.
constexpr double kLossRtolF32 = 1e-5;
constexpr double kGradAtolF32 = 1e-6, kGradRtolF32 = 1e-4;
constexpr double kRtolF64 = 1e-10, kGradAtolF64 = 1e-14;

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
        EXPECT_TRUE(rel_close(r.loss.item<double>(), c.at("loss_f64").get<double>(), kRtolF64));
        EXPECT_TRUE(all_close(r.grad, asl::test::fixture_npy("loss", c.at("grad_f64")), kGradAtolF64, kRtolF64));
      }
    }
  }
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
      const bool f32 = dtype == torch::kFloat32;
      torch::Tensor x = logits.to(dtype).requires_grad_(true);
      torch::Tensor loss = fn::asl_single_label(x, target, o);
      loss.sum().backward();  // the fixture's gradient is of the summed loss for reduction "none"
      const auto& expected_loss = c.at(std::string("loss") + suffix);
      if (expected_loss.is_string()) {
        const torch::Tensor e = asl::test::fixture_npy("single_label", expected_loss.get<std::string>());
        EXPECT_TRUE(all_close(loss.detach(), e, 0, f32 ? kLossRtolF32 : kRtolF64));
      } else {
        EXPECT_TRUE(rel_close(loss.item<double>(), expected_loss.get<double>(), f32 ? kLossRtolF32 : kRtolF64));
      }
      const torch::Tensor eg = asl::test::fixture_npy("single_label", c.at(std::string("grad") + suffix));
      EXPECT_TRUE(all_close(x.grad(), eg, f32 ? kGradAtolF32 : kGradAtolF64, f32 ? kGradRtolF32 : kRtolF64));
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
            EXPECT_TRUE(all_close(b.grad, a.grad, f64 ? 1e-14 : kGradAtolF32, f64 ? 1e-11 : kGradRtolF32));
            if (unknown && n > 0) {
              const torch::Tensor mask = in.y.eq(-1);
              EXPECT_EQ(b.grad.masked_select(mask).abs().max().item<double>(), 0.0);
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
