// Checkpoint load time and peak memory: asl vs Python's torch.load on the same ~120 MB file.
//
// Writes a TResNet-M-shaped checkpoint (the reference state dict's keys and shapes, random weights)
// from C++, plus a legacy-format copy written by /usr/bin/python3, then times loading both with
// Google Benchmark and prints side-by-side ratio lines. Peak memory is measured in fresh processes
// (this program re-run with --peak, and Python), as VmHWM above the RSS just before loading.
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "asl/io/checkpoint.h"

namespace fs = std::filesystem;

namespace {

std::string g_zip;
std::string g_legacy;

int64_t status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size()));
  }
  return -1;
}

/// Child mode: load one file and print the peak RSS growth in kB.
int peak_mode(const std::string& path) {
  { std::ofstream("/proc/self/clear_refs") << "5"; }  // resets VmHWM to the current RSS
  const int64_t base = status_kb("VmRSS");
  const auto ck = asl::io::load_checkpoint(path);
  const int64_t hwm = status_kb("VmHWM");
  std::cout << (hwm - base) << " " << ck.model.size() << "\n";
  return 0;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

fs::path fixtures_dir() {
  const char* env = std::getenv("ASL_FIXTURES");
  return env != nullptr && *env ? fs::path(env) : fs::path(ASL_FIXTURES_FALLBACK);
}

/// TResNet-M's state dict (keys and shapes from the reference manifest), random values.
asl::io::StateDict tresnet_m_state() {
  std::ifstream in(fixtures_dir() / "tresnet" / "manifest_tresnet_m.json");
  if (!in) throw std::runtime_error("manifest_tresnet_m.json not found under " + fixtures_dir().string());
  const nlohmann::json manifest = nlohmann::json::parse(in);
  torch::manual_seed(0);
  asl::io::StateDict sd;
  for (const auto& entry : manifest["state_dict"]) {
    const std::string key = entry[0].get<std::string>();
    const auto shape = entry[1].get<std::vector<int64_t>>();
    if (key.find("num_batches_tracked") != std::string::npos) {
      sd.insert(key, torch::zeros(shape, torch::kInt64));
    } else {
      sd.insert(key, torch::randn(shape));
    }
  }
  return sd;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double asl_load_seconds(const std::string& path, int runs) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const auto ck = asl::io::load_checkpoint(path);
    benchmark::DoNotOptimize(ck.model.size());
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return median(t);
}

/// Python's median torch.load time over `runs` loads in one interpreter, and its peak RSS growth (kB).
std::pair<double, int64_t> python_load(const std::string& path, int runs) {
  const std::string script =
      "import sys, time, torch\n"
      "def kb(f):\n"
      "    for l in open('/proc/self/status'):\n"
      "        if l.startswith(f + ':'): return int(l.split()[1])\n"
      "open('/proc/self/clear_refs', 'w').write('5')\n"
      "base = kb('VmRSS')\n"
      "ck = torch.load(sys.argv[1])\n"
      "peak = kb('VmHWM') - base\n"
      "del ck\n"
      "ts = []\n"
      "for _ in range(int(sys.argv[2])):\n"
      "    t = time.perf_counter(); ck = torch.load(sys.argv[1]); ts.append(time.perf_counter() - t); del ck\n"
      "ts.sort()\n"
      "print(ts[len(ts) // 2], peak)\n";
  const fs::path py = fs::temp_directory_path() / ("asl_ckpt_bench_" + std::to_string(::getpid()) + ".py");
  std::ofstream(py) << script;
  const std::string out = run_capture("/usr/bin/python3 " + py.string() + " " + path + " " + std::to_string(runs));
  fs::remove(py);
  std::istringstream s(out);
  double t = -1;
  int64_t peak = -1;
  s >> t >> peak;
  return {t, peak};
}

void BM_LoadZip(benchmark::State& state) {
  for (auto _ : state) {
    const auto ck = asl::io::load_checkpoint(g_zip);
    benchmark::DoNotOptimize(ck.model.size());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(fs::file_size(g_zip)));
}
BENCHMARK(BM_LoadZip)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_LoadLegacy(benchmark::State& state) {
  if (g_legacy.empty()) {
    state.SkipWithError("no legacy copy (python3 torch unavailable)");
    return;
  }
  for (auto _ : state) {
    const auto ck = asl::io::load_checkpoint(g_legacy);
    benchmark::DoNotOptimize(ck.model.size());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(fs::file_size(g_legacy)));
}
BENCHMARK(BM_LoadLegacy)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_SaveZip(benchmark::State& state) {
  const auto ck = asl::io::load_checkpoint(g_zip);
  const std::string out = g_zip + ".save";
  for (auto _ : state) asl::io::save_checkpoint(out, ck.model, 80, {});
  fs::remove(out);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(fs::file_size(g_zip)));
}
BENCHMARK(BM_SaveZip)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--peak") return peak_mode(argv[2]);

  const fs::path dir = fs::temp_directory_path() / ("asl_ckpt_bench_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  g_zip = (dir / "tresnet_m.pth").string();
  asl::io::save_checkpoint(g_zip, tresnet_m_state(), 80, {{0, "person"}});
  const std::string legacy = (dir / "tresnet_m_legacy.pth").string();
  std::system(("/usr/bin/python3 -c \"import torch, sys; torch.save(torch.load(sys.argv[1]), sys.argv[2], "
               "_use_new_zipfile_serialization=False)\" " + g_zip + " " + legacy).c_str());
  if (fs::exists(legacy)) g_legacy = legacy;

  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();

  const double mb = 1e-6;
  const int runs = 7;
  std::printf("\n-- asl vs Python torch.load (1.13), same files, median of %d loads --\n", runs);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  for (const std::string& path : {g_zip, g_legacy}) {
    if (path.empty()) continue;
    const double size = static_cast<double>(fs::file_size(path));
    const double ours = asl_load_seconds(path, runs);
    const auto [theirs, py_peak_kb] = python_load(path, runs);
    int64_t our_peak_kb = -1;
    std::istringstream(run_capture("'" + self + "' --peak " + path)) >> our_peak_kb;
    const char* name = path == g_zip ? "zip   " : "legacy";
    std::printf("%s %.1f MB: load asl %.1f ms, python %.1f ms, ratio asl/python %.2f (target <= 1)\n", name,
                size * mb, ours * 1e3, theirs * 1e3, theirs > 0 ? ours / theirs : -1.0);
    std::printf("%s peak memory above baseline: asl %.1f MB = %.2f x file (target < 1.3), python %.1f MB = %.2f x file\n",
                name, our_peak_kb * 1024.0 * mb, our_peak_kb * 1024.0 / size, py_peak_kb * 1024.0 * mb,
                py_peak_kb * 1024.0 / size);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  benchmark::Shutdown();
  return 0;
}
