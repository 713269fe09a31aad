// Every Prometheus metric poolside exports, declared in this one place, and
// the registry that holds them.
//
// Pool metrics (gauges and counters mirroring a PoolSnapshot; refreshed by
// UpdateFromPool, normally right before each scrape and after each health
// check round):
//   poolside_build_info{version}                            gauge, always 1
//   poolside_pool_connections                               gauge
//   poolside_pool_active_connections                        gauge (healthy)
//   poolside_pool_available_connections                     gauge (healthy, room left)
//   poolside_pool_connection_errors_total                   counter
//   poolside_pool_health_check_failures_total               counter
//   poolside_pool_connections_created_total                 counter
//   poolside_pool_last_health_check_timestamp_seconds       gauge (0 before the first)
//   poolside_pool_health_status{status}                     gauge, state set
//   poolside_pool_utilization                               gauge, 0..1+
//   poolside_pool_channel_outstanding_calls{channel}        gauge
//   poolside_pool_channel_healthy{channel}                  gauge, 0/1
//   poolside_pool_channel_age_seconds{channel}              gauge
//   poolside_pool_channel_info{channel,backend,phase,state}  gauge, always 1
//   poolside_pool_backends                                  gauge (addresses in the set)
//   poolside_pool_backend_connections{backend}              gauge (active)
//   poolside_pool_backend_calls_started_total{backend}      counter
//   poolside_pool_address_set_changes_total                 counter
//   poolside_pool_resolution_failures_total                 counter
//   poolside_pool_resolution_failing                        gauge, 0/1
//   poolside_pool_recommended_connections                   gauge (pool/pool_sizer.h)
//   poolside_pool_target_connections                        gauge (active once settled)
//   poolside_pool_min_connections, _max_connections         gauges (equal: fixed pool)
//   poolside_pool_resizes_total{direction}                  counter (grow, shrink)
//   poolside_pool_calls_over_stream_limit_total             counter
//   poolside_pool_calls_waiting_for_stream_quota            gauge
//   poolside_pool_calls_ended_total{reason}                 counter
//     reason="connection_lost": never answered, connection down for the
//     connection timeout; reason="drain_grace": still running on a drained
//     connection when GRPC_SHUTDOWN_GRACE_SECS was up.
// Per-channel series exist for the slots that have a connection (at most
// twice the pool size); per-backend series for the current address set
// (the pool never holds more backends than its size has connections).
// Request metrics (recorded on the hot path by CallRecorders; see
// request_metrics.h): poolside_requests_total, poolside_request_duration_seconds,
// poolside_inflight_requests, poolside_forwarded_bytes_total,
// poolside_forwarded_messages_total.
// Hostile peers (hostile_peer_metrics.h): poolside_hostile_peer_total{side,reason}.
//
// Ownership and threading: main owns one PoolsideMetrics for the life of the process.
// Thread-safe. It must outlive every CallRecorder it made.
#ifndef POOLSIDE_METRICS_POOLSIDE_METRICS_H_
#define POOLSIDE_METRICS_POOLSIDE_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "metrics/call_recorder.h"
#include "metrics/hostile_peer_metrics.h"
#include "metrics/request_metrics.h"
#include "pool/pool_snapshot.h"

namespace poolside {

struct MetricsOptions {
  // poolside_build_info's version label.
  std::string version = "unknown";
  // GRPC_METRICS_MAX_METHODS: distinct methods labelled by name; later ones
  // are counted as grpc_service="other",grpc_method="other".
  int max_methods = 200;
};

class PoolsideMetrics {
 public:
  explicit PoolsideMetrics(MetricsOptions options);
  ~PoolsideMetrics();
  PoolsideMetrics(const PoolsideMetrics&) = delete;
  PoolsideMetrics& operator=(const PoolsideMetrics&) = delete;

  // A recorder for one forwarding thread. See CallRecorder.
  std::unique_ptr<CallRecorder> NewCallRecorder();

