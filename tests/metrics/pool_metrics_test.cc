// The pool metrics PoolsideMetrics exports from a PoolSnapshot, read back from the
// serialized text.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "metrics/poolside_metrics.h"
#include "tests/metrics/prometheus_text.h"

namespace poolside {
namespace {

using ::poolside::test::Exposition;
using ::poolside::test::ParseExposition;

ChannelSnapshot Channel(int index, bool healthy, int64_t outstanding, absl::Duration age) {
  ChannelSnapshot channel;
  channel.index = index;
  channel.healthy = healthy;
  channel.state = healthy ? GRPC_CHANNEL_READY : GRPC_CHANNEL_TRANSIENT_FAILURE;
  channel.outstanding_calls = outstanding;
  channel.age = age;
  return channel;
}

PoolSnapshot ThreeChannels() {
  PoolSnapshot snapshot;
  snapshot.channels = {Channel(0, true, 10, absl::Seconds(30)),
                       Channel(1, true, 100, absl::Seconds(20)),
                       Channel(2, false, 0, absl::Milliseconds(1500))};
  snapshot.max_streams_per_connection = 100;
  snapshot.connection_errors = 7;
  snapshot.health_check_failures = 3;
  snapshot.connections_created = 5;
  snapshot.last_health_check = absl::FromUnixSeconds(1700000000);
  return snapshot;
}

Exposition Scrape(const PoolsideMetrics& metrics) {
  absl::StatusOr<Exposition> parsed = ParseExposition(metrics.Serialize());
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *std::move(parsed) : Exposition{};
}

TEST(MetricsTest, ExportsEveryRequiredFamilyWithItsType) {
  PoolsideMetrics metrics(MetricsOptions{"1.2.3", 200});
  metrics.UpdateFromPool(ThreeChannels());
  const Exposition scrape = Scrape(metrics);
  const std::map<std::string, std::string> expected = {
      {"poolside_build_info", "gauge"},
      {"poolside_pool_connections", "gauge"},
      {"poolside_pool_active_connections", "gauge"},
      {"poolside_pool_available_connections", "gauge"},
      {"poolside_pool_connection_errors_total", "counter"},
      {"poolside_pool_health_check_failures_total", "counter"},
      {"poolside_pool_connections_created_total", "counter"},
      {"poolside_pool_last_health_check_timestamp_seconds", "gauge"},
      {"poolside_pool_health_status", "gauge"},
      {"poolside_pool_utilization", "gauge"},
      {"poolside_pool_channel_outstanding_calls", "gauge"},
      {"poolside_pool_channel_healthy", "gauge"},
      {"poolside_pool_channel_age_seconds", "gauge"},
      {"poolside_requests_total", "counter"},
      {"poolside_request_duration_seconds", "histogram"},
      {"poolside_inflight_requests", "gauge"},
      {"poolside_forwarded_bytes_total", "counter"},
      {"poolside_forwarded_messages_total", "counter"},
  };
  for (const auto& [name, type] : expected) {
    auto it = scrape.types.find(name);
    ASSERT_NE(it, scrape.types.end()) << name;
    EXPECT_EQ(it->second, type) << name;
  }
}

TEST(MetricsTest, MirrorsThePoolSnapshot) {
  PoolsideMetrics metrics(MetricsOptions{"1.2.3", 200});
  metrics.UpdateFromPool(ThreeChannels());
  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Value("poolside_build_info", {{"version", "1.2.3"}}), 1);
  EXPECT_EQ(scrape.Value("poolside_pool_connections"), 3);
  EXPECT_EQ(scrape.Value("poolside_pool_active_connections"), 2);
  // Channel 1 is healthy but full (100 of 100 streams).
  EXPECT_EQ(scrape.Value("poolside_pool_available_connections"), 1);
  EXPECT_EQ(scrape.Value("poolside_pool_connection_errors_total"), 7);
  EXPECT_EQ(scrape.Value("poolside_pool_health_check_failures_total"), 3);
  EXPECT_EQ(scrape.Value("poolside_pool_connections_created_total"), 5);
  EXPECT_EQ(scrape.Value("poolside_pool_last_health_check_timestamp_seconds"), 1700000000);
  EXPECT_NEAR(*scrape.Value("poolside_pool_utilization"), 110.0 / 300.0, 1e-12);
  EXPECT_EQ(scrape.Value("poolside_pool_channel_outstanding_calls", {{"channel", "1"}}), 100);
  EXPECT_EQ(scrape.Value("poolside_pool_channel_healthy", {{"channel", "0"}}), 1);
  EXPECT_EQ(scrape.Value("poolside_pool_channel_healthy", {{"channel", "2"}}), 0);
  EXPECT_EQ(scrape.Value("poolside_pool_channel_age_seconds", {{"channel", "2"}}), 1.5);
}

TEST(MetricsTest, HealthStatusIsAStateSet) {
  PoolsideMetrics metrics(MetricsOptions{});
  PoolSnapshot snapshot = ThreeChannels();
  auto status = [&](const char* name) {
    return Scrape(metrics).Value("poolside_pool_health_status", {{"status", name}});
  };
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(status("degraded"), 1);
  EXPECT_EQ(status("healthy"), 0);
  EXPECT_EQ(status("unhealthy"), 0);

  for (ChannelSnapshot& channel : snapshot.channels) channel.healthy = true;
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(status("healthy"), 1);
  EXPECT_EQ(status("degraded"), 0);

  for (ChannelSnapshot& channel : snapshot.channels) channel.healthy = false;
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(status("unhealthy"), 1);
  EXPECT_EQ(status("healthy"), 0);
  EXPECT_EQ(Scrape(metrics).Sum("poolside_pool_health_status"), 1);
}

TEST(MetricsTest, CountersFollowThePoolTotalsAndNeverGoDown) {
  PoolsideMetrics metrics(MetricsOptions{});
  PoolSnapshot snapshot = ThreeChannels();
  metrics.UpdateFromPool(snapshot);
  snapshot.connection_errors = 12;
  snapshot.health_check_failures = 4;
  snapshot.connections_created = 6;
  metrics.UpdateFromPool(snapshot);
  Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Value("poolside_pool_connection_errors_total"), 12);
  EXPECT_EQ(scrape.Value("poolside_pool_health_check_failures_total"), 4);
  EXPECT_EQ(scrape.Value("poolside_pool_connections_created_total"), 6);

