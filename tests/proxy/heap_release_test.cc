#include "proxy/heap_release.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace poolside {
namespace {

constexpr int64_t kMiB = 1 << 20;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizerAllocator = true;
#else
constexpr bool kSanitizerAllocator = false;
#endif
// Below glibc's mmap threshold, so the blocks come from the heap as grpc's
// call arenas do.
constexpr size_t kBlockBytes = 4096;
constexpr int kBlocks = 20000;  // About 80 MiB.

// Allocates and touches kBlocks heap blocks, like a burst of calls.
std::vector<void*> Burst() {
  std::vector<void*> blocks;
  blocks.reserve(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    void* block = std::malloc(kBlockBytes);
    std::memset(block, 1, kBlockBytes);
    blocks.push_back(block);
  }
  return blocks;
}

void FreeAll(std::vector<void*>& blocks) {
  for (void* block : blocks) std::free(block);
  blocks.clear();
}

TEST(HeapReleaserTest, NothingToDoNearTheIdleSize) {
  HeapReleaser releaser(ResidentBytes());
  EXPECT_EQ(releaser.MaybeRelease(), 0);
}

TEST(HeapReleaserTest, ReturnsTheHeapABurstLeftBehind) {
  if (kSanitizerAllocator) GTEST_SKIP() << "the sanitizer's allocator replaces glibc's heap";
  HeapReleaser releaser(ResidentBytes());
  std::vector<void*> blocks = Burst();
  // One block in 32 outlives the burst, as a few long calls do: the heap
  // cannot shrink from its top, so glibc keeps the rest resident.
  std::vector<void*> survivors;
  for (int i = 0; i < kBlocks; ++i) {
    if (i % 32 == 31) {
      survivors.push_back(blocks[i]);
    } else {
      std::free(blocks[i]);
    }
  }
  blocks.clear();
  const int64_t before = ResidentBytes();
  ASSERT_GT(before, 60 * kMiB) << "the burst's memory should still be resident";

  const int64_t released = releaser.MaybeRelease();
  EXPECT_GT(released, 40 * kMiB);
  EXPECT_LT(ResidentBytes(), before - 40 * kMiB);
  FreeAll(survivors);
}

TEST(HeapReleaserTest, LeavesMemoryInUseAlone) {
  if (kSanitizerAllocator) GTEST_SKIP() << "the sanitizer's allocator replaces glibc's heap";
  HeapReleaser releaser(ResidentBytes());
  std::vector<void*> blocks = Burst();
  // Large, but all of it in use: a trim would find nothing to return.
  EXPECT_EQ(releaser.MaybeRelease(), 0);
  FreeAll(blocks);
}

TEST(ResidentBytesTest, CountsTouchedMemory) {
  const int64_t before = ResidentBytes();
  ASSERT_GT(before, 0);
  std::vector<void*> blocks = Burst();
  EXPECT_GT(ResidentBytes(), before + 60 * kMiB);
  FreeAll(blocks);
}

}  // namespace
}  // namespace poolside
