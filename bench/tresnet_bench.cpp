// TResNet-M at 224x224: eval (unfused NCHW fp32, fused channels-last fp32, fused bf16) and one training step.
#include <benchmark/benchmark.h>

#include <torch/torch.h>

#include "asl/models/fuse.h"
#include "asl/models/registry.h"
#include "asl/models/tresnet.h"
#include "asl/nn/autocast.h"
#include "asl/nn/loss.h"
#include "asl/runtime.h"
#include "asl/train/trainer.h"

namespace {

// As the `asl` command does (asl/runtime.h); ASL_DEFAULT_MALLOC=1 in the environment measures glibc's
// default behaviour instead.
[[maybe_unused]] const bool kAllocatorTuned = asl::tune_allocator();

constexpr int64_t kSize = 224;
constexpr int64_t kClasses = 80;

asl::models::TResNetOptions model_options() { return asl::models::model_options("tresnet_m", kClasses); }

// Randomised norm statistics so that nothing degenerates to zeros (fresh models have zero last norms).
asl::models::TResNet make_model(const asl::models::TResNetOptions& options = model_options()) {
  torch::manual_seed(0);
  asl::models::TResNet model(options);
  torch::NoGradGuard no_grad;
  for (const auto& m : model->modules(false)) {
    if (auto* norm = m->as<asl::nn::ActivatedBatchNorm>()) {
      norm->weight.uniform_(0.2, 1.0);
      norm->running_var.uniform_(0.5, 2.0);
    }
  }
  return model;
}

// A bfloat16 case on a CPU without native bfloat16 still runs (oneDNN's or asl's emulation), labelled so.
void label_bf16(benchmark::State& state) {
  if (!asl::cpu_info().bf16_native) state.SetLabel("bf16 emulated: no native bfloat16 (oneDNN " + asl::cpu_info().onednn_isa + ")");
}

void set_counters(benchmark::State& state, int64_t batch) {
  // Effective rate: 2 FLOPs per multiply-add of the model, whatever the kernels actually execute.
  const double flops = 2.0 * static_cast<double>(asl::models::count_multiply_adds(model_options(), kSize, kSize));
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * batch * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void BM_EvalUnfused(benchmark::State& state) {
  const int64_t batch = state.range(0);
  auto model = make_model();
  model->eval();
  const auto x = torch::randn({batch, 3, kSize, kSize});
  c10::InferenceMode guard;
  model->forward(x);  // warm-up: oneDNN builds its primitives on the first call
  for (auto _ : state) {
    auto y = model->forward(x);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  set_counters(state, batch);
}

// A fused model of `name` at `size` with `options`, timed on random images.
void eval_fused(benchmark::State& state, const std::string& name, int64_t size, const asl::models::FuseOptions& options) {
  const int64_t batch = state.range(0);
  auto model = name == "tresnet_m" ? make_model() : make_model(asl::models::model_options(name, kClasses));
  model->eval();
  auto fused = asl::models::fuse_for_inference(model, options);
  const auto x = torch::randn({batch, 3, size, size});
  if (options.dtype() == torch::kBFloat16) label_bf16(state);
  fused->forward(x);  // warm-up: primitives and their weight layouts for this shape
  for (auto _ : state) {
    auto y = fused->forward(x);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  if (name == "tresnet_m" && size == kSize) {
    set_counters(state, batch);
  } else {
    state.counters["images/s"] =
        benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
  }
}

template <bool BFloat16>
void BM_EvalFused(benchmark::State& state) {
  eval_fused(state, "tresnet_m", kSize, asl::models::FuseOptions().dtype(BFloat16 ? torch::kBFloat16 : torch::kFloat32));
}

// The same without Winograd (oneDNN's direct kernels only): what FuseOptions::winograd buys.
void BM_EvalFusedDirect(benchmark::State& state) {
  eval_fused(state, "tresnet_m", kSize, asl::models::FuseOptions().winograd(false));
}

// The channels-last path instead of the blocked one (FuseOptions::blocked16, where it runs): what it buys.
void BM_EvalFusedChannelsLast(benchmark::State& state) {
  eval_fused(state, "tresnet_m", kSize, asl::models::FuseOptions().blocked16(false));
}

// The published COCO model's case: TResNet-L at 448, fused float32 (batch 1, where latency matters).
void BM_EvalFusedL448(benchmark::State& state) { eval_fused(state, "tresnet_l", 448, asl::models::FuseOptions()); }

void BM_EvalFusedL448Direct(benchmark::State& state) {
  eval_fused(state, "tresnet_l", 448, asl::models::FuseOptions().winograd(false));
}

// forward, ASL (the paper's COCO recipe), backward, Adam; bf16 runs forward and loss under CPU autocast.
void BM_TrainStepLayout(benchmark::State& state, bool BFloat16, bool channels_last) {
  const int64_t batch = state.range(0);
  auto model = make_model();
  model->train();
  const auto format = channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  if (channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(format));
    }
  }
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-4));
  const auto x = torch::randn({batch, 3, kSize, kSize}).contiguous(format);
  const auto targets = (torch::rand({batch, kClasses}) < 0.05).to(torch::kFloat32);
  const auto loss_options = asl::nn::AsymmetricLossOptions().gamma_neg(4).gamma_pos(0).clip(0.05);
  auto step = [&] {
    optimizer.zero_grad();
    torch::Tensor loss;
    if (BFloat16) {
      torch::Tensor logits;
      {
        asl::nn::BFloat16Autocast autocast(true);
        logits = model->forward(x);
      }
      loss = asl::nn::functional::asymmetric_loss_optimized(logits.to(torch::kFloat32), targets, loss_options);
    } else {
      loss = asl::nn::functional::asymmetric_loss_optimized(model->forward(x), targets, loss_options);
    }
    loss.backward();
    optimizer.step();
    return loss;
  };
  if (BFloat16) label_bf16(state);
  step();  // warm-up: primitives and Adam's moment buffers
  for (auto _ : state) {
    auto loss = step();
    benchmark::DoNotOptimize(loss.data_ptr());
  }
  // A training step costs about 3 forward passes; the rate below still counts one forward's FLOPs per image.
  set_counters(state, batch);
}

