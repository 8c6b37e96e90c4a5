// Data-parallel training on c10d/Gloo: the environment of torchrun and SLURM, two ranks on loopback (the
// collectives, bit-identical parameters after training, rank 0's files, the validation mAP of the
// gathered scores), a rank that dies, and `asl train --nproc-per-node 2`.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/checkpoint.h"
#include "asl/io/file.h"
#include "asl/train/distributed.h"
#include "asl/train/trainer.h"
#include "test_util.h"

extern char** environ;
namespace fs = std::filesystem;

namespace {

using Vars = std::vector<std::pair<const char*, const char*>>;

// Sets environment variables for the scope and restores what was there.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::vector<std::pair<const char*, const char*>>& vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k);
      saved_.emplace_back(k, old ? c10::optional<std::string>(old) : c10::nullopt);
      if (v) ::setenv(k, v, 1); else ::unsetenv(k);
    }
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v) ::setenv(k.c_str(), v->c_str(), 1); else ::unsetenv(k.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, c10::optional<std::string>>> saved_;
};

const std::vector<std::pair<const char*, const char*>> kClear = {
    {"WORLD_SIZE", nullptr}, {"RANK", nullptr}, {"LOCAL_RANK", nullptr}, {"LOCAL_WORLD_SIZE", nullptr},
    {"MASTER_ADDR", nullptr}, {"MASTER_PORT", nullptr}, {"SLURM_NTASKS", nullptr}, {"SLURM_PROCID", nullptr},
    {"SLURM_LOCALID", nullptr}, {"SLURM_NTASKS_PER_NODE", nullptr}, {"SLURM_JOB_NODELIST", nullptr},
    {"TORCHELASTIC_USE_AGENT_STORE", nullptr}, {"TORCHELASTIC_RESTART_COUNT", nullptr}};

struct Proc {
  pid_t pid = -1;
  int code = -1;
  std::string log;
};

// Starts `argv` with extra environment variables, stdout+stderr to `log`.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env, const fs::path& log) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& e : extra_env) env.push_back(e);
  std::vector<char*> a, v;
  for (const auto& x : argv) a.push_back(const_cast<char*>(x.c_str()));
  a.push_back(nullptr);
  for (const auto& x : env) v.push_back(const_cast<char*>(x.c_str()));
  v.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, a[0], &fa, nullptr, a.data(), v.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + " failed");
  return pid;
}

