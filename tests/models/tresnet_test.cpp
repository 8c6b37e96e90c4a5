// TResNet against the reference: fixture checkpoints (logits, loss, gradients, running stats), the full-size
// manifests, the registry, the building blocks and the multiply-add count.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/models/registry.h"
#include "asl/models/tresnet.h"
#include "asl/runtime.h"
#include "asl/nn/autocast.h"
#include "asl/nn/layers.h"
#include "asl/nn/loss.h"
#include "test_util.h"

namespace {

using asl::models::TResNet;
using asl::models::TResNetOptions;
using asl::test::all_close;
using nlohmann::json;

// Tolerances from the issue: logits and running statistics are float32 sums of thousands of terms
// (abs 1e-4 + rel 1e-4); gradients pass through every layer twice (abs 1e-5 + rel 1e-3).
constexpr double kLogitAtol = 1e-4, kLogitRtol = 1e-4;
constexpr double kGradAtol = 1e-5, kGradRtol = 1e-3;
constexpr double kLossRtol = 1e-5;

const char* kSub = "tresnet";

json cases() { return asl::test::load_json(asl::test::fixtures_dir() / kSub / "cases.json"); }

TResNetOptions options_from_spec(const json& spec) {
  TResNetOptions o;
  o.layers(spec.at("layers").get<std::vector<int64_t>>())
      .num_classes(spec.at("num_classes").get<int64_t>())
      .width_factor(spec.value("width_factor", 1.0))
      .do_bottleneck_head(spec.value("do_bottleneck_head", false));
  if (spec.contains("in_chans")) o.in_chans(spec.at("in_chans").get<int64_t>());
  return o;
}

asl::nn::AsymmetricLossOptions loss_from_config(const json& c) {
  asl::nn::AsymmetricLossOptions o;
  o.gamma_neg(c.value("gamma_neg", 4.0)).gamma_pos(c.value("gamma_pos", 1.0)).eps(c.value("eps", 1e-8));
  o.disable_torch_grad_focal_loss(c.value("disable_torch_grad_focal_loss", true));
  if (c.contains("clip") && !c.at("clip").is_null()) {
    o.clip(c.at("clip").get<double>());
  } else {
    o.clip(c10::nullopt);
  }
  return o;
}

TResNet load_fixture_model(const json& entry, const std::string& checkpoint_field) {
  TResNet model(options_from_spec(entry.at("spec")));
  const auto path = asl::test::fixtures_dir() / kSub / entry.at(checkpoint_field).get<std::string>();
  const auto ckpt = asl::io::load_checkpoint(path.string());
  asl::io::load_state_dict(*model, ckpt.model);  // strict: every key, no extras, same shapes
  return model;
}

torch::Tensor named_tensor(torch::nn::Module& module, const std::string& key) {
  const auto params = module.named_parameters();
  if (const auto* p = params.find(key)) return *p;
  const auto buffers = module.named_buffers();
  if (const auto* b = buffers.find(key)) return *b;
  throw std::runtime_error("no parameter or buffer '" + key + "'");
}

// ---- fixtures ------------------------------------------------------------

TEST(TResNetFixture, EvalLogitsZipAndLegacy) {
  int checked = 0;
  const auto all = cases();  // items() refers into it
  for (const auto& [name, entry] : all.items()) {
    SCOPED_TRACE(name);
    const auto input = asl::test::fixture_npy(kSub, entry.at("input"));
    const auto expected = asl::test::fixture_npy(kSub, entry.at("eval_logits"));
    for (const char* field : {"checkpoint", "checkpoint_legacy"}) {
      if (!entry.contains(field)) continue;
      SCOPED_TRACE(field);
      auto model = load_fixture_model(entry, field);
      model->eval();
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(all_close(model->forward(input), expected, kLogitAtol, kLogitRtol));
      ++checked;
    }
  }
  EXPECT_GE(checked, 3);  // small (zip + legacy) and small_bhead
}

TEST(TResNetFixture, TrainLogitsLossGradientsRunningStats) {
  int checked = 0;
  const auto all = cases();  // items() refers into it
  for (const auto& [name, entry] : all.items()) {
    SCOPED_TRACE(name);
    auto model = load_fixture_model(entry, "checkpoint");
    model->train();
    const auto input = asl::test::fixture_npy(kSub, entry.at("input")).requires_grad_(true);
    const auto logits = model->forward(input);
    EXPECT_TRUE(all_close(logits, asl::test::fixture_npy(kSub, entry.at("train_logits")), kLogitAtol, kLogitRtol));

    for (const auto& [key, file] : entry.at("running_stats_after_train_forward").items()) {
      SCOPED_TRACE(key);
      EXPECT_TRUE(all_close(named_tensor(*model, key), asl::test::fixture_npy(kSub, file), kLogitAtol, kLogitRtol));
    }

    const auto targets = asl::test::fixture_npy(kSub, entry.at("train_targets"));
    const auto loss = asl::nn::functional::asymmetric_loss(logits, targets, loss_from_config(entry.at("train_loss_config")));
    EXPECT_TRUE(asl::test::rel_close(loss.item<double>(), entry.at("train_loss").get<double>(), kLossRtol));
    loss.backward();

    for (const auto& [key, file] : entry.at("param_grads").items()) {
      SCOPED_TRACE(key);
      const auto grad = named_tensor(*model, key).grad();
      ASSERT_TRUE(grad.defined());
      EXPECT_TRUE(all_close(grad, asl::test::fixture_npy(kSub, file), kGradAtol, kGradRtol));
    }
    ASSERT_TRUE(input.grad().defined());
    EXPECT_TRUE(all_close(input.grad(), asl::test::fixture_npy(kSub, entry.at("input_grad")), kGradAtol, kGradRtol));
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST(TResNetFixture, LegacyAndZipCheckpointsLoadTheSameWeights) {
  const auto all = cases();  // items() refers into it
  for (const auto& [name, entry] : all.items()) {
    if (!entry.contains("checkpoint_legacy")) continue;
    SCOPED_TRACE(name);
    auto zip = load_fixture_model(entry, "checkpoint");
    auto legacy = load_fixture_model(entry, "checkpoint_legacy");
    const auto a = asl::io::module_state_dict(*zip);
    const auto b = asl::io::module_state_dict(*legacy);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].key(), b[i].key());
      EXPECT_TRUE(torch::equal(a[i].value(), b[i].value())) << a[i].key();
    }
  }
}

