// FrameForwarder serves GRPC_LISTEN_ADDR with relay::FrameRelay instead of a
// grpc::Server when GRPC_FORWARDER=frames: calls are relayed as HTTP/2
// frames over the pool's upstream connections, at a fraction of the grpc++
// forwarder's CPU and memory per call (bench/RESULTS.md, "A frame relay").
//
// A DNS target is followed as the grpc++ pool follows it (AddressTracker):
// resolved every GRPC_DNS_REFRESH_SECS and when a connection is lost, the
// connections spread over the addresses found, a connection to an address
// that has gone finishing its streams before it closes.
//
// Health probes, TLS to the upstream, circuit breaking and
// GRPC_MAX_MESSAGE_BYTES are the relay's own (relay/frame_relay.h). Request
// metrics (poolside_requests_total, the duration histogram,
// poolside_inflight_requests, the message and byte counts), the overflow and
// hostile-peer counters and the pool gauges are recorded as usual.
//
// It is opt-in because it does not do everything the grpc++ forwarder does
// yet (README, "The frame forwarder"): config/variables.cc refuses the
// settings it cannot honour (unix sockets, a pool sizing itself, the fair
// share); outlier ejection, replacing a connection that keeps failing its
// probes, the PoolAdmin gRPC service and the frame screen's rules do not
// apply (nghttp2's own limits do; GRPC_MAX_APP_CONNECTIONS is the relay's).
//
// Threading: Start, Snapshot and Shutdown from any thread; the relay runs on
// a thread of its own.
#ifndef POOLSIDE_PROXY_FRAME_FORWARDER_H_
#define POOLSIDE_PROXY_FRAME_FORWARDER_H_

#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "metrics/poolside_metrics.h"
#include "pool/address_tracker.h"
#include "pool/pool_snapshot.h"
#include "pool/resolver.h"
#include "pool/upstream_target.h"
#include "relay/frame_relay.h"

namespace poolside {

struct FrameForwarderOptions {
  // "host:port" or "[v6]:port" with an IP literal host.
  std::string listen_addr;
  // A fixed target's addresses; connection i goes to the i-th, in turn.
  // Ignored when `resolver` is set.
  std::vector<BackendAddress> backends;
  // A DNS target's resolver: the addresses are looked up at start (a call
  // waits for a connection while none is found) and followed after.
  std::unique_ptr<Resolver> resolver;
  AddressTrackerOptions tracking;
  int connections = 10;
  // How long a call waits for a connection (GRPC_CONNECTION_TIMEOUT_SECS).
  absl::Duration connection_wait = absl::Seconds(30);
  // The :authority sent upstream (GRPC_UPSTREAM_AUTHORITY, or the target's
  // own, as the grpc++ forwarder sends).
  std::string authority;
  int max_streams_per_app_connection = 1000;
  // GRPC_MAX_APP_CONNECTIONS.
  int max_app_connections = 1000;
  // Circuit breaking: GRPC_MAX_CONCURRENT_REQUESTS (0: no limit) and
  // GRPC_MAX_PENDING_REQUESTS.
  int max_concurrent_requests = 0;
  int max_pending_requests = 1024;
  // GRPC_MAX_MESSAGE_BYTES, both ways; 0: no limit.
  uint32_t max_message_bytes = 0;
  // grpc.health.v1 probes on each connection (GRPC_HEALTH_CHECK_*); a zero
  // interval turns them off (GRPC_HEALTH_CHECK_MODE=connectivity).
  relay::HealthProbeOptions health;
  // GRPC_UPSTREAM_TLS and its files.
  relay::UpstreamTlsOptions tls;
  // GRPC_CONNECTION_TIMEOUT_SECS also bounds each connect and handshake.
  absl::Duration connect_timeout = absl::Seconds(30);
};

class FrameForwarder {
 public:
  // Binds, connects and starts relaying. `metrics` may be null (metrics off);
  // it must outlive the FrameForwarder.
  static absl::StatusOr<std::unique_ptr<FrameForwarder>> Start(FrameForwarderOptions options,
                                                               PoolsideMetrics* metrics);
  // The addresses the connections go to (resolved at start, for a DNS
  // target; empty if that lookup failed).
  const std::vector<BackendAddress>& initial_backends() const { return initial_backends_; }
  ~FrameForwarder();
  FrameForwarder(const FrameForwarder&) = delete;
  FrameForwarder& operator=(const FrameForwarder&) = delete;

  // The upstream connections as pool slots, for /pool, /readyz and the
  // gauges.
  PoolSnapshot Snapshot() const;
  // Stops accepting, lets the calls in flight finish for up to `grace`, then
  // ends the rest. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  class MetricsObserver;
  // What the AddressTracker moves: the relay's upstream addresses.
  class RelayAddresses;
  FrameForwarder() = default;

  int connections_ = 0;
  std::vector<BackendAddress> initial_backends_;
  // Declared before tracker_, which calls it.
  std::unique_ptr<RelayAddresses> addresses_;
  // Null for a fixed target. Stopped before the relay goes.
  std::unique_ptr<AddressTracker> tracker_;
  std::unique_ptr<MetricsObserver> observer_;
  std::unique_ptr<relay::FrameRelay> relay_;
  std::thread thread_;
  // Ready once the relay's Run() has returned (the drain is over).
  std::future<void> run_returned_;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_FRAME_FORWARDER_H_
