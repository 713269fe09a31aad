#include "proxy/forwarding_server.h"

#include <arpa/inet.h>
#include <grpc/support/time.h>
#include <grpcpp/resource_quota.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "config/config.h"

namespace poolside {
namespace {

// Calls waiting to be accepted on each queue, so that a burst of new calls
// does not wait for one accept to be re-armed after another.
constexpr int kAcceptsPerQueue = 4;

// After the server has shut down, how long the queues may take to finish the
// calls they still hold (waiting calls notice within a wait slice).
constexpr absl::Duration kDrainLimit = absl::Seconds(5);

// How often calls waiting for their upstream's answer have their connection
// looked at; their wait is bounded by the connection timeout plus this.
constexpr auto kConnectionCheckInterval = std::chrono::milliseconds(250);

// grpc binds with SO_REUSEPORT, so a port held by another process's socket
// that also set it would be shared silently instead of refused. Probe the
// address with a plain bind first so that "in use" is a clear error.
absl::Status CheckTcpAddressFree(absl::string_view address) {
  if (absl::StartsWith(address, "unix:")) return absl::OkStatus();
  // The grammar config validated GRPC_LISTEN_ADDR with.
  absl::StatusOr<HostPort> host_port = ParseHostPort(address);
  if (!host_port.ok() || host_port->port == 0) {
    return absl::OkStatus();  // grpc reports anything else it cannot bind.
  }
  const std::optional<SocketAddress> resolved = ToSocketAddress(*host_port);
  if (!resolved) return absl::OkStatus();  // A host name: grpc resolves and binds it.
  const sockaddr_storage& storage = resolved->storage;
  const socklen_t length = resolved->length;
  const int fd = socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::OkStatus();
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const int bound = bind(fd, reinterpret_cast<const sockaddr*>(&storage), length);
  const int bind_errno = errno;
  close(fd);
  if (bound == 0) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address, ": ", std::strerror(bind_errno)));
}

}  // namespace

ForwardingServer::ForwardingServer(ProxyOptions options, ChannelPool& pool,
                                   PoolsideMetrics* metrics)
    : options_(std::move(options)), pool_(pool), metrics_(metrics) {
  limits_.concurrent.Configure(options_.max_concurrent_requests,
                               metrics_ != nullptr ? &metrics_->concurrency_overflows() : nullptr);
  limits_.pending.Configure(options_.max_pending_requests,
                            metrics_ != nullptr ? &metrics_->pending_overflows() : nullptr);
  if (options_.max_upstream_calls_per_app_connection > 0) {
    fair_share_ = std::make_unique<FairShare>(options_.max_upstream_calls_per_app_connection);
  }
}

ForwardingServer::~ForwardingServer() { Shutdown(absl::ZeroDuration()); }

absl::Status ForwardingServer::Start(LocalService* local) {
  if (absl::Status free = CheckTcpAddressFree(options_.listen_addr); !free.ok()) return free;
  grpc::ServerBuilder builder;
  if (absl::Status listening = AddListener(builder); !listening.ok()) return listening;
  ConfigureAppSide(builder);
  if (absl::Status started = BuildAndStartServer(builder); !started.ok()) return started;
  for (auto& completion_queue : completion_queues_) StartQueue(*completion_queue, local);
  if (pool_.options().watch_on_caller_queues) {
    std::vector<grpc::CompletionQueue*> queues;
    for (auto& completion_queue : completion_queues_) queues.push_back(completion_queue.get());
    pool_.WatchOn(queues);
  }
  for (auto& queue : call_queues_) {
    threads_.emplace_back([this, queue = queue.get()] {
      pthread_setname_np(pthread_self(), "ps-forward");
      ServeQueue(*queue);
    });
  }
  spdlog::info("proxy: listening on {} with {} forwarding threads{}", options_.listen_addr,
               completion_queues_.size(), listener_ != nullptr ? ", frame screen on" : "");
  return absl::OkStatus();
}

absl::Status ForwardingServer::AddListener(grpc::ServerBuilder& builder) {
  if (!options_.frame_screen) {
    builder.AddListeningPort(options_.listen_addr, grpc::InsecureServerCredentials(),
                             &selected_port_);
    return absl::OkStatus();
  }
  ScreenOptions screen_options;
  screen_options.listen_addr = options_.listen_addr;
  screen_options.limits = options_.screen_limits;
  screen_options.limits.max_streams_before_settings_ack = options_.max_streams_per_app_connection;
  screen_options.max_connections = options_.max_app_connections;
  listener_ = std::make_unique<ScreenedListener>(
      std::move(screen_options), metrics_ != nullptr ? &metrics_->hostile_peers() : nullptr);
  return listener_->Bind();
}

void ForwardingServer::ConfigureAppSide(grpc::ServerBuilder& builder) {
  // Stream hoarding: grpc 1.51 lets one app connection open streams without
  // limit unless told.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             options_.max_streams_per_app_connection);
  if (options_.memory_limit_bytes > 0) {
    grpc::ResourceQuota quota("poolside-app-side");
    quota.Resize(static_cast<size_t>(options_.memory_limit_bytes));
    builder.SetResourceQuota(quota);
  }
  const int max_bytes = static_cast<int>(std::min<int64_t>(options_.max_message_bytes, INT_MAX));
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // As on the upstream channels (channel_factory.cc): no channelz counting.
  builder.AddChannelArgument(GRPC_ARG_ENABLE_CHANNELZ, 0);
  builder.RegisterAsyncGenericService(&generic_service_);
  const int threads = std::max(1, options_.threads);
  for (int i = 0; i < threads; ++i) completion_queues_.push_back(builder.AddCompletionQueue());
}

