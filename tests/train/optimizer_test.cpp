// Weight-decay parameter groups and Adam steps vs a float64 hand computation of Adam with L2 decay.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "asl/train/optimizer.h"

namespace {

// The module and the hand computation are both float64; the only differences are the order of a few
// operations inside ATen, so 1e-12 relative.
constexpr double kRelTol = 1e-12;

struct SmallNetImpl : torch::nn::Module {
  SmallNetImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).bias(false)));
    bn = register_module("bn", torch::nn::BatchNorm2d(3));
    fc = register_module("fc", torch::nn::Linear(3, 2));
    scale = register_parameter("scale", torch::ones({4}));
    table = register_parameter("table", torch::ones({2, 2}));
    frozen = register_parameter("frozen", torch::ones({2, 2}), /*requires_grad=*/false);
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
  torch::Tensor scale, table, frozen;
};

TEST(WeightDecayGroups, SplitsAsAddWeightDecay) {
  SmallNetImpl net;
  const auto g = asl::train::split_weight_decay(net);
  const std::vector<std::string> no_decay{"scale", "bn.weight", "bn.bias", "fc.bias"};
  const std::vector<std::string> decay{"table", "conv.weight", "fc.weight"};
  EXPECT_EQ(g.no_decay_names, no_decay);
  EXPECT_EQ(g.decay_names, decay);
  ASSERT_EQ(g.no_decay.size(), no_decay.size());
  EXPECT_TRUE(g.no_decay[1].is_same(net.bn->weight));
  EXPECT_TRUE(g.decay[2].is_same(net.fc->weight));

  const auto skipped = asl::train::split_weight_decay(net, {"table"});
  EXPECT_EQ(skipped.decay_names, (std::vector<std::string>{"conv.weight", "fc.weight"}));
  EXPECT_EQ(skipped.no_decay_names, (std::vector<std::string>{"scale", "table", "bn.weight", "bn.bias", "fc.bias"}));
}

TEST(WeightDecayGroups, BiasNamedTwoDimensionalIsNotDecayed) {
  torch::nn::Module m;
  auto head = m.register_module("head", std::make_shared<torch::nn::Module>());
  head->register_parameter("bias", torch::zeros({2, 2}));  // not 1-D, excluded by its name
  head->register_parameter("weight", torch::zeros({2, 2}));
  const auto g = asl::train::split_weight_decay(m);
  EXPECT_EQ(g.no_decay_names, std::vector<std::string>{"head.bias"});
  EXPECT_EQ(g.decay_names, std::vector<std::string>{"head.weight"});
}

TEST(MakeAdam, TwoGroupsInReferenceOrder) {
  SmallNetImpl net;
  asl::train::AdamConfig config;
  config.lr = 3e-4;
  config.weight_decay = 1e-2;
  auto adam = asl::train::make_adam(net, config);
  ASSERT_EQ(adam->param_groups().size(), 2u);
  const auto& o0 = static_cast<const torch::optim::AdamOptions&>(adam->param_groups()[0].options());
  const auto& o1 = static_cast<const torch::optim::AdamOptions&>(adam->param_groups()[1].options());
  EXPECT_EQ(o0.weight_decay(), 0.0);
  EXPECT_EQ(o1.weight_decay(), 1e-2);
  EXPECT_EQ(o0.lr(), 3e-4);
  EXPECT_EQ(adam->param_groups()[0].params().size(), 4u);
  EXPECT_EQ(adam->param_groups()[1].params().size(), 3u);

  asl::train::set_lr_beta1(*adam, 1e-3, 0.85);
  for (const auto& g : adam->param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(g.options());
    EXPECT_EQ(o.lr(), 1e-3);
    EXPECT_EQ(std::get<0>(o.betas()), 0.85);
    EXPECT_EQ(std::get<1>(o.betas()), 0.999);
  }
  EXPECT_THROW(asl::train::set_lr_beta1(*adam, 1e-3, 1.0), std::runtime_error);
}

// Adam with L2 decay, written out per element in double.
struct HandAdam {
  std::vector<double> w, m, v;
  int64_t step = 0;
  void apply(const std::vector<double>& grad, double lr, double beta1, double beta2, double eps, double wd) {
    ++step;
    if (m.empty()) m.assign(w.size(), 0.0), v.assign(w.size(), 0.0);
    for (size_t i = 0; i < w.size(); ++i) {
      const double g = grad[i] + wd * w[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(beta1, static_cast<double>(step)));
      const double v_hat = v[i] / (1 - std::pow(beta2, static_cast<double>(step)));
      w[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

std::vector<double> values(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kFloat64).contiguous().flatten();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

TEST(MakeAdam, StepsEqualHandAdamWithL2) {
  torch::manual_seed(3);
  torch::nn::Linear fc(torch::nn::LinearOptions(4, 3));
  fc->to(torch::kFloat64);
  asl::train::AdamConfig config;
  config.lr = 1e-2;
  config.weight_decay = 0.1;  // large, so that the decay term is visible in the result
  auto adam = asl::train::make_adam(*fc, config);

  HandAdam hw{values(fc->weight)}, hb{values(fc->bias)}, hw_no_decay{values(fc->weight)};
  const double lrs[] = {1e-2, 4e-3, 2e-2};
  const double beta1s[] = {0.9, 0.95, 0.85};  // beta1 changes between steps, as under one-cycle
  for (int step = 0; step < 3; ++step) {
    asl::train::set_lr_beta1(*adam, lrs[step], beta1s[step]);
    adam->zero_grad();
    const torch::Tensor x = torch::randn({5, 4}, torch::kFloat64);
    fc->forward(x).pow(2).sum().backward();
    const std::vector<double> gw = values(fc->weight.grad()), gb = values(fc->bias.grad());
    adam->step();
    hw.apply(gw, lrs[step], beta1s[step], 0.999, 1e-8, 0.1);
    hb.apply(gb, lrs[step], beta1s[step], 0.999, 1e-8, 0.0);
    hw_no_decay.apply(gw, lrs[step], beta1s[step], 0.999, 1e-8, 0.0);
    const std::vector<double> w = values(fc->weight), b = values(fc->bias);
    for (size_t i = 0; i < w.size(); ++i) {
      EXPECT_NEAR(w[i], hw.w[i], kRelTol * std::abs(hw.w[i])) << "weight " << i << " step " << step;
    }
    for (size_t i = 0; i < b.size(); ++i) {
      EXPECT_NEAR(b[i], hb.w[i], kRelTol * std::abs(hb.w[i])) << "bias " << i << " step " << step;
    }
  }
  // The decay is visible: the same steps without it end elsewhere.
  double largest = 0;
  for (size_t i = 0; i < hw.w.size(); ++i) largest = std::max(largest, std::abs(hw.w[i] - hw_no_decay.w[i]));
  EXPECT_GT(largest, 1e-6);
}

TEST(MakeAdam, RefusesModuleWithoutTrainableParameters) {
  torch::nn::Module m;
  m.register_parameter("w", torch::ones({2, 2}), /*requires_grad=*/false);
  EXPECT_THROW(asl::train::make_adam(m, {}), std::runtime_error);
}

}  // namespace
