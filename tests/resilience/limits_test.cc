// Circuit breaking and outlier ejection, through a real poolside process in
// front of a real upstream on loopback.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

CallOptions Sleeping(int milliseconds) {
  CallOptions options;
  options.metadata = {{"x-sleep-ms", std::to_string(milliseconds)}};
  return options;
}

// Both forwarders break circuits alike; the parameter is GRPC_FORWARDER.
class CircuitBreakingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CircuitBreakingTest, CallsPastTheConcurrencyLimitFailAtOnceWithResourceExhausted) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  PoolsideProcess poolside({{"GRPC_UPSTREAM_TARGET", upstream.target()},
                            {"GRPC_FORWARDER", GetParam()},
                            {"GRPC_MAX_CONCURRENT_REQUESTS", "4"}});
  ASSERT_TRUE(poolside.Start().ok());
  ASSERT_TRUE(poolside.WaitUntilServing(kStartTimeout).ok());
  auto channel = CreateTestChannel(poolside.listen_target());

  // Four calls hold the limit for two seconds.
  auto holders = std::async(std::launch::async, [&] {
    return ConcurrentUnaryCalls(channel, kUnaryMethod, {"a", "b", "c", "d"}, Sleeping(2000));
  });
  ASSERT_TRUE(upstream.WaitForCalls(4, absl::Seconds(10), kUnaryMethod));

  const absl::Time start = absl::Now();
  const CallResult refused = UnaryCall(channel, kUnaryMethod, "fifth");
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused;
  EXPECT_NE(refused.status.error_message().find("GRPC_MAX_CONCURRENT_REQUESTS"), std::string::npos);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "refused at once, not queued";
  EXPECT_EQ(upstream.Calls(kUnaryMethod).size(), 4u) << "the refused call never went upstream";

  for (const CallResult& held : holders.get()) EXPECT_TRUE(held.status.ok()) << held;
  EXPECT_TRUE(UnaryCall(channel, kUnaryMethod, "after").status.ok());
}

TEST_P(CircuitBreakingTest, CallsPastThePendingLimitFailAtOnceWithUnavailable) {
  const int port = PickFreePort();  // Nothing listens: every call waits.
  PoolsideProcess poolside({{"GRPC_UPSTREAM_TARGET", "127.0.0.1:" + std::to_string(port)},
                            {"GRPC_FORWARDER", GetParam()},
                            {"GRPC_MAX_PENDING_REQUESTS", "2"},
                            {"GRPC_CONNECTION_TIMEOUT_SECS", "3"}});
  ASSERT_TRUE(poolside.Start().ok());
  ASSERT_TRUE(poolside.WaitUntilServing(kStartTimeout).ok());
  auto channel = CreateTestChannel(poolside.listen_target());

  auto waiting = std::async(std::launch::async, [&] {
    return ConcurrentUnaryCalls(channel, kUnaryMethod, {"a", "b"});
  });
  // Let the two calls reach poolside and start waiting.
  absl::SleepFor(absl::Milliseconds(500));
  const absl::Time start = absl::Now();
  const CallResult refused = UnaryCall(channel, kUnaryMethod, "third");
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused;
  EXPECT_NE(refused.status.error_message().find("GRPC_MAX_PENDING_REQUESTS"), std::string::npos)
      << refused;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));

  // The waiting calls time out on the connection timeout instead.
  for (const CallResult& result : waiting.get()) {
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(result.status.error_message().find("became ready within"), std::string::npos)
        << result;
  }
}

INSTANTIATE_TEST_SUITE_P(Forwarders, CircuitBreakingTest, ::testing::Values("grpc", "frames"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(OutlierEjectionTest, EjectsAChannelAfterConsecutiveUnavailableButNeverTheLastOne) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  PoolsideProcess poolside({{"GRPC_UPSTREAM_TARGET", upstream.target()},
                            {"GRPC_CONNECTION_POOL_SIZE", "2"},
                            {"GRPC_OUTLIER_CONSECUTIVE_FAILURES", "3"},
                            {"GRPC_OUTLIER_EJECTION_SECS", "1"},
                            {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "3600"}});
  ASSERT_TRUE(poolside.Start().ok());
  ASSERT_TRUE(poolside.WaitUntilServing(kStartTimeout).ok());
  auto channel = CreateTestChannel(poolside.listen_target());

  CallOptions failing;
  failing.metadata = {{"x-status-code", "14"}};
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(UnaryCall(channel, kUnaryMethod, "x", failing).status.error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  auto metrics = AdminPoolMetrics(channel);
  ASSERT_TRUE(metrics.ok());
  int healthy = 0;
  for (const auto& detail : metrics->channels()) healthy += detail.healthy() ? 1 : 0;
  EXPECT_EQ(healthy, 1) << "one channel ejected, the last one kept: " << metrics->DebugString();
  EXPECT_NE(poolside.Stderr().find("ejected for 1s after 3 consecutive UNAVAILABLE"),
            std::string::npos)
      << Tail(poolside.Stderr());

  // After the ejection time a health check (not the hourly round) returns it.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    metrics = AdminPoolMetrics(channel);
    ASSERT_TRUE(metrics.ok());
    if (metrics->active_connections() == 2) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(metrics->active_connections(), 2u) << Tail(poolside.Stderr());
}

}  // namespace
}  // namespace poolside::test
