// The demo's app: sends unary calls and a bidi stream through poolside, checks
// every echo, then asks poolside's admin service how the pool is doing.
//
// Usage: demo_client --target=127.0.0.1:15001 [--calls=2000] [--concurrency=64]
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "demo/demo_flags.h"
#include "poolside/admin/v1/admin.grpc.pb.h"

namespace {

grpc::ByteBuffer ToBuffer(const std::string& text) {
  grpc::Slice slice(text);
  return grpc::ByteBuffer(&slice, 1);
}

std::string ToString(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  if (!buffer.TrySingleSlice(&slice).ok() && !buffer.DumpToSingleSlice(&slice).ok()) return "";
  return std::string(reinterpret_cast<const char*>(slice.begin()), slice.size());
}

constexpr char kUsage[] =
    "usage: demo_client [--target=HOST:PORT] [--calls=N] [--concurrency=N]\n"
    "  Sends unary calls and a bidi stream through poolside, checks every echo,\n"
    "  then asks poolside's admin service how the pool is doing.\n"
    "  --target=HOST:PORT  poolside's listen address (default 127.0.0.1:15001)\n"
    "  --calls=N           unary calls (default 2000)\n"
    "  --concurrency=N     unary calls in flight (default 64)\n"
    "  --version           print the version and exit\n";

// One unary call over the generic stub, blocking; true if the echo matched.
bool EchoOnce(grpc::GenericStub& stub, const std::string& text) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  grpc::Status status;
  grpc::ByteBuffer response;
  const grpc::ByteBuffer request = ToBuffer(text);
  stub.UnaryCall(&context, "/demo.Echo/Say", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mutex);
                   status = std::move(s);
                   done = true;
                   done_cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mutex);
  done_cv.wait(lock, [&] { return done; });
  return status.ok() && ToString(response) == text;
}

}  // namespace

int main(int argc, char** argv) {
  const poolside::demo::Flags flags(
      argc, argv, "demo_client", kUsage,
      {{"target", "127.0.0.1:15001"}, {"calls", "2000"}, {"concurrency", "64"}});
  const std::string target = flags.Get("target");
  const int calls = flags.GetInt("calls", 0, 100000000);
  const int concurrency = flags.GetInt("concurrency", 1, 100000);

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::fprintf(stderr, "demo_client: cannot connect to poolside at %s\n", target.c_str());
    return 1;
  }
  grpc::GenericStub stub(channel);

  std::printf("demo_client: %d unary calls, %d at a time, through poolside at %s\n", calls,
              concurrency, target.c_str());
  std::atomic<int> next{0};
  std::atomic<int> failed{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < calls; i = next++) {
        if (!EchoOnce(stub, "hello #" + std::to_string(i))) ++failed;
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("demo_client: %d ok, %d failed, %.0f calls/s\n", calls - failed.load(), failed.load(),
              calls / seconds);

  // A bidi stream: ten messages out, ten echoes back, in order.
  grpc::ClientContext stream_context;
  grpc::CompletionQueue queue;
  auto chat = stub.PrepareCall(&stream_context, "/demo.Echo/Chat", &queue);
  void* tag = nullptr;
  bool ok = false;
  chat->StartCall(reinterpret_cast<void*>(1));
  queue.Next(&tag, &ok);
  int echoed = 0;
  for (int i = 0; i < 10 && ok; ++i) {
    const std::string text = "message " + std::to_string(i);
    chat->Write(ToBuffer(text), reinterpret_cast<void*>(2));
    queue.Next(&tag, &ok);
    grpc::ByteBuffer reply;
    chat->Read(&reply, reinterpret_cast<void*>(3));
    queue.Next(&tag, &ok);
    if (ok && ToString(reply) == text) ++echoed;
  }
  chat->WritesDone(reinterpret_cast<void*>(4));
  queue.Next(&tag, &ok);
  grpc::Status chat_status;
  chat->Finish(&chat_status, reinterpret_cast<void*>(5));
  queue.Next(&tag, &ok);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  std::printf("demo_client: bidi stream echoed %d/10 messages in order, status %s\n", echoed,
              chat_status.ok() ? "OK" : chat_status.error_message().c_str());

  auto admin = poolside::admin::v1::PoolAdmin::NewStub(channel);
  grpc::ClientContext health_context;
  poolside::admin::v1::HealthCheckResponse health;
  grpc::Status health_status =
      admin->HealthCheck(&health_context, poolside::admin::v1::HealthCheckRequest(), &health);
  grpc::ClientContext metrics_context;
  poolside::admin::v1::GetConnectionPoolMetricsResponse metrics;
  grpc::Status metrics_status = admin->GetConnectionPoolMetrics(
      &metrics_context, poolside::admin::v1::GetConnectionPoolMetricsRequest(), &metrics);
  if (!health_status.ok() || !metrics_status.ok()) {
    std::fprintf(stderr, "demo_client: admin service failed: %s\n",
                 (health_status.ok() ? metrics_status : health_status).error_message().c_str());
    return 1;
  }
  std::printf("\npoolside pool health: %s (%s)\n", health.status().c_str(),
              health.message().c_str());
  std::printf("pool metrics: total=%lu active=%lu available=%lu connection_errors=%lu\n",
              static_cast<unsigned long>(metrics.total_connections()),
              static_cast<unsigned long>(metrics.active_connections()),
              static_cast<unsigned long>(metrics.available_connections()),
              static_cast<unsigned long>(metrics.connection_errors()));
  std::printf("  %-8s %-12s %-12s %-8s\n", "channel", "state", "calls", "age(s)");
  for (const auto& channel_metrics : metrics.channels()) {
    std::printf(
        "  %-8u %-12s %-12lu %-8.1f\n", channel_metrics.index(), channel_metrics.state().c_str(),
        static_cast<unsigned long>(channel_metrics.calls_started()), channel_metrics.age_seconds());
  }
  return failed.load() == 0 && echoed == 10 && chat_status.ok() ? 0 : 1;
}
