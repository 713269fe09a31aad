#include "bench/load_flags.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace poolside::bench {
namespace {

constexpr char kUsage[] =
    "usage: bench_load --target=HOST:PORT [flags]\n"
    "  --target=T          gRPC target to load (required)\n"
    "  --connections=N     distinct client channels, each its own TCP connection (default 1)\n"
    "  --inflight=N        calls (or streams) in flight in total (default 1)\n"
    "  --duration=S        measured seconds (default 10)\n"
    "  --warmup=S          seconds run before measuring (default 2)\n"
    "  --payload=BYTES     request size; the echo must match it (default 64)\n"
    "  --mode=M            unary | bidi | new-channel-per-call | open-streams (default unary)\n"
    "  --method=NAME       default /bench.Echo/Unary (unary modes) or /bench.Echo/Bidi\n"
    "  --threads=N         completion-queue threads (default 1)\n"
    "  --call-timeout=S    deadline of each call; open-streams: of the open phase (default 30)\n"
    "  --watch=G           name:pid[+pid...][,name:pid...]: report these processes' CPU\n"
    "                      seconds over the measured window and RSS at its end\n"
    "  --upstream-port=P   report the most ESTABLISHED TCP connections to local port P seen\n"
    "                      during the window (the upstream's side of its connections)\n";

[[noreturn]] void Usage(const std::string& problem) {
  std::fprintf(stderr, "bench_load: %s\n%s", problem.c_str(), kUsage);
  std::exit(2);
}

long ParseInt(const std::string& flag, const std::string& value, long min, long max) {
  char* end = nullptr;
  const long parsed = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || parsed < min || parsed > max) {
    Usage(flag + ": want an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
          "], got '" + value + "'");
  }
  return parsed;
}

double ParseSeconds(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  const double parsed = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !(parsed >= 0) || parsed > 86400) {
    Usage(flag + ": want seconds in [0, 86400], got '" + value + "'");
  }
  return parsed;
}

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, separator)) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

std::vector<WatchGroup> ParseWatch(const std::string& value) {
  std::vector<WatchGroup> groups;
  for (const std::string& spec : Split(value, ',')) {
    const size_t colon = spec.find(':');
    if (colon == std::string::npos || colon == 0) Usage("--watch: want name:pid[+pid...]");
    WatchGroup group;
    group.name = spec.substr(0, colon);
    for (const std::string& pid : Split(spec.substr(colon + 1), '+')) {
      group.pids.push_back(static_cast<int>(ParseInt("--watch", pid, 1, 1 << 30)));
    }
    if (group.pids.empty()) Usage("--watch: group " + group.name + " has no pid");
    groups.push_back(std::move(group));
  }
  return groups;
}

}  // namespace

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kUnary:
      return "unary";
    case Mode::kBidi:
      return "bidi";
    case Mode::kNewChannelPerCall:
      return "new-channel-per-call";
    case Mode::kOpenStreams:
      return "open-streams";
  }
  return "?";
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    std::string value;
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Usage(name + ": missing value");
    }
    if (name == "--target") {
      flags.target = value;
    } else if (name == "--connections") {
      flags.connections = static_cast<int>(ParseInt(name, value, 1, 100000));
    } else if (name == "--inflight") {
      flags.inflight = static_cast<int>(ParseInt(name, value, 1, 1000000));
    } else if (name == "--duration") {
      flags.duration_s = ParseSeconds(name, value);
    } else if (name == "--warmup") {
      flags.warmup_s = ParseSeconds(name, value);
    } else if (name == "--payload") {
      flags.payload = static_cast<int>(ParseInt(name, value, 0, 64 << 20));
    } else if (name == "--mode") {
      if (value == "unary") {
        flags.mode = Mode::kUnary;
      } else if (value == "bidi") {
        flags.mode = Mode::kBidi;
      } else if (value == "new-channel-per-call") {
        flags.mode = Mode::kNewChannelPerCall;
      } else if (value == "open-streams") {
        flags.mode = Mode::kOpenStreams;
      } else {
        Usage("--mode: want unary, bidi, new-channel-per-call or open-streams, got '" + value +
              "'");
      }
    } else if (name == "--method") {
      flags.method = value;
    } else if (name == "--threads") {
      flags.threads = static_cast<int>(ParseInt(name, value, 1, 64));
    } else if (name == "--call-timeout") {
      flags.call_timeout_s = ParseSeconds(name, value);
    } else if (name == "--watch") {
      flags.watch = ParseWatch(value);
    } else if (name == "--upstream-port") {
      flags.upstream_port = static_cast<int>(ParseInt(name, value, 1, 65535));
    } else {
      Usage("unknown flag " + arg);
    }
  }
  if (flags.target.empty()) Usage("--target is required");
  if (flags.method.empty()) {
    const bool streaming = flags.mode == Mode::kBidi || flags.mode == Mode::kOpenStreams;
    flags.method = streaming ? "/bench.Echo/Bidi" : "/bench.Echo/Unary";
  }
  return flags;
}

}  // namespace poolside::bench
