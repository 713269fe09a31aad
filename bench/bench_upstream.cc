// bench_upstream: the echo upstream of poolside's benchmarks (see
// bench/echo_server.h for what it answers). Prints PORT=<n> once it listens,
// then serves until SIGTERM or SIGINT.
//
//   bench_upstream [--port=0] [--delay-ms=0] [--max-concurrent-streams=0] [--threads=1]
//                  [--health-service=1]
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "bench/echo_server.h"

namespace {

constexpr char kUsage[] =
    "usage: bench_upstream [flags]\n"
    "  --port=N                    listen on 127.0.0.1:N (0: a free port; default 0)\n"
    "  --delay-ms=N                answer every message after N ms (default 0)\n"
    "  --max-concurrent-streams=N  advertise SETTINGS_MAX_CONCURRENT_STREAMS (0: grpc default)\n"
    "  --threads=N                 completion-queue threads (default 1)\n"
    "  --health-service=0|1        answer grpc.health.v1.Health/Check with SERVING (default 1)\n"
    "Prints PORT=<n> once listening; serves until SIGTERM or SIGINT.\n";

// Parses a non-negative integer flag value, or exits with status 2.
int ParseCount(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  const long parsed = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < 0 || parsed > 1000000000) {
    std::fprintf(stderr, "bench_upstream: %s: want a non-negative integer, got '%s'\n",
                 flag.c_str(), value.c_str());
    std::exit(2);
  }
  return static_cast<int>(parsed);
}

}  // namespace

int main(int argc, char** argv) {
  poolside::bench::EchoServerOptions options;
  int port = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    const size_t equals = arg.find('=');
    std::string name = arg.substr(0, equals);
    std::string value;
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    }
    if (name == "--port") {
      port = ParseCount(name, value);
    } else if (name == "--delay-ms") {
      options.delay = std::chrono::milliseconds(ParseCount(name, value));
    } else if (name == "--max-concurrent-streams") {
      options.max_concurrent_streams = ParseCount(name, value);
    } else if (name == "--threads") {
      options.threads = ParseCount(name, value);
    } else if (name == "--health-service") {
      options.health_service = ParseCount(name, value) != 0;
    } else {
      std::fprintf(stderr, "bench_upstream: unknown flag %s\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  options.address = "127.0.0.1:" + std::to_string(port);

  // Blocked before grpc starts its threads, so that only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::unique_ptr<poolside::bench::EchoServer> server = poolside::bench::EchoServer::Start(options);
  if (server == nullptr) {
    std::fprintf(stderr, "bench_upstream: cannot listen on %s\n", options.address.c_str());
    return 1;
  }
  std::printf("PORT=%d\n", server->port());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown();
  return 0;
}
