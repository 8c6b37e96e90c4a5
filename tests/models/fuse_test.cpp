// Model contract (M/L/XL at 64x64: shape, finiteness, gradients, checkpoint round trip) and the fused
// inference model (float32 and bfloat16) against the unfused one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/models/fuse.h"
#include "asl/models/registry.h"
#include "asl/models/tresnet.h"
#include "asl/nn/packed_conv.h"
#include "asl/runtime.h"
#include "test_util.h"

namespace {

using asl::models::TResNet;
using asl::models::TResNetOptions;
using asl::test::all_close;

// Folding reorders float32 roundings only: 1e-4 of the logit scale (the bound).
constexpr double kFusedRtol = 1e-4;
// bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%) and dozens of layers add these up: measured
// worst error 0.55% of the logit scale on TResNet-M with random weights, so 2% of the scale, and the
// top-1 class must agree on every sample.
constexpr double kBf16ScaleTol = 2e-2;

std::filesystem::path temp_file(const std::string& name) {
  const char* dir = std::getenv("ASL_BINARY_DIR");
  const auto base = dir != nullptr ? std::filesystem::path(dir) : std::filesystem::temp_directory_path();
  return base / ("fuse_test_" + std::to_string(::getpid()) + "_" + name);
}

// Random norm statistics and weights of both signs, so that folding is exercised everywhere (after
// initialisation running stats are 0/1 and the last norms are 0, which would hide mistakes).
void randomise_norms(TResNet& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (const auto& m : model->modules(false)) {
    if (auto* norm = m->as<asl::nn::ActivatedBatchNorm>()) {
      const auto n = norm->weight.numel();
      norm->weight.copy_(torch::empty({n}).uniform_(0.2, 1.0) * (torch::randint(0, 2, {n}) * 2 - 1));
      norm->bias.normal_(0, 0.1);
      norm->running_mean.normal_(0, 0.1);
      norm->running_var.uniform_(0.5, 2.0);
    }
  }
}

::testing::AssertionResult close_to_scale(const torch::Tensor& actual, const torch::Tensor& expected, double tol) {
  const double scale = expected.abs().max().item<double>();
  return all_close(actual, expected, tol * scale, tol);
}

// ---- contract ------------------------------------------------------------

class TResNetContract : public ::testing::TestWithParam<std::string> {};

TEST_P(TResNetContract, ShapeFinitenessGradientsAndCheckpointRoundTrip) {
  torch::manual_seed(1);
  const int64_t num_classes = 7;
  auto model = asl::models::create_model(GetParam(), num_classes);
  model->train();
  const auto input = torch::randn({2, 3, 64, 64});
  const auto logits = model->forward(input);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, num_classes}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  logits.sum().backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key() << " received no gradient";
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }

  // Our writer's file loads back strictly into a fresh model and gives the same eval logits.
  randomise_norms(model, 2);
  model->eval();
  const auto path = temp_file(GetParam() + ".pth");
  asl::io::save_checkpoint(path.string(), asl::io::module_state_dict(*model), num_classes, {{0, "a"}, {6, "g"}});
  const auto loaded = asl::io::load_checkpoint(path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(loaded.num_classes, c10::optional<int64_t>(num_classes));
  EXPECT_EQ(loaded.idx_to_class.at(6), "g");
  const auto detected = asl::models::detect_model(loaded.model);
  EXPECT_EQ(detected.name, GetParam());
  TResNet restored(detected.options);
  asl::io::load_state_dict(*restored, loaded.model);
  restored->eval();
  const auto a = asl::io::module_state_dict(*model), b = asl::io::module_state_dict(*restored);
  ASSERT_EQ(a.keys(), b.keys());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].value(), b[i].value())) << a[i].key();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->forward(input), restored->forward(input)));
}

INSTANTIATE_TEST_SUITE_P(Registered, TResNetContract, ::testing::Values("tresnet_m", "tresnet_l", "tresnet_xl"));

