// Micro-benchmarks of what poolside does for every forwarded call, apart from
// gRPC itself.
//
// Every benchmark shares one Environment, built once in main() before any
// benchmark runs: an in-process echo upstream (bench/echo_server.h) and
// poolside channel pools of 1, 4 and 10 real channels to it, each READY. A
// benchmark is one section below (a function plus its BENCHMARK registration)
// that takes what it needs from the Environment; ThreadRange(1, 2) measures
// it alone and with a second thread contending, as on the 2-core machine the
// proxy runs on.
#include <benchmark/benchmark.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/echo_server.h"
#include "metrics/call_recorder.h"
#include "metrics/request_metrics.h"
#include "pool/channel_factory.h"
#include "pool/channel_pool.h"
#include "proxy/metadata.h"

namespace {

constexpr int kPoolSizes[] = {1, 4, 10};

// The upstream and the pools the benchmarks use. Built before, and torn down
// after, every benchmark; read-only meanwhile (the pools are thread-safe).
class Environment {
 public:
  // Starts the upstream and the pools and waits until every channel is
  // READY; nullptr (after printing why) when that fails.
  static std::unique_ptr<Environment> Create() {
    auto environment = std::make_unique<Environment>();
    environment->upstream_ = poolside::bench::EchoServer::Start({});
    if (environment->upstream_ == nullptr) {
      std::fprintf(stderr, "bench_hot_path: cannot start the echo upstream\n");
      return nullptr;
    }
    const std::string target = "127.0.0.1:" + std::to_string(environment->upstream_->port());
    for (int size : kPoolSizes) {
      poolside::PoolOptions options;
      options.target = target;
      options.size = size;
      poolside::UpstreamChannelOptions channel_options;
      channel_options.target = target;
      auto pool = std::make_unique<poolside::ChannelPool>(
          options, poolside::NewUpstreamChannelFactory(channel_options));
      pool->Start();
      if (!WaitUntilAllReady(*pool)) {
        std::fprintf(stderr, "bench_hot_path: pool of %d did not become ready\n", size);
        return nullptr;
      }
      environment->pools_[size] = std::move(pool);
    }
    return environment;
  }

  ~Environment() {
    for (auto& [size, pool] : pools_) pool->Shutdown();
    pools_.clear();
    if (upstream_ != nullptr) upstream_->Shutdown();
  }

  poolside::ChannelPool& pool(int size) { return *pools_.at(size); }

 private:
  static bool WaitUntilAllReady(poolside::ChannelPool& pool) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      bool all_ready = true;
      for (const auto& channel : pool.Snapshot().channels) {
        all_ready = all_ready && channel.state == GRPC_CHANNEL_READY;
      }
      if (all_ready) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  std::unique_ptr<poolside::bench::EchoServer> upstream_;
  std::map<int, std::unique_ptr<poolside::ChannelPool>> pools_;
};

Environment* environment = nullptr;

// --- Channel pick (pool/): ChannelPool::PickReady and releasing the lease ---
//
// What every forwarded call does to choose its upstream channel: scan the
// slots for the READY one with the fewest outstanding calls, count the call on
// it, and uncount it when the call ends. Arg: the pool size.
void BM_PickReady(benchmark::State& state) {
  poolside::ChannelPool& pool = environment->pool(static_cast<int>(state.range(0)));
  int64_t misses = 0;
  for (auto _ : state) {
    std::optional<poolside::ChannelPool::Lease> lease = pool.PickReady();
    if (!lease) ++misses;
    benchmark::DoNotOptimize(lease);
  }
  // Every channel is READY: a miss would mean the benchmark measures nothing.
  if (misses > 0) state.SkipWithError("PickReady found no ready channel");
}
BENCHMARK(BM_PickReady)->ArgName("pool")->Arg(1)->Arg(4)->Arg(10)->ThreadRange(1, 2)->UseRealTime();

// --- Request metadata (proxy/metadata.cc): CopyRequestMetadata ---
//
// What every forwarded call does with the app's headers: drop what grpc core
// writes itself, refuse what core would abort on, and add the rest to the
// upstream call's context. Arg: custom headers besides the ones every grpc
// client sends (which are dropped).
void BM_CopyRequestMetadata(benchmark::State& state) {
  std::vector<std::pair<std::string, std::string>> owned = {
      {"user-agent", "grpc-c++/1.51.1 grpc-c/29.0.0 (linux; chttp2)"},
      {"te", "trailers"},
      {"content-type", "application/grpc"},
      {"grpc-accept-encoding", "identity, deflate, gzip"},
  };
  for (int64_t i = 0; i < state.range(0); ++i) {
    owned.emplace_back("x-custom-header-" + std::to_string(i), "value-" + std::to_string(i));
  }
  owned.emplace_back("x-trace-bin", std::string("\x00\x01\x02\x03", 4));
  poolside::MetadataMap metadata;
  for (const auto& [key, value] : owned) {
    metadata.emplace(grpc::string_ref(key), grpc::string_ref(value));
  }
  for (auto _ : state) {
    grpc::ClientContext context;
    const absl::Status copied = poolside::CopyRequestMetadata(metadata, context);
    if (!copied.ok()) state.SkipWithError("metadata refused");
    benchmark::DoNotOptimize(context);
  }
}
BENCHMARK(BM_CopyRequestMetadata)->ArgName("custom")->Arg(0)->Arg(4)->Arg(16);

// What one forwarded unary call records: its method looked up (a name this
// thread has seen), in flight up and down, one message each way, and the
// finished call with its duration.
void BM_RecordUnaryCall(benchmark::State& state) {
  poolside::RequestMetrics metrics(/*max_methods=*/200);
  std::unique_ptr<poolside::CallRecorder> recorder = metrics.NewRecorder();
  const std::string method = "/bench.Echo/Unary";
  for (auto _ : state) {
    const poolside::MethodId id = recorder->Method(method);
    recorder->CallStarted();
    recorder->RecordMessage(poolside::Direction::kUpstream, 1024);
    recorder->RecordMessage(poolside::Direction::kDownstream, 1024);
    recorder->RecordCall(id, grpc::StatusCode::OK, absl::Microseconds(250));
    recorder->CallEnded();
  }
}
BENCHMARK(BM_RecordUnaryCall);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // The pool logs every connectivity change at info.
  spdlog::set_level(spdlog::level::warn);
  std::unique_ptr<Environment> owned = Environment::Create();
  if (owned == nullptr) return 1;
  environment = owned.get();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  environment = nullptr;
  return 0;
}
