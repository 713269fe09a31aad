#include "proxy/heap_release.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdio>

namespace poolside {
namespace {

// grpc reads sockets into 64 KiB slices (plus a refcount header, so above
// this): at this threshold each gets its own mapping, which free unmaps.
constexpr int kMmapThresholdBytes = 64 * 1024;

}  // namespace

void ConfigureAllocator() {
  // See heap_release.h for why and what each cost and saved, measured.
  mallopt(M_ARENA_MAX, 1);
  // Also pins the threshold: left alone, glibc raises it (up to 32 MiB) each
  // time a block above it is freed, after which the read buffers never leave
  // the heap again.
  mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes);
}

int64_t ResidentBytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return 0;
  long long size_pages = 0;
  long long resident_pages = 0;
  const int fields = std::fscanf(statm, "%lld %lld", &size_pages, &resident_pages);
  std::fclose(statm);
  if (fields != 2) return 0;
  return static_cast<int64_t>(resident_pages) * sysconf(_SC_PAGESIZE);
}

HeapReleaser::HeapReleaser(int64_t idle_bytes) : idle_bytes_(idle_bytes) {}

int64_t HeapReleaser::MaybeRelease() {
  const int64_t before = ResidentBytes();
  if (idle_bytes_ <= 0 || before <= 2 * idle_bytes_) return 0;
  // Large but in use (10,000 streams open): trimming would find nothing to
  // give back and cost a walk of the heap every period.
  if (static_cast<int64_t>(mallinfo2().fordblks) <= idle_bytes_) return 0;
  malloc_trim(0);
  const int64_t after = ResidentBytes();
  return after < before ? before - after : 0;
}

}  // namespace poolside
