// ScreenedListener owns poolside's app-side listening socket so that every
// byte an app sends passes a FrameScreen before grpc reads it. Each accepted
// connection is handed to the grpc::Server as one end of a socketpair
// (grpc::AddInsecureChannelFromFd); one relay thread copies bytes between the
// app's socket and the other end, reading the frame headers as they pass.
// A connection that breaks a FrameScreen rule gets a GOAWAY with
// ENHANCE_YOUR_CALM (when grpc's own output is between frames, which it
// nearly always is), is counted and logged, and is closed: grpc then sees its
// side of the pair close and cancels that connection's calls, which cancels
// their upstream calls one by one — never the pooled connections themselves.
//
// It also bounds the number of app connections (GRPC_MAX_APP_CONNECTIONS),
// and pauses accepting instead of spinning when the process is out of file
// descriptors (the many-connections problem of CVE-2023-4785).
//
// Memory: two buffers of kRelayBufferBytes per connection; a buffer is refilled
// only once it has been written out, so a slow reader on either side slows
// the writer on the other (TCP flow control) instead of growing a queue.
//
// Ownership and threading: the ForwardingServer owns one. Bind, Start,
// StopAccepting and Shutdown are called from one thread (main); everything
// else runs on the relay thread, which owns the connections.
#ifndef POOLSIDE_SCREEN_SCREENED_LISTENER_H_
#define POOLSIDE_SCREEN_SCREENED_LISTENER_H_

#include <grpcpp/server.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "metrics/hostile_peer.h"
#include "screen/frame_screen.h"

namespace poolside {

struct ScreenOptions {
  // host:port, [v6]:port or unix:path.
  std::string listen_addr;
  FrameScreenLimits limits;
  // App connections open at once; further ones are closed at once.
  int max_connections = 1000;
};

class ScreenedListener {
 public:
  // `counter` (may be null) must outlive the listener.
  ScreenedListener(ScreenOptions options, HostilePeerCounter* counter);
  ~ScreenedListener();
  ScreenedListener(const ScreenedListener&) = delete;
  ScreenedListener& operator=(const ScreenedListener&) = delete;

  // Creates the listening socket. A one-line error if the address is invalid
  // or in use.
  absl::Status Bind();
  // The TCP port bound (0 for unix sockets). REQUIRES: Bind() succeeded.
  int port() const { return port_; }

  // Starts accepting; each connection is added to `server`, which must have
  // been started and must outlive Shutdown().
  void Start(grpc::Server* server);

  // Closes the listening socket; connections open keep being relayed (grpc
  // sends them its GOAWAY while it drains).
  void StopAccepting();

  // Passes on what grpc has written to each connection, as far as the app's
  // socket takes it without waiting; then closes every connection (a FIN
  // first) and stops the relay thread.
  void Shutdown();

  // App connections being relayed. Thread-safe.
  int64_t open_connections() const { return open_connections_.load(std::memory_order_relaxed); }

 private:
  class Relay;

  // Constant after construction.
  const ScreenOptions options_;
  HostilePeerCounter* const counter_;

  int listen_fd_ = -1;
  int port_ = 0;
  std::unique_ptr<Relay> relay_;
  std::thread thread_;
  std::atomic<int64_t> open_connections_{0};
};

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_SCREENED_LISTENER_H_
