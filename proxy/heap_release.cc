#include "proxy/heap_release.h"

#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

namespace poolside {
namespace {

// grpc reads sockets into 64 KiB slices (plus a refcount header, so above
// this): at this threshold each gets its own mapping, which free unmaps.
constexpr int kMmapThresholdBytes = 64 * 1024;

}  // namespace

void ConfigureAllocator() {
  // See heap_release.h for why and what each cost and saved, measured.
  mallopt(M_ARENA_MAX, 1);
}

void MapGrpcReadBuffersApart() {
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

double ProcessCpuSeconds() {
  timespec used{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &used) != 0) return 0;
  return static_cast<double>(used.tv_sec) + static_cast<double>(used.tv_nsec) * 1e-9;
}

HeapReleaser::HeapReleaser(HeapReleaseOptions options)
    : options_(std::move(options)),
      period_start_(options_.now()),
      period_start_cpu_seconds_(options_.cpu_seconds()) {}

int64_t HeapReleaser::MaybeRelease() {
  const absl::Time now = options_.now();
  const double cpu_seconds = options_.cpu_seconds();
  const bool quiet = cpu_seconds - period_start_cpu_seconds_ <=
                     options_.quiet_cores * absl::ToDoubleSeconds(now - period_start_);
  period_start_ = now;
  period_start_cpu_seconds_ = cpu_seconds;
  // Busy: calls would wait for the allocator's lock while the trim walks the
  // heap, and what they free is reused soon anyway.
  if (!quiet) return 0;
  const int64_t before = ResidentBytes();
  if (options_.idle_bytes <= 0 || before <= 2 * options_.idle_bytes) return 0;
  // Large but in use (10,000 streams open): trimming would find nothing to
  // give back and cost a walk of the heap every period.
  if (static_cast<int64_t>(mallinfo2().fordblks) <= options_.idle_bytes) return 0;
  malloc_trim(0);
  const int64_t after = ResidentBytes();
  return after < before ? before - after : 0;
}

}  // namespace poolside