TEST(TResNetContract, CloneIsDeepAndEqual) {
  torch::manual_seed(4);
  TResNet model(TResNetOptions().layers({1, 2, 1, 1}).width_factor(0.25).num_classes(3));
  randomise_norms(model, 5);
  auto copy = std::dynamic_pointer_cast<asl::models::TResNetImpl>(model->clone());
  ASSERT_TRUE(copy);
  model->eval();
  copy->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({1, 3, 64, 64});
  EXPECT_TRUE(torch::equal(model->forward(x), copy->forward(x)));
  EXPECT_EQ(asl::io::module_state_dict(*model).keys(), asl::io::module_state_dict(*copy).keys());
  copy->named_parameters()["head.fc.bias"].add_(1);
  EXPECT_FALSE(torch::equal(model->forward(x), copy->forward(x)));
}

// ---- fused inference -----------------------------------------------------

struct FuseCase {
  const char* name;
  TResNetOptions options;
};

TResNetOptions small_options() { return TResNetOptions().layers({1, 2, 2, 1}).width_factor(0.5).num_classes(21); }

TEST(FuseForInference, Float32MatchesUnfusedAtTwoSizes) {
  for (const auto& options : {small_options(), asl::models::model_options("tresnet_m", 80),
                              asl::models::model_options("tresnet_l_openimages", 50)}) {
    TResNet model(options);
    randomise_norms(model, 7);
    model->eval();
    const auto before = asl::io::module_state_dict(*model);
    for (const bool channels_last : {true, false}) {
      auto fused = asl::models::fuse_for_inference(model, asl::models::FuseOptions().channels_last(channels_last));
      for (const int64_t size : {64, 96}) {
        SCOPED_TRACE(std::to_string(size) + (channels_last ? " channels-last" : " NCHW"));
        const auto x = torch::randn({2, 3, size, size});
        torch::Tensor expected;
        {
          torch::NoGradGuard no_grad;
          expected = model->forward(x);
        }
        const auto actual = fused->forward(x);
        EXPECT_EQ(actual.scalar_type(), torch::kFloat32);
        EXPECT_TRUE(close_to_scale(actual, expected, kFusedRtol));
      }
    }
    // The source model is untouched.
    const auto after = asl::io::module_state_dict(*model);
    ASSERT_EQ(before.keys(), after.keys());
  }
}

TEST(FuseForInference, Bfloat16WithinStatedTolerance) {
  TResNet model(asl::models::model_options("tresnet_m", 80));
  randomise_norms(model, 8);
  model->eval();
  auto fused = asl::models::fuse_for_inference(model, asl::models::FuseOptions().dtype(torch::kBFloat16));
  const auto x = torch::randn({4, 3, 96, 96});
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = model->forward(x);
  }
  const auto actual = fused->forward(x);
  EXPECT_EQ(actual.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(close_to_scale(actual, expected, kBf16ScaleTol));
  EXPECT_TRUE(torch::equal(actual.argmax(1), expected.argmax(1)));
  // Where oneDNN runs bfloat16 the convs are prepacked; elsewhere (AVX2, or DNNL_MAX_CPU_ISA=AVX2) none
  // is, and the convs take the emulated path, which is what the tolerance above was checked against.
  int convs = 0, packed = 0;
  for (const auto& m : fused->modules(false)) {
    if (auto* conv = m->as<asl::nn::ConvNormAct>()) {
      ++convs;
      packed += conv->packed();
    }
  }
  ASSERT_GT(convs, 0);
  const bool packable = asl::nn::PackedConv2d::available() && asl::cpu_info().onednn_bf16;
  EXPECT_EQ(packed, packable ? convs : 0) << asl::describe(asl::cpu_info());
}

TEST(FuseForInference, FixtureModelsMatchUnfused) {
  const auto cases = asl::test::load_json(asl::test::fixtures_dir() / "tresnet" / "cases.json");
  for (const auto& [name, entry] : cases.items()) {
    SCOPED_TRACE(name);
    const auto& spec = entry.at("spec");
    TResNet model(TResNetOptions()
                      .layers(spec.at("layers").get<std::vector<int64_t>>())
                      .num_classes(spec.at("num_classes").get<int64_t>())
                      .width_factor(spec.value("width_factor", 1.0))
                      .do_bottleneck_head(spec.value("do_bottleneck_head", false)));
    const auto path = asl::test::fixtures_dir() / "tresnet" / entry.at("checkpoint").get<std::string>();
    asl::io::load_state_dict(*model, asl::io::load_checkpoint(path.string()).model);
    model->eval();
    const auto input = asl::test::fixture_npy("tresnet", entry.at("input"));
    const auto expected = asl::test::fixture_npy("tresnet", entry.at("eval_logits"));
    EXPECT_TRUE(close_to_scale(asl::models::fuse_for_inference(model)->forward(input), expected, kFusedRtol));
  }
}

