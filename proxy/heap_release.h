// How poolside keeps glibc's heap from holding on to memory that grpc has
// freed. Each measure was measured on its own (bench/RESULTS.md, "Memory
// (issue 10)"):
//
// - One malloc arena. grpc allocates a slice on the thread that reads a
//   socket and frees it on the thread that finished writing it; with an
//   arena per thread, freed memory piles up in arenas the next burst may not
//   reuse. 8 calls of 4 MiB messages: peak RSS 110-127 -> 92-95 MiB, with no
//   measurable CPU cost on 1 KiB calls (glibc's per-thread cache serves small
//   blocks without the arena lock).
// - A fixed 64 KiB mmap threshold. grpc reads sockets into 64 KiB slices, and
//   a message's slices are shared with other calls' frames read alongside, so
//   on the heap they pin each other; mapped one by one, each is unmapped when
//   freed. Same scenario: peak 92-110 -> 63-66 MiB. It costs page faults:
//   CPU per 4 MiB call rose by about 60%; 1 KiB calls never allocate that
//   much at once and did not change.
// - A trim after bursts. After 10,000 streams close nearly all of the heap is
//   free but stays resident, because the freed calls lie between blocks still
//   in use and glibc only shrinks a heap from its top. malloc_trim gives the
//   pages back (354 -> 20 MiB), and only the process knows when that is worth
//   doing. It holds the (one) arena's lock while it walks the heap: 245 ms
//   when it ran while those streams were still closing, 29 ms once they had
//   closed. So it waits for a quiet period, when no call waits for the lock.
#ifndef POOLSIDE_PROXY_HEAP_RELEASE_H_
#define POOLSIDE_PROXY_HEAP_RELEASE_H_

#include <cstdint>
#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace poolside {

// Sets glibc malloc's process-wide options: one arena. Call once at start,
// before any thread is created (arenas are assigned to threads as they first
// allocate).
void ConfigureAllocator();

// The grpc++ forwarder's fixed 64 KiB mmap threshold (above). Call before
// grpc allocates. Not for the frame forwarder: its relay keeps its own
// per-stream buffers, which grow to a stream's window (1 MiB) for a large
// message; mapped and unmapped one by one, their page faults tripled its CPU
// per 4 MiB call (bench/RESULTS.md, "Every target, three rounds").
void MapGrpcReadBuffersApart();

// This process's resident set size in bytes, from /proc/self/statm; 0 if it
// cannot be read.
int64_t ResidentBytes();

// CPU time this process has used, all threads, in seconds.
double ProcessCpuSeconds();

struct HeapReleaseOptions {
  // The resident size once the server is up and idle.
  int64_t idle_bytes = 0;
  // A period counts as quiet when the process used less CPU than this, in
  // cores (0.02: 100 ms in 5 s; an idle poolside uses well under 1 ms).
  double quiet_cores = 0.02;
  // Injected for tests.
  std::function<double()> cpu_seconds = ProcessCpuSeconds;
  std::function<absl::Time()> now = absl::Now;
};

// Gives freed heap memory back to the system once the process has grown well
// past its idle footprint, most of that growth is free, and the process is
// quiet. Meant to be called every few seconds from a thread that has nothing
// else to do (main's signal wait): in steady state a call costs a clock read
// and a read of /proc/self/statm. Confined to the calling thread.
class HeapReleaser {
 public:
  explicit HeapReleaser(HeapReleaseOptions options);

  // Trims the heap if, since the previous call (or construction), the process
  // was quiet, and now the resident size is above twice the idle size and
  // the heap holds more free memory than the idle size. Returns the bytes the
  // resident size dropped by (0 when it did not trim).
  int64_t MaybeRelease();

 private:
  // Constant after construction.
  const HeapReleaseOptions options_;

  // When the previous period began, and the CPU time used by then.
  absl::Time period_start_;
  double period_start_cpu_seconds_;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_HEAP_RELEASE_H_