  // Sets the pool metrics from `snapshot`. The counters are made equal to the
  // snapshot's totals; they never go down (a total that shrinks is ignored).
  // Channels no longer in the snapshot lose their per-channel series.
  void UpdateFromPool(const PoolSnapshot& snapshot);

  // Every metric family, pool and request metrics alike.
  std::vector<prometheus::MetricFamily> Collect() const;

  // Collect() in the Prometheus text exposition format 0.0.4.
  std::string Serialize() const;

  // poolside_overflow_total{limit}: calls refused by a circuit-breaking limit.
  // Thread-safe (atomic increments); off the hot path.
  prometheus::Counter& concurrency_overflows() { return concurrency_overflows_; }
  prometheus::Counter& pending_overflows() { return pending_overflows_; }

  // poolside_hostile_peer_total{side,reason}. Thread-safe.
  HostilePeerCounter& hostile_peers() { return hostile_peers_; }

 private:
  struct ChannelGauges {
    prometheus::Gauge* outstanding_calls;
    prometheus::Gauge* healthy;
    prometheus::Gauge* age_seconds;
    // Labelled with what may change: replaced when it does.
    prometheus::Gauge* info;
    std::string info_key;
  };
  struct BackendSeries {
    prometheus::Gauge* connections;
    prometheus::Counter* calls_started;
  };

  void UpdateBackends(const PoolSnapshot& snapshot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(update_mutex_);

  // Makes `counter` equal `total`, if that does not mean going down.
  static void AdvanceTo(prometheus::Counter& counter, uint64_t total);

  // Constant after construction. The references point into registry_.
  const std::unique_ptr<prometheus::Registry> registry_;
  RequestMetrics requests_;
  prometheus::Gauge& connections_;
  prometheus::Gauge& active_connections_;
  prometheus::Gauge& available_connections_;
  prometheus::Counter& connection_errors_;
  prometheus::Counter& health_check_failures_;
  prometheus::Counter& connections_created_;
  prometheus::Gauge& last_health_check_;
  prometheus::Gauge& status_healthy_;
  prometheus::Gauge& status_degraded_;
  prometheus::Gauge& status_unhealthy_;
  prometheus::Gauge& utilization_;
  prometheus::Counter& outlier_ejections_;
  prometheus::Counter& concurrency_overflows_;
  prometheus::Counter& pending_overflows_;
  HostilePeerMetrics hostile_peers_;
  prometheus::Family<prometheus::Gauge>& channel_outstanding_calls_;
  prometheus::Family<prometheus::Gauge>& channel_healthy_;
  prometheus::Family<prometheus::Gauge>& channel_age_seconds_;
  prometheus::Family<prometheus::Gauge>& channel_info_;
  prometheus::Gauge& backends_;
  prometheus::Family<prometheus::Gauge>& backend_connections_;
  prometheus::Family<prometheus::Counter>& backend_calls_started_;
  prometheus::Counter& address_set_changes_;
  prometheus::Counter& resolution_failures_;
  prometheus::Counter& calls_ended_connection_lost_;
  prometheus::Counter& calls_ended_drain_grace_;
  prometheus::Gauge& resolution_failing_;
  prometheus::Gauge& recommended_connections_;
  prometheus::Gauge& target_connections_;
  prometheus::Gauge& min_connections_;
  prometheus::Gauge& max_connections_;
  prometheus::Counter& grow_events_;
  prometheus::Counter& shrink_events_;
  prometheus::Counter& calls_over_stream_limit_;
  prometheus::Gauge& calls_waiting_for_stream_quota_;

  // Serializes UpdateFromPool callers (health monitor, scrapes).
  absl::Mutex update_mutex_;
  std::map<int, ChannelGauges> channels_ ABSL_GUARDED_BY(update_mutex_);
  std::map<std::string, BackendSeries> backend_series_ ABSL_GUARDED_BY(update_mutex_);
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_POOLSIDE_METRICS_H_
