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
// What it does not do (yet): TLS, pool health, metrics, drain, limits, DNS
// re-resolution, a call that waits for a connection. A call that arrives with
// no upstream connection up is answered at once, trailers-only, UNAVAILABLE.
// It serves bench/frame_hop, the "frame-hop" yardstick of bench/compare.
//
// Threading: Run() drives everything on the calling thread (one epoll loop);
// Stop() may be called from any thread.
#ifndef POOLSIDE_RELAY_FRAME_RELAY_H_
#define POOLSIDE_RELAY_FRAME_RELAY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace poolside::relay {

struct FrameRelayOptions {
  // The upstream, an IPv4 or IPv6 literal and a port (plaintext HTTP/2).
  std::string upstream_host = "127.0.0.1";
  int upstream_port = 0;
  // Where apps connect; port 0 picks a free one (FrameRelay::port()).
  std::string listen_host = "127.0.0.1";
  int listen_port = 0;
  // Upstream connections; each new stream goes to the one with the fewest
  // streams open.
  int upstream_connections = 1;
  // Each stream's receive window, both sides: what one stream may buffer
  // in the relay per direction.
  int32_t stream_window_bytes = 1 << 20;
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

  // Opaque: the event loop and its connections (frame_relay.cc).
  class Loop;

 private:
  explicit FrameRelay(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace poolside::relay

#endif  // POOLSIDE_RELAY_FRAME_RELAY_H_
