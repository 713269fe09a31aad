// The real poolside binary's side port and self-healing, end to end: /readyz
// follows the upstream, health-check failures are counted, draining shows,
// method labels stay bounded, and connection refreshes fail no call.
#include <gtest/gtest.h>
#include <signal.h>

#include <future>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/metrics/http_connection.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

// One GET on a fresh connection; status 0 if the side port did not answer.
HttpResponse Get(int port, const std::string& path) {
  HttpConnection connection;
  if (!connection.Connect(port).ok() || !connection.SendRequest("GET", path).ok()) return {};
  absl::StatusOr<HttpResponse> response = connection.ReadResponse();
  return response.ok() ? *response : HttpResponse{};
}

// Polls `path` until it answers `status`; bounded by `timeout`.
bool WaitForStatus(int port, const std::string& path, int status, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Get(port, path).status == status) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

// The value of the first sample of `name` (with labels, if given) in a
// Prometheus text exposition; -1 if absent.
double Sample(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, series + " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
  }
  return -1;
}

class SidePortTest : public ::testing::Test {
 protected:
  void StartPoolside(Environment extra) {
    ASSERT_TRUE(upstream_.Start().ok());
    Environment env = {{"GRPC_UPSTREAM_TARGET", upstream_.target()},
                       {"GRPC_CONNECTION_POOL_SIZE", "2"},
                       {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "1"}};
    for (const auto& [name, value] : extra) env[name] = value;
    poolside_ = std::make_unique<PoolsideProcess>(env);
    ASSERT_TRUE(poolside_->Start().ok());
    ASSERT_TRUE(poolside_->WaitUntilServing(kStartTimeout).ok()) << poolside_->Stderr();
    channel_ = CreateTestChannel(poolside_->listen_target());
  }

  TestUpstream upstream_;
  std::unique_ptr<PoolsideProcess> poolside_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(SidePortTest, ReadyzTurnsUnavailableWhenTheUpstreamDiesAndBackWhenItReturns) {
  StartPoolside({});
  const int admin = poolside_->admin_port();
  ASSERT_TRUE(WaitForStatus(admin, "/readyz", 200, absl::Seconds(10)));
  EXPECT_EQ(Get(admin, "/healthz").status, 200);

  upstream_.Shutdown();
  // Within two health-check intervals (1 s each), with room for a slow box.
  EXPECT_TRUE(WaitForStatus(admin, "/readyz", 503, absl::Seconds(4)));
  EXPECT_EQ(Get(admin, "/healthz").status, 200) << "alive while the upstream is down";
  // Connectivity is watched as it changes; the failed probes come with the
  // next health-check rounds.
  std::string metrics = Get(admin, "/metrics").body;
  const absl::Time deadline = absl::Now() + absl::Seconds(4);
  while (Sample(metrics, "poolside_pool_health_check_failures_total") <= 0 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
    metrics = Get(admin, "/metrics").body;
  }
  EXPECT_GT(Sample(metrics, "poolside_pool_health_check_failures_total"), 0) << metrics;
  EXPECT_EQ(Sample(metrics, "poolside_pool_health_status{status=\"unhealthy\"}"), 1);

  ASSERT_TRUE(upstream_.Start().ok());
  EXPECT_TRUE(WaitForStatus(admin, "/readyz", 200, absl::Seconds(10))) << Tail(poolside_->Stderr());
  EXPECT_TRUE(UnaryCall(channel_, kUnaryMethod, "back").status.ok());
}

TEST_F(SidePortTest, ReadyzSaysDrainingAfterSigtermWhileCallsFinish) {
  StartPoolside({{"GRPC_SHUTDOWN_GRACE_SECS", "10"}});
  const int admin = poolside_->admin_port();
  ASSERT_TRUE(WaitForStatus(admin, "/readyz", 200, absl::Seconds(10)));
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "1500"}};
  auto in_flight =
      std::async(std::launch::async, [&] { return UnaryCall(channel_, kUnaryMethod, "x", slow); });
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));

  poolside_->Terminate();
  const HttpResponse draining = [&] {
    HttpResponse response;
    const absl::Time deadline = absl::Now() + absl::Seconds(1);
    do {
      response = Get(admin, "/readyz");
    } while (response.status != 503 && absl::Now() < deadline);
    return response;
  }();
  EXPECT_EQ(draining.status, 503);
  EXPECT_TRUE(absl::StrContains(draining.body, "draining")) << draining.body;
  EXPECT_TRUE(in_flight.get().status.ok());
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(15)), 0);
}

TEST_F(SidePortTest, InventedMethodNamesFoldIntoOtherPastTheCap) {
  StartPoolside({{"GRPC_METRICS_MAX_METHODS", "20"}});
  for (int i = 0; i < 500; ++i) {
    const std::string method = absl::StrCat("/invented.Service", i, "/Method", i);
    EXPECT_EQ(UnaryCall(channel_, method, "x").status.error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  const std::string metrics = Get(poolside_->admin_port(), "/metrics").body;
  int series = 0;
  double total = 0;
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (!absl::StartsWith(line, "poolside_requests_total{")) continue;
    ++series;
    double value = 0;
    ASSERT_TRUE(absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) << line;
    total += value;
  }
  EXPECT_LE(series, 21) << "20 methods plus other";
  EXPECT_EQ(total, 500) << "every call counted";
  EXPECT_EQ(Sample(metrics,
                   "poolside_requests_total{grpc_service=\"other\",grpc_method="
                   "\"other\",grpc_code=\"UNIMPLEMENTED\"}"),
            480);
}

TEST_F(SidePortTest, MaxConnectionAgeRefreshesConnectionsUnderLoadWithoutFailures) {
  StartPoolside({{"GRPC_CONNECTION_MAX_AGE_SECS", "1"}});
  int failed = 0;
  int total = 0;
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (absl::Now() < end) {
    for (const CallResult& result :
         ConcurrentUnaryCalls(channel_, kUnaryMethod, std::vector<std::string>(20, "steady"))) {
      ++total;
      if (!result.status.ok()) ++failed;
    }
  }
  EXPECT_EQ(failed, 0) << "of " << total;
  EXPECT_GT(upstream_.DistinctPeers(kUnaryMethod).size(), 4u)
      << "2 connections refreshed at least once each: " << Tail(poolside_->Stderr());
  EXPECT_TRUE(absl::StrContains(poolside_->Stderr(), "refreshed channel"));
}

}  // namespace
}  // namespace poolside::test
