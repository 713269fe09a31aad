#include "proxy/frame_forwarder.h"

#include <grpcpp/support/status.h>
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <future>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "config/address.h"
#include "metrics/call_recorder.h"
#include "metrics/hostile_peer.h"

namespace poolside {

namespace {

absl::StatusOr<std::vector<relay::UpstreamAddress>> RelayUpstreams(
    const std::vector<BackendAddress>& backends) {
  std::vector<relay::UpstreamAddress> upstreams;
  for (const BackendAddress& backend : backends) {
    absl::StatusOr<HostPort> address = ParseHostPort(backend.label);
    if (!address.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GRPC_FORWARDER=frames needs IP addresses, not ", backend.label));
    }
    upstreams.push_back({address->host, address->port});
  }
  return upstreams;
}

HostileReason HostileReasonOf(relay::AppCutReason reason) {
  switch (reason) {
    case relay::AppCutReason::kRapidReset:
      return HostileReason::kRapidReset;
    case relay::AppCutReason::kHeaderBlockTooLarge:
      return HostileReason::kHeaderBlockTooLarge;
    case relay::AppCutReason::kPingFlood:
      return HostileReason::kPingFlood;
    case relay::AppCutReason::kSettingsFlood:
      return HostileReason::kSettingsFlood;
    case relay::AppCutReason::kTooManyConnections:
      return HostileReason::kTooManyConnections;
    case relay::AppCutReason::kMalformed:
      break;
  }
  return HostileReason::kMalformed;
}

}  // namespace

// Request metrics from the relay's thread, through a recorder that thread
// alone uses (CallRecorder's rule), and the app connections the relay cuts
// off, as poolside_hostile_peer_total{side="app"}.
class FrameForwarder::MetricsObserver : public relay::CallObserver {
 public:
  explicit MetricsObserver(PoolsideMetrics& metrics)
      : recorder_(metrics.NewCallRecorder()), metrics_(metrics) {}

  uint32_t CallStarted(absl::string_view path) override {
    recorder_->CallStarted();
    return recorder_->Method(path);
  }
  void CallEnded(uint32_t method, int grpc_status, absl::Duration elapsed) override {
    recorder_->RecordCall(method, static_cast<grpc::StatusCode>(grpc_status), elapsed);
    recorder_->CallEnded();
  }
  void AppConnectionCut(relay::AppCutReason reason) override {
    metrics_.hostile_peers().Count(PeerSide::kApp, HostileReasonOf(reason));
  }
  void CallOverLimit(relay::CallLimit limit) override {
    (limit == relay::CallLimit::kConcurrent ? metrics_.concurrency_overflows()
                                            : metrics_.pending_overflows())
        .Increment();
  }
  void MessageRelayed(bool upward, uint32_t length) override {
    recorder_->RecordMessage(upward ? Direction::kUpstream : Direction::kDownstream, length);
  }

 private:
  std::unique_ptr<CallRecorder> recorder_;
  PoolsideMetrics& metrics_;
};

// The AddressTracker's view of the relay: each new address set becomes the
// relay's (which retires the connections to addresses that went), and the
// lookups' outcomes are kept for Snapshot().
class FrameForwarder::RelayAddresses : public AddressFollower {
 public:
  // Before the tracker starts.
  void Attach(relay::FrameRelay* relay) { relay_ = relay; }

  bool Rebalance(const std::vector<BackendAddress>& backends, RebalanceTiming) override {
    absl::StatusOr<std::vector<relay::UpstreamAddress>> upstreams = RelayUpstreams(backends);
    absl::Status applied = upstreams.ok() ? relay_->SetUpstreams(*upstreams) : upstreams.status();
    if (!applied.ok())
      spdlog::warn("frames: addresses not applied: {}", std::string(applied.message()));
    // The relay settles by itself: nothing to call back for.
    return false;
  }
  void RecordResolution(bool failed, bool set_changed) override {
    failures_.fetch_add(failed ? 1 : 0, std::memory_order_relaxed);
    changes_.fetch_add(set_changed ? 1 : 0, std::memory_order_relaxed);
    failing_.store(failed, std::memory_order_relaxed);
  }
  void AddTo(PoolSnapshot& snapshot) const {
    snapshot.address_set_changes = changes_.load(std::memory_order_relaxed);
    snapshot.resolution_failures = failures_.load(std::memory_order_relaxed);
    snapshot.resolution_failing = failing_.load(std::memory_order_relaxed);
  }

