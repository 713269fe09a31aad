#include "proxy/heap_release.h"

#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/support/sanitizer.h"

namespace poolside {
namespace {

using test::kUnderSanitizer;
constexpr int64_t kMiB = 1 << 20;

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

// The process's CPU time and the wall clock, as the releaser sees them.
struct FakeClocks {
  double cpu_seconds = 0;
  absl::Time now = absl::UnixEpoch();

  // A releaser for a process whose idle size is its size now.
  HeapReleaser NewReleaser() {
    HeapReleaseOptions options;
    options.idle_bytes = ResidentBytes();
    options.cpu_seconds = [this] { return cpu_seconds; };
    options.now = [this] { return now; };
    return HeapReleaser(std::move(options));
  }
  // A period of main's wait in which the process used `cores`.
  void Pass(double cores) {
    now += absl::Seconds(5);
    cpu_seconds += 5 * cores;
  }
};

// Leaves a burst's memory freed but resident: one block in 32 outlives the
// burst, as a few long calls do, so the heap cannot shrink from its top.
std::vector<void*> BurstLeavingSurvivors() {
  std::vector<void*> blocks = Burst();
  std::vector<void*> survivors;
  for (int i = 0; i < kBlocks; ++i) {
    if (i % 32 == 31) {
      survivors.push_back(blocks[i]);
    } else {
      std::free(blocks[i]);
    }
  }
  return survivors;
}

TEST(HeapReleaserTest, NothingToDoNearTheIdleSize) {
  FakeClocks clocks;
  HeapReleaser releaser = clocks.NewReleaser();
  clocks.Pass(0);
  EXPECT_EQ(releaser.MaybeRelease(), 0);
}

TEST(HeapReleaserTest, ReturnsTheHeapABurstLeftBehind) {
  if (kUnderSanitizer) GTEST_SKIP() << "the sanitizer's allocator replaces glibc's heap";
  FakeClocks clocks;
  HeapReleaser releaser = clocks.NewReleaser();
  std::vector<void*> survivors = BurstLeavingSurvivors();
  const int64_t before = ResidentBytes();
  ASSERT_GT(before, 60 * kMiB) << "the burst's memory should still be resident";

  clocks.Pass(0.001);
  const int64_t released = releaser.MaybeRelease();
  EXPECT_GT(released, 40 * kMiB);
  EXPECT_LT(ResidentBytes(), before - 40 * kMiB);
  FreeAll(survivors);
}

TEST(HeapReleaserTest, WaitsForAQuietPeriod) {
  if (kUnderSanitizer) GTEST_SKIP() << "the sanitizer's allocator replaces glibc's heap";
  FakeClocks clocks;
  HeapReleaser releaser = clocks.NewReleaser();
  std::vector<void*> survivors = BurstLeavingSurvivors();
  // Calls still running: they would wait for the allocator's lock.
  clocks.Pass(0.5);
  EXPECT_EQ(releaser.MaybeRelease(), 0);
  clocks.Pass(0.03);
  EXPECT_EQ(releaser.MaybeRelease(), 0);
  clocks.Pass(0.01);
  EXPECT_GT(releaser.MaybeRelease(), 40 * kMiB);
  FreeAll(survivors);
}

TEST(HeapReleaserTest, LeavesMemoryInUseAlone) {
  if (kUnderSanitizer) GTEST_SKIP() << "the sanitizer's allocator replaces glibc's heap";
  FakeClocks clocks;
  HeapReleaser releaser = clocks.NewReleaser();
  std::vector<void*> blocks = Burst();
  clocks.Pass(0);
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
