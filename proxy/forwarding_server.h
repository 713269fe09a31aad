// The listening side of poolside: a grpc::Server whose generic service
// forwards every method it does not otherwise serve to the upstream pool.
//
// The forwarding form is chosen here, once: completion queues, one thread per
// queue, with each call kept on the queue that accepted it (see ProxyCall).
// Measured against the callback API this spends about a quarter less CPU per
// call, and it makes every call single-threaded.
//
// Ownership and threading: owned by main; owns the grpc::Server, its
// completion queues and one thread per queue, which runs every call accepted
// on that queue. Start and Shutdown are called from one thread (main).
#ifndef POOLSIDE_PROXY_FORWARDING_SERVER_H_
#define POOLSIDE_PROXY_FORWARDING_SERVER_H_

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "metrics/poolside_metrics.h"
#include "pool/channel_pool.h"
#include "pool/queue_event.h"
#include "proxy/local_service.h"
#include "proxy/proxy_call.h"
#include "screen/screened_listener.h"

namespace poolside {

struct ProxyOptions {
  std::string listen_addr;
  int64_t max_message_bytes = 64 << 20;
  absl::Duration connection_timeout = absl::Seconds(30);
  // Upstream calls wait for their connection (bounded by
  // connection_timeout), so that grpc's transparent retry can outlast a
  // reconnect; set with UpstreamChannelOptions::transparent_retries.
  bool wait_for_ready = true;
  // ProxyCall::HoldsReadsFor; Config::hold_pingpong_reads.
  bool hold_pingpong_reads = true;
  // Completion-queue threads; at least 1.
  int threads = 1;
  // 0 means no limit.
  int max_concurrent_requests = 0;
  int max_pending_requests = 1024;

  // Hostile peers (SECURITY.md). With the frame screen on, poolside owns the
  // listening socket and relays each app connection to grpc through a
  // FrameScreen; off, grpc listens itself.
  bool frame_screen = true;
  FrameScreenLimits screen_limits;
  int max_app_connections = 1000;
  // SETTINGS_MAX_CONCURRENT_STREAMS advertised to each app connection.
  int max_streams_per_app_connection = 1000;
  // Upstream calls one app connection may hold at once (its fair share of
  // the pool's streams); further ones wait for its own calls to end. 0 means
  // no bound beyond max_streams_per_app_connection.
  int64_t max_upstream_calls_per_app_connection = 0;
  // grpc::ResourceQuota of the listening server; 0 means grpc's default.
  int64_t memory_limit_bytes = 0;
};

class ForwardingServer {
 public:
  // `pool` and `metrics` (null: no request metrics) must outlive the server.
  ForwardingServer(ProxyOptions options, ChannelPool& pool, PoolsideMetrics* metrics);
  ~ForwardingServer();
  ForwardingServer(const ForwardingServer&) = delete;
  ForwardingServer& operator=(const ForwardingServer&) = delete;

  // Binds and starts serving. Fails (one-line message) when the address is in
  // use or invalid. `local` (may be null) answers the methods it serves
  // instead of their being forwarded; it must outlive the server.
  absl::Status Start(LocalService* local);

  // Stops accepting, lets calls in flight finish until `grace` has passed,
  // cancels the rest, and stops the threads.
  void Shutdown(absl::Duration grace);

  // The port actually bound (useful when listening on port 0).
  int port() const { return selected_port_; }

 private:
  // Runs ProxyCall::CheckUpstreamCalls on one queue every
  // kConnectionCheckInterval, riding that queue. Confined to its thread.
  class ConnectionCheck final : public QueueEvent {
   public:
    ConnectionCheck(ForwardingServer& server, QueueContext& queue);
    void Arm();
    void OnQueueEvent(bool ok) override;

   private:
    ForwardingServer& server_;
    QueueContext& queue_;
    grpc::Alarm alarm_;
  };

  // Start's steps, in order.
  // Listens through the frame screen (bound here) or lets grpc listen.
  absl::Status AddListener(grpc::ServerBuilder& builder);
  // The app side's limits, the generic service and one queue per thread.
  void ConfigureAppSide(grpc::ServerBuilder& builder);
  // Fails if nothing ended up listening.
  absl::Status BuildAndStartServer(grpc::ServerBuilder& builder);
  // The queue's shared context, its first accepts and its connection check.
  void StartQueue(grpc::ServerCompletionQueue& completion_queue, LocalService* local);

  void ServeQueue(QueueContext& queue);
  int64_t LiveCalls() const;
  // Stops the connection checks; returns once none is armed.
  void StopConnectionChecks();

  const ProxyOptions options_;
  ChannelPool& pool_;
  PoolsideMetrics* const metrics_;
  grpc::AsyncGenericService generic_service_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> completion_queues_;
  std::vector<std::unique_ptr<QueueContext>> call_queues_;
  std::vector<std::unique_ptr<ConnectionCheck>> connection_checks_;
  std::atomic<bool> stopping_checks_{false};
  std::atomic<int> armed_checks_{0};
  // One per queue, each confined to its queue's thread.
  std::vector<std::unique_ptr<CallRecorder>> recorders_;
  CallLimits limits_;
  // Null when max_upstream_calls_per_app_connection is 0.
  std::unique_ptr<FairShare> fair_share_;
  std::unique_ptr<ScreenedListener> listener_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  int selected_port_ = 0;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_FORWARDING_SERVER_H_
