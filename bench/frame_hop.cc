// frame_hop: gRPC calls relayed as HTTP/2 frames (relay/frame_relay.h), as
// bench/compare's "frame-hop" yardstick: what a hop costs below grpc++ 1.51,
// one thread, next to grpc-hop (the cheapest hop on grpc++) and the peers.
//
// Not a proxy anyone should run: no TLS, health, metrics, drain or limits.
//
//   frame_hop --upstream=127.0.0.1:PORT [--port=0] [--connections=1]
//
// Prints PORT=<n> once listening; serves until SIGTERM or SIGINT.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "bench/hop_main.h"
#include "relay/frame_relay.h"

namespace {

using ::poolside::bench::FlagValue;

constexpr char kUsage[] =
    "usage: frame_hop --upstream=HOST:PORT [--port=0] [--connections=1]\n"
    "gRPC calls relayed as HTTP/2 frames (a benchmark yardstick, not a proxy).\n";

}  // namespace

int main(int argc, char** argv) {
  const sigset_t stop_signals = poolside::bench::BlockStopSignals();
  signal(SIGPIPE, SIG_IGN);

  poolside::relay::FrameRelayOptions options;
  std::string upstream;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!FlagValue(arg, "--upstream").empty()) {
      upstream = FlagValue(arg, "--upstream");
    } else if (!FlagValue(arg, "--port").empty()) {
      options.listen_port = std::atoi(FlagValue(arg, "--port").c_str());
    } else if (!FlagValue(arg, "--connections").empty()) {
      options.upstream_connections = std::atoi(FlagValue(arg, "--connections").c_str());
    } else {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  size_t colon = upstream.rfind(':');
  if (colon == std::string::npos || options.upstream_connections < 1 || options.listen_port < 0) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  poolside::relay::UpstreamAddress address;
  address.host = upstream.substr(0, colon);
  if (address.host.size() > 2 && address.host.front() == '[') {
    address.host = address.host.substr(1, address.host.size() - 2);
  }
  address.port = std::atoi(upstream.substr(colon + 1).c_str());
  options.upstreams.push_back(address);

  auto relay = poolside::relay::FrameRelay::Create(options);
  if (!relay.ok()) {
    std::fprintf(stderr, "frame_hop: %s\n", relay.status().ToString().c_str());
    return 1;
  }
  std::thread loop([&relay] { (*relay)->Run(); });
  std::printf("PORT=%d\n", (*relay)->port());
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  (*relay)->Stop();
  loop.join();
  return 0;
}
