// One rank of the distributed tests (tests/train/distributed_test.cpp starts them): checks the collectives,
// then trains a tiny TResNet on fixtures/coco for a few steps in the group and saves its final weights.
// Without a group in the environment (WORLD_SIZE unset or 1) it trains as a single process.
//
// Usage: dist_worker OUT_PREFIX RUN_DIR [OPTION VALUE]... [resume]
//   die-after-step N   rank 1 exits (a crash, no cleanup) after global step N
//   max-steps N        stop (resumably) after N steps of the run
//   images N           the training set is the fixture's 3 images repeated to N entries (default 3)
//   batch B            per-rank batch (default 1)
//   record 1           write OUT_PREFIX.<rank>.positions: "epoch position" of every image this rank trained
//   resume             continue from RUN_DIR/last.pth
// or: dist_worker grad   the gradient checks (two ranks): see grad_checks().
// Exit 0 when everything held.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/io/checkpoint.h"
#include "asl/models/tresnet.h"
#include "asl/nn/loss.h"
#include "asl/train/distributed.h"
#include "asl/train/trainer.h"

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "dist_worker: check failed: " << what << "\n";
    std::exit(2);
  }
}

std::string fixtures() {
  const char* env_fixtures = std::getenv("ASL_FIXTURES_DEFAULT");
  return env_fixtures ? env_fixtures : ASL_FIXTURES_FALLBACK;
}

void check_collectives(asl::train::Communicator& comm) {
  const int64_t r = comm.rank(), w = comm.world_size();
  torch::Tensor a = torch::tensor({double(r + 1), 2.0 * double(r + 1)}, torch::kFloat32);
  torch::Tensor b = torch::full({3, 2}, double(r), torch::kFloat32);
  comm.allreduce_mean({a, b}, /*bucket_bytes=*/8);  // two buckets
  const double mean = (w + 1) / 2.0;
  require(a[0].item<double>() == mean && a[1].item<double>() == 2 * mean, "allreduce_mean of a");
  require(b.eq((w - 1) / 2.0).all().item<bool>(), "allreduce_mean of b");
  const torch::Tensor rows = comm.allgather_rows(torch::full({r + 1, 2}, double(r), torch::kFloat64));
  require(rows.size(0) == w * (w + 1) / 2, "allgather_rows count");
  require(rows[0][0].item<double>() == 0 && rows[rows.size(0) - 1][1].item<double>() == double(w - 1), "allgather_rows order");
  torch::Tensor c = torch::full({4}, double(r * 10), torch::kInt64);
  comm.broadcast({c}, 0);
  require(c.eq(0).all().item<bool>(), "broadcast from rank 0");
  comm.check_same("a shared value", "same");
  bool refused = false;
  try {
    comm.check_same("the rank", std::to_string(r));
  } catch (const std::runtime_error& e) {
    refused = std::string(e.what()).find("disagree on the rank") != std::string::npos;
  }
  require(refused, "check_same refuses different values");
}

// ||a - b|| <= rtol * ||b|| (float32 sums in another order differ in the last bits, element by element).
bool close(const torch::Tensor& a, const torch::Tensor& b, double rtol) {
  const double diff = (a.to(torch::kFloat64) - b.to(torch::kFloat64)).norm().item<double>();
  const double ref = b.to(torch::kFloat64).norm().item<double>();
  return diff <= rtol * ref + 1e-30;
}

asl::models::TResNet tiny_model(int64_t classes) {
  torch::manual_seed(11);
  asl::models::TResNet m(asl::models::TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.25).num_classes(classes));
  m->eval();  // norms from their running statistics: the gradient does not depend on how the batch is split
  return m;
}

