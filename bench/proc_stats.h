// What other processes (and the machine) spend, read from /proc: bench_load
// reports it for the processes under test over its measured window.
#ifndef POOLSIDE_BENCH_PROC_STATS_H_
#define POOLSIDE_BENCH_PROC_STATS_H_

#include <string>

#include "bench/load_flags.h"

namespace poolside::bench {

// utime + stime of `pid` in seconds, or a negative value when it is gone.
double ProcessCpuSeconds(int pid);
// CPU seconds the whole machine spent busy (every core, every process).
double MachineBusyCpuSeconds();
// This process's user + system CPU seconds.
double SelfCpuSeconds();
// The value in kB of `key` (e.g. "VmRSS") in /proc/PID/status, or -1.
long ProcessStatusKib(int pid, const std::string& key);
// ESTABLISHED TCP connections whose local port is `port`.
int EstablishedConnectionsOnPort(int port);

// Sums a per-process figure over a group; negative when any process is gone.
template <typename Reading>
double SumOverGroup(const WatchGroup& group, Reading reading) {
  double total = 0;
  for (int pid : group.pids) {
    const double value = reading(pid);
    if (value < 0) return -1;
    total += value;
  }
  return total;
}

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_PROC_STATS_H_