 private:
  relay::FrameRelay* relay_ = nullptr;
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> changes_{0};
  std::atomic<bool> failing_{false};
};

absl::StatusOr<std::unique_ptr<FrameForwarder>> FrameForwarder::Start(FrameForwarderOptions options,
                                                                      PoolsideMetrics* metrics) {
  relay::FrameRelayOptions relay_options;
  absl::StatusOr<HostPort> listen = ParseHostPort(options.listen_addr);
  if (!listen.ok()) return listen.status();
  relay_options.listen_host = listen->host == "localhost" ? "127.0.0.1" : listen->host;
  if (relay_options.listen_host.empty() || relay_options.listen_host == "*") {
    relay_options.listen_host = "0.0.0.0";
  }
  relay_options.listen_port = listen->port;

  std::unique_ptr<FrameForwarder> forwarder(new FrameForwarder);
  forwarder->addresses_ = std::make_unique<RelayAddresses>();
  forwarder->initial_backends_ = std::move(options.backends);
  if (options.resolver != nullptr) {
    forwarder->tracker_ = std::make_unique<AddressTracker>(
        *forwarder->addresses_, std::move(options.resolver), options.tracking);
    forwarder->initial_backends_ = forwarder->tracker_->ResolveInitial();
    relay_options.on_upstream_lost = [tracker = forwarder->tracker_.get()] {
      tracker->RequestResolve();
    };
  }
  absl::StatusOr<std::vector<relay::UpstreamAddress>> upstreams =
      RelayUpstreams(forwarder->initial_backends_);
  if (!upstreams.ok()) return upstreams.status();
  relay_options.upstreams = *std::move(upstreams);
  relay_options.upstream_connections = options.connections;
  relay_options.authority = options.authority;
  relay_options.connection_wait = options.connection_wait;
  relay_options.max_streams_per_app_connection =
      static_cast<uint32_t>(options.max_streams_per_app_connection);
  relay_options.health = options.health;
  relay_options.tls = options.tls;
  relay_options.connect_timeout = options.connect_timeout;
  relay_options.log = [](bool problem, const std::string& line) {
    spdlog::log(problem ? spdlog::level::warn : spdlog::level::info, "frames: {}", line);
  };
  relay_options.max_message_bytes = options.max_message_bytes;
  relay_options.max_concurrent_calls = options.max_concurrent_requests;
  relay_options.max_waiting_calls = options.max_pending_requests;
  relay_options.max_app_connections = options.max_app_connections;

  forwarder->connections_ = options.connections;
  if (metrics != nullptr) {
    forwarder->observer_ = std::make_unique<MetricsObserver>(*metrics);
    relay_options.observer = forwarder->observer_.get();
  }
  absl::StatusOr<std::unique_ptr<relay::FrameRelay>> relay =
      relay::FrameRelay::Create(relay_options);
  if (!relay.ok()) return relay.status();
  forwarder->relay_ = *std::move(relay);
  forwarder->addresses_->Attach(forwarder->relay_.get());
  std::promise<void> returned;
  forwarder->run_returned_ = returned.get_future();
  forwarder->thread_ =
      std::thread([relay = forwarder->relay_.get(), returned = std::move(returned)]() mutable {
        pthread_setname_np(pthread_self(), "ps-relay");
        relay->Run();
        returned.set_value();
      });
  if (forwarder->tracker_ != nullptr) forwarder->tracker_->Start();
  return forwarder;
}

FrameForwarder::~FrameForwarder() { Shutdown(absl::ZeroDuration()); }

PoolSnapshot FrameForwarder::Snapshot() const {
  PoolSnapshot snapshot;
  snapshot.size = snapshot.min_size = snapshot.max_size = snapshot.recommended_size = connections_;
  const relay::FrameRelayStats stats = relay_->Stats();
  std::map<std::string, BackendSnapshot> backends;
  for (size_t i = 0; i < stats.upstreams.size(); ++i) {
    const relay::FrameRelayStats::Upstream& upstream = stats.upstreams[i];
    ChannelSnapshot channel;
    channel.index = static_cast<int>(i);
    channel.phase = SlotPhase::kActive;
    channel.backend = upstream.address;
    channel.state = upstream.connected ? GRPC_CHANNEL_READY : GRPC_CHANNEL_TRANSIENT_FAILURE;
    channel.healthy = upstream.connected && upstream.healthy;
    channel.outstanding_calls = upstream.open_streams;
    channel.calls_started = upstream.streams_started;
    channel.errors = upstream.errors;
    snapshot.connection_errors += upstream.errors;
    snapshot.channels.push_back(channel);
    if (upstream.address.empty()) continue;  // No address found yet.
    BackendSnapshot& backend = backends[upstream.address];
    backend.address = upstream.address;
    backend.active_connections += upstream.connected ? 1 : 0;
    backend.connecting += upstream.connected ? 0 : 1;
    backend.calls_started += upstream.streams_started;
  }
  for (auto& [address, backend] : backends) snapshot.backends.push_back(std::move(backend));
  snapshot.connections_created = stats.upstreams.size();
  addresses_->AddTo(snapshot);
  return snapshot;
}

void FrameForwarder::Shutdown(absl::Duration grace) {
  if (!thread_.joinable()) return;
  // It calls the relay: it stops first.
  if (tracker_ != nullptr) tracker_->Shutdown();
  relay_->Drain();
  run_returned_.wait_for(absl::ToChronoNanoseconds(grace));
  relay_->Stop();
  thread_.join();
}

}  // namespace poolside
