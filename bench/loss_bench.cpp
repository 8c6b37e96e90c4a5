// Forward and forward+backward of the composite and fused multi-label ASL at COCO and Open Images widths.
#include <benchmark/benchmark.h>

#include <thread>

#include <torch/torch.h>

#include "asl/nn/loss.h"

namespace {

namespace fn = asl::nn::functional;

struct Data {
  torch::Tensor x, y;
};

Data make(int64_t n, int64_t c) {
  torch::manual_seed(0);
  return {torch::randn({n, c}) * 3, (torch::rand({n, c}) < 0.04).to(torch::kFloat32)};
}

// The baseline's recipe: gamma_neg 4, gamma_pos 0, clip 0.05, focusing weight detached.
asl::nn::AsymmetricLossOptions recipe() {
  return asl::nn::AsymmetricLossOptions().gamma_neg(4).gamma_pos(0).clip(0.05).disable_torch_grad_focal_loss(true);
}

template <bool Fused>
void BM_Forward(benchmark::State& state) {
  const Data d = make(state.range(0), state.range(1));
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor l = Fused ? fn::asymmetric_loss_optimized(d.x, d.y, recipe()) : fn::asymmetric_loss(d.x, d.y, recipe());
    benchmark::DoNotOptimize(l.data_ptr());
  }
}

template <bool Fused>
void BM_ForwardBackward(benchmark::State& state) {
  const Data d = make(state.range(0), state.range(1));
  for (auto _ : state) {
    torch::Tensor x = d.x.clone().requires_grad_(true);
    torch::Tensor l = Fused ? fn::asymmetric_loss_optimized(x, d.y, recipe()) : fn::asymmetric_loss(x, d.y, recipe());
    l.backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({128, 80})->Args({128, 9605})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

BENCHMARK(BM_Forward<false>)->Name("composite_fwd")->Apply(shapes);
BENCHMARK(BM_Forward<true>)->Name("fused_fwd")->Apply(shapes);
BENCHMARK(BM_ForwardBackward<false>)->Name("composite_fwd_bwd")->Apply(shapes);
BENCHMARK(BM_ForwardBackward<true>)->Name("fused_fwd_bwd")->Apply(shapes);

}  // namespace
