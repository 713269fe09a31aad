// poolside's process lifecycle: draining on SIGTERM, exit codes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "config/cpu_limit.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/h2_frames.h"
#include "tests/support/loopback_socket.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

using ::testing::HasSubstr;

// Polls until nothing accepts connections on `port`; false if something
// still does after `timeout`.
bool AwaitPortClosed(int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (PortAcceptsConnections(port)) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// How a raw HTTP/2 client's connection went: every frame it read, and how it
// ended.
struct RawClientOutcome {
  std::vector<h2::Frame> frames;
  // 0: the peer's FIN (EOF); otherwise the errno of the read that failed
  // (ECONNRESET: a reset). Empty if still open at the deadline.
  std::optional<int> end;
};

// Reads `fd` until the connection ends or `deadline` passes, acknowledging
// SETTINGS and PINGs; from `flood_from` on, also sends frames of an unknown
// type whenever the socket takes more (until a send fails). HTTP/2 has
// receivers ignore such frames, and the screen only skips them, so there are
// always bytes on their way to grpc, also while it closes its end.
RawClientOutcome ReadUntilClosedFlooding(int fd, absl::Time flood_from, absl::Time deadline) {
  // 32 KiB at a time, in the largest frames grpc takes before it has said
  // otherwise.
  const std::string frame = h2::SerializeFrame(/*type=*/0xfa, 0, 0, std::string(16384, 'x'));
  const std::string filler = frame + frame;
  RawClientOutcome outcome;
  std::string input;
  std::string output;
  bool sending = true;
  while (!outcome.end && absl::Now() < deadline) {
    const bool flooding = sending && absl::Now() >= flood_from;
    if (flooding && output.size() < filler.size()) output += filler;
    const bool writing = flooding || !output.empty();
    pollfd waiter{fd, static_cast<short>(writing ? POLLIN | POLLOUT : POLLIN), 0};
    const absl::Time wake = sending && absl::Now() < flood_from ? flood_from : deadline;
    if (poll(&waiter, 1, MillisUntil(wake)) <= 0) continue;
    if ((waiter.revents & POLLOUT) != 0) {
      const ssize_t sent = send(fd, output.data(), output.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent >= 0) {
        output.erase(0, static_cast<size_t>(sent));
      } else if (errno != EAGAIN && errno != EINTR) {
        // Keep reading: how the connection ended is what a read says.
        sending = false;
        output.clear();
      }
    }
    if ((waiter.revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    char buffer[16384];
    const ssize_t got = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (got == 0) {
      outcome.end = 0;
    } else if (got < 0) {
      if (errno != EAGAIN && errno != EINTR) outcome.end = errno;
    } else {
      input.append(buffer, static_cast<size_t>(got));
      for (h2::Frame& frame : h2::TakeFrames(input)) {
        output += h2::AckFor(frame);
        outcome.frames.push_back(std::move(frame));
      }
    }
  }
  return outcome;
}

class LifecycleTest : public E2eTest {
 protected:
  void SetUp() override { ASSERT_TRUE(upstream_.Start().ok()); }

  // A unary call the upstream holds for `sleep`, running on its own thread.
  std::future<CallResult> StartSlowCall(absl::Duration sleep) {
    auto channel = CreateTestChannel(poolside_->listen_target());
    return std::async(std::launch::async, [channel, sleep] {
      CallOptions options;
      options.metadata = {{"x-sleep-ms", absl::StrCat(absl::ToInt64Milliseconds(sleep))}};
      options.timeout = absl::Seconds(30);
      return UnaryCall(channel, kUnaryMethod, "in flight", options);
    });
  }

  TestUpstream upstream_;
};

TEST_F(LifecycleTest, SigtermLetsTheCallInFlightFinishThenExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(
      {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_SHUTDOWN_GRACE_SECS", "10"}}));
  std::future<CallResult> in_flight = StartSlowCall(absl::Milliseconds(1500));
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));

  poolside_->Terminate();
  // It stops accepting at once, while the call still runs...
  EXPECT_TRUE(AwaitPortClosed(poolside_->listen_port(), absl::Seconds(1)));
  CallOptions options;
  options.timeout = absl::Seconds(2);
  const CallResult late =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "too late", options);
  EXPECT_FALSE(late.status.ok()) << late;
  EXPECT_EQ(in_flight.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the call in flight ended before its upstream answered";

  // ...lets it finish...
  const CallResult result = in_flight.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(result.responses, std::vector<std::string>{"in flight"});
  // ...and then exits 0.
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(10)), 0);
}

// Draining, grpc's server writes the last call's trailers and then closes the
// connection. A client that keeps sending frames meanwhile must still read
// those trailers, and then a FIN, not a reset: the frame screen's relay once
// dropped the connection when a write to grpc's closed end failed, and a
// socket closed with the client's bytes unread sends a reset (the screen
// lingers on it instead, screen/ARCHITECTURE.md).
TEST_F(LifecycleTest, SigtermStillPassesTheLastTrailersToAClientThatKeepsSending) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(
      {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_SHUTDOWN_GRACE_SECS", "10"}}));
  struct OwnedFd {
    int fd;
    ~OwnedFd() {
      if (fd >= 0) close(fd);
    }
  } const client{ConnectLoopback(poolside_->listen_port())};
  ASSERT_GE(client.fd, 0) << std::strerror(errno);
  const std::string request =
      std::string(h2::kClientPreface) + h2::Settings() +
      h2::HeaderFrames(
          1, h2::GrpcRequestBlock(kUnaryMethod, "application/grpc", {{"x-sleep-ms", "1000"}}),
          /*end_stream=*/false) +
      h2::SerializeFrame(h2::kData, h2::kEndStream, 1, h2::GrpcMessage("in flight"));
  ASSERT_TRUE(WriteAll(client.fd, request, absl::Now() + absl::Seconds(5)));
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  const absl::Time call_started = absl::Now();

  poolside_->Terminate();
  // The flood starts well before the upstream answers (1 s after the call
  // started) and lasts until poolside closes the connection.
  const RawClientOutcome outcome = ReadUntilClosedFlooding(
      client.fd, call_started + absl::Milliseconds(500), call_started + absl::Seconds(15));

  ASSERT_TRUE(outcome.end.has_value())
      << "still open 15 s after SIGTERM; read " << h2::Describe(outcome.frames);
  EXPECT_EQ(*outcome.end, 0) << "the connection ended with " << std::strerror(*outcome.end)
                             << ", not a FIN, after " << h2::Describe(outcome.frames);
  bool headers = false;
  bool data = false;
  bool trailers = false;
  for (const h2::Frame& frame : outcome.frames) {
    if (frame.stream != 1) continue;
    const bool end_stream = (frame.flags & h2::kEndStream) != 0;
    if (frame.type == h2::kHeaders && !end_stream && !data) headers = true;
    if (frame.type == h2::kData && headers) data = true;
    if (frame.type == h2::kHeaders && end_stream && data) trailers = true;
  }
  EXPECT_TRUE(headers && data && trailers)
      << "want HEADERS, DATA and trailers on stream 1; read " << h2::Describe(outcome.frames);
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(10)), 0);
}

