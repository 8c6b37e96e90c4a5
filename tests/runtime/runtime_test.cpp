// asl::cpu_info and the precision it implies (against the caps ctest sets), and asl::tune_allocator against
// glibc's own account of its blocks (mallinfo2).
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include <ATen/Parallel.h>

#include "asl/runtime.h"

namespace {

constexpr size_t kBlock = size_t{48} << 20;  // above glibc's largest dynamic mmap threshold (32 MiB)

// Allocates, touches and frees one large block; reports whether it was a separate mapping and how much
// free memory the heap kept afterwards.
struct Observed {
  bool mapped;
  size_t kept_after_free;
};
Observed allocate_once() {
  const struct mallinfo2 before = mallinfo2();
  char* block = static_cast<char*>(std::malloc(kBlock));
  EXPECT_NE(block, nullptr);
  std::memset(block, 1, kBlock);
  const struct mallinfo2 during = mallinfo2();
  std::free(block);
  return {during.hblks > before.hblks, mallinfo2().fordblks};
}

// One test, in order: tuning changes the whole process and cannot be undone.
TEST(Runtime, TuneAllocatorRespectsUserSettingsThenKeepsLargeBlocksOnTheHeap) {
  ASSERT_EQ(setenv("ASL_DEFAULT_MALLOC", "1", 1), 0);
  EXPECT_FALSE(asl::tune_allocator());
  unsetenv("ASL_DEFAULT_MALLOC");
  for (const char* var : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}) {
    ASSERT_EQ(setenv(var, "131072", 1), 0);
    EXPECT_FALSE(asl::tune_allocator()) << var;
    unsetenv(var);
  }
  ASSERT_EQ(setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072", 1), 0);
  EXPECT_FALSE(asl::tune_allocator());
  unsetenv("GLIBC_TUNABLES");
  EXPECT_TRUE(allocate_once().mapped);  // nothing was changed: glibc's default maps a 48 MiB block

  ASSERT_TRUE(asl::tune_allocator());
  const Observed tuned = allocate_once();
  EXPECT_FALSE(tuned.mapped);
  EXPECT_GE(tuned.kept_after_free, kBlock);  // freed into the heap and kept, not returned to the kernel
  EXPECT_FALSE(allocate_once().mapped);
}

// ctest runs this binary a second time with DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 and
// ASL_EXPECT_ISA=avx2: a cap that silently stopped working would make the AVX2 run test nothing.
TEST(Runtime, ComputeThreadsSetOpenMpAndLimitOpenBlasToOne) {
  using GetThreads = int (*)();
  auto* openblas_threads = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  const bool user_count = std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("GOTO_NUM_THREADS") != nullptr;
  const int before = openblas_threads != nullptr ? openblas_threads() : -1;
  const bool changed = asl::set_compute_threads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(changed, openblas_threads != nullptr && !user_count);
  if (openblas_threads != nullptr) EXPECT_EQ(openblas_threads(), user_count ? before : 1);
  asl::set_compute_threads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
}

TEST(Runtime, CpuInfoReportsTheEffectiveIsasAndCaps) {
  const asl::CpuInfo& cpu = asl::cpu_info();
  SCOPED_TRACE(asl::describe(cpu));
  EXPECT_FALSE(cpu.model.empty());
  EXPECT_TRUE((std::set<std::string>{"AVX512", "AVX2", "NO AVX"}.count(cpu.aten_isa))) << cpu.aten_isa;
  EXPECT_TRUE((std::set<std::string>{"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni",
                                     "avx512_core_bf16", "avx512_core_amx"}
                   .count(cpu.onednn_isa)))
      << cpu.onednn_isa;
  // Consistency with the hardware flags (x86-64 machines of this project have AVX2 at least).
  EXPECT_TRUE(cpu.has_avx2);
  if (cpu.has_avx512) EXPECT_TRUE(cpu.has_avx2);
  if (cpu.bf16_native) EXPECT_TRUE(cpu.onednn_bf16 && (cpu.has_avx512_bf16 || cpu.has_amx_bf16));
  if (cpu.onednn_bf16) EXPECT_TRUE(cpu.has_avx512);
  if (cpu.onednn_isa.rfind("avx512_core", 0) == 0) EXPECT_TRUE(cpu.onednn_bf16);
  const char* expect = std::getenv("ASL_EXPECT_ISA");
  if (expect != nullptr && std::string(expect) == "avx2") {
    EXPECT_EQ(cpu.onednn_isa, "avx2");
    EXPECT_EQ(cpu.aten_isa, "AVX2");
    EXPECT_FALSE(cpu.onednn_bf16);
    EXPECT_FALSE(cpu.bf16_native);
  }
  // Without a cap oneDNN uses the hardware's best: bfloat16 is native exactly where the CPU has it.
  if (std::getenv("DNNL_MAX_CPU_ISA") == nullptr && std::getenv("ONEDNN_MAX_CPU_ISA") == nullptr) {
    EXPECT_EQ(cpu.bf16_native, cpu.has_avx512 && (cpu.has_avx512_bf16 || cpu.has_amx_bf16));
    EXPECT_EQ(cpu.onednn_bf16, cpu.has_avx512);
  }
}

TEST(Runtime, PrecisionFollowsTheCpu) {
  const asl::CpuInfo& cpu = asl::cpu_info();
  const auto autop = asl::resolve_precision(asl::Precision::Auto);
  EXPECT_EQ(autop.bf16, cpu.bf16_native);
  EXPECT_FALSE(autop.emulated);
  EXPECT_EQ(autop.reason.rfind(cpu.bf16_native ? "bf16 (auto" : "fp32 (auto", 0), 0u) << autop.reason;
  const auto fp32 = asl::resolve_precision(asl::Precision::Float32);
  EXPECT_FALSE(fp32.bf16);
  const auto bf16 = asl::resolve_precision(asl::Precision::BFloat16);
  EXPECT_TRUE(bf16.bf16);
  EXPECT_EQ(bf16.emulated, !cpu.bf16_native);
  EXPECT_EQ(bf16.reason.find("warning") != std::string::npos, !cpu.bf16_native) << bf16.reason;
  // The same decision for the other kinds of CPU, described rather than detected.
  asl::CpuInfo avx2;
  avx2.has_avx2 = true;
  avx2.onednn_isa = "avx2";
  EXPECT_FALSE(asl::resolve_precision(asl::Precision::Auto, avx2).bf16);
  EXPECT_TRUE(asl::resolve_precision(asl::Precision::BFloat16, avx2).emulated);
  asl::CpuInfo zen4 = avx2;
  zen4.has_avx512 = zen4.has_avx512_bf16 = zen4.onednn_bf16 = zen4.bf16_native = true;
  zen4.onednn_isa = "avx512_core_bf16";
  EXPECT_TRUE(asl::resolve_precision(asl::Precision::Auto, zen4).bf16);
  EXPECT_FALSE(asl::resolve_precision(asl::Precision::BFloat16, zen4).emulated);
  for (const char* name : {"auto", "fp32", "float32", "bf16", "bfloat16"}) EXPECT_NO_THROW(asl::parse_precision(name));
  EXPECT_EQ(asl::parse_precision("bfloat16"), asl::Precision::BFloat16);
  try {
    asl::parse_precision("fp16");
    ADD_FAILURE() << "fp16 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'fp16'"), std::string::npos) << e.what();
  }
}

}  // namespace
