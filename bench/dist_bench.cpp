// Data-parallel training step on one machine: W workers × T threads each, TResNet at S pixels, batch B per
// worker, through the trainer's pieces (ASL, GradientSync's bucketed all-reduce overlapping the backward,
// Adam). Prints one JSON line from rank 0: images/s over all workers, the step time, the seconds the rank
// that ended its backward last then waited for the all-reduces (exposed: what the backward did not hide),
// how far apart the ranks' backwards ended (skew), and the time of the same all-reduce run alone after the
// backward (its whole cost), so overlap = 1 - exposed / alone.
//
// Usage: dist_bench [--workers W] [--threads T] [--batch B] [--image-size S] [--model NAME] [--steps N]
// With --workers > 1 it starts W copies of itself on a free loopback port (RANK, WORLD_SIZE, ... set)
// and prints rank 0's line; a plain (not Google Benchmark) program because the measurement spans processes.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/models/registry.h"
#include "asl/nn/loss.h"
#include "asl/runtime.h"
#include "asl/train/distributed.h"
#include "asl/train/optimizer.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int launch(const std::vector<std::string>& args, int64_t workers) {
  const int port = asl::train::free_loopback_port();
  std::vector<pid_t> pids;
  for (int64_t r = 0; r < workers; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    const std::string w = std::to_string(workers);
    for (const std::string& v : {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r), "WORLD_SIZE=" + w,
                                 "LOCAL_WORLD_SIZE=" + w, std::string("MASTER_ADDR=127.0.0.1"),
                                 "MASTER_PORT=" + std::to_string(port)}) {
      env.push_back(v);
    }
    std::vector<char*> a, e;
    for (const auto& x : args) a.push_back(const_cast<char*>(x.c_str()));
    a.push_back(nullptr);
    for (const auto& x : env) e.push_back(const_cast<char*>(x.c_str()));
    e.push_back(nullptr);
    pid_t pid = -1;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, a.data(), e.data()) != 0) {
      std::cerr << "dist_bench: cannot start worker " << r << "\n";
      return 1;
    }
    pids.push_back(pid);
  }
  int failed = 0;
  for (const pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt{{"--workers", "1"},    {"--threads", "2"},       {"--batch", "16"},
                                         {"--image-size", "224"}, {"--model", "tresnet_m"}, {"--steps", "3"}};
  for (int i = 1; i < argc; i += 2) {
    if (!opt.count(argv[i]) || i + 1 >= argc) {
      std::cerr << "dist_bench: unknown or incomplete option " << argv[i] << "\n";
      return 64;
    }
    opt[argv[i]] = argv[i + 1];
  }
  try {
    const int64_t workers = std::stoll(opt["--workers"]), threads = std::stoll(opt["--threads"]);
    const int64_t batch = std::stoll(opt["--batch"]), size = std::stoll(opt["--image-size"]);
    const int64_t steps = std::stoll(opt["--steps"]);
    auto cfg = asl::train::distributed_from_env();
    if (workers > 1 && !cfg) return launch(std::vector<std::string>(argv, argv + argc), workers);
    asl::set_compute_threads(static_cast<int>(threads));
    std::unique_ptr<asl::train::Communicator> comm;
    if (cfg) comm = std::make_unique<asl::train::Communicator>(*cfg);
    const int64_t rank = comm ? comm->rank() : 0, world = comm ? comm->world_size() : 1;

    const int64_t classes = 80;
    torch::manual_seed(0);
    asl::models::TResNet model(asl::models::model_options(opt["--model"], classes));
    model->train();
    std::unique_ptr<asl::train::GradientSync> sync;
    if (comm) {
      std::vector<torch::Tensor> state = model->parameters();
      comm->broadcast(state, 0);
      sync = std::make_unique<asl::train::GradientSync>(*comm, model->parameters());
    }
    asl::train::AdamConfig ac;
    ac.lr = 1e-4;
    auto adam = asl::train::make_adam(*model, ac);
    torch::manual_seed(1 + rank);
    const torch::Tensor images = torch::rand({batch, 3, size, size});
    const torch::Tensor targets = torch::rand({batch, classes}).lt(0.05).to(torch::kFloat32);
    const auto loss_options = asl::nn::AsymmetricLossOptions();

    // Per step: the time, and (over the ranks) how far apart the backwards ended (skew: the faster rank
    // waits for the slower one) and what the last rank to end its backward then waited (exposed).
    std::vector<double> step_s, wait_s, skew_s;
    for (int64_t s = 0; s < steps + 1; ++s) {  // the first step warms up (oneDNN primitives, allocations)
      const auto t0 = Clock::now();
      adam->zero_grad();
      asl::nn::functional::asymmetric_loss_optimized(model->forward(images), targets, loss_options).backward();
      const double backward_end = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
      if (sync) sync->finish();
      adam->step();
      double exposed = 0, skew = 0;
      if (comm) {  // CLOCK_MONOTONIC: one clock for the processes of this machine
        const torch::Tensor mine = torch::tensor({{backward_end, sync->last_wait_seconds()}}, torch::kFloat64);
        const torch::Tensor all = comm->allgather_rows(mine);
        const int64_t last = all.select(1, 0).argmax().item<int64_t>();
        exposed = all[last][1].item<double>();
        skew = (all.select(1, 0).max() - all.select(1, 0).min()).item<double>();
      }
      if (s > 0) {
        step_s.push_back(seconds_since(t0));
        wait_s.push_back(exposed);
        skew_s.push_back(skew);
      }
    }
    // The same all-reduce alone (25 MB buckets of all gradients), after the backward: its whole cost.
    std::vector<double> alone_s;
    int64_t grad_bytes = 0;
    for (const auto& p : model->parameters()) grad_bytes += p.numel() * 4;
    if (comm) {
      std::vector<torch::Tensor> grads;
      for (const auto& p : model->parameters()) grads.push_back(p.grad());
      for (int k = 0; k < 3; ++k) {
        comm->barrier();
        const auto t0 = Clock::now();
        comm->allreduce_mean(grads);
        alone_s.push_back(seconds_since(t0));
      }
    }
    if (rank == 0) {
      const double step = median(step_s), exposed = median(wait_s), alone = median(alone_s);
      nlohmann::json j{{"model", opt["--model"]},
                       {"image_size", size},
                       {"workers", world},
                       {"threads", threads},
                       {"batch_per_worker", batch},
                       {"step_s", step},
                       {"images_per_s", static_cast<double>(batch * world) / step},
                       {"grad_mb", static_cast<double>(grad_bytes) / 1e6},
                       {"allreduce_exposed_s", exposed},
                       {"allreduce_alone_s", alone},
                       {"backward_skew_s", median(skew_s)},
                       {"overlap", alone > 0 ? std::max(0.0, 1.0 - exposed / alone) : 0.0}};
      std::cout << j.dump() << std::endl;
    }
  } catch (const std::exception& e) {
    std::cerr << "dist_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
