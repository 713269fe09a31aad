#include "metrics/request_metrics.h"

#include <limits>
#include <string>
#include <utility>

namespace poolside {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr const char* kStatusCodeNames[kStatusCodeCount] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

constexpr const char* kDirectionNames[2] = {"upstream", "downstream"};

// One method's counters summed over every shard.
struct MethodTotals {
  uint64_t calls_by_code[kStatusCodeCount] = {};
  uint64_t duration_buckets[kDurationBucketCount] = {};
  uint64_t duration_sum_nanos = 0;
};

ClientMetric WithLabels(std::vector<ClientMetric::Label> labels) {
  ClientMetric metric;
  metric.label = std::move(labels);
  return metric;
}

}  // namespace

const char* StatusCodeName(int code) { return kStatusCodeNames[code]; }

RequestMetrics::RequestMetrics(int max_methods) : methods_(max_methods) {}

RequestMetrics::~RequestMetrics() = default;

std::unique_ptr<CallRecorder> RequestMetrics::NewRecorder() {
  absl::MutexLock lock(&mutex_);
  RecorderShard* free_shard = nullptr;
  for (const std::unique_ptr<RecorderShard>& shard : shards_) {
    if (!shard->in_use) {
      free_shard = shard.get();
      break;
    }
  }
  if (free_shard == nullptr) {
    shards_.push_back(std::make_unique<RecorderShard>(methods_.max_methods() + 1));
    free_shard = shards_.back().get();
  }
  free_shard->in_use = true;
  // Not make_unique: the constructor is private to RequestMetrics.
  return std::unique_ptr<CallRecorder>(new CallRecorder(*this, *free_shard));
}

void RequestMetrics::Release(RecorderShard& shard) {
  absl::MutexLock lock(&mutex_);
  shard.in_use = false;
}

std::vector<MetricFamily> RequestMetrics::Collect() const {
  // Labels first: a method assigned after this point is left for the next
  // scrape rather than read half-way.
  const std::vector<MethodLabels> labels = methods_.Labels();
  std::vector<const RecorderShard*> shards;
  {
    absl::MutexLock lock(&mutex_);
    for (const std::unique_ptr<RecorderShard>& shard : shards_) shards.push_back(shard.get());
  }

  std::vector<MethodTotals> totals(labels.size());
  int64_t inflight = 0;
  uint64_t bytes[2] = {};
  uint64_t messages[2] = {};
  for (const RecorderShard* shard : shards) {
    for (size_t id = 0; id < labels.size(); ++id) {
      const MethodCells& cells = shard->methods[id];
      MethodTotals& sum = totals[id];
      for (int code = 0; code < kStatusCodeCount; ++code) {
        sum.calls_by_code[code] += cells.calls_by_code[code].load(std::memory_order_relaxed);
      }
      for (int bucket = 0; bucket < kDurationBucketCount; ++bucket) {
        sum.duration_buckets[bucket] +=
            cells.duration_buckets[bucket].load(std::memory_order_relaxed);
      }
      sum.duration_sum_nanos += cells.duration_sum_nanos.load(std::memory_order_relaxed);
    }
    inflight += shard->inflight.load(std::memory_order_relaxed);
    for (int direction = 0; direction < 2; ++direction) {
      bytes[direction] += shard->bytes[direction].load(std::memory_order_relaxed);
      messages[direction] += shard->messages[direction].load(std::memory_order_relaxed);
    }
  }

  MetricFamily requests{"poolside_requests_total",
                        "Forwarded calls, by gRPC service, method and status code.",
                        MetricType::Counter,
                        {}};
  MetricFamily durations{"poolside_request_duration_seconds",
                         "Duration of forwarded calls, from accepting the call to sending its "
                         "status.",
                         MetricType::Histogram,
                         {}};
  for (size_t id = 0; id < labels.size(); ++id) {
    const MethodTotals& sum = totals[id];
    for (int code = 0; code < kStatusCodeCount; ++code) {
      if (sum.calls_by_code[code] == 0) continue;
      ClientMetric metric = WithLabels({{"grpc_service", labels[id].service},
                                        {"grpc_method", labels[id].method},
                                        {"grpc_code", kStatusCodeNames[code]}});
      metric.counter.value = static_cast<double>(sum.calls_by_code[code]);
      requests.metric.push_back(std::move(metric));
    }
    // _count is the +Inf bucket, so the histogram is consistent even though
    // recorders keep counting while it is read.
    ClientMetric metric =
        WithLabels({{"grpc_service", labels[id].service}, {"grpc_method", labels[id].method}});
    uint64_t cumulative = 0;
    for (int bucket = 0; bucket < kDurationBucketCount; ++bucket) {
      cumulative += sum.duration_buckets[bucket];
      metric.histogram.bucket.push_back(
          {cumulative, bucket < static_cast<int>(kRequestDurationBounds.size())
                           ? kRequestDurationBounds[bucket]
                           : std::numeric_limits<double>::infinity()});
    }
    if (cumulative == 0) continue;
    metric.histogram.sample_count = cumulative;
    metric.histogram.sample_sum = static_cast<double>(sum.duration_sum_nanos) / 1e9;
    durations.metric.push_back(std::move(metric));
  }

  MetricFamily inflight_family{"poolside_inflight_requests",
                               "Forwarded calls accepted and not yet finished.",
                               MetricType::Gauge,
                               {ClientMetric{}}};
  inflight_family.metric[0].gauge.value = static_cast<double>(inflight);

  MetricFamily bytes_family{"poolside_forwarded_bytes_total",
                            "Message payload bytes forwarded, by direction (upstream: app to "
                            "upstream; downstream: upstream to app).",
                            MetricType::Counter,
                            {}};
  MetricFamily messages_family{"poolside_forwarded_messages_total",
                               "Messages forwarded, by direction (upstream: app to upstream; "
                               "downstream: upstream to app).",
                               MetricType::Counter,
                               {}};
  for (int direction = 0; direction < 2; ++direction) {
    ClientMetric byte_metric = WithLabels({{"direction", kDirectionNames[direction]}});
    byte_metric.counter.value = static_cast<double>(bytes[direction]);
    bytes_family.metric.push_back(std::move(byte_metric));
    ClientMetric message_metric = WithLabels({{"direction", kDirectionNames[direction]}});
    message_metric.counter.value = static_cast<double>(messages[direction]);
    messages_family.metric.push_back(std::move(message_metric));
  }

  std::vector<MetricFamily> families;
  families.push_back(std::move(requests));
  families.push_back(std::move(durations));
  families.push_back(std::move(inflight_family));
  families.push_back(std::move(bytes_family));
  families.push_back(std::move(messages_family));
  return families;
}

}  // namespace poolside