TEST(TResNetFixture, DetectModelRecoversTheSpec) {
  const auto all = cases();  // items() refers into it
  for (const auto& [name, entry] : all.items()) {
    SCOPED_TRACE(name);
    const auto path = asl::test::fixtures_dir() / kSub / entry.at("checkpoint").get<std::string>();
    const auto detected = asl::models::detect_model(asl::io::load_checkpoint(path.string()).model);
    const auto want = options_from_spec(entry.at("spec"));
    EXPECT_EQ(detected.name, "");  // the fixtures are custom layouts
    EXPECT_EQ(detected.options.layers(), want.layers());
    EXPECT_EQ(static_cast<int64_t>(64 * detected.options.width_factor()),
              static_cast<int64_t>(64 * want.width_factor()));
    EXPECT_EQ(detected.options.num_classes(), want.num_classes());
    EXPECT_EQ(detected.options.do_bottleneck_head(), want.do_bottleneck_head());
    EXPECT_EQ(detected.options.in_chans(), 3);
  }
}

// ---- manifests -----------------------------------------------------------

class TResNetManifest : public ::testing::TestWithParam<std::string> {};

TEST_P(TResNetManifest, KeysOrderShapesDtypesAndParameterCount) {
  const auto manifest = asl::test::load_json(asl::test::fixtures_dir() / kSub / ("manifest_" + GetParam() + ".json"));
  const int64_t num_classes = manifest.at("num_classes").get<int64_t>();
  auto model = asl::models::create_model(manifest.at("model").get<std::string>(), num_classes);
  EXPECT_EQ(model->options.do_bottleneck_head(), manifest.at("bottleneck_head").get<bool>());

  const auto state = asl::io::module_state_dict(*model);
  const auto& expected = manifest.at("state_dict");
  ASSERT_EQ(state.size(), expected.size());
  for (size_t i = 0; i < state.size(); ++i) {
    const auto& e = expected[i];
    ASSERT_EQ(state[i].key(), e.at(0).get<std::string>()) << "at index " << i;
    EXPECT_EQ(state[i].value().sizes().vec(), e.at(1).get<std::vector<int64_t>>()) << state[i].key();
    EXPECT_EQ(std::string(c10::toString(state[i].value().scalar_type())), "Float") << state[i].key();
    EXPECT_EQ(e.at(2).get<std::string>(), "float32");
  }
  int64_t parameters = 0;
  for (const auto& p : model->parameters()) parameters += p.numel();
  EXPECT_EQ(parameters, manifest.at("parameters").get<int64_t>());

  // Architecture detection from the state dict recovers the registered name.
  const auto detected = asl::models::detect_model(state);
  EXPECT_EQ(detected.name, GetParam());
  EXPECT_EQ(detected.options.num_classes(), num_classes);
}

INSTANTIATE_TEST_SUITE_P(AllVariants, TResNetManifest,
                         ::testing::Values("tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_l_openimages"));

// ---- registry ------------------------------------------------------------

TEST(TResNetRegistry, NamesAndErrors) {
  const auto names = asl::models::model_names();
  EXPECT_EQ(names, (std::vector<std::string>{"tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_l_openimages",
                                             "tresnet_v2_l"}));
  // timm's TResNet-v2-L: Bottlenecks everywhere, plain batch norms.
  const auto v2 = asl::models::model_options("tresnet_v2_l", 10);
  EXPECT_TRUE(v2.v2());
  EXPECT_TRUE(v2.plain_norms());
  EXPECT_EQ(v2.layers(), (std::vector<int64_t>{3, 4, 23, 3}));
  EXPECT_THROW(asl::models::create_model("resnet50", 80), std::invalid_argument);
  EXPECT_THROW(asl::models::create_model("tresnet_m", 0), std::invalid_argument);
  const auto o = asl::models::model_options("tresnet_l", 10, asl::models::ModelOptions().do_bottleneck_head(true));
  EXPECT_TRUE(o.do_bottleneck_head());
  EXPECT_EQ(o.layers(), (std::vector<int64_t>{4, 5, 18, 3}));

  asl::io::StateDict empty;
  EXPECT_THROW(asl::models::detect_model(empty), std::runtime_error);
  TResNet small(TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.25).num_classes(5));
  auto state = asl::io::module_state_dict(*small);
  state.erase("head.fc.weight");
  try {
    asl::models::detect_model(state);
    FAIL() << "expected a throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("head.fc.weight"), std::string::npos) << e.what();
  }
}

