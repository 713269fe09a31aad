// Cost of the request metrics on the forwarding hot path: what one forwarded
// unary call records (method lookup, inflight up and down, one message each
// way, the call itself), through a CallRecorder and, for comparison, through
// prometheus-cpp's labelled families as a naive implementation would.
#include <benchmark/benchmark.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include "metrics/poolside_metrics.h"
#include "metrics/request_metrics.h"

namespace poolside {
namespace {

constexpr char kMethod[] = "/helloworld.Greeter/SayHello";

void BM_CallRecorder(benchmark::State& state) {
  static PoolsideMetrics* const metrics = new PoolsideMetrics(MetricsOptions{"bench", 200});
  std::unique_ptr<CallRecorder> recorder = metrics->NewCallRecorder();
  const std::string method = kMethod;
  int64_t i = 0;
  for (auto _ : state) {
    recorder->CallStarted();
    const MethodId id = recorder->Method(method);
    recorder->RecordMessage(Direction::kUpstream, 1024);
    recorder->RecordMessage(Direction::kDownstream, 1024);
    recorder->RecordCall(id, grpc::StatusCode::OK, absl::Microseconds(100 + (++i & 1023)));
    recorder->CallEnded();
  }
}
BENCHMARK(BM_CallRecorder)->Threads(1)->Threads(2)->Threads(4);

// The same through prometheus-cpp: a family lookup (map under a mutex) for
// the labelled series, and Histogram::Observe (another mutex).
void BM_PrometheusCppFamilies(benchmark::State& state) {
  struct Families {
    prometheus::Registry registry;
    prometheus::Family<prometheus::Counter>& requests =
        prometheus::BuildCounter().Name("requests_total").Register(registry);
    prometheus::Family<prometheus::Histogram>& durations =
        prometheus::BuildHistogram().Name("request_duration_seconds").Register(registry);
    prometheus::Family<prometheus::Counter>& bytes =
        prometheus::BuildCounter().Name("bytes_total").Register(registry);
    prometheus::Gauge& inflight =
        prometheus::BuildGauge().Name("inflight").Register(registry).Add({});
  };
  static Families* const families = new Families;
  const prometheus::Histogram::BucketBoundaries bounds(kRequestDurationBounds.begin(),
                                                       kRequestDurationBounds.end());
  int64_t i = 0;
  for (auto _ : state) {
    families->inflight.Increment();
    families->bytes.Add({{"direction", "upstream"}}).Increment(1024);
    families->bytes.Add({{"direction", "downstream"}}).Increment(1024);
    families->requests
        .Add({{"grpc_service", "helloworld.Greeter"},
              {"grpc_method", "SayHello"},
              {"grpc_code", "OK"}})
        .Increment();
    families->durations
        .Add({{"grpc_service", "helloworld.Greeter"}, {"grpc_method", "SayHello"}}, bounds)
        .Observe((100 + (++i & 1023)) * 1e-6);
    families->inflight.Decrement();
  }
}
BENCHMARK(BM_PrometheusCppFamilies)->Threads(1)->Threads(2)->Threads(4);

// A scrape's collection cost with 200 methods and 8 recorders.
void BM_CollectRequestMetrics(benchmark::State& state) {
  RequestMetrics metrics(200);
  std::vector<std::unique_ptr<CallRecorder>> recorders;
  for (int r = 0; r < 8; ++r) recorders.push_back(metrics.NewRecorder());
  for (int m = 0; m < 200; ++m) {
    for (auto& recorder : recorders) {
      recorder->RecordCall(recorder->Method("/pkg.Service/M" + std::to_string(m)),
                           grpc::StatusCode::OK, absl::Milliseconds(m));
    }
  }
  for (auto _ : state) benchmark::DoNotOptimize(metrics.Collect());
}
BENCHMARK(BM_CollectRequestMetrics);

}  // namespace
}  // namespace poolside