// Waits for all; kills what is still running after `limit` (a hang is a failure, never a stuck test).
void wait_all(std::vector<Proc>& procs, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (auto& p : procs) {
    for (;;) {
      int status = 0;
      const pid_t got = ::waitpid(p.pid, &status, WNOHANG);
      if (got == p.pid) {
        p.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, &status, 0);
        p.code = -9;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

std::string binary_dir() {
  const char* d = std::getenv("ASL_BINARY_DIR");
  if (d == nullptr) throw std::runtime_error("ASL_BINARY_DIR is not set (run through ctest)");
  return d;
}

// `world` dist_worker processes (1: a single process, no group) with `args` (default: the training run
// OUT_PREFIX = dir/state, RUN_DIR = dir/run, then `extra_args`); logs dir/rank<R>.log.
std::vector<Proc> run_workers(const fs::path& dir, const std::vector<std::string>& extra_args, int world = 2,
                              std::vector<std::string> args = {}) {
  if (args.empty()) args = {(dir / "state").string(), (dir / "run").string()};
  const int port = asl::train::free_loopback_port();
  std::vector<Proc> procs(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> argv{binary_dir() + "/tests/dist_worker"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    const fs::path log = dir / ("rank" + std::to_string(r) + ".log");
    const std::string w = std::to_string(world);
    procs[static_cast<size_t>(r)].pid =
        spawn(argv, {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r), "WORLD_SIZE=" + w, "LOCAL_WORLD_SIZE=" + w,
                     "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)},
              log);
  }
  wait_all(procs, std::chrono::seconds(240));
  for (int r = 0; r < world; ++r) procs[static_cast<size_t>(r)].log = asl::io::read_file((dir / ("rank" + std::to_string(r) + ".log")).string());
  return procs;
}

// "epoch position" lines a recording dist_worker wrote, added to `into[epoch]`.
void read_positions(const fs::path& file, std::map<int64_t, std::multiset<int64_t>>& into) {
  std::ifstream f(file);
  ASSERT_TRUE(f.good()) << file;
  int64_t e = 0, p = 0;
  while (f >> e >> p) into[e].insert(p);
}

int metrics_records(const fs::path& run) {
  std::ifstream metrics(run / "metrics.jsonl");
  std::string line;
  int records = 0;
  while (std::getline(metrics, line)) ++records;
  return records;
}

}  // namespace

TEST(DistributedEnv, TorchrunAndSlurmVariables) {
  {
    ScopedEnv clear(kClear);
    EXPECT_FALSE(asl::train::distributed_from_env().has_value());
    ScopedEnv one(Vars{{"WORLD_SIZE", "1"}, {"RANK", "0"}});
    EXPECT_FALSE(asl::train::distributed_from_env().has_value());
  }
  {
    ScopedEnv clear(kClear);
    ScopedEnv tr(Vars{{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                  {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "29400"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                  {"TORCHELASTIC_RESTART_COUNT", "1"}});
    const auto c = asl::train::distributed_from_env();
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->rank, 3);
    EXPECT_EQ(c->world_size, 4);
    EXPECT_EQ(c->local_rank, 1);
    EXPECT_EQ(c->local_world_size, 2);
    EXPECT_EQ(c->master_addr, "10.0.0.5");
    EXPECT_EQ(c->master_port, 29400);
    EXPECT_TRUE(c->agent_store);
    EXPECT_EQ(c->store_prefix, "/worker/attempt_1");
  }
  {
    ScopedEnv clear(kClear);
    ScopedEnv slurm(Vars{{"SLURM_NTASKS", "8"}, {"SLURM_PROCID", "5"}, {"SLURM_LOCALID", "1"},
                     {"SLURM_NTASKS_PER_NODE", "4(x2)"}, {"SLURM_JOB_NODELIST", "gpu[07-08],cpu1"}});
    const auto c = asl::train::distributed_from_env();
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->rank, 5);
    EXPECT_EQ(c->world_size, 8);
    EXPECT_EQ(c->local_world_size, 4);
    EXPECT_EQ(c->master_addr, "gpu07");
    EXPECT_EQ(c->master_port, 29500);
  }
  EXPECT_EQ(asl::train::first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(asl::train::first_slurm_host("n[003,005-009]"), "n003");
  {
    ScopedEnv clear(kClear);
    ScopedEnv bad(Vars{{"WORLD_SIZE", "2"}, {"RANK", "two"}, {"MASTER_PORT", "1"}});
    const std::string e = asl::test::error_of([] { asl::train::distributed_from_env(); });
    EXPECT_NE(e.find("RANK is 'two'"), std::string::npos) << e;
    ScopedEnv high(Vars{{"RANK", "2"}});
    EXPECT_NE(asl::test::error_of([] { asl::train::distributed_from_env(); }).find("not below the world size"),
              std::string::npos);
  }
}

TEST(DistributedTraining, TwoRanksStayIdenticalAndRankZeroWrites) {
  asl::test::TempDir dir("asl_dist");
  std::vector<Proc> procs = run_workers(dir.path(), {});
  for (const auto& p : procs) ASSERT_EQ(p.code, 0) << p.log;
  // 3 images over 2 ranks, batch 1 per rank: 2 steps per epoch, 2 epochs.
  EXPECT_NE(procs[0].log.find("steps 4"), std::string::npos) << procs[0].log;
  const auto a = asl::io::state_dict_from_value(asl::io::load((dir.path() / "state.0.pth").string()));
  const auto b = asl::io::state_dict_from_value(asl::io::load((dir.path() / "state.1.pth").string()));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) {
    ASSERT_TRUE(b.contains(item.key()));
    EXPECT_TRUE(item.value().equal(b[item.key()])) << item.key() << " differs between the ranks";
  }
  // Rank 0's files, each written once; the mAP of the gathered scores is a single-process validation's.
  const fs::path run = dir.path() / "run";
  EXPECT_TRUE(fs::exists(run / "last.pth"));
  EXPECT_TRUE(fs::exists(run / "model-epoch-2.pth"));
  std::ifstream metrics(run / "metrics.jsonl");
  std::string line, last;
  int records = 0;
  while (std::getline(metrics, line)) {
    last = line;
    ++records;
  }
  EXPECT_EQ(records, 2);
  const double distributed_map = nlohmann::json::parse(last).at("mAP_regular").get<double>();
  const std::string fx = asl::test::fixtures_dir().string();
  const fs::path out = dir.path() / "validate.json";
  const std::string cmd = binary_dir() + "/asl validate --annotations " + fx + "/coco/annotations.json --images " + fx +
                          "/coco --model-path " + (run / "model-epoch-2.pth").string() +
                          " --image-size 64 --no-fuse --json >" + out.string() + " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_NEAR(nlohmann::json::parse(asl::io::read_file(out.string())).at("mAP").get<double>(), distributed_map, 1e-6);
}

TEST(DistributedTraining, ARankThatDiesStopsTheOthersWithinTheTimeout) {
  asl::test::TempDir dir("asl_dist");
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Proc> procs = run_workers(dir.path(), {"die-after-step", "1"});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(procs[1].code, 3);
  EXPECT_EQ(procs[0].code, 1) << procs[0].log;
  EXPECT_NE(procs[0].log.find("across the group failed: rank 1 stopped"), std::string::npos)
      << procs[0].log;
  EXPECT_LT(seconds, 120);
  // No checkpoint was written half-way.
  for (const auto& entry : fs::directory_iterator(dir.path() / "run")) {
    EXPECT_EQ(entry.path().filename().string().find(".asl-tmp"), std::string::npos) << entry.path();
  }
}

TEST(DistributedTraining, AslTrainLaunchesItsOwnWorkers) {
  asl::test::TempDir dir("asl_dist");
  const std::string fx = asl::test::fixtures_dir().string();
  const std::string data = " --annotations " + fx + "/coco/annotations.json --images " + fx + "/coco --val-annotations " +
                           fx + "/coco/annotations.json --val-images " + fx + "/coco";
  const fs::path log = dir.path() / "log";
  const std::string cmd = binary_dir() + "/asl train --nproc-per-node 2" + data +
                          " --layers 1,1,1,1 --width-factor 0.25 --image-size 32 --batch-size 1 --epochs 1 --workers 1"
                          " --precision fp32 --dist-timeout 20 --out " + (dir.path() / "run").string() + " >" +
                          log.string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << asl::io::read_file(log.string());
  const std::string text = asl::io::read_file(log.string());
  EXPECT_NE(text.find("data-parallel, 2 ranks"), std::string::npos) << text;
  EXPECT_NE(text.find("global batch 2"), std::string::npos) << text;
  EXPECT_TRUE(fs::exists(dir.path() / "run" / "model-highest.pth"));
}

TEST(DistributedTraining, SigtermToTheLauncherWritesOneResumableCheckpoint) {
  asl::test::TempDir dir("asl_dist");
  const std::string fx = asl::test::fixtures_dir().string();
  const fs::path run = dir.path() / "run", log = dir.path() / "log";
  std::vector<Proc> launcher(1);
  launcher[0].pid = spawn({binary_dir() + "/asl", "train", "--nproc-per-node", "2", "--annotations",
                           fx + "/coco/annotations.json", "--images", fx + "/coco", "--val-annotations",
                           fx + "/coco/annotations.json", "--val-images", fx + "/coco", "--layers", "1,1,1,1",
                           "--width-factor", "0.25", "--image-size", "64", "--batch-size", "1", "--epochs", "1000",
                           "--workers", "1", "--precision", "fp32", "--dist-timeout", "20", "--out", run.string()},
                          {}, log);
  // Once the first epoch is done (metrics.jsonl written), stop the group.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(run / "metrics.jsonl") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(launcher[0].pid, SIGTERM);
  wait_all(launcher, std::chrono::seconds(120));
  const std::string text = asl::io::read_file(log.string());
  EXPECT_EQ(launcher[0].code, 143) << text;
  EXPECT_NE(text.find("stopped"), std::string::npos) << text;
  ASSERT_TRUE(fs::exists(run / "last.pth")) << text;
  for (const auto& entry : fs::directory_iterator(run)) {
    EXPECT_EQ(entry.path().filename().string().find(".asl-tmp"), std::string::npos) << entry.path();
  }
  // The state is whole: training goes on from it.
  const std::string resume = binary_dir() + "/asl train --nproc-per-node 2 --annotations " + fx +
                             "/coco/annotations.json --images " + fx + "/coco --val-annotations " + fx +
                             "/coco/annotations.json --val-images " + fx + "/coco --layers 1,1,1,1 --width-factor 0.25"
                             " --image-size 64 --batch-size 1 --epochs 1000 --workers 1 --precision fp32 --resume"
                             " --max-steps 1 --out " + run.string() + " >" + (dir.path() / "log2").string() + " 2>&1";
  EXPECT_EQ(std::system(resume.c_str()), 0) << asl::io::read_file((dir.path() / "log2").string());
  EXPECT_NE(asl::io::read_file((dir.path() / "log2").string()).find("resumed from"), std::string::npos);
}

// PyTorch's DistributedSampler (shuffle off, drop_last off) on an order of n: pad by repeating the start to
// a multiple of the world, rank r takes r, r + W, ...
TEST(DistributedSharding, PositionsAreDistributedSamplers) {
  for (int64_t n = 1; n <= 13; ++n) {
    for (int64_t w = 1; w <= 4; ++w) {
      const int64_t total = (n + w - 1) / w * w;
      std::vector<int64_t> padded;
      for (int64_t i = 0; i < total; ++i) padded.push_back(i % n);
      std::multiset<int64_t> rest;
      for (int64_t r = 0; r < w; ++r) {
        std::vector<int64_t> expected;
        for (int64_t i = r; i < total; i += w) expected.push_back(padded[static_cast<size_t>(i)]);
        std::vector<int64_t> got = asl::train::shard_positions(n, w, r);
        for (auto& p : got) p %= n;
        EXPECT_EQ(got, expected) << "n " << n << " world " << w << " rank " << r;
        // From a later position (a resumed epoch): every remaining position once, the same count per rank.
        const int64_t begin = n / 2;
        const std::vector<int64_t> from = asl::train::shard_positions(n, w, r, begin);
        EXPECT_EQ(static_cast<int64_t>(from.size()), (n - begin + w - 1) / w);
        for (const int64_t p : from) if (p < n) rest.insert(p);
      }
      std::multiset<int64_t> all;
      for (int64_t p = n / 2; p < n; ++p) all.insert(p);
      EXPECT_EQ(rest, all) << "n " << n << " world " << w;
    }
  }
  EXPECT_THROW(asl::train::shard_positions(3, 2, 2), std::invalid_argument);
  EXPECT_THROW(asl::train::shard_positions(0, 1, 0), std::invalid_argument);
}

// Norms in eval mode (a model whose gradient does not depend on the batch split): each rank's averaged
// gradient is the single-process gradient over the union / world, bucketed equals per-tensor all-reduce,
// and 4 Adam steps match the single-process run on the union with loss / world (checks in dist_worker).
TEST(DistributedTraining, GradientsAreTheSingleProcessGradientOverTheUnion) {
  asl::test::TempDir dir("asl_dist");
  std::vector<Proc> procs = run_workers(dir.path(), {}, 2, {"grad"});
  for (const auto& p : procs) {
    ASSERT_EQ(p.code, 0) << p.log;
    EXPECT_NE(p.log.find("gradient checks held"), std::string::npos) << p.log;
  }
}

// last.pth written by 2 ranks continues in 1 process and the other way round: each epoch trains every
// position of its order once (the padding of the 2-rank part aside), and the run finishes.
TEST(DistributedTraining, ResumesWithAnotherWorldSize) {
  const int64_t n = 11;  // odd: the 2-rank shards are padded
  for (const auto& [first, second, stop] : std::vector<std::tuple<int, int, int>>{{2, 1, 1}, {1, 2, 3}}) {
    asl::test::TempDir dir("asl_dist");
    const std::vector<std::string> common{"images", std::to_string(n), "batch", "2", "record", "1"};
    std::vector<std::string> a = common;
    a.insert(a.end(), {"max-steps", std::to_string(stop)});
    std::vector<Proc> p1 = run_workers(dir.path(), a, first);
    for (const auto& p : p1) ASSERT_EQ(p.code, 0) << p.log;
    std::map<int64_t, std::multiset<int64_t>> seen;
    for (int r = 0; r < first; ++r) read_positions(dir.path() / ("state." + std::to_string(r) + ".positions"), seen);
    // Batch 2: the first part consumed positions [0, stop * 2 * first) of epoch 1's order.
    const int64_t consumed = stop * 2 * first;
    ASSERT_EQ(static_cast<int64_t>(seen[0].size()), consumed);
    EXPECT_EQ(*seen[0].rbegin(), consumed - 1);

    std::vector<std::string> b = common;
    b.push_back("resume");
    std::vector<Proc> p2 = run_workers(dir.path(), b, second, {(dir.path() / "state2").string(), (dir.path() / "run").string()});
    for (const auto& p : p2) ASSERT_EQ(p.code, 0) << p.log;
    EXPECT_NE(p2[0].log.find("written by " + std::to_string(first) + " rank(s), this run has " + std::to_string(second)),
              std::string::npos)
        << p2[0].log;
    EXPECT_NE(p2[0].log.find("finished 1"), std::string::npos) << p2[0].log;
    for (int r = 0; r < second; ++r) read_positions(dir.path() / ("state2." + std::to_string(r) + ".positions"), seen);
    for (int64_t e = 0; e < 2; ++e) {
      std::multiset<int64_t> real;
      for (const int64_t p : seen[e]) {
        if (p < n) real.insert(p); else EXPECT_GE(p, n);
      }
      std::multiset<int64_t> all;
      for (int64_t p = 0; p < n; ++p) all.insert(p);
      EXPECT_EQ(real, all) << "epoch " << e + 1 << " of " << first << " → " << second;
    }
    EXPECT_EQ(metrics_records(dir.path() / "run"), 2);
  }
}

namespace {

// The children of `parent` whose environment holds `var` (e.g. "RANK=1").
std::vector<pid_t> children_with(pid_t parent, const std::string& var) {
  std::vector<pid_t> found;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream env(entry.path() / "environ", std::ios::binary);
    std::string item;
    while (std::getline(env, item, '\0')) {
      if (item == var) found.push_back(static_cast<pid_t>(std::stol(name)));
    }
  }
  return found;
}

// torchrun from Debian's python3-torch 1.13. Under Python 3.11 its default --redirects/--tee ("0") parse to
// None (IntFlag no longer iterates the zero member), so every run passes --redirects 1 --tee 2: stdout to
// its log folder, stderr teed to the console.
std::vector<std::string> torchrun(const fs::path& dir, int port, const std::vector<std::string>& extra) {
  std::vector<std::string> argv{"/usr/bin/python3", "-m", "torch.distributed.run", "--no_python", "--nproc_per_node", "2",
                                "--master_port", std::to_string(port), "--redirects", "1", "--tee", "2", "--log_dir",
                                (dir / "torchrun").string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<std::string> tiny_train(const fs::path& run, const std::vector<std::string>& extra) {
  const std::string fx = asl::test::fixtures_dir().string();
  std::vector<std::string> argv{binary_dir() + "/asl", "train", "--annotations", fx + "/coco/annotations.json", "--images",
                                fx + "/coco", "--val-annotations", fx + "/coco/annotations.json", "--val-images",
                                fx + "/coco", "--layers", "1,1,1,1", "--width-factor", "0.25", "--image-size", "32",
                                "--batch-size", "1", "--workers", "1", "--precision", "fp32", "--dist-timeout", "20",
                                "--out", run.string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

}  // namespace

// `torchrun --no_python ... asl train`: the workers join the agent's store; then with --max_restarts 1 a
// worker killed after the first epoch makes torchrun restart the group, which resumes from last.pth.
TEST(DistributedTraining, TorchrunRunsTheWorkersAndRestartsALostGroup) {
  ASSERT_TRUE(fs::exists("/usr/bin/python3")) << "Debian's python3-torch (scripts/setup.sh) provides torchrun";
  {
    asl::test::TempDir dir("asl_dist");
    std::vector<Proc> run(1);
    std::vector<std::string> argv = torchrun(dir.path(), asl::train::free_loopback_port(), {});
    const std::vector<std::string> train = tiny_train(dir.path() / "run", {"--epochs", "2"});
    argv.insert(argv.end(), train.begin(), train.end());
    run[0].pid = spawn(argv, {}, dir.path() / "log");
    wait_all(run, std::chrono::seconds(120));
    const std::string text = asl::io::read_file((dir.path() / "log").string());
    ASSERT_EQ(run[0].code, 0) << text;
    EXPECT_NE(text.find("data-parallel, 2 ranks (torchrun"), std::string::npos) << text;
    EXPECT_TRUE(fs::exists(dir.path() / "run" / "model-highest.pth"));
    EXPECT_EQ(metrics_records(dir.path() / "run"), 2);
  }
  {
    asl::test::TempDir dir("asl_dist");
    const fs::path out = dir.path() / "run";
    std::vector<Proc> run(1);
    std::vector<std::string> argv = torchrun(dir.path(), asl::train::free_loopback_port(), {"--max_restarts", "1"});
    const std::vector<std::string> train =
        tiny_train(out, {"--epochs", "1000", "--stop-epoch", "0", "--max-steps", "120", "--no-epoch-checkpoints", "--resume"});
    argv.insert(argv.end(), train.begin(), train.end());
    run[0].pid = spawn(argv, {}, dir.path() / "log");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!fs::exists(out / "metrics.jsonl") && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::vector<pid_t> rank1 = children_with(run[0].pid, "RANK=1");
    ASSERT_EQ(rank1.size(), 1u) << asl::io::read_file((dir.path() / "log").string());
    ::kill(rank1[0], SIGKILL);
    wait_all(run, std::chrono::seconds(240));
    const std::string text = asl::io::read_file((dir.path() / "log").string());
    ASSERT_EQ(run[0].code, 0) << text;
    EXPECT_NE(text.find("resumed from"), std::string::npos) << text;
    EXPECT_TRUE(fs::exists(dir.path() / "torchrun")) << text;
    // The restarted group went on to the step limit, 120 steps of 2 per epoch (a stop at an epoch's last
    // step leaves that epoch's validation to the resumed run).
    EXPECT_NE(text.find("stopped after step 2/2 of epoch 60"), std::string::npos) << text;
    EXPECT_EQ(metrics_records(out), 59) << text;
  }
}
