// What this process's CPU can do (instruction sets, native bfloat16), the precision that follows from it,
// and the process-wide settings that make LibTorch programs faster on Linux.
#pragma once

#include <string>

namespace asl {

/// The CPU as this process's kernels see it: the hardware's instruction sets, limited by the caps the
/// libraries honour (DNNL_MAX_CPU_ISA or ONEDNN_MAX_CPU_ISA for oneDNN, ATEN_CPU_CAPABILITY for ATen).
/// Every fast path that depends on the CPU (prepacked oneDNN convolutions, bfloat16) asks this.
struct CpuInfo {
  /// /proc/cpuinfo's "model name", or "unknown CPU".
  std::string model;
  /// Hardware flags (from CPUID, before any cap): AVX2; AVX-512 F+BW+VL+DQ; AVX512_BF16; AMX-BF16.
  bool has_avx2 = false;
  bool has_avx512 = false;
  bool has_avx512_bf16 = false;
  bool has_amx_bf16 = false;
  /// ATen's vectorised kernels, as LibTorch reports them: "AVX512", "AVX2" or "NO AVX".
  std::string aten_isa;
  /// oneDNN's effective ISA after its cap: "avx2", "avx512_core", "avx512_core_bf16", "avx512_core_amx", ...
  std::string onednn_isa;
  /// oneDNN can run bfloat16 primitives at all (effective ISA avx512_core or above). Where it cannot,
  /// asl runs bfloat16 convolutions and matrix products as float32 on bfloat16-rounded values.
  bool onednn_bf16 = false;
  /// bfloat16 is native: the CPU has AVX512_BF16 or AMX-BF16 and oneDNN's effective ISA uses it.
  bool bf16_native = false;
};

/// The CpuInfo of this process, computed once (the caps are read by the libraries at start-up).
const CpuInfo& cpu_info();

/// One line: model, ATen and oneDNN ISAs, hardware bfloat16 and whether it is used.
std::string describe(const CpuInfo& cpu);

/// The precision a run asks for: auto (bfloat16 only where it is native), float32 or bfloat16.
enum class Precision { Auto, Float32, BFloat16 };

/// Parses "auto", "fp32"/"float32" or "bf16"/"bfloat16"; throws std::invalid_argument naming the value.
Precision parse_precision(const std::string& name);
const char* to_string(Precision precision);

/// What a run computes in, and why.
struct PrecisionChoice {
  /// bfloat16 (autocast for training, a bfloat16 model for inference) rather than float32.
  bool bf16 = false;
  /// bfloat16 without hardware support: correct but slow (oneDNN's or asl's emulation).
  bool emulated = false;
  /// One line for the log, e.g. "bf16 (auto: AMX-BF16, oneDNN avx512_core_amx)".
  std::string reason;
};

/// Resolves `requested` on `cpu`: Auto gives bfloat16 exactly where cpu.bf16_native.
PrecisionChoice resolve_precision(Precision requested, const CpuInfo& cpu = cpu_info());

/// Makes glibc's malloc keep freed tensor memory for reuse: blocks up to 1 GiB come from the heap
/// instead of fresh mmap()s, and up to 1 GiB of free heap is kept instead of being returned to the
/// kernel (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). By default every tensor above glibc's mmap threshold
/// (at most 32 MiB) is a new mapping whose pages fault in on first touch: on this project's machine that
/// made a TResNet-M validation pass at batch 32 about 1.6x slower (bench/validate_bench.cpp). The price:
/// the process keeps its peak heap until it exits.
///
/// Changes nothing and returns false where the environment has ASL_DEFAULT_MALLOC=1, where the user has
/// set glibc's own malloc parameters (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_,
/// MALLOC_MMAP_MAX_, or glibc.malloc.* in GLIBC_TUNABLES), where malloc is not glibc's (sanitizer
/// builds), or where mallopt refuses.
/// The `asl` command calls it at start; a program using the library may call it once, early.
bool tune_allocator();

/// Sets LibTorch's compute threads (OpenMP, at::set_num_threads) to `threads` and, where the BLAS is
/// OpenBLAS and the environment sets no OPENBLAS_NUM_THREADS (or GOTO_NUM_THREADS) of its own, its
/// thread pool to 1: here BLAS only runs small products (squeeze-excite's and the head's linears), and
/// OpenBLAS's own pthreads then compete with OpenMP's spinning workers (in a TResNet-M training step
/// at batch 16 its GEMMs took 61 ms with its default pool and 9 ms with one thread). Returns whether
/// OpenBLAS's pool was changed. The `asl` command and the benchmarks call it.
bool set_compute_threads(int threads);

}  // namespace asl
