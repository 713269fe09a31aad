// The real consumers of /metrics: promtool's checker and a real Prometheus
// server scraping the side port.
#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <regex>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "admin/admin_http_server.h"
#include "metrics/poolside_metrics.h"
#include "tests/metrics/http_connection.h"
#include "tests/metrics/subprocess.h"
#include "tests/support/poolside_process.h"

namespace poolside {
namespace {

constexpr char kPromtool[] = "/usr/bin/promtool";
constexpr char kPrometheus[] = "/usr/bin/prometheus";

PoolSnapshot FakePool() {
  PoolSnapshot snapshot;
  for (int i = 0; i < 4; ++i) {
    ChannelSnapshot channel;
    channel.index = i;
    channel.healthy = i != 3;
    channel.state = channel.healthy ? GRPC_CHANNEL_READY : GRPC_CHANNEL_CONNECTING;
    channel.outstanding_calls = 2 * i;
    channel.age = absl::Seconds(100 + i);
    snapshot.channels.push_back(channel);
  }
  snapshot.connection_errors = 2;
  snapshot.health_check_failures = 1;
  snapshot.last_health_check = absl::Now();
  return snapshot;
}

// An AdminHttpServer on a free loopback port serving a fixed four-channel
// pool and some recorded calls, every method and code shape included.
class ScrapeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    recorder_ = metrics_.NewCallRecorder();
    recorder_->RecordCall(recorder_->Method("/helloworld.Greeter/SayHello"), grpc::StatusCode::OK,
                          absl::Milliseconds(2));
    recorder_->RecordCall(recorder_->Method("/helloworld.Greeter/SayHello"),
                          grpc::StatusCode::DEADLINE_EXCEEDED, absl::Seconds(31));
    recorder_->RecordCall(recorder_->Method("/grpc.health.v1.Health/Check"),
                          grpc::StatusCode::UNAVAILABLE, absl::Microseconds(80));
    recorder_->RecordCall(recorder_->Method("malformed"), grpc::StatusCode::UNIMPLEMENTED,
                          absl::Milliseconds(1));
    recorder_->RecordMessage(Direction::kUpstream, 1024);
    recorder_->CallStarted();

    AdminHttpOptions options;
    options.address = "127.0.0.1:0";
    server_ = std::make_unique<AdminHttpServer>(
        options, AdminHttpHandlers{[this] {
                                     metrics_.UpdateFromPool(FakePool());
                                     return metrics_.Serialize();
                                   },
                                   [] { return FakePool(); }});
    ASSERT_TRUE(server_->Start().ok());
  }

  void TearDown() override { server_->Shutdown(); }

  PoolsideMetrics metrics_{MetricsOptions{"0.1.0-test", 200}};
  std::unique_ptr<CallRecorder> recorder_;
  std::unique_ptr<AdminHttpServer> server_;
};

TEST_F(ScrapeTest, PromtoolAcceptsTheRealMetricsOutput) {
  ASSERT_EQ(access(kPromtool, X_OK), 0) << kPromtool << " is missing: run scripts/install-deps";
  absl::StatusOr<test::HttpResponse> response =
      test::HttpRequest(server_->port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->status, 200);
  absl::StatusOr<test::ProcessResult> checked =
      test::RunProcess({kPromtool, "check", "metrics"}, response->body, absl::Seconds(30));
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(checked->exit_code, 0) << checked->output << "\n--- /metrics ---\n" << response->body;
  // Lint findings are printed even when they do not fail the check.
  EXPECT_EQ(checked->output, "") << checked->output;
}

// Polls the Prometheus HTTP API for `query` until a sample arrives or
// `timeout` passes; returns the sample's value ("" if none arrived).
std::string QueryUntilAnswered(int port, const std::string& query, absl::Duration timeout) {
  const std::regex value_pattern(R"re("value":\[[0-9.e+]+,"([^"]*)"\])re");
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<test::HttpResponse> response = test::HttpRequest(
        port, "GET", absl::StrCat("/api/v1/query?query=", query), absl::Seconds(2));
    std::smatch match;
    if (response.ok() && response->status == 200 &&
        std::regex_search(response->body, match, value_pattern)) {
      return match[1];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return "";
}

TEST_F(ScrapeTest, RealPrometheusScrapesThePoolSize) {
  ASSERT_EQ(access(kPrometheus, X_OK), 0) << kPrometheus << " is missing: run scripts/install-deps";
  test::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string config_path = dir.path() + "/prometheus.yml";
  const std::string log_path = dir.path() + "/prometheus.log";
  ASSERT_TRUE(test::WriteFile(config_path, absl::StrCat("global:\n"
                                                        "  scrape_interval: 1s\n"
                                                        "  scrape_timeout: 1s\n"
                                                        "scrape_configs:\n"
                                                        "  - job_name: poolside\n"
                                                        "    static_configs:\n"
                                                        "      - targets: ['127.0.0.1:",
                                                        server_->port(), "']\n"))
                  .ok());
  const int prometheus_port = test::PickFreePort();
  absl::StatusOr<std::unique_ptr<test::ServerProcess>> prometheus = test::ServerProcess::Start(
      {kPrometheus, "--config.file=" + config_path, "--storage.tsdb.path=" + dir.path() + "/data",
       absl::StrCat("--web.listen-address=127.0.0.1:", prometheus_port), "--log.level=warn"},
      log_path);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();

  const std::string connections =
      QueryUntilAnswered(prometheus_port, "poolside_pool_connections", absl::Seconds(20));
  EXPECT_EQ(connections, "4") << "prometheus log:\n" << test::ReadFile(log_path);
  // The scrape as a whole succeeded, request metrics and labels included.
  EXPECT_EQ(QueryUntilAnswered(prometheus_port, "up%7Bjob%3D%22poolside%22%7D", absl::Seconds(5)),
            "1");
  EXPECT_EQ(QueryUntilAnswered(prometheus_port,
                               "poolside_requests_total%7Bgrpc_method%3D%22SayHello%22%2C"
                               "grpc_code%3D%22OK%22%7D",
                               absl::Seconds(5)),
            "1");
  EXPECT_EQ(QueryUntilAnswered(prometheus_port,
                               "poolside_pool_health_status%7Bstatus%3D%22degraded%22%7D",
                               absl::Seconds(5)),
            "1");
  (*prometheus)->Stop();
  EXPECT_FALSE((*prometheus)->Running());
}

}  // namespace
}  // namespace poolside
