// poolside's own admin service (poolside.admin.v1.PoolAdmin), served on the
// listen port beside the forwarder.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

class AdminTest : public E2eTest {
 protected:
  void StartPool(const std::string& upstream_target, int pool_size) {
    ASSERT_NO_FATAL_FAILURE(
        StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_target},
                       {"GRPC_CONNECTION_POOL_SIZE", absl::StrCat(pool_size)}}));
    channel_ = CreateTestChannel(poolside_->listen_target());
  }

  // No call to the admin service reached the upstream. One forwarded call
  // first, so that anything forwarded earlier has arrived.
  void ExpectNoAdminCallForwarded() {
    ASSERT_TRUE(UnaryCall(channel_, kUnaryMethod, "m").status.ok());
    for (const ObservedCall& call : upstream_.Calls()) {
      EXPECT_FALSE(absl::StartsWith(call.method, "/poolside.admin.v1.PoolAdmin/")) << call.method;
    }
  }

  TestUpstream upstream_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(AdminTest, HealthCheckReportsHealthyWhileTheUpstreamIsUp) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 3));
  EXPECT_EQ(AwaitHealthStatus(channel_, "healthy", absl::Seconds(10)), "healthy");

  absl::StatusOr<admin::v1::HealthCheckResponse> response = AdminHealthCheck(channel_);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_NEAR(static_cast<double>(response->timestamp()), absl::ToUnixSeconds(absl::Now()), 60);
}

TEST_F(AdminTest, HealthCheckReportsUnhealthyWhileTheUpstreamIsDown) {
  ASSERT_NO_FATAL_FAILURE(StartPool(absl::StrCat("127.0.0.1:", PickFreePort()), 3));
  EXPECT_EQ(AwaitHealthStatus(channel_, "unhealthy", absl::Seconds(10)), "unhealthy");
}

TEST_F(AdminTest, HealthCheckTurnsUnhealthyWhenTheUpstreamGoesAway) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 3));
  ASSERT_EQ(AwaitHealthStatus(channel_, "healthy", absl::Seconds(10)), "healthy");

  upstream_.Shutdown();
  // Seen as it happens, not at the next health-check interval (60 s).
  EXPECT_EQ(AwaitHealthStatus(channel_, "unhealthy", absl::Seconds(10)), "unhealthy");
}

TEST_F(AdminTest, PoolMetricsReportThePoolSize) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 3));
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel_);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->total_connections(), 3u);
  EXPECT_EQ(AwaitActiveConnections(channel_, 3, absl::Seconds(10)), 3);
}

TEST_F(AdminTest, PoolMetricsReportNoActiveConnectionsWhileTheUpstreamIsDown) {
  ASSERT_NO_FATAL_FAILURE(StartPool(absl::StrCat("127.0.0.1:", PickFreePort()), 2));
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel_);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->total_connections(), 2u);
  EXPECT_EQ(metrics->active_connections(), 0u);
}

TEST_F(AdminTest, AdminCallsAreAnsweredByPoolsideNotForwarded) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 2));
  ASSERT_TRUE(AdminHealthCheck(channel_).ok());
  ASSERT_TRUE(AdminPoolMetrics(channel_).ok());
  ExpectNoAdminCallForwarded();
}

TEST_F(AdminTest, ForceHealthCheckAnswersAfterARoundOnTheMonitorsThread) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 2));
  ASSERT_EQ(AwaitHealthStatus(channel_, "healthy", absl::Seconds(10)), "healthy");
  // The answer comes from the health monitor's thread; several at once
  // check that each finds its way back to its own call.
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    admin::v1::ForceHealthCheckResponse response;
    const grpc::Status status = admin::v1::PoolAdmin::NewStub(channel_)->ForceHealthCheck(
        &context, admin::v1::ForceHealthCheckRequest(), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.status(), "healthy");
    EXPECT_EQ(response.channels_size(), 2);
  }
}

TEST_F(AdminTest, UnknownAdminMethodIsUnimplementedAndNotForwarded) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 1));
  const CallResult unknown = UnaryCall(channel_, "/poolside.admin.v1.PoolAdmin/Nope", "");
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << unknown;
  ExpectNoAdminCallForwarded();
}

TEST_F(AdminTest, MalformedAdminRequestFailsWithInternal) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 1));
  // Field 1 as a varint with no bytes after the tag: not a HealthCheckRequest.
  const CallResult malformed =
      UnaryCall(channel_, "/poolside.admin.v1.PoolAdmin/HealthCheck", std::string("\x08", 1));
  EXPECT_EQ(malformed.status.error_code(), grpc::StatusCode::INTERNAL) << malformed;
  // The service still answers well-formed requests.
  EXPECT_TRUE(AdminHealthCheck(channel_).ok());
}

TEST_F(AdminTest, AdminMethodsTakeExactlyOneRequest) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 1));
  const CallResult none = StreamingCall(channel_, "/poolside.admin.v1.PoolAdmin/HealthCheck", {});
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::INTERNAL) << none;
  const CallResult two =
      StreamingCall(channel_, "/poolside.admin.v1.PoolAdmin/HealthCheck", {"", ""});
  EXPECT_EQ(two.status.error_code(), grpc::StatusCode::INTERNAL) << two;
}

}  // namespace
}  // namespace poolside::test
