// ScreenedListener owns poolside's app-side listening socket so that every
// byte an app sends passes a FrameScreen before grpc reads it. Each accepted
// connection goes to the grpc::Server as it is (grpc::AddInsecureChannelFromFd)
// with a ScreenedSocket registered for it: grpc's own reads of the socket
// pass the screen (screen/socket_hooks.h). A connection that breaks a rule
// gets a GOAWAY with ENHANCE_YOUR_CALM (when grpc's output is between
// frames, which it nearly always is) and a FIN, is counted and logged, and
// grpc's read fails: grpc cancels that connection's calls, which cancels
// their upstream calls one by one — never the pooled connections themselves.
//
// It also bounds the number of app connections (GRPC_MAX_APP_CONNECTIONS),
// and pauses accepting instead of spinning when the process is out of file
// descriptors (the many-connections problem of CVE-2023-4785).
//
// Threads: Bind, Start, StopAccepting and Shutdown are called from one
// thread (main). The listener's thread accepts, and lingers on each socket
// grpc closed (a FIN, the app's bytes discarded until it closes, 1 s at
// most) so that the app reads what grpc sent last instead of a reset.
#ifndef POOLSIDE_SCREEN_SCREENED_LISTENER_H_
#define POOLSIDE_SCREEN_SCREENED_LISTENER_H_

#include <grpcpp/server.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "metrics/hostile_peer.h"
#include "screen/frame_screen.h"
#include "screen/screened_socket.h"

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

  // Closes the listening socket; connections open keep being served (grpc
  // sends them its GOAWAY while it drains).
  void StopAccepting();

  // Closes every socket grpc has closed (a FIN first) and stops the
  // listener's thread; a socket grpc closes later is closed at once.
  void Shutdown();

  // App connections open or lingering. Thread-safe.
  int64_t open_connections() const { return connections_->open(); }

 private:
  class Loop;

  // Constant after construction.
  const ScreenOptions options_;
  const std::shared_ptr<ScreenedConnections> connections_;

  int listen_fd_ = -1;
  int port_ = 0;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_SCREENED_LISTENER_H_
