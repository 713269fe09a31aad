// GRPC_FORWARDER=frames end to end: what the frame forwarder must do beside
// transparency (which forwarding_test.cc's ThroughPoolsideFrames runs cover):
// the pool's N distinct connections, request metrics and gauges on the side
// port, readiness, draining on SIGTERM, and a refusal (exit 2) of the
// settings it cannot honour.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/admin_http.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class FramesModeTest : public E2eTest {
 protected:
  void SetUp() override { ASSERT_TRUE(upstream_.Start().ok()); }

  Environment FramesEnv(Environment extra = {}) {
    Environment env = {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_FORWARDER", "frames"}};
    for (const auto& [key, value] : extra) env[key] = value;
    return env;
  }

  TestUpstream upstream_;
};

TEST_F(FramesModeTest, CallsSpreadOverThePoolsDistinctConnections) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(FramesEnv({{"GRPC_CONNECTION_POOL_SIZE", "4"}})));
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(poolside_->listen_target());
  CallOptions options;
  // Held upstream, so that they overlap and every connection takes some.
  options.metadata = {{"x-sleep-ms", "100"}};
  std::vector<std::future<CallResult>> calls;
  for (int i = 0; i < 40; ++i) {
    calls.push_back(std::async(
        std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "spread", options); }));
  }
  for (auto& call : calls) {
    const CallResult result = call.get();
    EXPECT_TRUE(result.status.ok()) << result;
  }
  EXPECT_EQ(upstream_.DistinctPeers(kUnaryMethod).size(), 4u);
}

TEST_F(FramesModeTest, RequestMetricsAndPoolGaugesReachTheSidePort) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(FramesEnv({{"GRPC_CONNECTION_POOL_SIZE", "3"}})));
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(poolside_->listen_target());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(UnaryCall(channel, kUnaryMethod, "m").status.ok());
  CallOptions not_found;
  not_found.metadata = {{"x-status-code", "5"}};
  EXPECT_EQ(UnaryCall(channel, kUnaryMethod, "nf", not_found).status.error_code(),
            grpc::StatusCode::NOT_FOUND);

  const std::string ok_series =
      "poolside_requests_total{grpc_service=\"poolside.test.Echo\",grpc_method=\"Unary\","
      "grpc_code=\"OK\"}";
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), ok_series, 5, absl::Seconds(5)), 5);
  const absl::StatusOr<std::string> metrics = HttpGet(poolside_->admin_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(MetricValue(*metrics,
                        "poolside_requests_total{grpc_service=\"poolside.test.Echo\","
                        "grpc_method=\"Unary\",grpc_code=\"NOT_FOUND\"}"),
            1);
  EXPECT_EQ(MetricValue(*metrics, "poolside_pool_connections"), 3);
  EXPECT_EQ(MetricValue(*metrics, "poolside_pool_active_connections"), 3);
  EXPECT_EQ(MetricValue(*metrics, "poolside_inflight_requests"), 0);
  // The relay reads each message's prefix as it passes: six requests, seven
  // payload bytes.
  EXPECT_EQ(MetricValue(*metrics, "poolside_forwarded_messages_total{direction=\"upstream\"}"), 6);
  EXPECT_EQ(MetricValue(*metrics, "poolside_forwarded_bytes_total{direction=\"upstream\"}"), 7);
  EXPECT_GE(MetricValue(*metrics, "poolside_forwarded_messages_total{direction=\"downstream\"}")
                .value_or(0),
            5);
  const absl::StatusOr<std::string> ready = HttpGet(poolside_->admin_port(), "/readyz");
  EXPECT_TRUE(ready.ok()) << ready.status();
}

TEST_F(FramesModeTest, SigtermLetsTheCallInFlightFinishThenExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(FramesEnv({{"GRPC_SHUTDOWN_GRACE_SECS", "10"}})));
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(poolside_->listen_target());
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "1000"}};
  std::future<CallResult> in_flight = std::async(
      std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "in flight", slow); });
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  poolside_->Terminate();
  const CallResult result = in_flight.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("in flight"));
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(10)), 0);
}

TEST_F(FramesModeTest, ACallWaitsForTheUpstreamToComeUp) {
  // The upstream is down at start; a call waits for a connection instead of
  // failing, and passes once the upstream listens.
  const int port = PickFreePort();
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", absl::StrCat("127.0.0.1:", port)},
                                         {"GRPC_FORWARDER", "frames"},
                                         {"GRPC_CONNECTION_TIMEOUT_SECS", "10"}}));
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(poolside_->listen_target());
  std::future<CallResult> waiting = std::async(
      std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "wait for it"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // No connection is up: the pool is unhealthy, and /readyz says so.
  EXPECT_FALSE(HttpGet(poolside_->admin_port(), "/readyz").ok());
  TestUpstream::Options late_options;
  late_options.port = port;
  TestUpstream late(late_options);
  ASSERT_TRUE(late.Start().ok());
  const CallResult result = waiting.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("wait for it"));
  EXPECT_TRUE(HttpGet(poolside_->admin_port(), "/readyz").ok());
  poolside_->Terminate();
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(10)), 0);
  late.Shutdown();
}

// GRPC_HEALTH_CHECK_*: the relay probes each connection with
// grpc.health.v1; an upstream that says NOT_SERVING makes poolside unready
// (calls still go through: no healthy connection is left to prefer), and
// ready again once it serves.
TEST(FramesModeHealthTest, NotServingUpstreamMakesPoolsideUnreadyUntilItServes) {
  TestUpstream::Options options;
  options.health_service = true;
  TestUpstream upstream(options);
  ASSERT_TRUE(upstream.Start().ok());
  PoolsideProcess poolside({{"GRPC_UPSTREAM_TARGET", upstream.target()},
                            {"GRPC_FORWARDER", "frames"},
                            {"GRPC_CONNECTION_POOL_SIZE", "2"},
                            {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "1"}});
  ASSERT_TRUE(poolside.Start().ok());
  auto await_ready = [&poolside](bool wanted) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (HttpGet(poolside.admin_port(), "/readyz").ok() == wanted) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  };
  ASSERT_TRUE(await_ready(true));
  upstream.SetHealthServing(false);
  ASSERT_TRUE(await_ready(false));
  EXPECT_EQ(
      AwaitMetric(poolside.admin_port(), "poolside_pool_active_connections", 0, absl::Seconds(5)),
      0);
  EXPECT_TRUE(
      UnaryCall(CreateTestChannel(poolside.listen_target()), kUnaryMethod, "anyway").status.ok());
  upstream.SetHealthServing(true);
  EXPECT_TRUE(await_ready(true));
  poolside.Terminate();
  EXPECT_EQ(poolside.WaitForExit(absl::Seconds(10)), 0);
  upstream.Shutdown();
}

TEST(FramesModeConfigTest, SettingsItCannotHonourAreRefusedWithExitTwo) {
  const PoolsideProcess::ExitResult result =
      PoolsideProcess::RunToExit({{"GRPC_UPSTREAM_TARGET", "127.0.0.1:1"},
                                  {"GRPC_FORWARDER", "frames"},
                                  {"GRPC_CONNECTION_POOL_MIN", "1"}},
                                 {}, absl::Seconds(10));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.stderr_output,
              HasSubstr("GRPC_FORWARDER=frames does not support GRPC_CONNECTION_POOL_MIN"));
  // One line.
  EXPECT_EQ(std::count(result.stderr_output.begin(), result.stderr_output.end(), '\n'), 1)
      << result.stderr_output;
}

}  // namespace
}  // namespace poolside::test