// As asl::train::Trainer runs it: channels-last parameters and images where it pays on this CPU.
template <bool BFloat16>
void BM_TrainStep(benchmark::State& state) {
  BM_TrainStepLayout(state, BFloat16, asl::train::channels_last_training());
}

// The same step in PyTorch's default layout (NCHW), for comparison.
void BM_TrainStepNchw(benchmark::State& state) { BM_TrainStepLayout(state, false, false); }

// The trainer's step with LibTorch's (direct) 3x3 convolutions instead of oneDNN's Winograd ones.
void BM_TrainStepDirectConv(benchmark::State& state) {
  asl::nn::functional::set_winograd_training(false);
  BM_TrainStepLayout(state, false, asl::train::channels_last_training());
  asl::nn::functional::set_winograd_training(true);
}

// The trainer's step with LibTorch's 1x1 convolutions instead of asl's matrix-product node.
template <bool BFloat16>
void BM_TrainStepAten1x1(benchmark::State& state) {
  asl::nn::functional::set_pointwise_conv_training(false);
  BM_TrainStepLayout(state, BFloat16, asl::train::channels_last_training());
  asl::nn::functional::set_pointwise_conv_training(true);
}

// The trainer's step with LibTorch's batch_norm + activation instead of asl's one-node norm: what that buys.
void BM_TrainStepAtenNorm(benchmark::State& state) {
  asl::nn::functional::set_fused_norm_training(false);
  BM_TrainStepLayout(state, false, asl::train::channels_last_training());
  asl::nn::functional::set_fused_norm_training(true);
}

void eval_batches(benchmark::internal::Benchmark* b) {
  b->ArgName("batch")->Arg(1)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_EvalUnfused)->Name("tresnet_m_eval_unfused_nchw_fp32")->Apply(eval_batches);
BENCHMARK(BM_EvalFused<false>)->Name("tresnet_m_eval_fused_cl_fp32")->Apply(eval_batches);
BENCHMARK(BM_EvalFusedDirect)->Name("tresnet_m_eval_fused_cl_direct_fp32")->Apply(eval_batches);
BENCHMARK(BM_EvalFusedChannelsLast)->Name("tresnet_m_eval_fused_cl_unblocked_fp32")->Apply(eval_batches);
BENCHMARK(BM_EvalFused<true>)->Name("tresnet_m_eval_fused_cl_bf16")->Apply(eval_batches);
BENCHMARK(BM_EvalFusedL448)
    ->Name("tresnet_l448_eval_fused_cl_fp32")
    ->ArgName("batch")
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_EvalFusedL448Direct)
    ->Name("tresnet_l448_eval_fused_cl_direct_fp32")
    ->ArgName("batch")
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStep<false>)
    ->Name("tresnet_m_train_step_fp32")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStepNchw)
    ->Name("tresnet_m_train_step_nchw_fp32")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStepDirectConv)
    ->Name("tresnet_m_train_step_direct_conv_fp32")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStepAtenNorm)
    ->Name("tresnet_m_train_step_aten_norm_fp32")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStepAten1x1<false>)
    ->Name("tresnet_m_train_step_aten_1x1_fp32")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStepAten1x1<true>)
    ->Name("tresnet_m_train_step_aten_1x1_bf16_autocast")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_TrainStep<true>)
    ->Name("tresnet_m_train_step_bf16_autocast")
    ->ArgName("batch")
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
