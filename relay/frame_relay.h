// FrameRelay forwards gRPC calls as HTTP/2 frames instead of as grpc++ calls:
// each app stream's HEADERS, DATA and trailers are passed to a stream on one
// of a few upstream connections, and the upstream's back, without decoding a
// gRPC message. It is the measured answer to issue 10's question of what a
// hop costs below grpc++ 1.51: poolside's forwarder runs two grpc core calls
// per stream (eight batches and two call arenas per unary call); this relay
// runs two nghttp2 streams and one small RelayStream.
//
// What it keeps of the transparency contract: every header and trailer goes
// through as sent (nghttp2 refuses what HTTP/2 forbids, with a stream reset);
// messages are bytes, split however the peers split them; cancellation both
// ways (RST_STREAM with the peer's code); flow control end to end (an app
// stream's window opens only as its bytes are written upstream, and the other
// way round), so memory stays at one window per stream and direction.
//
// A stream the upstream refused (RST_STREAM REFUSED_STREAM, or above the last
// stream id of its GOAWAY) provably never reached it, so the relay sends it
// again on another connection, as grpc's transparent retry does: the request
// headers and the bytes written upstream are kept until the upstream answers
// with headers (at most kMaxReplayBytes; a longer request is not replayed).
//
// A call that finds no upstream connection up waits connection_wait for one,
// then is answered here, trailers-only, UNAVAILABLE.
//
// The upstream's addresses may change while it runs (SetUpstreams, as DNS
// changes them): a connection whose address is no longer listed is replaced
// at once by one to a listed address, and closes once its streams are done.
//
// Each upstream connection may be probed with grpc.health.v1.Health/Check
// (HealthProbeOptions): one that fails `unhealthy_threshold` probes in a row
// takes new streams only while no healthy one is up.
//
// Upstream connections may speak TLS (relay/upstream_tls.h): certificate and
// name checked, ALPN h2, client certificates for mutual TLS; when the files
// change, every connection is replaced (each old one finishing its streams).
//
// It serves bench/frame_hop, the "frame-hop" yardstick of bench/compare.
//
// Threading: Run() drives everything on the calling thread (one epoll loop);
// Stop(), Drain() and Stats() may be called from any thread. A CallObserver
// is called on Run()'s thread only.
#ifndef POOLSIDE_RELAY_FRAME_RELAY_H_
#define POOLSIDE_RELAY_FRAME_RELAY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "relay/upstream_tls.h"

