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
