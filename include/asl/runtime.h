// Process-wide settings that make LibTorch programs faster on Linux.
#pragma once

namespace asl {

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

}  // namespace asl
