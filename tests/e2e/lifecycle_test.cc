// poolside's process lifecycle: draining on SIGTERM, exit codes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
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
