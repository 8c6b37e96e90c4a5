// asl::tune_allocator against glibc's own account of its blocks (mallinfo2).
#include <gtest/gtest.h>

#include <malloc.h>

#include <cstdlib>
#include <cstring>

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

}  // namespace