  snapshot.connection_errors = 1;
  snapshot.connections_created = 1;
  metrics.UpdateFromPool(snapshot);
  scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Value("poolside_pool_connection_errors_total"), 12);
  EXPECT_EQ(scrape.Value("poolside_pool_connections_created_total"), 6);
}

TEST(MetricsTest, LastHealthCheckIsZeroBeforeTheFirst) {
  PoolsideMetrics metrics(MetricsOptions{});
  PoolSnapshot snapshot = ThreeChannels();
  snapshot.last_health_check = absl::InfinitePast();
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(Scrape(metrics).Value("poolside_pool_last_health_check_timestamp_seconds"), 0);
}

TEST(MetricsTest, ChannelSeriesFollowThePoolSize) {
  PoolsideMetrics metrics(MetricsOptions{});
  PoolSnapshot snapshot = ThreeChannels();
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(Scrape(metrics).Find("poolside_pool_channel_healthy").size(), 3u);

  snapshot.channels.pop_back();
  metrics.UpdateFromPool(snapshot);
  Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Find("poolside_pool_channel_healthy").size(), 2u);
  EXPECT_FALSE(scrape.Value("poolside_pool_channel_age_seconds", {{"channel", "2"}}).has_value());
  EXPECT_EQ(scrape.Value("poolside_pool_connections"), 2);

  snapshot.channels.push_back(Channel(2, true, 1, absl::Seconds(1)));
  metrics.UpdateFromPool(snapshot);
  EXPECT_EQ(Scrape(metrics).Value("poolside_pool_channel_healthy", {{"channel", "2"}}), 1);
}

TEST(MetricsTest, EmptyPoolHasZeroUtilization) {
  PoolsideMetrics metrics(MetricsOptions{});
  metrics.UpdateFromPool(PoolSnapshot{});
  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Value("poolside_pool_utilization"), 0);
  EXPECT_EQ(scrape.Value("poolside_pool_health_status", {{"status", "unhealthy"}}), 1);
}

TEST(MetricsTest, RequestMetricsAreInTheSameText) {
  PoolsideMetrics metrics(MetricsOptions{"dev", 1});
  std::unique_ptr<CallRecorder> recorder = metrics.NewCallRecorder();
  recorder->RecordCall(recorder->Method("/pkg.S/First"), grpc::StatusCode::OK,
                       absl::Milliseconds(1));
  recorder->RecordCall(recorder->Method("/pkg.S/Second"), grpc::StatusCode::NOT_FOUND,
                       absl::Milliseconds(1));
  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(
      scrape.Value("poolside_requests_total",
                   {{"grpc_service", "pkg.S"}, {"grpc_method", "First"}, {"grpc_code", "OK"}}),
      1);
  EXPECT_EQ(scrape.Value(
                "poolside_requests_total",
                {{"grpc_service", "other"}, {"grpc_method", "other"}, {"grpc_code", "NOT_FOUND"}}),
            1);
}

}  // namespace
}  // namespace poolside