namespace poolside::relay {

struct UpstreamAddress {
  // An IPv4 or IPv6 literal.
  std::string host;
  int port = 0;
};

// Why the relay cut an app connection off. nghttp2 (Debian's 1.52 with the
// CVE-2023-44487 and CVE-2024-28182 fixes) detects each; the relay names it.
enum class AppCutReason {
  // Streams reset faster than nghttp2's reset rate limit allows.
  kRapidReset,
  // A header block spread over more CONTINUATION frames than nghttp2 keeps.
  kHeaderBlockTooLarge,
  // More PING or SETTINGS frames than their acknowledgements can drain.
  kPingFlood,
  kSettingsFlood,
  // Any other breach of HTTP/2 that ends the connection.
  kMalformed,
  // Closed as it was accepted: max_app_connections were open.
  kTooManyConnections,
};

// Which circuit-breaking limit turned a call away.
enum class CallLimit {
  // FrameRelayOptions::max_concurrent_calls: answered RESOURCE_EXHAUSTED.
  kConcurrent,
  // FrameRelayOptions::max_waiting_calls: answered UNAVAILABLE.
  kWaiting,
};

// Told of every call the relay forwards, and of every app connection it cuts
// off, on the relay's thread.
class CallObserver {
 public:
  virtual ~CallObserver() = default;
  // A call's request headers arrived; `path` is its :path. The result comes
  // back to CallEnded.
  virtual uint32_t CallStarted(absl::string_view path) = 0;
  // The call is over on the app's side. `grpc_status` is what the app was
  // told: the upstream's grpc-status, 14 for an answer made here (no
  // upstream), 1 for a call the app cancelled, the code grpc clients map a
  // relayed RST_STREAM to, or 2 when none was seen.
  virtual void CallEnded(uint32_t started, int grpc_status, absl::Duration elapsed) = 0;
  // An app connection was cut off for `reason` (after a GOAWAY where the
  // session could still send one).
  virtual void AppConnectionCut(AppCutReason reason) = 0;
  // A gRPC message of `length` bytes began on its way to the upstream
  // (`upward`) or to the app.
  virtual void MessageRelayed(bool upward, uint32_t length) = 0;
  // A call was turned away by `limit` (CallStarted and CallEnded are told of
  // it too).
  virtual void CallOverLimit(CallLimit limit) = 0;
};

// grpc.health.v1 probes, sent by the relay itself on each upstream
// connection, as poolside's HealthMonitor sends them over each grpc channel.
struct HealthProbeOptions {
  // Zero: no probes (a connection is healthy while it is up).
  absl::Duration interval = absl::ZeroDuration();
  // The grpc.health.v1 service name; empty means the server as a whole.
  std::string service;
  // A probe not answered within this fails.
  absl::Duration timeout = absl::Seconds(1);
  // Consecutive failed probes that make a connection unhealthy; one passing
  // probe makes it healthy again.
  int unhealthy_threshold = 2;
};

struct FrameRelayOptions {
  // The upstream's addresses (plaintext HTTP/2); the connections are split
  // evenly over them (the first ones take one more when they do not divide).
  // Empty: none connects until SetUpstreams gives addresses.
  std::vector<UpstreamAddress> upstreams;
  // Where apps connect; port 0 picks a free one (FrameRelay::port()).
  std::string listen_host = "127.0.0.1";
  int listen_port = 0;
  // Upstream connections; each new stream goes to the one with the fewest
  // streams open.
  int upstream_connections = 1;
  // Each stream's receive window, both sides: what one stream may buffer
  // in the relay per direction.
  int32_t stream_window_bytes = 1 << 20;
  // How long a call that finds no upstream connection up waits for one
  // before it is answered UNAVAILABLE; zero answers at once.
  absl::Duration connection_wait = absl::ZeroDuration();
  // Circuit breaking, as the grpc++ forwarder does it: calls forwarded at
  // once (GRPC_MAX_CONCURRENT_REQUESTS; 0: no limit), past which a call is
  // answered RESOURCE_EXHAUSTED; and calls waiting for a connection
  // (GRPC_MAX_PENDING_REQUESTS), past which UNAVAILABLE.
  int max_concurrent_calls = 0;
  int max_waiting_calls = 1024;
  // The longest gRPC message either side may send (GRPC_MAX_MESSAGE_BYTES):
  // a longer one ends its call RESOURCE_EXHAUSTED, as grpc ends it. Zero:
  // no limit.
  uint32_t max_message_bytes = 0;
  // App connections open at once (GRPC_MAX_APP_CONNECTIONS); further ones
  // are closed as they are accepted. Zero: no limit. Out of descriptors,
  // accepting pauses for 100 ms instead of spinning.
  int max_app_connections = 0;
  // SETTINGS_MAX_CONCURRENT_STREAMS offered to each app connection.
  uint32_t max_streams_per_app_connection = 1 << 20;
  // Replaces each request's :authority when not empty (as grpc's channel
  // names its target, not the app's view of the relay).
  std::string authority;
  // Null: nobody is told.
  CallObserver* observer = nullptr;
  // Called on Run()'s thread when an upstream connection is lost or fails to
  // connect (its address may have gone); may be empty.
  std::function<void()> on_upstream_lost;
  // An upstream that answers UNIMPLEMENTED has no health service: probing
  // stops, and connections are judged by being up.
  HealthProbeOptions health;
  // TLS to the upstream; its files are looked at every credential_poll.
  UpstreamTlsOptions tls;
  absl::Duration credential_poll = absl::Seconds(2);
  // A connect (TCP, and the TLS handshake) not done within this is given up
  // and tried again.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Told what an operator wants to know, on Run()'s thread: problems (an
  // upstream failing to connect, and why, once until it connects again;
  // TLS files that do not load) with `problem` set, and events (connected
  // again, TLS files rolled over). May be empty.
  std::function<void(bool problem, const std::string& line)> log;
};

// A moment's view of the relay, for gauges and readiness.
struct FrameRelayStats {
  struct Upstream {
    std::string address;
    bool connected = false;
    // Passing health probes (always, when none are sent).
    bool healthy = true;
    int64_t open_streams = 0;
    uint64_t streams_started = 0;
    // Connects that failed and connections lost.
    uint64_t errors = 0;
  };
  std::vector<Upstream> upstreams;
  int64_t app_connections = 0;
  uint64_t replayed_streams = 0;
};

class FrameRelay {
 public:
  // Binds the listening socket and connects the upstream connections (a
  // connection that fails is retried from Run()).
  static absl::StatusOr<std::unique_ptr<FrameRelay>> Create(const FrameRelayOptions& options);
  ~FrameRelay();

  FrameRelay(const FrameRelay&) = delete;
  FrameRelay& operator=(const FrameRelay&) = delete;

  // The listening port.
  int port() const;
  // Relays until Stop(); returns when every connection is closed.
  void Run();
  // Thread-safe; Run() returns soon after.
  void Stop();
  // Thread-safe: stops accepting and sends each app connection a GOAWAY;
  // the streams already open go on, and Run() returns when the last app
  // connection has closed (or at Stop()).
  void Drain();
  // Thread-safe.
  FrameRelayStats Stats() const;
  // Thread-safe: the upstream's addresses from now on (not empty; IP
  // literals). The connections are split over them again, moving as few as
  // it can: a connection moved takes no new stream and is closed once its
  // streams end; a connection to its new address takes its place at once. InvalidArgument, and
  // nothing changes, for an empty list or one that is not all IP literals.
  absl::Status SetUpstreams(const std::vector<UpstreamAddress>& upstreams);
  // The most request bytes kept for a replay.
  static constexpr size_t kMaxReplayBytes = 256 << 10;

  // Opaque: the event loop and its connections (frame_relay.cc).
  class Loop;

 private:
  explicit FrameRelay(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace poolside::relay

#endif  // POOLSIDE_RELAY_FRAME_RELAY_H_
