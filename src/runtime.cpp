#include "asl/runtime.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <malloc.h>
#endif

namespace asl {
namespace {

// The "model name" and "flags" of the first processor in /proc/cpuinfo (the kernel's view: it lists only
// what the OS has enabled).
void read_proc_cpuinfo(std::string& model, std::set<std::string>& flags) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  bool have_model = false, have_flags = false;
  while ((!have_model || !have_flags) && std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : std::string();
    if (key == "model name" && !have_model) {
      model = value;
      have_model = true;
    } else if (key == "flags" && !have_flags) {
      std::istringstream words(value);
      for (std::string w; words >> w;) flags.insert(w);
      have_flags = true;
    }
  }
}

// ATen reports its dispatch level only in its configuration summary: "CPU capability usage: AVX2".
std::string aten_capability() {
  const std::string config = at::show_config();
  const std::string key = "CPU capability usage: ";
  const auto at = config.find(key);
  if (at == std::string::npos) return "unknown";
  const auto end = config.find('\n', at);
  return config.substr(at + key.size(), end == std::string::npos ? std::string::npos : end - at - key.size());
}

bool has_bits(unsigned isa, unsigned bits) { return (isa & bits) == bits; }

CpuInfo detect() {
  CpuInfo c;
  std::set<std::string> flags;
  read_proc_cpuinfo(c.model, flags);
  if (c.model.empty()) c.model = "unknown CPU";
  const auto has = [&](const char* f) { return flags.count(f) != 0; };
  c.has_avx2 = has("avx2");
  c.has_avx512 = has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq");
  c.has_avx512_bf16 = has("avx512_bf16");
  c.has_amx_bf16 = has("amx_bf16");
  c.aten_isa = aten_capability();
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  std::string name = dnnl_cpu_isa2str(isa);
  if (name.rfind("cpu_isa_", 0) == 0) name = name.substr(8);
  c.onednn_isa = name;
  const auto bits = static_cast<unsigned>(isa);
  c.onednn_bf16 = has_bits(bits, dnnl_cpu_isa_avx512_core);
  c.bf16_native = (c.has_avx512_bf16 || c.has_amx_bf16) && has_bits(bits, dnnl_cpu_isa_avx512_core_bf16);
  return c;
}

std::string hardware_bf16(const CpuInfo& cpu) {
  if (cpu.has_amx_bf16 && cpu.has_avx512_bf16) return "AMX-BF16 and AVX512_BF16";
  if (cpu.has_amx_bf16) return "AMX-BF16";
  if (cpu.has_avx512_bf16) return "AVX512_BF16";
  return "none";
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

std::string describe(const CpuInfo& cpu) {
  std::ostringstream s;
  s << cpu.model << "; ATen " << cpu.aten_isa << ", oneDNN " << cpu.onednn_isa << "; hardware bfloat16: "
    << hardware_bf16(cpu) << " ("
    << (cpu.bf16_native ? "native" : cpu.onednn_bf16 ? "not native: oneDNN emulates it" : "not native: asl emulates it")
    << ")";
  return s.str();
}

Precision parse_precision(const std::string& name) {
  if (name == "auto") return Precision::Auto;
  if (name == "fp32" || name == "float32") return Precision::Float32;
  if (name == "bf16" || name == "bfloat16") return Precision::BFloat16;
  throw std::invalid_argument("precision: unknown value '" + name + "' (expected auto, fp32 or bf16)");
}

const char* to_string(Precision precision) {
  switch (precision) {
    case Precision::Auto: return "auto";
    case Precision::Float32: return "fp32";
    case Precision::BFloat16: return "bf16";
  }
  return "?";
}

PrecisionChoice resolve_precision(Precision requested, const CpuInfo& cpu) {
  PrecisionChoice c;
  const std::string where = "oneDNN " + cpu.onednn_isa + ", hardware bfloat16: " + hardware_bf16(cpu);
  switch (requested) {
    case Precision::Auto:
      c.bf16 = cpu.bf16_native;
      c.reason = c.bf16 ? "bf16 (auto: native bfloat16 on this CPU; " + where + ")"
                        : "fp32 (auto: no native bfloat16 on this CPU; " + where + ")";
      break;
    case Precision::Float32:
      c.reason = "fp32 (requested)";
      break;
    case Precision::BFloat16:
      c.bf16 = true;
      c.emulated = !cpu.bf16_native;
      c.reason = c.emulated ? "bf16 (requested) -- warning: this CPU has no native bfloat16 (" + where +
                                  "), so it is emulated: correct results, but slower than fp32"
                            : "bf16 (requested; native: " + where + ")";
      break;
  }
  return c;
}

bool tune_allocator() {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  const char* opt_out = std::getenv("ASL_DEFAULT_MALLOC");
  if (opt_out != nullptr && std::strcmp(opt_out, "1") == 0) return false;
  for (const char* var : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"}) {
    if (std::getenv(var) != nullptr) return false;
  }
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return false;
  constexpr int kOneGiB = 1 << 30;
  return mallopt(M_MMAP_THRESHOLD, kOneGiB) == 1 && mallopt(M_TRIM_THRESHOLD, kOneGiB) == 1;
#else
  return false;
#endif
}

bool set_compute_threads(int threads) {
  at::set_num_threads(std::max(1, threads));
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("GOTO_NUM_THREADS") != nullptr) return false;
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return false;  // another BLAS
  set(1);
  return true;
}

}  // namespace asl