TEST(PackedConv2d, MatchesConv2dForStridesGroupsSizesAndDtypes) {
  if (!asl::nn::PackedConv2d::available()) GTEST_SKIP() << "this LibTorch has no mkldnn_prepacked ops";
  torch::manual_seed(3);
  struct Case {
    int64_t in, out, kernel, stride, groups, size;
  };
  for (const Case& c : {Case{8, 16, 3, 1, 1, 12}, Case{16, 8, 1, 1, 1, 9}, Case{8, 24, 3, 2, 1, 15},
                        Case{16, 16, 3, 2, 16, 10}, Case{48, 32, 3, 1, 1, 7}}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      SCOPED_TRACE(std::to_string(c.in) + "->" + std::to_string(c.out) + " k" + std::to_string(c.kernel) + " s" +
                   std::to_string(c.stride) + " g" + std::to_string(c.groups) + " " + c10::toString(dtype));
      const auto weight = torch::randn({c.out, c.in / c.groups, c.kernel, c.kernel}).to(dtype);
      const auto bias = torch::randn({c.out}).to(dtype);
      if (dtype == torch::kBFloat16 && !asl::cpu_info().onednn_bf16) {
        // No oneDNN bfloat16 on this CPU: a clear refusal naming the ISA, never oneDNN's own error.
        try {
          asl::nn::PackedConv2d(weight, bias, {c.stride, c.stride}, {c.kernel / 2, c.kernel / 2}, {1, 1}, c.groups,
                                {1, c.in, 28, 28});
          ADD_FAILURE() << "packing bfloat16 without oneDNN support did not throw";
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what()).find("cannot run bfloat16"), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find(asl::cpu_info().onednn_isa), std::string::npos) << e.what();
        }
        continue;
      }
      const asl::nn::PackedConv2d packed(weight, bias, {c.stride, c.stride}, {c.kernel / 2, c.kernel / 2}, {1, 1},
                                         c.groups, {1, c.in, 28, 28});
      // Any input size and batch, whatever size guided the packing.
      for (const int64_t batch : {1, 3}) {
        for (const int64_t size : {c.size, 2 * c.size + 1}) {
          const auto x =
              torch::randn({batch, c.in, size, size}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
          c10::InferenceMode guard;
          const auto expected = torch::conv2d(x.to(torch::kFloat64), weight.to(torch::kFloat64),
                                              bias.to(torch::kFloat64), c.stride, c.kernel / 2, 1, c.groups);
          const auto actual = packed(x);
          ASSERT_EQ(actual.sizes(), expected.sizes());
          EXPECT_EQ(actual.scalar_type(), dtype);
          EXPECT_TRUE(actual.is_contiguous(torch::MemoryFormat::ChannelsLast));
          // float32: summation order only; bfloat16: the output is rounded to 8 bits of mantissa.
          const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
          EXPECT_TRUE(close_to_scale(actual.to(torch::kFloat64), expected, tol));
        }
      }
    }
  }
  EXPECT_THROW(asl::nn::PackedConv2d(torch::randn({4, 4, 3, 3}, torch::kFloat64), torch::Tensor(), {1, 1}, {1, 1},
                                     {1, 1}, 1, {1, 4, 8, 8}),
               c10::Error);
}