// ---- building blocks -----------------------------------------------------

TEST(Layers, SpaceToDepthMatchesReferenceIndexing) {
  const auto x = torch::randn({2, 3, 8, 12});
  const auto y = asl::nn::functional::space_to_depth(x, 4);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 48, 2, 3}));
  // out[n, (bh * 4 + bw) * C + c, i, j] = x[n, c, i * 4 + bh, j * 4 + bw]
  const auto xa = x.accessor<float, 4>();
  const auto ya = y.accessor<float, 4>();
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 12; ++j) {
          const int bh = i % 4, bw = j % 4;
          ASSERT_EQ(ya[n][(bh * 4 + bw) * 3 + c][i / 4][j / 4], xa[n][c][i][j]);
        }
  const auto y_cl = asl::nn::functional::space_to_depth(x.contiguous(torch::MemoryFormat::ChannelsLast), 4);
  EXPECT_TRUE(y_cl.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::equal(y_cl, y));
  EXPECT_THROW(asl::nn::functional::space_to_depth(torch::randn({1, 3, 6, 8}), 4), c10::Error);
}

TEST(Layers, BlurPoolIsReflectPaddedBinomialAndStateless) {
  const auto x = torch::randn({2, 5, 7, 6}, torch::kFloat64);
  asl::nn::BlurPool blur(asl::nn::BlurPoolOptions(5));
  const auto y = blur->forward(x);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 5, 4, 3}));
  EXPECT_EQ(y.scalar_type(), torch::kFloat64);  // the filter follows the input dtype
  const auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
  const double k[3] = {1, 2, 1};
  const auto xa = x.accessor<double, 4>();
  const auto ya = y.accessor<double, 4>();
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 5; ++c)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 3; ++j) {
          double s = 0;
          for (int di = 0; di < 3; ++di)
            for (int dj = 0; dj < 3; ++dj)
              s += k[di] * k[dj] * xa[n][c][reflect(2 * i + di - 1, 7)][reflect(2 * j + dj - 1, 6)];
          ASSERT_NEAR(ya[n][c][i][j], s / 16, 1e-12);
        }
  // The concatenation padding used for channels-last and bfloat16 inputs equals reflect padding.
  const auto x32 = x.to(torch::kFloat32);
  const auto y32 = asl::nn::functional::blur_pool(x32);
  const auto y_cl = asl::nn::functional::blur_pool(x32.contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(y_cl.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(all_close(y_cl, y32, 1e-6, 1e-6));
  const auto y_bf16 = asl::nn::functional::blur_pool(x32.to(torch::kBFloat16));
  EXPECT_EQ(y_bf16.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(y_bf16, y32, 2e-2, 1e-2));  // bfloat16 rounding of input, filter and output
  EXPECT_EQ(asl::io::module_state_dict(*blur).size(), 0u);
  EXPECT_EQ(blur->buffers().size(), 0u);
}

// |a - b| <= tol * max|b| elementwise (a bfloat16 result against a float64 one).
bool close_to_scale(const torch::Tensor& a, const torch::Tensor& b, double tol) {
  const auto diff = (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
  return diff <= tol * b.abs().max().item<double>();
}

// The value a bfloat16 kernel sees, in float64.
torch::Tensor bf16_value(const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); }

// A bfloat16 result is its float32-accumulated value rounded once: within half a bfloat16 step (2^-9
// relative) of the exact sum of the rounded operands, plus float32 summation order (~1e-6 of the scale).
constexpr double kBf16OneRounding = 1.0 / 256;

// Inference on channels-last float32/bfloat16 (no autograd) runs asl's own blur loop: against the float64
// blur (checked against the formula above) of the same values, for odd and even sizes and channel counts
// below, at and above a vector's width.
TEST(Layers, BlurPoolChannelsLastLoopMatchesFloat64) {
  torch::manual_seed(11);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 5, 7, 6}, {1, 48, 8, 8}, {3, 20, 2, 3}, {1, 64, 15, 14}, {2, 16, 3, 5}}) {
    SCOPED_TRACE(c10::str(shape));
    asl::nn::BlurPool blur{asl::nn::BlurPoolOptions(shape[1])};
    const auto x64 = torch::randn(shape, torch::kFloat64);
    const auto expected = blur->forward(x64);
    {
      // Training (float32 channels-last needing a gradient): asl's node and its adjoint loop against
      // LibTorch's autograd of the float64 blur.
      const auto xg = x64.to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
      const auto yg = blur->forward(xg);
      ASSERT_TRUE(yg.grad_fn());
      EXPECT_EQ(yg.grad_fn()->name(), "BlurPool2Backward");
      EXPECT_TRUE(close_to_scale(yg, expected, 1e-6));
      const auto r = torch::randn(expected.sizes(), torch::kFloat64);
      (yg * r.to(torch::kFloat32)).sum().backward();
      const auto xd = x64.clone().requires_grad_(true);
      (blur->forward(xd) * r).sum().backward();
      EXPECT_TRUE(xg.grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(close_to_scale(xg.grad(), xd.grad(), 1e-6));
      // bfloat16 (autocast training): the same node, the gradient rounded once.
      const auto xb = x64.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
      const auto yb = blur->forward(xb);
      ASSERT_TRUE(yb.grad_fn());
      EXPECT_EQ(yb.grad_fn()->name(), "BlurPool2Backward");
      const auto rb = r.to(torch::kBFloat16);
      (yb * rb).sum().backward();
      const auto xr = bf16_value(x64).requires_grad_(true);
      (blur->forward(xr) * rb.to(torch::kFloat64)).sum().backward();
      EXPECT_EQ(xb.grad().scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(close_to_scale(xb.grad(), xr.grad(), kBf16OneRounding));
    }
    torch::NoGradGuard no_grad;
    const auto y32 = blur->forward(x64.to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(y32.is_contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_EQ(y32.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(close_to_scale(y32, expected, 1e-6));
    const auto xb = x64.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto yb = blur->forward(xb);
    EXPECT_EQ(yb.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(close_to_scale(yb, blur->forward(bf16_value(x64)), kBf16OneRounding));
  }
}

// SqueezeExcite::scale_ (the fused blocks' in-place gate) against a float64 computation of
// x * sigmoid(fc2(relu(fc1(mean(x))))) from the module's weights, float32 and bfloat16, channels-last
// (asl's loop) and NCHW (mul_ of the gate).
TEST(Layers, SqueezeExciteInPlaceMatchesFloat64) {
  torch::manual_seed(12);
  for (const auto& [c, r, hw] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{64, 64, 9}, {40, 24, 5}, {256, 64, 3}}) {
    SCOPED_TRACE("C " + std::to_string(c) + " R " + std::to_string(r) + " HW " + std::to_string(hw));
    asl::nn::SqueezeExcite se(asl::nn::SqueezeExciteOptions(c, r));
    torch::NoGradGuard no_grad;
    for (auto& p : se->parameters()) p.uniform_(-0.3, 0.3);
    const auto x = torch::randn({2, c, hw, hw + 1});
    const auto reference = [&](const torch::Tensor& input, asl::nn::SqueezeExcite& m) {
      const auto xd = input.to(torch::kFloat64);
      auto s = xd.mean({2, 3});
      s = torch::relu(torch::linear(s, m->fc1->weight.flatten(1).to(torch::kFloat64), m->fc1->bias.to(torch::kFloat64)));
      s = torch::sigmoid(torch::linear(s, m->fc2->weight.flatten(1).to(torch::kFloat64), m->fc2->bias.to(torch::kFloat64)));
      return xd * s.view({2, c, 1, 1});
    };
    for (const auto format : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
      auto x32 = x.contiguous(format);
      const auto expected = reference(x32, se);
      const auto* data = x32.data_ptr();
      se->scale_(x32);
      EXPECT_EQ(x32.data_ptr(), data);  // in place
      EXPECT_TRUE(close_to_scale(x32, expected, 1e-5));
      // A residual block's tail: relu(x * gate + residual) in the same pass.
      auto y32 = x.contiguous(format);
      const auto residual = torch::randn(x.sizes()).contiguous(format);
      const auto expected_tail = torch::relu(reference(y32, se) + residual.to(torch::kFloat64));
      se->scale_residual_relu_(y32, residual);
      EXPECT_TRUE(close_to_scale(y32, expected_tail, 1e-5));
    }
    auto seb = std::dynamic_pointer_cast<asl::nn::SqueezeExciteImpl>(se->clone());
    asl::nn::SqueezeExcite se_bf16(seb);
    se_bf16->to(torch::kBFloat16);
    auto xb = x.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto expected = reference(xb, se_bf16);  // from the rounded operands
    se_bf16->scale_(xb);
    EXPECT_EQ(xb.scalar_type(), torch::kBFloat16);
    // One rounding of the product, plus the gate's float32 sums.
    EXPECT_TRUE(close_to_scale(xb, expected, kBf16OneRounding));
    auto yb = x.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto residual = torch::randn(x.sizes()).to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto expected_tail = torch::relu(reference(yb, se_bf16) + residual.to(torch::kFloat64));
    se_bf16->scale_residual_relu_(yb, residual);
    EXPECT_TRUE(close_to_scale(yb, expected_tail, kBf16OneRounding));
  }
}

// Training through squeeze-excite: gradients of the input (both paths, the product's and the pooled
// mean's, summed by autograd) and of the fc layers against float64; a channels-last input gets a
// channels-last gradient (the mean's broadcast gradient does not turn the sum NCHW).
TEST(Layers, SqueezeExciteTrainingGradientsMatchFloat64) {
  torch::manual_seed(13);
  asl::nn::SqueezeExcite se(asl::nn::SqueezeExciteOptions(24, 16));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : se->parameters()) p.uniform_(-0.5, 0.5);
  }
  auto se64 = std::dynamic_pointer_cast<asl::nn::SqueezeExciteImpl>(se->clone());
  se64->to(torch::kFloat64);
  for (const auto format : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
    SCOPED_TRACE(format == torch::MemoryFormat::ChannelsLast ? "channels-last" : "NCHW");
    se->zero_grad();
    se64->zero_grad();
    const auto x64 = torch::randn({3, 24, 5, 7}, torch::kFloat64);
    const auto x = x64.to(torch::kFloat32).contiguous(format).requires_grad_(true);
    const auto xd = x64.clone().requires_grad_(true);
    const auto r = torch::randn({3, 24, 5, 7}, torch::kFloat64);
    (se->forward(x) * r.to(torch::kFloat32)).sum().backward();
    (se64->forward(xd) * r).sum().backward();
    EXPECT_TRUE(close_to_scale(x.grad(), xd.grad(), 1e-5));
    EXPECT_TRUE(x.grad().is_contiguous(format));
    for (const auto& name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
      EXPECT_TRUE(close_to_scale(se->named_parameters()[name].grad(), se64->named_parameters()[name].grad(), 1e-5))
          << name;
    }
  }
}

TEST(Layers, Bfloat16ConvAndLinearRunOnEveryCpu) {
  // oneDNN runs bfloat16 from AVX-512 up; below it (AVX2 CPUs, or DNNL_MAX_CPU_ISA=AVX2) asl emulates.
  const bool emulated = !asl::cpu_info().onednn_bf16;
  SCOPED_TRACE(asl::describe(asl::cpu_info()));
  torch::manual_seed(11);
  EXPECT_EQ(asl::nn::functional::emulates_bf16(torch::ones({1}, torch::kBFloat16)), emulated);
  EXPECT_FALSE(asl::nn::functional::emulates_bf16(torch::ones({1})));
  {
    asl::nn::BFloat16Autocast autocast(true);
    EXPECT_EQ(asl::nn::functional::emulates_bf16(torch::ones({1})), emulated);
  }
  struct Case {
    int64_t in, out, kernel, stride, groups;
    bool bias;
  };
  for (const Case& c : {Case{8, 16, 3, 1, 1, false}, Case{16, 8, 1, 1, 1, true}, Case{8, 24, 3, 2, 1, true},
                        Case{16, 16, 3, 2, 16, false}}) {
    SCOPED_TRACE(std::to_string(c.in) + "->" + std::to_string(c.out) + " k" + std::to_string(c.kernel) + " s" +
                 std::to_string(c.stride) + " g" + std::to_string(c.groups));
    const auto x = torch::randn({2, c.in, 11, 11});
    const auto w = torch::randn({c.out, c.in / c.groups, c.kernel, c.kernel});
    const auto b = c.bias ? torch::randn({c.out}) : torch::Tensor();
    const int64_t pad = c.kernel / 2;
    const auto expected = torch::conv2d(bf16_value(x), bf16_value(w), c.bias ? bf16_value(b) : torch::Tensor(),
                                        c.stride, pad, 1, c.groups);
    // bfloat16 tensors, in both layouts.
    for (const auto format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
      const auto y = asl::nn::functional::conv2d(x.to(torch::kBFloat16).contiguous(format), w.to(torch::kBFloat16),
                                                 c.bias ? b.to(torch::kBFloat16) : torch::Tensor(), {c.stride, c.stride},
                                                 {pad, pad}, {1, 1}, c.groups);
      EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(close_to_scale(y, expected, kBf16OneRounding));
    }
    // float32 under autocast, with the gradient: d(sum y)/dx = conv_transpose of ones with w.
    const auto xg = x.clone().requires_grad_(true);
    torch::Tensor y;
    {
      asl::nn::BFloat16Autocast autocast(true);
      y = asl::nn::functional::conv2d(xg, w, b, {c.stride, c.stride}, {pad, pad}, {1, 1}, c.groups);
    }
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(close_to_scale(y, expected, kBf16OneRounding));
    y.to(torch::kFloat32).sum().backward();
    const auto x64 = bf16_value(x).requires_grad_(true);
    torch::conv2d(x64, bf16_value(w), torch::Tensor(), c.stride, pad, 1, c.groups).sum().backward();
    ASSERT_TRUE(xg.grad().defined());
    EXPECT_TRUE(close_to_scale(xg.grad(), x64.grad(), 2 * kBf16OneRounding));
  }
  // linear, as a bfloat16 tensor and under autocast.
  const auto x = torch::randn({5, 40});
  const auto w = torch::randn({7, 40});
  const auto b = torch::randn({7});
  const auto expected = torch::linear(bf16_value(x), bf16_value(w), bf16_value(b));
  const auto y = asl::nn::functional::linear(x.to(torch::kBFloat16), w.to(torch::kBFloat16), b.to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(close_to_scale(y, expected, kBf16OneRounding));
  asl::nn::BFloat16Autocast autocast(true);
  const auto ya = asl::nn::functional::linear(x, w, b);
  EXPECT_EQ(ya.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(close_to_scale(ya, expected, kBf16OneRounding));
}

TEST(Layers, ActivatedBatchNormFormulaAndRunningStats) {
  asl::nn::ActivatedBatchNorm norm(asl::nn::ActivatedBatchNormOptions(4).activation_param(0.1));
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::tensor({-0.5, 0.0, 1.5, -2.0}));
    norm->bias.copy_(torch::tensor({0.1, -0.2, 0.3, 0.0}));
    norm->running_mean.copy_(torch::tensor({0.5, -1.0, 0.0, 2.0}));
    norm->running_var.copy_(torch::tensor({1.0, 4.0, 0.25, 2.0}));
  }
  const auto x = torch::randn({3, 4, 5, 2}, torch::kFloat64).to(torch::kFloat32);
  const auto shape = std::vector<int64_t>{1, 4, 1, 1};
  const auto w = (norm->weight.detach().abs() + 1e-5).view(shape);
  const auto b = norm->bias.detach().view(shape);

  norm->eval();
  const auto expected_eval = torch::leaky_relu(
      w * (x - norm->running_mean.view(shape)) / (norm->running_var.view(shape) + 1e-5).sqrt() + b, 0.1);
  EXPECT_TRUE(all_close(norm->forward(x), expected_eval, 1e-6, 1e-5));

  norm->train();
  const auto mean = x.mean({0, 2, 3});
  const auto var_biased = x.var({0, 2, 3}, /*unbiased=*/false);
  const auto var_unbiased = x.var({0, 2, 3}, /*unbiased=*/true);
  const auto old_mean = norm->running_mean.clone(), old_var = norm->running_var.clone();
  const auto expected_train =
      torch::leaky_relu(w * (x - mean.view(shape)) / (var_biased.view(shape) + 1e-5).sqrt() + b, 0.1);
  EXPECT_TRUE(all_close(norm->forward(x), expected_train, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(norm->running_mean, 0.9 * old_mean + 0.1 * mean, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(norm->running_var, 0.9 * old_var + 0.1 * var_unbiased, 1e-6, 1e-5));
  const auto state = asl::io::module_state_dict(*norm);
  EXPECT_EQ(state.keys(), (std::vector<std::string>{"weight", "bias", "running_mean", "running_var"}));
}

// Training-mode norm + activation on float32 and on bfloat16 activations with float32 parameters (as
// under autocast) (asl's one-node kernel, NCHW and channels-last) against the same module in float64
// (LibTorch's batch_norm and activation) on the same values: output, running statistics, and the
// gradients of input, weight and bias, for each activation, |w| + eps and plain scaling, and sizes with
// one and with several chunks of pixels (a partial last one). bfloat16 outputs (y, dx) are rounded once.
TEST(Layers, ActivatedBatchNormTrainingMatchesFloat64) {
  torch::manual_seed(21);
  using asl::nn::Activation;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 16, 5, 7}, {4, 24, 20, 20}, {3, 1, 3, 3}})
  for (const auto& [act, param] : std::vector<std::pair<Activation, double>>{
           {Activation::Identity, 0.0}, {Activation::LeakyReLU, 1e-3}, {Activation::LeakyReLU, 1e-2}, {Activation::ELU, 1.0}})
  for (const bool abs_weight : {true, false})
  for (const auto format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast})
  for (const auto type : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(c10::str(shape, " ", asl::nn::to_string(act), " ", param, abs_weight ? " abs" : " plain",
                          format == torch::MemoryFormat::ChannelsLast ? " channels-last " : " NCHW ", type));
    const double tol = type == torch::kFloat32 ? 1e-5 : kBf16OneRounding;
    const int64_t c = shape[1];
    asl::nn::ActivatedBatchNorm norm(
        asl::nn::ActivatedBatchNormOptions(c).activation(act).activation_param(param).abs_weight(abs_weight));
    {
      torch::NoGradGuard no_grad;
      norm->weight.uniform_(-2, 2);
      norm->bias.normal_();
      norm->running_mean.normal_();
      norm->running_var.uniform_(0.5, 2);
    }
    auto norm64 = std::dynamic_pointer_cast<asl::nn::ActivatedBatchNormImpl>(norm->clone());
    norm64->to(torch::kFloat64);
    norm->train();
    norm64->train();
    // A shifted input (mean far from zero), as a conv output can be.
    const auto x64 = (torch::randn(shape, torch::kFloat64) * 1.5 + 3.0).contiguous(format);
    const auto x = x64.to(type).contiguous(format).requires_grad_(true);
    const auto xd = x.detach().to(torch::kFloat64).requires_grad_(true);
    const auto r = torch::randn(shape, torch::kFloat64).to(type);
    const auto y = norm->forward(x);
    const auto y64 = norm64->forward(xd);
    EXPECT_TRUE(y.is_contiguous(format));
    ASSERT_TRUE(y.grad_fn());
    EXPECT_EQ(y.grad_fn()->name(), "BatchNormActBackward");  // asl's node, not LibTorch's two
    EXPECT_EQ(y.scalar_type(), type);
    EXPECT_TRUE(close_to_scale(y, y64, tol));
    EXPECT_TRUE(close_to_scale(norm->running_mean, norm64->running_mean, 1e-6));
    EXPECT_TRUE(close_to_scale(norm->running_var, norm64->running_var, 1e-6));
    (y * r).sum().backward();
    (y64 * r.to(torch::kFloat64)).sum().backward();
    EXPECT_EQ(x.grad().scalar_type(), type);
    EXPECT_TRUE(close_to_scale(x.grad(), xd.grad(), tol));
    EXPECT_TRUE(close_to_scale(norm->weight.grad(), norm64->weight.grad(), 1e-5));
    EXPECT_TRUE(close_to_scale(norm->bias.grad(), norm64->bias.grad(), 1e-5));
  }
}

