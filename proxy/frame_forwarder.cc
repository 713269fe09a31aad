#include "proxy/frame_forwarder.h"

#include <grpcpp/support/status.h>

#include <future>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "config/address.h"
#include "metrics/call_recorder.h"
#include "metrics/hostile_peer.h"

namespace poolside {

namespace {

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
  MetricsObserver(std::unique_ptr<CallRecorder> recorder, HostilePeerCounter& hostile_peers)
      : recorder_(std::move(recorder)), hostile_peers_(hostile_peers) {}

  uint32_t CallStarted(absl::string_view path) override {
    recorder_->CallStarted();
    return recorder_->Method(path);
  }
  void CallEnded(uint32_t method, int grpc_status, absl::Duration elapsed) override {
    recorder_->RecordCall(method, static_cast<grpc::StatusCode>(grpc_status), elapsed);
    recorder_->CallEnded();
  }
  void AppConnectionCut(relay::AppCutReason reason) override {
    hostile_peers_.Count(PeerSide::kApp, HostileReasonOf(reason));
  }

 private:
  std::unique_ptr<CallRecorder> recorder_;
  HostilePeerCounter& hostile_peers_;
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
  for (const BackendAddress& backend : options.backends) {
    absl::StatusOr<HostPort> address = ParseHostPort(backend.label);
    if (!address.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GRPC_FORWARDER=frames needs IP addresses, not ", backend.label));
    }
    relay_options.upstreams.push_back({address->host, address->port});
  }
  relay_options.upstream_connections = options.connections;
  relay_options.authority = options.authority;
  relay_options.connection_wait = options.connection_wait;
  relay_options.max_streams_per_app_connection =
      static_cast<uint32_t>(options.max_streams_per_app_connection);

  std::unique_ptr<FrameForwarder> forwarder(new FrameForwarder);
  forwarder->connections_ = options.connections;
  if (metrics != nullptr) {
    forwarder->observer_ = std::make_unique<MetricsObserver>(metrics->NewCallRecorder(),
                                                           metrics->hostile_peers());
    relay_options.observer = forwarder->observer_.get();
  }
  absl::StatusOr<std::unique_ptr<relay::FrameRelay>> relay =
      relay::FrameRelay::Create(relay_options);
  if (!relay.ok()) return relay.status();
  forwarder->relay_ = *std::move(relay);
  std::promise<void> returned;
  forwarder->run_returned_ = returned.get_future();
  forwarder->thread_ =
      std::thread([relay = forwarder->relay_.get(), returned = std::move(returned)]() mutable {
        relay->Run();
        returned.set_value();
      });
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
    channel.healthy = upstream.connected;
    channel.outstanding_calls = upstream.open_streams;
    channel.calls_started = upstream.streams_started;
    channel.errors = upstream.errors;
    snapshot.connection_errors += upstream.errors;
    snapshot.channels.push_back(channel);
    BackendSnapshot& backend = backends[upstream.address];
    backend.address = upstream.address;
    backend.active_connections += upstream.connected ? 1 : 0;
    backend.connecting += upstream.connected ? 0 : 1;
    backend.calls_started += upstream.streams_started;
  }
  for (auto& [address, backend] : backends) snapshot.backends.push_back(std::move(backend));
  snapshot.connections_created = stats.upstreams.size();
  return snapshot;
}

void FrameForwarder::Shutdown(absl::Duration grace) {
  if (!thread_.joinable()) return;
  relay_->Drain();
  run_returned_.wait_for(absl::ToChronoNanoseconds(grace));
  relay_->Stop();
  thread_.join();
}

}  // namespace poolside