// The fused epilogues against float64: leaky ReLU / ELU after conv + bias, and a residual block's tail
// relu(act(conv + bias) + residual) written over the residual; channels-first inputs are accepted too.
TEST(PackedConv2d, FusedActivationsAndResidualMatchFloat64) {
  torch::manual_seed(5);
  using E = asl::nn::ConvEpilogue::Eltwise;
  // 24 output channels, and 32 (a multiple of 16: where the Winograd kernel runs, asl's own loop copies
  // its blocked output back to channels-last and applies the activation).
  for (const int64_t out_channels : {24, 32})
  for (const auto& [eltwise, alpha] : std::vector<std::pair<E, double>>{{E::None, 0.0}, {E::LeakyReLU, 0.01},
                                                                          {E::LeakyReLU, 0.2}, {E::ELU, 1.0}}) {
    const auto weight = torch::randn({out_channels, 16, 3, 3});
    const auto bias = torch::randn({out_channels});
    asl::nn::ConvEpilogue epilogue;
    epilogue.eltwise = eltwise;
    epilogue.alpha = alpha;
    const asl::nn::PackedConv2d packed(weight, bias, {1, 1}, {1, 1}, {1, 1}, 1, {1, 16, 14, 14}, epilogue);
    for (const int64_t batch : {1, 2}) {
      const auto x = torch::randn({batch, 16, 14, 14});
      c10::InferenceMode guard;
      auto expected = torch::conv2d(x.to(torch::kFloat64), weight.to(torch::kFloat64), bias.to(torch::kFloat64), 1, 1);
      if (eltwise == E::LeakyReLU) expected = torch::leaky_relu(expected, alpha);
      if (eltwise == E::ELU) expected = torch::elu(expected, alpha);
      SCOPED_TRACE("eltwise " + std::to_string(static_cast<int>(eltwise)) + " alpha " + std::to_string(alpha) +
                   " channels " + std::to_string(out_channels));
      EXPECT_TRUE(close_to_scale(packed(x).to(torch::kFloat64), expected, 1e-5));  // NCHW in
      const auto residual = torch::randn({batch, out_channels, 14, 14}).contiguous(torch::MemoryFormat::ChannelsLast);
      const auto tail = (expected + residual.to(torch::kFloat64)).relu();
      torch::Tensor target = residual.clone();
      const auto out = packed.residual_relu(x.contiguous(torch::MemoryFormat::ChannelsLast), target);
      EXPECT_EQ(out.data_ptr(), target.data_ptr());
      EXPECT_TRUE(close_to_scale(out.to(torch::kFloat64), tail, 1e-5));
      EXPECT_THROW(packed.residual_relu(x, torch::zeros({batch, out_channels, 14, 14})), c10::Error);  // not channels-last
    }
  }
}

// oneDNN's nChw16c, written out: (N, C, H, W) -> (N * C / 16) x 16 x H x W whose memory is
// [n][c / 16][h][w][c % 16] (PackedConv2d's blocked form), and back.
torch::Tensor to_blocked_form(const torch::Tensor& t) {
  const int64_t n = t.size(0), c = t.size(1), h = t.size(2), w = t.size(3);
  return t.reshape({n, c / 16, 16, h, w}).permute({0, 1, 3, 4, 2}).contiguous().view({n * (c / 16), h, w, 16}).permute(
      {0, 3, 1, 2});
}

torch::Tensor from_blocked_form(const torch::Tensor& b, int64_t n) {
  const int64_t blocks = b.size(0) / n, h = b.size(2), w = b.size(3);
  return b.permute({0, 2, 3, 1}).reshape({n, blocks, h, w, 16}).permute({0, 1, 4, 2, 3}).reshape({n, blocks * 16, h, w});
}

