// ModelEma: the update formula over several steps vs a float64 hand computation, parameters and buffers.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "asl/train/ema.h"

namespace {

struct NetImpl : torch::nn::Cloneable<NetImpl> {
  explicit NetImpl(torch::Dtype dtype = torch::kFloat32) {
    reset();
    // Module::to(dtype) would also turn the int64 num_batches_tracked into floats; convert only floats.
    torch::NoGradGuard g;
    for (auto& p : parameters()) p.set_data(p.to(dtype));
    for (auto& b : buffers()) {
      if (b.is_floating_point()) b.set_data(b.to(dtype));
    }
  }
  void reset() override {
    fc = register_module("fc", torch::nn::Linear(3, 4));
    bn = register_module("bn", torch::nn::BatchNorm1d(4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn->forward(fc->forward(x)); }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Net);

std::map<std::string, std::vector<double>> snapshot(const torch::nn::Module& m) {
  std::map<std::string, std::vector<double>> out;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    const torch::Tensor c = t.detach().to(torch::kFloat64).contiguous().flatten();
    out[name] = std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  for (const auto& p : m.named_parameters()) add(p.key(), p.value());
  for (const auto& b : m.named_buffers()) add(b.key(), b.value());
  return out;
}

// Changes every parameter (as an optimizer step would) and every buffer (a training forward pass).
void train_step(Net& net, int seed) {
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& p : net->parameters()) p.add_(torch::randn_like(p));
  net->train();
  net->forward(torch::randn({8, 3}, net->fc->weight.options()));
}

void expect_ema(torch::Dtype dtype, double rel_tol) {
  Net net(dtype);
  const double decay = 0.9;  // far from 1 so that a few updates move the average visibly
  asl::train::ModelEma ema(*net, decay);
  EXPECT_FALSE(ema.module()->is_training());
  EXPECT_NE(ema.module_as<NetImpl>(), nullptr);
  auto expected = snapshot(*net);
  for (int step = 0; step < 5; ++step) {
    train_step(net, 100 + step);
    const auto model = snapshot(*net);
    for (auto& [name, e] : expected) {
      const auto& m = model.at(name);
      for (size_t i = 0; i < e.size(); ++i) {
        if (name == "bn.num_batches_tracked") {
          // integer buffer: blended in float32, truncated on the store
          e[i] = std::trunc(static_cast<double>(static_cast<float>(decay) * static_cast<float>(e[i]) +
                                                static_cast<float>(1.0 - decay) * static_cast<float>(m[i])));
        } else {
          e[i] = decay * e[i] + (1.0 - decay) * m[i];
        }
      }
    }
    ema.update(*net);
    const auto actual = snapshot(*ema.module());
    ASSERT_EQ(actual.size(), expected.size());
    for (const auto& [name, e] : expected) {
      const auto& a = actual.at(name);
      for (size_t i = 0; i < e.size(); ++i) {
        EXPECT_NEAR(a[i], e[i], rel_tol * (1.0 + std::abs(e[i]))) << name << "[" << i << "] step " << step;
      }
    }
  }
  EXPECT_EQ(snapshot(*ema.module()).at("bn.num_batches_tracked")[0], 0.0);  // 0.1 · 5 steps stays below 1
  EXPECT_EQ(snapshot(*net).at("bn.num_batches_tracked")[0], 5.0);
}

// float64: only rounding of the blend itself; float32: ~6e-8 per update, five updates.
TEST(ModelEma, UpdateFormulaFloat64) { expect_ema(torch::kFloat64, 1e-14); }
TEST(ModelEma, UpdateFormulaFloat32) { expect_ema(torch::kFloat32, 1e-6); }

TEST(ModelEma, CopyIsIndependentAndSetCopies) {
  Net net;
  asl::train::ModelEma ema(*net, 0.9997);
  EXPECT_FALSE(ema.module()->parameters()[0].is_same(net->parameters()[0]));
  train_step(net, 7);
  ema.set(*net);
  const auto a = snapshot(*ema.module()), m = snapshot(*net);
  EXPECT_EQ(a, m);
}

TEST(ModelEma, RejectsMismatchedModel) {
  Net net;
  asl::train::ModelEma ema(*net);
  torch::nn::Linear other(3, 4);
  EXPECT_THROW(ema.update(*other), std::runtime_error);
  EXPECT_THROW(asl::train::ModelEma(*net, 1.5), std::runtime_error);
}

}  // namespace
