// mAP over a COCO-validation-sized score matrix (40137 x 80), as ../shared/bench/ref_map.py times it.
#include <benchmark/benchmark.h>

#include <torch/torch.h>

#include "asl/metrics/map.h"

namespace {

void BM_MeanAP(benchmark::State& state) {
  torch::manual_seed(0);
  const int64_t n = state.range(0), c = state.range(1);
  const torch::Tensor targets = (torch::rand({n, c}) < 0.05).to(torch::kFloat32);
  const torch::Tensor scores = torch::rand({n, c});
  for (auto _ : state) benchmark::DoNotOptimize(asl::metrics::mean_average_precision(scores, targets));
}
BENCHMARK(BM_MeanAP)->Name("mean_ap")->Args({40137, 80})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
