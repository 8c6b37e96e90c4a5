// One rank of the distributed tests (tests/train/distributed_test.cpp starts two): checks the collectives,
// then trains a tiny TResNet on fixtures/coco for a few steps in the group and saves its final weights.
// Usage: dist_worker OUT_PREFIX RUN_DIR [die-after-step N]. Exit 0 when everything held.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include <torch/torch.h>

#include "asl/data/coco.h"
#include "asl/io/checkpoint.h"
#include "asl/train/distributed.h"
#include "asl/train/trainer.h"

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "dist_worker: check failed: " << what << "\n";
    std::exit(2);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: dist_worker OUT_PREFIX RUN_DIR [die-after-step N]\n";
    return 64;
  }
  const std::string out = argv[1], run_dir = argv[2];
  const int64_t die_after = argc >= 5 ? std::stoll(argv[4]) : -1;
  try {
    at::set_num_threads(1);
    auto cfg = asl::train::distributed_from_env();
    require(cfg.has_value(), "the environment describes a group");
    cfg->timeout = std::chrono::milliseconds(10000);
    auto comm = std::make_shared<asl::train::Communicator>(*cfg);
    const int64_t r = comm->rank(), w = comm->world_size();

    // Collectives against values computed here.
    torch::Tensor a = torch::tensor({double(r + 1), 2.0 * double(r + 1)}, torch::kFloat32);
    torch::Tensor b = torch::full({3, 2}, double(r), torch::kFloat32);
    comm->allreduce_mean({a, b}, /*bucket_bytes=*/8);  // two buckets
    const double mean = (w + 1) / 2.0;
    require(a[0].item<double>() == mean && a[1].item<double>() == 2 * mean, "allreduce_mean of a");
    require(b.eq((w - 1) / 2.0).all().item<bool>(), "allreduce_mean of b");
    const torch::Tensor rows = comm->allgather_rows(torch::full({r + 1, 2}, double(r), torch::kFloat64));
    require(rows.size(0) == w * (w + 1) / 2, "allgather_rows count");
    require(rows[0][0].item<double>() == 0 && rows[rows.size(0) - 1][1].item<double>() == double(w - 1), "allgather_rows order");
    torch::Tensor c = torch::full({4}, double(r * 10), torch::kInt64);
    comm->broadcast({c}, 0);
    require(c.eq(0).all().item<bool>(), "broadcast from rank 0");
    comm->check_same("a shared value", "same");
    bool refused = false;
    try {
      comm->check_same("the rank", std::to_string(r));
    } catch (const std::runtime_error& e) {
      refused = std::string(e.what()).find("disagree on the rank") != std::string::npos;
    }
    require(refused, "check_same refuses different values");

    // A few training steps in the group.
    const std::string fixtures = ASL_FIXTURES_FALLBACK;
    const char* env_fixtures = std::getenv("ASL_FIXTURES_DEFAULT");
    const std::string dir = env_fixtures ? env_fixtures : fixtures;
    auto set = [&] { return asl::train::from_coco(asl::data::load_coco(dir + "/coco/annotations.json", dir + "/coco")); };
    asl::train::TrainerOptions o;
    o.model_options(asl::models::TResNetOptions().layers({1, 1, 1, 1}).width_factor(0.25))
        .image_size(64)
        .batch_size(1)
        .epochs(2)
        .stop_epoch(0)
        .lr(1e-3)
        .workers(1)
        .seed(3)
        .deterministic(true)
        .out_dir(run_dir)
        .communicator(comm);
    asl::train::TrainCallbacks cb;
    if (die_after >= 0 && r == 1) {
      cb.on_step = [die_after](const asl::train::StepInfo& s) {
        if (s.global_step == die_after) ::_exit(3);  // a crash: no message, no cleanup
      };
    }
    asl::train::Trainer trainer(set(), set(), o, cb);
    const asl::train::TrainResult result = trainer.run();
    require(result.finished, "the run finished");
    asl::io::save(out + "." + std::to_string(r) + ".pth",
                  asl::io::state_dict_value(asl::io::module_state_dict(*trainer.model())));
    std::cout << "rank " << r << " steps " << result.global_step << " highest " << result.highest_map << "\n";
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
