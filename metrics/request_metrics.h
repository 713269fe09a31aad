// poolside's request metrics as Prometheus sees them:
//   poolside_requests_total{grpc_service,grpc_method,grpc_code}   counter
//   poolside_request_duration_seconds{grpc_service,grpc_method}   histogram
//   poolside_inflight_requests                                    gauge
//   poolside_forwarded_bytes_total{direction}                     counter
//   poolside_forwarded_messages_total{direction}                  counter
// Calls are recorded by CallRecorders, each writing its own shard of plain
// atomics; Collect() sums the shards when Prometheus scrapes. This replaces
// prometheus::Counter/Histogram on the hot path: their labelled families take
// a map lookup under a mutex and Histogram::Observe takes another.
//
// Memory is bounded: every shard holds (max_methods + 1) fixed-size rows,
// allocated up front, and there is one shard per live recorder (shards of
// destroyed recorders are reused).
//
// Ownership and threading: owned by PoolsideMetrics. Thread-safe. Must outlive every
// CallRecorder it made.
#ifndef POOLSIDE_METRICS_REQUEST_METRICS_H_
#define POOLSIDE_METRICS_REQUEST_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "metrics/call_recorder.h"
#include "metrics/method_table.h"

namespace poolside {

// grpc::StatusCode OK (0) .. UNAUTHENTICATED (16).
inline constexpr int kStatusCodeCount = 17;

// Upper bounds (seconds) of poolside_request_duration_seconds' finite
// buckets: 100 µs to 30 s in 1-2.5-5 steps. A +Inf bucket follows.
inline constexpr std::array<double, 17> kRequestDurationBounds = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
inline constexpr int kDurationBucketCount = kRequestDurationBounds.size() + 1;

// The canonical name of a status code ("OK", "DEADLINE_EXCEEDED", ...), used
// as the grpc_code label. `code` must be in [0, kStatusCodeCount).
const char* StatusCodeName(int code);

// One method's counters in one shard.
struct MethodCells {
  std::atomic<uint64_t> calls_by_code[kStatusCodeCount]{};
  // Not cumulative: calls whose duration fell in (bound[i-1], bound[i]].
  std::atomic<uint64_t> duration_buckets[kDurationBucketCount]{};
  std::atomic<uint64_t> duration_sum_nanos{0};
};

// The counters one CallRecorder writes. Written by that recorder's thread
// only; read by Collect() on any thread.
struct alignas(64) RecorderShard {
  explicit RecorderShard(int methods) : methods(std::make_unique<MethodCells[]>(methods)) {}

  // Indexed by MethodId; max_methods + 1 rows.
  const std::unique_ptr<MethodCells[]> methods;
  std::atomic<int64_t> inflight{0};
  std::atomic<uint64_t> bytes[2]{};
  std::atomic<uint64_t> messages[2]{};
  // Whether a live CallRecorder writes this shard. Guarded by the owning
  // RequestMetrics' mutex_.
  bool in_use = false;
};

class RequestMetrics final : public prometheus::Collectable {
 public:
  // REQUIRES: max_methods >= 0.
  explicit RequestMetrics(int max_methods);
  ~RequestMetrics() override;
  RequestMetrics(const RequestMetrics&) = delete;
  RequestMetrics& operator=(const RequestMetrics&) = delete;

  // A recorder for the calling thread; see CallRecorder.
  std::unique_ptr<CallRecorder> NewRecorder();

  // Sums every shard. Series appear once they have counted something; the
  // inflight gauge and both directions of the forwarded totals always appear.
  std::vector<prometheus::MetricFamily> Collect() const override;

  MethodTable& methods() { return methods_; }

 private:
  friend class CallRecorder;
  void Release(RecorderShard& shard);
  // Every shard made so far, in use or not; the pointers stay valid.
  std::vector<const RecorderShard*> Shards() const;

  MethodTable methods_;

  mutable absl::Mutex mutex_;
  // Never shrinks, so pointers into it stay valid for Collect() after the
  // lock is dropped.
  std::vector<std::unique_ptr<RecorderShard>> shards_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_REQUEST_METRICS_H_