// The blocked layout against float64: Winograd (3x3 stride 1), 1x1 and strided direct kernels, every
// epilogue, the residual tail, and an activation left to the caller.
TEST(PackedConv2d, Blocked16MatchesFloat64) {
  torch::manual_seed(6);
  using E = asl::nn::ConvEpilogue::Eltwise;
  using asl::nn::PackedConv2d;
  struct Shape { int64_t in, out, kernel, stride, h, w; };
  for (const auto& sh : std::vector<Shape>{{16, 32, 3, 1, 14, 14}, {48, 64, 3, 1, 9, 7}, {32, 48, 1, 1, 7, 7},
                                           {32, 16, 3, 2, 11, 12}})
  for (const auto& [eltwise, alpha] : std::vector<std::pair<E, double>>{{E::None, 0.0}, {E::LeakyReLU, 0.01},
                                                                          {E::ELU, 1.0}}) {
    SCOPED_TRACE("shape " + std::to_string(sh.in) + "->" + std::to_string(sh.out) + " k" + std::to_string(sh.kernel) +
                 " s" + std::to_string(sh.stride) + " eltwise " + std::to_string(static_cast<int>(eltwise)));
    const auto weight = torch::randn({sh.out, sh.in, sh.kernel, sh.kernel}) / std::sqrt(sh.in * sh.kernel * sh.kernel);
    const auto bias = torch::randn({sh.out});
    asl::nn::ConvEpilogue epilogue;
    epilogue.eltwise = eltwise;
    epilogue.alpha = alpha;
    const int64_t pad = sh.kernel / 2;
    const PackedConv2d packed(weight, bias, {sh.stride, sh.stride}, {pad, pad}, {1, 1}, 1, {1, sh.in, sh.h, sh.w},
                              epilogue, true, PackedConv2d::Layout::Blocked16);
    EXPECT_EQ(packed.layout(), PackedConv2d::Layout::Blocked16);
    const auto activation = [&](torch::Tensor v) {
      if (eltwise == E::LeakyReLU) return torch::leaky_relu(v, alpha);
      if (eltwise == E::ELU) return torch::elu(v, alpha);
      return v;
    };
    for (const int64_t batch : {1, 3}) {
      const auto x = torch::randn({batch, sh.in, sh.h, sh.w});
      c10::InferenceMode guard;
      const auto conv = torch::conv2d(x.to(torch::kFloat64), weight.to(torch::kFloat64), bias.to(torch::kFloat64),
                                      sh.stride, pad);
      const auto expected = activation(conv);
      const auto xb = to_blocked_form(x);
      const auto out = packed.blocked16(xb, batch);
      ASSERT_EQ(out.sizes(), (std::vector<int64_t>{batch * sh.out / 16, 16, conv.size(2), conv.size(3)}));
      EXPECT_TRUE(out.is_contiguous(torch::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(close_to_scale(from_blocked_form(out, batch).to(torch::kFloat64), expected, 1e-5));
      // The residual tail, written into the residual.
      const auto residual = torch::randn(conv.sizes());
      auto target = to_blocked_form(residual);
      const auto tail = packed.blocked16(xb, batch, target);
      EXPECT_EQ(tail.data_ptr(), target.data_ptr());
      EXPECT_TRUE(close_to_scale(from_blocked_form(tail, batch).to(torch::kFloat64),
                                 (expected + residual.to(torch::kFloat64)).relu(), 1e-5));
      // An activation the kernel cannot fuse is left to the caller when asked.
      asl::nn::ConvEpilogue pending = epilogue;
      const auto raw = packed.blocked16(xb, batch, {}, &pending);
      const bool deferred = pending.eltwise != E::None;
      EXPECT_TRUE(close_to_scale(from_blocked_form(raw, batch).to(torch::kFloat64), deferred ? conv : expected, 1e-5));
      if (deferred) {  // what was left is what was asked for
        EXPECT_EQ(pending.eltwise, eltwise);
        EXPECT_EQ(pending.alpha, alpha);
      }
      EXPECT_THROW(packed(x), c10::Error);                                        // packed for the blocked layout
      if (sh.in > 16) {  // (16 channels in channels-last are their own blocked form)
        EXPECT_THROW(packed.blocked16(x.contiguous(torch::MemoryFormat::ChannelsLast), batch), c10::Error);
      }
    }
  }
  const auto w24 = torch::randn({24, 16, 1, 1});
  EXPECT_THROW(PackedConv2d(w24, {}, {1, 1}, {0, 0}, {1, 1}, 1, {1, 16, 8, 8}, {}, true, PackedConv2d::Layout::Blocked16),
               c10::Error);  // 24 output channels: no whole blocks
  const PackedConv2d plain(w24, {}, {1, 1}, {0, 0}, {1, 1}, 1, {1, 16, 8, 8});
  c10::InferenceMode guard;
  EXPECT_THROW(plain.blocked16(to_blocked_form(torch::randn({1, 16, 8, 8})), 1), c10::Error);
}

// The whole model in the blocked layout (FuseOptions::blocked16, the default where oneDNN runs AVX-512)
// against the unfused model and the channels-last fused path, at sizes whose stages end odd (blur
// padding, ceil-mode pooling), batch 1 and 2.
TEST(FuseForInference, Blocked16PathMatchesUnfused) {
  const bool expect_blocked = asl::cpu_info().onednn_isa.rfind("avx512", 0) == 0;
  for (const auto& options : {small_options(), asl::models::model_options("tresnet_m", 80)}) {
    TResNet model(options);
    randomise_norms(model, 10);
    model->eval();
    auto blocked = asl::models::fuse_for_inference(model);
    auto channels_last = asl::models::fuse_for_inference(model, asl::models::FuseOptions().blocked16(false));
    EXPECT_EQ(blocked->blocked16_active(), expect_blocked) << asl::cpu_info().onednn_isa;
    EXPECT_FALSE(channels_last->blocked16_active());
    for (const auto& [batch, size] : std::vector<std::pair<int64_t, int64_t>>{{1, 100}, {2, 64}}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + " size " + std::to_string(size));
      const auto x = torch::randn({batch, 3, size, size});
      torch::Tensor expected;
      {
        torch::NoGradGuard no_grad;
        expected = model->forward(x);
      }
      const auto actual = blocked->forward(x);
      EXPECT_TRUE(close_to_scale(actual, expected, kFusedRtol));
      EXPECT_TRUE(close_to_scale(actual, channels_last->forward(x), kFusedRtol));
    }
  }
  // bfloat16 keeps the channels-last path.
  TResNet model(small_options());
  model->eval();
  EXPECT_FALSE(asl::models::fuse_for_inference(model, asl::models::FuseOptions().dtype(torch::kBFloat16))
                   ->blocked16_active());
}

TEST(FuseForInference, PrepackedAndPlainConvsAgree) {
  TResNet model(asl::models::model_options("tresnet_m", 80));
  randomise_norms(model, 9);
  model->eval();
  auto plain = asl::models::fuse_for_inference(model, asl::models::FuseOptions().prepack(false));
  auto packed = asl::models::fuse_for_inference(model);
  int packed_convs = 0;
  for (const auto& m : packed->modules(false)) {
    if (auto* conv = m->as<asl::nn::ConvNormAct>()) packed_convs += conv->packed();
  }
  if (asl::nn::PackedConv2d::available()) EXPECT_GT(packed_convs, 0);
  const auto x = torch::randn({2, 3, 96, 96});
  EXPECT_TRUE(close_to_scale(packed->forward(x), plain->forward(x), 1e-5));
}

TEST(FuseForInference, FusedBlocksStillDifferentiateInGradMode) {
  // Fused blocks finish in place only without autograd; with it they keep the out-of-place graph.
  TResNet model(TResNetOptions(small_options()).fused(true));
  const auto x = torch::randn({2, 3, 64, 64}).requires_grad_(true);
  model->forward(x).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(x.grad().isfinite().all().item<bool>());
  torch::Tensor inference;
  {
    torch::NoGradGuard no_grad;
    inference = model->forward(x.detach());
  }
  EXPECT_TRUE(close_to_scale(inference, model->forward(x.detach()).detach(), 1e-6));
}

TEST(FuseForInference, StructureAndErrors) {
  TResNet model(small_options());
  auto fused = asl::models::fuse_for_inference(model);
  const auto state = asl::io::module_state_dict(*fused);
  for (const auto& item : state) {
    EXPECT_EQ(item.key().find("running_"), std::string::npos) << item.key();
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
  }
  EXPECT_TRUE(state.contains("model.body.conv1.0.bias"));
  EXPECT_TRUE(state["model.body.conv1.0.weight"].is_contiguous(torch::MemoryFormat::ChannelsLast));
  // A fused model is a normal module: it clones.
  auto copy = std::dynamic_pointer_cast<asl::models::FusedTResNetImpl>(fused->clone());
  ASSERT_TRUE(copy);
  const auto x = torch::randn({1, 3, 64, 64});
  EXPECT_TRUE(torch::equal(copy->forward(x), fused->forward(x)));
  EXPECT_THROW(asl::models::fuse_for_inference(fused->model), c10::Error);
  EXPECT_THROW(asl::models::fuse_for_inference(model, asl::models::FuseOptions().dtype(torch::kFloat16)),
               c10::Error);
}

}  // namespace
