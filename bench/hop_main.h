// What the yardstick hops' main()s share (bench/unary_hop.cc,
// bench/frame_hop.cc): their flags and their way of waiting for the stop
// signal.
#ifndef POOLSIDE_BENCH_HOP_MAIN_H_
#define POOLSIDE_BENCH_HOP_MAIN_H_

#include <pthread.h>
#include <signal.h>

#include <string>

namespace poolside::bench {

// The value of `--name=value`, or "" when `arg` is another flag.
inline std::string FlagValue(const std::string& arg, const std::string& name) {
  const std::string prefix = name + "=";
  return arg.rfind(prefix, 0) == 0 ? arg.substr(prefix.size()) : std::string();
}

// SIGTERM and SIGINT, blocked in the calling thread and every thread it
// starts afterwards, so that only sigwait(&set) sees them: call it before any
// thread starts.
inline sigset_t BlockStopSignals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return stop_signals;
}

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_HOP_MAIN_H_