void copy_parameters(const asl::models::TResNet& from, const asl::models::TResNet& to) {
  torch::NoGradGuard g;
  const auto a = from->parameters(), b = to->parameters();
  for (size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
}

// With norms in eval mode: each rank's all-reduced gradient of the ASL sum over its shard (rows r, r + W of a
// batch of 2W) equals the single-process gradient over the whole batch divided by W (DDP's averaging);
// the bucketed all-reduce during the backward equals a plain per-tensor all-reduce bit for bit; and after
// N Adam steps the parameters equal those of a single process that trains on the union with loss / W.
void grad_checks(asl::train::Communicator& comm) {
  const int64_t r = comm.rank(), w = comm.world_size(), classes = 5, per_rank = 2;
  asl::models::TResNet dist = tiny_model(classes), single = tiny_model(classes), plain = tiny_model(classes);
  asl::train::GradientSync sync(comm, dist->parameters(), /*bucket_bytes=*/16 << 10);  // many buckets
  torch::optim::Adam dist_opt(dist->parameters(), torch::optim::AdamOptions(1e-3));
  torch::optim::Adam single_opt(single->parameters(), torch::optim::AdamOptions(1e-3));
  const auto opts = asl::nn::AsymmetricLossOptions();
  for (int step = 0; step < 4; ++step) {
    torch::manual_seed(100 + step);  // the same union batch on every rank
    const torch::Tensor images = torch::randn({per_rank * w, 3, 64, 64});
    const torch::Tensor targets = torch::rand({per_rank * w, classes}).lt(0.4).to(torch::kFloat32);
    const torch::Tensor rows = torch::arange(r, per_rank * w, w);  // DistributedSampler's interleave
    const torch::Tensor shard = images.index_select(0, rows), shard_targets = targets.index_select(0, rows);

    dist_opt.zero_grad();
    asl::nn::functional::asymmetric_loss_optimized(dist->forward(shard), shard_targets, opts).backward();
    sync.finish();

    single_opt.zero_grad();
    (asl::nn::functional::asymmetric_loss_optimized(single->forward(images), targets, opts) / double(w)).backward();

    if (step == 0) {
      // The plain path: the same shard's gradients, each tensor all-reduced on its own.
      copy_parameters(dist, plain);
      for (auto& p : plain->parameters()) p.mutable_grad() = torch::Tensor();
      asl::nn::functional::asymmetric_loss_optimized(plain->forward(shard), shard_targets, opts).backward();
      const auto pd = dist->parameters(), ps = single->parameters(), pp = plain->parameters();
      for (size_t i = 0; i < pd.size(); ++i) {
        torch::Tensor g = pp[i].grad().clone();
        comm.allreduce_mean({g});
        require(torch::equal(g, pd[i].grad()), "bucketed all-reduce equals the per-tensor one (parameter " +
                                                   std::to_string(i) + ")");
        require(close(pd[i].grad(), ps[i].grad(), 1e-5),
                "gradient " + std::to_string(i) + " equals the single-process gradient over the union / world");
      }
    }
    dist_opt.step();
    single_opt.step();
  }
  const auto pd = dist->parameters(), ps = single->parameters();
  for (size_t i = 0; i < pd.size(); ++i) {
    require(close(pd[i], ps[i], 1e-5), "parameter " + std::to_string(i) + " after 4 steps equals the single-process run's");
  }
  std::cout << "rank " << r << " gradient checks held on " << pd.size() << " parameters\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    at::set_num_threads(1);
    auto cfg = asl::train::distributed_from_env();
    std::shared_ptr<asl::train::Communicator> comm;
    if (cfg) {
      cfg->timeout = std::chrono::milliseconds(10000);
      comm = std::make_shared<asl::train::Communicator>(*cfg);
    }
    if (argc == 2 && std::string(argv[1]) == "grad") {
      require(comm != nullptr, "the environment describes a group");
      grad_checks(*comm);
      return 0;
    }
    if (argc < 3) {
      std::cerr << "usage: dist_worker OUT_PREFIX RUN_DIR [OPTION VALUE]... [resume] | dist_worker grad\n";
      return 64;
    }
    const std::string out = argv[1], run_dir = argv[2];
    std::map<std::string, int64_t> opt{{"die-after-step", -1}, {"max-steps", -1}, {"images", 3}, {"batch", 1}, {"record", 0}};
    bool resume = false;
    for (int i = 3; i < argc; ++i) {
      const std::string k = argv[i];
      if (k == "resume") {
        resume = true;
      } else if (opt.count(k) && i + 1 < argc) {
        opt[k] = std::stoll(argv[++i]);
      } else {
        std::cerr << "dist_worker: unknown argument " << k << "\n";
        return 64;
      }
    }
    const int64_t r = comm ? comm->rank() : 0;
    if (comm) check_collectives(*comm);

    // A few training steps (in the group, or alone).
    const std::string dir = fixtures();
    auto set = [&](int64_t n) {
      asl::train::LabeledImages s = asl::train::from_coco(asl::data::load_coco(dir + "/coco/annotations.json", dir + "/coco"));
      if (n == static_cast<int64_t>(s.paths.size())) return s;
      const int64_t m = static_cast<int64_t>(s.paths.size());
      std::vector<std::string> paths;
      for (int64_t i = 0; i < n; ++i) paths.push_back(s.paths[static_cast<size_t>(i % m)]);
      s.targets = s.targets.index_select(0, torch::arange(n) % m);
      s.paths = paths;
      return s;
    };
    const int64_t epochs = 2;
    const uint64_t seed = 3;
    asl::train::TrainerOptions o;
    o.model_options(asl::models::TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.25))
        .image_size(64)
        .batch_size(opt["batch"])
        .epochs(epochs)
        .stop_epoch(0)
        .lr(1e-3)
        .workers(opt["record"] != 0 ? 0 : 1)  // recording: decoded inside next(), nothing ahead of the steps
        .seed(seed)
        .deterministic(true)
        .out_dir(run_dir)
        .max_steps(opt["max-steps"])
        .resume(resume)
        .communicator(comm);
    // Records the epoch order positions trained here, read back from their augmentation seeds.
    auto seen = std::make_shared<std::multiset<uint64_t>>();
    auto seen_mutex = std::make_shared<std::mutex>();
    if (opt["record"] != 0) {
      o.augment([seen, seen_mutex](asl::data::Image&, uint64_t s) {
        std::lock_guard<std::mutex> lock(*seen_mutex);
        seen->insert(s);
      });
    }
    asl::train::TrainCallbacks cb;
    const int64_t die_after = opt["die-after-step"];
    if (die_after >= 0 && r == 1) {
      cb.on_step = [die_after](const asl::train::StepInfo& s) {
        if (s.global_step == die_after) ::_exit(3);  // a crash: no message, no cleanup
      };
    }
    cb.on_message = [r](const std::string& m) { std::cout << "rank " << r << ": " << m << "\n"; };
    const int64_t n = opt["images"];
    asl::train::Trainer trainer(set(n), set(3), o, cb);
    const asl::train::TrainResult result = trainer.run();
    require(result.finished || opt["max-steps"] >= 0, "the run finished");
    asl::io::save(out + "." + std::to_string(r) + ".pth",
                  asl::io::state_dict_value(asl::io::module_state_dict(*trainer.model())));
    if (opt["record"] != 0) {
      std::ofstream f(out + "." + std::to_string(r) + ".positions");
      for (const uint64_t s : *seen) {
        bool found = false;
        for (int64_t e = 0; e < epochs && !found; ++e) {
          for (int64_t p = 0; p < 2 * n + 8 && !found; ++p) {
            if (asl::train::image_seed(seed, e, p) == s) {
              f << e << " " << p << "\n";
              found = true;
            }
          }
        }
        require(found, "every augmentation seed is an (epoch, position) seed");
      }
    }
    std::cout << "rank " << r << " steps " << result.global_step << " finished " << result.finished << " highest "
              << result.highest_map << "\n";
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