// Training's 3x3 stride-1 convolutions (channels-last float32 needing a gradient): on oneDNN's Winograd
// kernels where this CPU has them (one node, WinogradConvBackward), else LibTorch's; output and the
// gradients of input and weight against float64 LibTorch, odd sizes and channel counts included.
TEST(Layers, TrainingConv3x3MatchesFloat64) {
  torch::manual_seed(31);
  struct Case {
    int64_t n, c, o, h, w;
  };
  for (const Case& k : {Case{2, 16, 16, 8, 8}, Case{3, 32, 48, 13, 11}, Case{1, 64, 64, 7, 7}, Case{2, 24, 8, 5, 6}}) {
    SCOPED_TRACE(c10::str(k.n, "x", k.c, "x", k.h, "x", k.w, " -> ", k.o));
    const auto x64 = torch::randn({k.n, k.c, k.h, k.w}, torch::kFloat64);
    const auto w64 = torch::randn({k.o, k.c, 3, 3}, torch::kFloat64) * 0.2;
    const auto x = x64.to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
    const auto w = w64.to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
    const auto y = asl::nn::functional::conv2d(x, w, torch::Tensor(), {1, 1}, {1, 1}, {1, 1}, 1);
    ASSERT_TRUE(y.grad_fn());
    if (asl::cpu_info().onednn_isa.rfind("avx512", 0) == 0 && k.c % 16 == 0 && k.o % 16 == 0) {
      EXPECT_EQ(y.grad_fn()->name(), "WinogradConvBackward");
    }
    EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
    const auto xd = x64.clone().requires_grad_(true), wd = w64.clone().requires_grad_(true);
    const auto yd = torch::conv2d(xd, wd, torch::Tensor(), 1, 1);
    // Winograd F(4x4, 3x3) rounds more than a direct float32 sum (its transforms), within 1e-5 of the scale.
    EXPECT_TRUE(close_to_scale(y, yd, 1e-5));
    const auto r = torch::randn(yd.sizes(), torch::kFloat64);
    (y * r.to(torch::kFloat32)).sum().backward();
    (yd * r).sum().backward();
    EXPECT_TRUE(close_to_scale(x.grad(), xd.grad(), 1e-5));
    EXPECT_TRUE(close_to_scale(w.grad(), wd.grad(), 1e-5));
    EXPECT_TRUE(w.grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

// Training's 1x1 convolutions (channels-last, needing a gradient) run as oneDNN matrix products where
// oneDNN runs AVX-512: output, dX and dW against LibTorch's float64 autograd, float32 and bfloat16
// (direct and under autocast, where the float32 leaves get float32 gradients through the casts).
TEST(Layers, TrainingConv1x1MatchesFloat64) {
  torch::manual_seed(37);
  struct Case {
    int64_t n, c, o, h, w;
  };
  const bool matmul_path = asl::cpu_info().onednn_bf16;
  for (const Case& k : {Case{2, 16, 32, 8, 8}, Case{3, 40, 24, 5, 7}, Case{1, 64, 8, 1, 1}, Case{2, 3, 5, 6, 4}}) {
    for (const auto mode : {0, 1, 2}) {  // float32, bfloat16, float32 leaves under bfloat16 autocast
      SCOPED_TRACE(c10::str(k.n, "x", k.c, "x", k.h, "x", k.w, " -> ", k.o, " mode ", mode));
      if (mode > 0 && !matmul_path) continue;  // bfloat16 is LibTorch's (or asl's emulation) without oneDNN's
      const auto type = mode == 1 ? torch::kBFloat16 : torch::kFloat32;
      const auto x = torch::randn({k.n, k.c, k.h, k.w}).to(type).contiguous(torch::MemoryFormat::ChannelsLast)
                         .requires_grad_(true);
      const auto w = (torch::randn({k.o, k.c, 1, 1}) * 0.3).to(type).requires_grad_(true);
      torch::Tensor y;
      {
        asl::nn::BFloat16Autocast autocast(mode == 2);
        y = asl::nn::functional::conv2d(x, w, torch::Tensor(), {1, 1}, {0, 0}, {1, 1}, 1);
      }
      ASSERT_TRUE(y.grad_fn());
      if (matmul_path) EXPECT_EQ(y.grad_fn()->name(), "PointwiseConvBackward");
      EXPECT_EQ(y.scalar_type(), mode == 0 ? torch::kFloat32 : torch::kBFloat16);
      EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
      // float64 on the values the kernels see (bfloat16-rounded operands where they run in bfloat16).
      const auto seen = [&](const torch::Tensor& t) { return mode == 0 ? t.to(torch::kFloat64) : bf16_value(t); };
      const auto xd = seen(x.detach()).requires_grad_(true), wd = seen(w.detach()).requires_grad_(true);
      const auto yd = torch::conv2d(xd, wd);
      const double tol = mode == 0 ? 1e-5 : kBf16OneRounding;
      EXPECT_TRUE(close_to_scale(y, yd, tol));
      const auto r = torch::randn(yd.sizes(), torch::kFloat64);
      (y * r.to(y.scalar_type())).sum().backward();
      (yd * seen(r)).sum().backward();
      EXPECT_EQ(x.grad().scalar_type(), type);
      EXPECT_EQ(w.grad().scalar_type(), type);
      EXPECT_TRUE(close_to_scale(x.grad(), xd.grad(), tol));
      EXPECT_TRUE(close_to_scale(w.grad(), wd.grad(), tol));
    }
  }
  // NCHW input stays on LibTorch's convolution.
  const auto x = torch::randn({2, 8, 4, 4}).requires_grad_(true);
  const auto w = torch::randn({4, 8, 1, 1}).requires_grad_(true);
  const auto y = asl::nn::functional::conv2d(x, w, torch::Tensor(), {1, 1}, {0, 0}, {1, 1}, 1);
  EXPECT_NE(y.grad_fn()->name(), "PointwiseConvBackward");
}

TEST(Layers, ConvNormActFuseMatchesEval) {
  torch::manual_seed(3);
  asl::nn::ConvNormAct block(asl::nn::ConvNormActOptions(6, 8, 3).stride(2).activation_param(1e-3));
  {
    torch::NoGradGuard no_grad;
    block->norm->weight.uniform_(-2, 2);
    block->norm->bias.normal_();
    block->norm->running_mean.normal_();
    block->norm->running_var.uniform_(0.2, 3);
  }
  block->eval();
  const auto x = torch::randn({2, 6, 9, 9});
  torch::NoGradGuard no_grad;
  const auto expected = block->forward(x);
  block->fuse();
  EXPECT_TRUE(block->options.fused());
  EXPECT_EQ(asl::io::module_state_dict(*block).keys(), (std::vector<std::string>{"0.weight", "0.bias"}));
  EXPECT_TRUE(all_close(block->forward(x), expected, 1e-5, 1e-5));
  EXPECT_THROW(block->fuse(), c10::Error);
}

TEST(TResNet, InitialisationFollowsTheReference) {
  torch::manual_seed(0);
  auto model = asl::models::create_model("tresnet_m", 80);
  const auto params = model->named_parameters();
  EXPECT_TRUE(torch::all(params["body.layer1.0.conv2.1.weight"] == 0).item<bool>());
  EXPECT_TRUE(torch::all(params["body.layer3.0.conv3.1.weight"] == 0).item<bool>());
  EXPECT_TRUE(torch::all(params["body.layer3.0.conv1.1.weight"] == 1).item<bool>());
  EXPECT_TRUE(torch::all(params["body.layer3.0.conv1.1.bias"] == 0).item<bool>());
  // Kaiming normal, fan out, gain sqrt(2): std = sqrt(2 / (out * k * k)).
  const auto w = params["body.layer3.0.conv2.0.0.weight"];
  const double expected_std = std::sqrt(2.0 / (w.size(0) * 9));
  EXPECT_NEAR(w.std().item<double>(), expected_std, 0.02 * expected_std);
  EXPECT_NEAR(params["head.fc.weight"].std().item<double>(), 0.01, 0.0005);
}

// ---- multiply-adds -------------------------------------------------------

// Independent count from the module tree: every Conv2d costs weight.numel() per output pixel, every BlurPool
// 9 per output element; the pixel counts come from running the stages on a tensor of the right size.
int64_t macs_from_modules(TResNet& model, int64_t height, int64_t width) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t macs = 0;
  auto conv_macs = [](torch::nn::Module& m, int64_t pixels_in, int64_t pixels_out, bool strided) {
    // Inside a block the convs before the blur run at the input resolution, after it at the output one.
    int64_t total = 0;
    bool after_blur = false;
    for (const auto& item : m.named_modules("", /*include_self=*/false)) {
      const std::string& key = item.key();
      if (auto* blur = item.value()->as<asl::nn::BlurPool>()) {
        total += blur->options.channels() * 9 * pixels_out;
        after_blur = true;
        continue;
      }
      auto* conv = item.value()->as<torch::nn::Conv2d>();
      if (conv == nullptr) continue;
      int64_t pixels = pixels_out;
      if (key.rfind("se.", 0) == 0) {
        pixels = 1;
      } else if (key.rfind("downsample", 0) == 0) {
        pixels = pixels_out;
      } else if (strided && !after_blur) {
        pixels = pixels_in;
      }
      total += conv->weight.numel() * pixels;
    }
    return total;
  };
  auto x = torch::zeros({1, model->options.in_chans(), height, width});
  auto& body = *model->body;
  x = body.conv1->forward(body.space_to_depth->forward(x));
  macs += body.conv1->conv->weight.numel() * x.size(2) * x.size(3);
  for (auto stage : {body.layer1, body.layer2, body.layer3, body.layer4}) {
    for (auto& block : stage->blocks) {
      const auto y = block.forward<torch::Tensor>(x);
      const bool strided = y.size(2) != x.size(2);
      macs += conv_macs(*block.ptr(), x.size(2) * x.size(3), y.size(2) * y.size(3), strided);
      x = y;
    }
  }
  for (const auto& p : model->head->named_parameters()) {
    if (p.key().size() >= 6 && p.key().compare(p.key().size() - 6, 6, "weight") == 0) macs += p.value().numel();
  }
  return macs;
}

TEST(TResNet, MultiplyAddCountMatchesTheModuleTree) {
  for (const auto& o : {TResNetOptions().layers({1, 2, 2, 1}).width_factor(0.5).num_classes(21),
                        TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.375).num_classes(30).do_bottleneck_head(true),
                        asl::models::model_options("tresnet_m", 80)}) {
    TResNet model(o);
    for (const auto& hw : {std::pair<int64_t, int64_t>{64, 64}, {96, 128}, {224, 224}}) {
      SCOPED_TRACE(std::to_string(hw.first) + "x" + std::to_string(hw.second));
      EXPECT_EQ(asl::models::count_multiply_adds(o, hw.first, hw.second), macs_from_modules(model, hw.first, hw.second));
    }
  }
  // The TResNet paper quotes 5.5 GFLOPs (multiply-adds) for TResNet-M at 224.
  const double gmacs = asl::models::count_multiply_adds(asl::models::model_options("tresnet_m", 1000), 224, 224) / 1e9;
  EXPECT_NEAR(gmacs, 5.5, 0.3);
}

}  // namespace
