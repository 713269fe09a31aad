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

// Every shard's counters summed, for one scrape.
struct ShardTotals {
  // Indexed by MethodId, one per labelled method.
  std::vector<MethodTotals> methods;
  int64_t inflight = 0;
  uint64_t bytes[2] = {};
  uint64_t messages[2] = {};
};

ClientMetric WithLabels(std::vector<ClientMetric::Label> labels) {
  ClientMetric metric;
  metric.label = std::move(labels);
  return metric;
}

// Sums the first `method_count` methods' rows and the per-shard totals.
// Recorders keep counting meanwhile; each cell is read once.
ShardTotals SumShards(const std::vector<const RecorderShard*>& shards, size_t method_count) {
  ShardTotals totals;
  totals.methods.resize(method_count);
  for (const RecorderShard* shard : shards) {
    for (size_t id = 0; id < method_count; ++id) {
      const MethodCells& cells = shard->methods[id];
      MethodTotals& sum = totals.methods[id];
      for (int code = 0; code < kStatusCodeCount; ++code) {
        sum.calls_by_code[code] += cells.calls_by_code[code].load(std::memory_order_relaxed);
      }
      for (int bucket = 0; bucket < kDurationBucketCount; ++bucket) {
        sum.duration_buckets[bucket] +=
            cells.duration_buckets[bucket].load(std::memory_order_relaxed);
      }
      sum.duration_sum_nanos += cells.duration_sum_nanos.load(std::memory_order_relaxed);
    }
    totals.inflight += shard->inflight.load(std::memory_order_relaxed);
    for (int direction = 0; direction < 2; ++direction) {
      totals.bytes[direction] += shard->bytes[direction].load(std::memory_order_relaxed);
      totals.messages[direction] += shard->messages[direction].load(std::memory_order_relaxed);
    }
  }
  return totals;
}

// poolside_requests_total: one series per method and code that has counted.
MetricFamily RequestCountFamily(const std::vector<MethodLabels>& labels,
                                const std::vector<MethodTotals>& methods) {
  MetricFamily requests{"poolside_requests_total",
                        "Forwarded calls, by gRPC service, method and status code.",
                        MetricType::Counter,
                        {}};
  for (size_t id = 0; id < labels.size(); ++id) {
    for (int code = 0; code < kStatusCodeCount; ++code) {
      if (methods[id].calls_by_code[code] == 0) continue;
      ClientMetric metric = WithLabels({{"grpc_service", labels[id].service},
                                        {"grpc_method", labels[id].method},
                                        {"grpc_code", kStatusCodeNames[code]}});
      metric.counter.value = static_cast<double>(methods[id].calls_by_code[code]);
      requests.metric.push_back(std::move(metric));
    }
  }
  return requests;
}

// poolside_request_duration_seconds: one histogram per method that has
// counted.
MetricFamily DurationFamily(const std::vector<MethodLabels>& labels,
                            const std::vector<MethodTotals>& methods) {
  MetricFamily durations{"poolside_request_duration_seconds",
                         "Duration of forwarded calls, from accepting the call to sending its "
                         "status.",
                         MetricType::Histogram,
                         {}};
  for (size_t id = 0; id < labels.size(); ++id) {
    const MethodTotals& sum = methods[id];
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
  return durations;
}

MetricFamily InflightFamily(int64_t inflight) {
  MetricFamily family{"poolside_inflight_requests",
                      "Forwarded calls accepted and not yet finished.",
                      MetricType::Gauge,
                      {ClientMetric{}}};
  family.metric[0].gauge.value = static_cast<double>(inflight);
  return family;
}

// A counter family with one series per direction, both always present.
MetricFamily DirectionFamily(std::string name, std::string help, const uint64_t (&values)[2]) {
  MetricFamily family{std::move(name), std::move(help), MetricType::Counter, {}};
  for (int direction = 0; direction < 2; ++direction) {
    ClientMetric metric = WithLabels({{"direction", kDirectionNames[direction]}});
    metric.counter.value = static_cast<double>(values[direction]);
    family.metric.push_back(std::move(metric));
  }
  return family;
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

std::vector<const RecorderShard*> RequestMetrics::Shards() const {
  absl::MutexLock lock(&mutex_);
  std::vector<const RecorderShard*> shards;
  for (const std::unique_ptr<RecorderShard>& shard : shards_) shards.push_back(shard.get());
  return shards;
}

std::vector<MetricFamily> RequestMetrics::Collect() const {
  // Labels first: a method assigned after this point is left for the next
  // scrape rather than read half-way.
  const std::vector<MethodLabels> labels = methods_.Labels();
  const ShardTotals totals = SumShards(Shards(), labels.size());

  std::vector<MetricFamily> families;
  families.push_back(RequestCountFamily(labels, totals.methods));
  families.push_back(DurationFamily(labels, totals.methods));
  families.push_back(InflightFamily(totals.inflight));
  families.push_back(DirectionFamily("poolside_forwarded_bytes_total",
                                     "Message payload bytes forwarded, by direction (upstream: "
                                     "app to upstream; downstream: upstream to app).",
                                     totals.bytes));
  families.push_back(DirectionFamily("poolside_forwarded_messages_total",
                                     "Messages forwarded, by direction (upstream: app to "
                                     "upstream; downstream: upstream to app).",
                                     totals.messages));
  return families;
}

}  // namespace poolside
