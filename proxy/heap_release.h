// How poolside keeps glibc's heap from holding on to memory that grpc has
// freed. Measured with bench/compare (bench/RESULTS.md, "Memory (issue 10)"):
//
// - grpc allocates a slice on the thread that reads a socket and frees it on
//   the thread that finished writing it; with one malloc arena per thread the
//   freed memory lands in arenas that the next burst may not reuse. One arena
//   lowered the peak for 8 calls of 4 MiB messages by about a fifth, at no
//   measurable CPU cost (glibc's per-thread cache serves small blocks
//   without the arena lock).
// - After a burst (10,000 streams), almost all of the heap is free but stays
//   resident: the freed calls are scattered between blocks that are still in
//   use, so glibc never shrinks the heap on its own. Only malloc_trim gives
//   those pages back, and only the process knows when that is worth it.
#ifndef POOLSIDE_PROXY_HEAP_RELEASE_H_
#define POOLSIDE_PROXY_HEAP_RELEASE_H_

#include <cstdint>

namespace poolside {

// Sets glibc malloc's process-wide options. Call once at start, before any
// thread is created (arenas are assigned to threads as they first allocate).
void ConfigureAllocator();

// This process's resident set size in bytes, from /proc/self/statm; 0 if it
// cannot be read.
int64_t ResidentBytes();

// Gives freed heap memory back to the system once the process has grown well
// past its idle footprint and most of that growth is free. Meant to be
// called every few seconds from a thread that has nothing else to do (main's
// signal wait): in steady state a call costs one read of /proc/self/statm.
// Confined to the calling thread.
class HeapReleaser {
 public:
  // `idle_bytes`: the resident size once the server is up and idle.
  explicit HeapReleaser(int64_t idle_bytes);

  // Trims the heap if the resident size is above twice the idle size and the
  // heap holds more free memory than the idle size. Returns the bytes the
  // resident size dropped by (0 when it did not trim).
  int64_t MaybeRelease();

 private:
  // Constant after construction.
  const int64_t idle_bytes_;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_HEAP_RELEASE_H_