TEST_F(LifecycleTest, SigtermCancelsCallsStillRunningAfterTheGracePeriod) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(
      {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_SHUTDOWN_GRACE_SECS", "1"}}));
  std::future<CallResult> in_flight = StartSlowCall(absl::Seconds(30));
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));

  const absl::Time terminated = absl::Now();
  poolside_->Terminate();
  const std::optional<int> exit_code = poolside_->WaitForExit(absl::Seconds(10));
  const absl::Duration exit_after = absl::Now() - terminated;
  EXPECT_EQ(exit_code, 0);
  // It waited out the grace period for the call, and not much longer.
  EXPECT_GE(exit_after, absl::Milliseconds(900));
  EXPECT_LT(exit_after, absl::Seconds(5));

  const CallResult result = in_flight.get();
  EXPECT_FALSE(result.status.ok()) << result;
  EXPECT_FALSE(result.timed_out) << result;
  EXPECT_TRUE(upstream_.WaitForCancelled(1, absl::Seconds(5), kUnaryMethod))
      << "the upstream call was not cancelled: "
      << ::testing::PrintToString(upstream_.Calls(kUnaryMethod));
}

TEST_F(LifecycleTest, SigintExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}}));
  poolside_->Signal(SIGINT);
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(10)), 0);
}

TEST_F(LifecycleTest, ServesWhileTheUpstreamIsDown) {
  // Start-up never waits for the upstream.
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET", absl::StrCat("127.0.0.1:", PickFreePort())}}));
  EXPECT_TRUE(AdminHealthCheck(CreateTestChannel(poolside_->listen_target())).ok());
}

TEST_F(LifecycleTest, WorkerThreadsFollowTheCpuQuotaAndSaySoOnce) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}}));
  // The same machine and cgroup as the child: the same figure and reason.
  const WorkerThreadChoice expected = DefaultWorkerThreads();
  const std::string line =
      absl::StrCat("worker threads: ", expected.threads, " (", expected.reason, ")");
  const std::string log = poolside_->Stderr();
  EXPECT_THAT(log, HasSubstr(line));
  EXPECT_EQ(log.find("worker threads:"), log.rfind("worker threads:")) << "logged once";
}

TEST_F(LifecycleTest, WorkerThreadsSetExplicitlyAreTakenAsGiven) {
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_WORKER_THREADS", "3"}}));
  EXPECT_THAT(poolside_->Stderr(), HasSubstr("worker threads: 3 (GRPC_WORKER_THREADS)"));
  EXPECT_TRUE(AdminHealthCheck(CreateTestChannel(poolside_->listen_target())).ok());
}

TEST(ListenPortTest, ListenPortInUseExitsWithOne) {
  OccupiedPort occupied;
  ASSERT_NE(occupied.port(), 0);
  const PoolsideProcess::ExitResult result = PoolsideProcess::RunToExit(
      {{"GRPC_UPSTREAM_TARGET", absl::StrCat("127.0.0.1:", PickFreePort())},
       {"GRPC_LISTEN_ADDR", absl::StrCat("127.0.0.1:", occupied.port())}},
      {}, absl::Seconds(10));
  EXPECT_EQ(result.exit_code, 1) << result.stderr_output;
  EXPECT_THAT(result.stderr_output, HasSubstr(absl::StrCat(occupied.port())));
}

}  // namespace
}  // namespace poolside::test