absl::Status ForwardingServer::BuildAndStartServer(grpc::ServerBuilder& builder) {
  server_ = builder.BuildAndStart();
  if (server_ != nullptr && listener_ != nullptr) {
    selected_port_ = listener_->port();
    // A unix socket has no port; any non-zero value says "listening".
    if (selected_port_ == 0) selected_port_ = -1;
    listener_->Start(server_.get());
  }
  if (server_ == nullptr || selected_port_ == 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen_addr));
  }
  return absl::OkStatus();
}

void ForwardingServer::StartQueue(grpc::ServerCompletionQueue& completion_queue,
                                  LocalService* local) {
  auto queue = std::make_unique<QueueContext>();
  queue->service = &generic_service_;
  queue->queue = &completion_queue;
  queue->pool = &pool_;
  queue->connection_timeout = options_.connection_timeout;
  queue->wait_for_ready = options_.wait_for_ready;
  queue->hold_pingpong_reads = options_.hold_pingpong_reads;
  queue->limits = &limits_;
  queue->local = local;
  queue->fair_share = fair_share_.get();
  if (metrics_ != nullptr) {
    recorders_.push_back(metrics_->NewCallRecorder());
    queue->recorder = recorders_.back().get();
    queue->hostile_peers = &metrics_->hostile_peers();
  }
  for (int i = 0; i < kAcceptsPerQueue; ++i) ProxyCall::AcceptNext(*queue);
  connection_checks_.push_back(std::make_unique<ConnectionCheck>(*this, *queue));
  connection_checks_.back()->Arm();
  call_queues_.push_back(std::move(queue));
}

void ForwardingServer::ServeQueue(QueueContext& queue) {
  void* tag = nullptr;
  bool ok = false;
  while (true) {
    grpc::CompletionQueue::NextStatus status;
    if (!queue.holding.empty()) {
      // Only what is ready now, network included: a held call waits for
      // nothing that has not arrived (ProxyCall::ResumeHeld).
      status = queue.queue->AsyncNext(&tag, &ok, gpr_inf_past(GPR_CLOCK_MONOTONIC));
    } else if (!queue.read_holding.empty()) {
      status =
          queue.queue->AsyncNext(&tag, &ok, absl::ToChronoTime(ProxyCall::ReadHoldDeadline(queue)));
    } else {
      status = queue.queue->Next(&tag, &ok) ? grpc::CompletionQueue::GOT_EVENT
                                            : grpc::CompletionQueue::SHUTDOWN;
    }
    if (status == grpc::CompletionQueue::SHUTDOWN) break;
    if (status == grpc::CompletionQueue::TIMEOUT) {
      ProxyCall::ResumeHeld(queue);
      if (!queue.read_holding.empty()) {
        ProxyCall::ResumeExpiredReadHolds(queue, absl::Now());
      }
      continue;
    }
    if (QueueEvent::IsQueueEventTag(tag)) {
      QueueEvent::Dispatch(tag, ok);
    } else {
      ProxyCall::Dispatch(tag, ok);
    }
    ++queue.events_handled;
    if (!queue.holding.empty()) ProxyCall::ResumeOverdue(queue);
    if (!queue.read_holding.empty()) ProxyCall::ResumeExpiredReadHolds(queue, absl::Now());
  }
}

ForwardingServer::ConnectionCheck::ConnectionCheck(ForwardingServer& server, QueueContext& queue)
    : server_(server), queue_(queue) {}

void ForwardingServer::ConnectionCheck::Arm() {
  server_.armed_checks_.fetch_add(1);
  alarm_.Set(queue_.queue, std::chrono::system_clock::now() + kConnectionCheckInterval, tag());
}

void ForwardingServer::ConnectionCheck::OnQueueEvent(bool /*ok*/) {
  ProxyCall::CheckUpstreamCalls(queue_, absl::Now());
  // Re-armed before it counts as ended, so StopConnectionChecks() never sees
  // zero while one is about to be armed again.
  if (!server_.stopping_checks_.load()) Arm();
  server_.armed_checks_.fetch_sub(1);
}

void ForwardingServer::StopConnectionChecks() {
  stopping_checks_.store(true);
  // The queues are still drained, so every armed check fires within an
  // interval and is not armed again.
  while (armed_checks_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

int64_t ForwardingServer::LiveCalls() const {
  int64_t live = 0;
  for (const auto& queue : call_queues_) live += queue->live_calls.load(std::memory_order_relaxed);
  return live;
}

void ForwardingServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  if (listener_ != nullptr) listener_->StopAccepting();
  // Refuses new calls at once; cancels those still running at the deadline.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  // Every call has ended on the app side; the queues still finish their
  // upstream halves. A queue must not be shut down while its calls can still
  // start operations on it.
  const absl::Time drain_deadline = absl::Now() + kDrainLimit;
  while (LiveCalls() > 0 && absl::Now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (const int64_t live = LiveCalls(); live > 0) {
    spdlog::error("proxy: {} calls still open after shutdown", live);
  }
  // The pool's watches on these queues end within a watch slice; none may
  // be re-armed once a queue is shut down.
  if (pool_.options().watch_on_caller_queues) pool_.Shutdown();
  StopConnectionChecks();
  for (auto& completion_queue : completion_queues_) completion_queue->Shutdown();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  // grpc has sent its GOAWAYs and closed the app connections it could by now.
  if (listener_ != nullptr) listener_->Shutdown();
  server_.reset();
  spdlog::info("proxy: stopped");
}

}  // namespace poolside
