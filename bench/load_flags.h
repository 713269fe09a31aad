// bench_load's command line: what to load, how hard, and which other
// processes to watch while it does.
#ifndef POOLSIDE_BENCH_LOAD_FLAGS_H_
#define POOLSIDE_BENCH_LOAD_FLAGS_H_

#include <string>
#include <vector>

namespace poolside::bench {

enum class Mode { kUnary, kBidi, kNewChannelPerCall, kOpenStreams };

const char* ModeName(Mode mode);

// Processes whose resources are reported together (e.g. nginx's master and
// its workers).
struct WatchGroup {
  std::string name;
  std::vector<int> pids;
};

struct Flags {
  std::string target;
  int connections = 1;
  int inflight = 1;
  double duration_s = 10;
  double warmup_s = 2;
  int payload = 64;
  Mode mode = Mode::kUnary;
  std::string method;
  int threads = 1;
  double call_timeout_s = 30;
  std::vector<WatchGroup> watch;
  int upstream_port = 0;
};

// Parses argv. Prints the usage and exits: 0 on --help, 2 on a bad flag.
Flags ParseFlags(int argc, char** argv);

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_LOAD_FLAGS_H_
