// test_upstream: runs a TestUpstream (see test_upstream.h) as its own process,
// for the python client test and the demo.
//
//   test_upstream [--port N] [--host 127.0.0.X] [--max-concurrent-streams N]
//
// Serves on HOST:N (127.0.0.1 by default) (0, the default, picks a free port), prints
// "PORT=<port>" on stdout once serving, and serves until SIGTERM or SIGINT.
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "tests/support/test_upstream.h"

namespace {

constexpr char kUsage[] =
    "usage: test_upstream [--port N] [--host 127.0.0.X] [--max-concurrent-streams N]\n";

}  // namespace

int main(int argc, char** argv) {
  poolside::test::TestUpstream::Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--port" && i + 1 < argc && absl::SimpleAtoi(argv[i + 1], &options.port) &&
        options.port >= 0 && options.port <= 65535) {
      ++i;
    } else if (arg == "--max-concurrent-streams" && i + 1 < argc &&
               absl::SimpleAtoi(argv[i + 1], &options.max_concurrent_streams) &&
               options.max_concurrent_streams > 0) {
      ++i;
    } else if (arg == "--host" && i + 1 < argc) {
      options.host = argv[++i];
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "test_upstream: bad argument '%s'\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }

  // Block the signals before gRPC starts its threads, so that they inherit
  // the mask and sigwait() below is the only place the signals land.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  poolside::test::TestUpstream upstream(options);
  if (absl::Status status = upstream.Start(); !status.ok()) {
    std::fprintf(stderr, "test_upstream: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("PORT=%d\n", upstream.port());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  upstream.Shutdown(absl::Seconds(1));
  return 0;
}
