// fault_client: a gRPC client process for the tests that kill a client
// mid-call. It opens calls through `--target` and leaves them open:
//
//   fault_client --target HOST:PORT [--bidi N] [--sleepers N] [--tag TAG]
//
// --bidi N      N bidi streams (/poolside.test.Echo/Bidi), each with one
//               message written and its echo read, so each is open end to end.
// --sleepers N  N unary calls the upstream holds for a minute (x-sleep-ms).
// Every call carries `x-fault-client: TAG`. Prints "READY" once every call is
// open, then waits to be killed (it exits by itself after two minutes).
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "tests/support/generic_client.h"
#include "tests/support/test_upstream.h"

namespace {

constexpr char kUsage[] =
    "usage: fault_client --target HOST:PORT [--bidi N] [--sleepers N] [--tag TAG]\n";

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  std::string tag = "fault-client";
  int bidi = 0;
  int sleepers = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    bool ok = true;
    if (flag == "--target") {
      target = value;
    } else if (flag == "--tag") {
      tag = value;
    } else if (flag == "--bidi") {
      ok = absl::SimpleAtoi(value, &bidi);
    } else if (flag == "--sleepers") {
      ok = absl::SimpleAtoi(value, &sleepers);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "fault_client: bad argument %s\n%s", flag.c_str(), kUsage);
      return 2;
    }
  }
  if (target.empty() || argc % 2 == 0) {
    std::fputs(kUsage, stderr);
    return 2;
  }

  using poolside::test::CallOptions;
  using poolside::test::InteractiveCall;
  const auto channel = poolside::test::CreateTestChannel(target);
  std::vector<std::unique_ptr<InteractiveCall>> calls;
  CallOptions bidi_options;
  bidi_options.metadata = {{"x-fault-client", tag}};
  bidi_options.wait = absl::Seconds(20);
  for (int i = 0; i < bidi; ++i) {
    calls.push_back(
        std::make_unique<InteractiveCall>(channel, poolside::test::kBidiMethod, bidi_options));
    if (!calls.back()->Write("hello") || calls.back()->Read() != "hello") {
      std::fprintf(stderr, "fault_client: bidi stream %d did not echo\n", i);
      return 1;
    }
  }
  CallOptions sleeper_options = bidi_options;
  sleeper_options.metadata.emplace_back("x-sleep-ms", "60000");
  for (int i = 0; i < sleepers; ++i) {
    calls.push_back(
        std::make_unique<InteractiveCall>(channel, poolside::test::kUnaryMethod, sleeper_options));
    if (!calls.back()->Write("zzz") || !calls.back()->WritesDone()) {
      std::fprintf(stderr, "fault_client: unary call %d could not be sent\n", i);
      return 1;
    }
  }
  std::printf("READY\n");
  std::fflush(stdout);
  // Killed long before this; never outlive a test that forgot it.
  absl::SleepFor(absl::Minutes(2));
  // The calls are still open: leave without tearing them down, like a crash.
  _exit(3);
}
