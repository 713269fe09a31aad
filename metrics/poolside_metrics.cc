#include "metrics/poolside_metrics.h"

#include <prometheus/text_serializer.h>

#include <cmath>
#include <iterator>
#include <string>
#include <utility>

namespace poolside {
namespace {

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Gauge& AddGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return GaugeFamily(registry, name, help).Add({});
}

prometheus::Counter& AddCounter(prometheus::Registry& registry, const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Family<prometheus::Counter>& ResizesFamily(prometheus::Registry& registry) {
  return prometheus::BuildCounter()
      .Name("poolside_pool_resizes_total")
      .Help("Times a pool sizing itself grew or shrank its target, by direction.")
      .Register(registry);
}

// prometheus-cpp hands back the registered family when asked again.
prometheus::Family<prometheus::Counter>& CallsEndedFamily(prometheus::Registry& registry) {
  return prometheus::BuildCounter()
      .Name("poolside_pool_calls_ended_total")
      .Help(
          "Calls poolside ended with UNAVAILABLE, by reason: connection_lost (never "
          "answered while the connection stayed down for the connection timeout), "
          "drain_grace (still running on a drained connection when its grace was up).")
      .Register(registry);
}

// Built once per registry; both limits share it.
prometheus::Family<prometheus::Counter>& OverflowFamily(prometheus::Registry& registry) {
  return prometheus::BuildCounter()
      .Name("poolside_overflow_total")
      .Help(
          "Calls refused at once by GRPC_MAX_CONCURRENT_REQUESTS (limit=concurrency) or "
          "GRPC_MAX_PENDING_REQUESTS (limit=pending).")
      .Register(registry);
}

prometheus::Family<prometheus::Gauge>& HealthStatusFamily(prometheus::Registry& registry) {
  return GaugeFamily(registry, "poolside_pool_health_status",
                     "The pool's health as a state set: 1 for the current status, 0 for the "
                     "others (healthy: every connection healthy; degraded: some; unhealthy: "
                     "none).");
}

}  // namespace

PoolsideMetrics::PoolsideMetrics(MetricsOptions options)
    : registry_(std::make_unique<prometheus::Registry>()),
      requests_(options.max_methods),
      connections_(
          AddGauge(*registry_, "poolside_pool_connections", "Upstream connections in the pool.")),
      active_connections_(AddGauge(*registry_, "poolside_pool_active_connections",
                                   "Upstream connections currently healthy.")),
      available_connections_(
          AddGauge(*registry_, "poolside_pool_available_connections",
                   "Healthy upstream connections with room for more concurrent calls.")),
      connection_errors_(AddCounter(*registry_, "poolside_pool_connection_errors_total",
                                    "Failed connection attempts and calls that failed with "
                                    "UNAVAILABLE on a pooled connection.")),
      health_check_failures_(AddCounter(*registry_, "poolside_pool_health_check_failures_total",
                                        "Health checks of a pooled connection that failed.")),
      connections_created_(AddCounter(*registry_, "poolside_pool_connections_created_total",
                                      "Upstream connections the pool has created, replacements "
                                      "included.")),
      last_health_check_(AddGauge(*registry_, "poolside_pool_last_health_check_timestamp_seconds",
                                  "Unix time of the last health check round; 0 before the "
                                  "first.")),
      status_healthy_(HealthStatusFamily(*registry_).Add({{"status", "healthy"}})),
      status_degraded_(HealthStatusFamily(*registry_).Add({{"status", "degraded"}})),
      status_unhealthy_(HealthStatusFamily(*registry_).Add({{"status", "unhealthy"}})),
      utilization_(AddGauge(*registry_, "poolside_pool_utilization",
                            "Outstanding calls divided by connections times "
                            "GRPC_MAX_STREAMS_PER_CONNECTION.")),
      outlier_ejections_(AddCounter(*registry_, "poolside_pool_outlier_ejections_total",
                                    "Connections taken out of rotation after consecutive "
                                    "UNAVAILABLE calls.")),
      concurrency_overflows_(OverflowFamily(*registry_).Add({{"limit", "concurrency"}})),
      pending_overflows_(OverflowFamily(*registry_).Add({{"limit", "pending"}})),
      hostile_peers_(*registry_),
      channel_outstanding_calls_(GaugeFamily(*registry_, "poolside_pool_channel_outstanding_calls",
                                             "Calls in flight on one pooled connection.")),
      channel_healthy_(GaugeFamily(*registry_, "poolside_pool_channel_healthy",
                                   "1 if the pooled connection is healthy, 0 if not.")),
      channel_age_seconds_(GaugeFamily(*registry_, "poolside_pool_channel_age_seconds",
                                       "Age of the connection in one pool position.")),
      channel_info_(GaugeFamily(*registry_, "poolside_pool_channel_info",
                                "Always 1: the backend address, phase (active, connecting, "
                                "draining) and connectivity state of one pool position.")),
      backends_(AddGauge(*registry_, "poolside_pool_backends",
                         "Backend addresses the pool spreads its connections over.")),
      backend_connections_(GaugeFamily(*registry_, "poolside_pool_backend_connections",
                                       "Connections in rotation to one backend address.")),
      backend_calls_started_(prometheus::BuildCounter()
                                 .Name("poolside_pool_backend_calls_started_total")
                                 .Help("Calls started on one backend address since it joined "
                                       "the address set.")
                                 .Register(*registry_)),
      address_set_changes_(AddCounter(*registry_, "poolside_pool_address_set_changes_total",
                                      "Times the upstream's resolved address set changed.")),
      resolution_failures_(AddCounter(*registry_, "poolside_pool_resolution_failures_total",
                                      "Lookups of the upstream's name that failed or found no "
                                      "address; the pool kept the last good set.")),
      calls_ended_connection_lost_(
          CallsEndedFamily(*registry_).Add({{"reason", "connection_lost"}})),
      calls_ended_drain_grace_(CallsEndedFamily(*registry_).Add({{"reason", "drain_grace"}})),
      resolution_failing_(AddGauge(*registry_, "poolside_pool_resolution_failing",
                                   "1 while the last lookup of the upstream's name failed (the "
                                   "pool runs on the last good set), else 0.")),
      recommended_connections_(AddGauge(
          *registry_, "poolside_pool_recommended_connections",
          "Connections the measured demand needs: outstanding calls over the streams one "
          "connection carries, up at once, down after GRPC_POOL_SCALE_DOWN_SECS; computed for "
          "fixed pools too.")),
      target_connections_(AddGauge(*registry_, "poolside_pool_target_connections",
                                   "Connections the pool keeps in rotation once settled.")),
      min_connections_(AddGauge(*registry_, "poolside_pool_min_connections",
                                "GRPC_CONNECTION_POOL_MIN (equal to the maximum: a fixed pool).")),
      max_connections_(AddGauge(*registry_, "poolside_pool_max_connections",
                                "GRPC_CONNECTION_POOL_SIZE, the pool's maximum.")),
      grow_events_(ResizesFamily(*registry_).Add({{"direction", "grow"}})),
      shrink_events_(ResizesFamily(*registry_).Add({{"direction", "shrink"}})),
      calls_over_stream_limit_(AddCounter(
          *registry_, "poolside_pool_calls_over_stream_limit_total",
          "Calls started on a connection already carrying GRPC_MAX_STREAMS_PER_CONNECTION "
          "calls: they waited in the transport for stream quota.")),
      calls_waiting_for_stream_quota_(AddGauge(
          *registry_, "poolside_pool_calls_waiting_for_stream_quota",
          "Calls beyond GRPC_MAX_STREAMS_PER_CONNECTION on their connection right now, summed "
          "over connections.")) {
  GaugeFamily(*registry_, "poolside_build_info", "Always 1; labelled with poolside's version.")
      .Add({{"version", options.version}})
      .Set(1);
}

PoolsideMetrics::~PoolsideMetrics() = default;

std::unique_ptr<CallRecorder> PoolsideMetrics::NewCallRecorder() { return requests_.NewRecorder(); }

void PoolsideMetrics::UpdateFromPool(const PoolSnapshot& snapshot) {
  absl::MutexLock lock(&update_mutex_);
  const int total = snapshot.ActiveCount();
  connections_.Set(total);
  active_connections_.Set(snapshot.HealthyCount());
  available_connections_.Set(snapshot.AvailableCount());
  AdvanceTo(connection_errors_, snapshot.connection_errors);
  AdvanceTo(health_check_failures_, snapshot.health_check_failures);
  AdvanceTo(connections_created_, snapshot.connections_created);
  AdvanceTo(outlier_ejections_, snapshot.outlier_ejections);
  recommended_connections_.Set(snapshot.recommended_size);
  target_connections_.Set(snapshot.size);
  min_connections_.Set(snapshot.min_size);
  max_connections_.Set(snapshot.max_size);
  AdvanceTo(grow_events_, snapshot.grow_events);
  AdvanceTo(shrink_events_, snapshot.shrink_events);
  AdvanceTo(calls_over_stream_limit_, snapshot.calls_over_stream_limit);
  calls_waiting_for_stream_quota_.Set(static_cast<double>(snapshot.calls_waiting_for_stream_quota));
  last_health_check_.Set(
      snapshot.last_health_check == absl::InfinitePast()
          ? 0
          : absl::ToDoubleSeconds(snapshot.last_health_check - absl::UnixEpoch()));
  const PoolHealth health = PoolHealthOf(snapshot);
  status_healthy_.Set(health == PoolHealth::kHealthy ? 1 : 0);
  status_degraded_.Set(health == PoolHealth::kDegraded ? 1 : 0);
  status_unhealthy_.Set(health == PoolHealth::kUnhealthy ? 1 : 0);

  int64_t outstanding = 0;
  std::map<int, ChannelGauges> current;
  for (const ChannelSnapshot& channel : snapshot.channels) {
    outstanding += channel.outstanding_calls;
    auto it = channels_.find(channel.index);
    ChannelGauges gauges;
    if (it != channels_.end()) {
      gauges = it->second;
      channels_.erase(it);
    } else {
      const prometheus::Labels labels = {{"channel", std::to_string(channel.index)}};
      gauges = {&channel_outstanding_calls_.Add(labels), &channel_healthy_.Add(labels),
                &channel_age_seconds_.Add(labels), nullptr, ""};
    }
    const std::string info_key = channel.backend + '\n' + SlotPhaseName(channel.phase) + '\n' +
                                 ConnectivityStateName(channel.state);
    if (gauges.info == nullptr || gauges.info_key != info_key) {
      if (gauges.info != nullptr) channel_info_.Remove(gauges.info);
      gauges.info = &channel_info_.Add({{"channel", std::to_string(channel.index)},
                                        {"backend", channel.backend},
                                        {"phase", SlotPhaseName(channel.phase)},
                                        {"state", ConnectivityStateName(channel.state)}});
      gauges.info->Set(1);
      gauges.info_key = info_key;
    }
    gauges.outstanding_calls->Set(static_cast<double>(channel.outstanding_calls));
    gauges.healthy->Set(channel.healthy ? 1 : 0);
    const double age = absl::ToDoubleSeconds(channel.age);
    gauges.age_seconds->Set(std::isfinite(age) ? age : 0);
    current.emplace(channel.index, gauges);
  }
  // What is left belongs to channels that are gone.
  for (const auto& [index, gauges] : channels_) {
    channel_outstanding_calls_.Remove(gauges.outstanding_calls);
    channel_healthy_.Remove(gauges.healthy);
    channel_age_seconds_.Remove(gauges.age_seconds);
    if (gauges.info != nullptr) channel_info_.Remove(gauges.info);
  }
  channels_ = std::move(current);
  UpdateBackends(snapshot);

  const double capacity = static_cast<double>(total) * snapshot.max_streams_per_connection;
  utilization_.Set(capacity > 0 ? static_cast<double>(outstanding) / capacity : 0);
}

void PoolsideMetrics::UpdateBackends(const PoolSnapshot& snapshot) {
  backends_.Set(static_cast<double>(snapshot.backends.size()));
  AdvanceTo(address_set_changes_, snapshot.address_set_changes);
  AdvanceTo(resolution_failures_, snapshot.resolution_failures);
  AdvanceTo(calls_ended_connection_lost_, snapshot.calls_ended_connection_lost);
  AdvanceTo(calls_ended_drain_grace_, snapshot.calls_ended_drain_grace);
  resolution_failing_.Set(snapshot.resolution_failing ? 1 : 0);
  std::map<std::string, BackendSeries> current;
  for (const BackendSnapshot& backend : snapshot.backends) {
    auto it = backend_series_.find(backend.address);
    BackendSeries series;
    if (it != backend_series_.end()) {
      series = it->second;
      backend_series_.erase(it);
    } else {
      const prometheus::Labels labels = {{"backend", backend.address}};
      series = {&backend_connections_.Add(labels), &backend_calls_started_.Add(labels)};
    }
    series.connections->Set(backend.active_connections);
    AdvanceTo(*series.calls_started, backend.calls_started);
    current.emplace(backend.address, series);
  }
  // Backends that left the set lose their series.
  for (const auto& [address, series] : backend_series_) {
    backend_connections_.Remove(series.connections);
    backend_calls_started_.Remove(series.calls_started);
  }
  backend_series_ = std::move(current);
}

void PoolsideMetrics::AdvanceTo(prometheus::Counter& counter, uint64_t total) {
  const double target = static_cast<double>(total);
  const double current = counter.Value();
  if (target > current) counter.Increment(target - current);
}

std::vector<prometheus::MetricFamily> PoolsideMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::MetricFamily> requests = requests_.Collect();
  families.insert(families.end(), std::make_move_iterator(requests.begin()),
                  std::make_move_iterator(requests.end()));
  return families;
}

std::string PoolsideMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

}  // namespace poolside
