// One app connection after accept: grpc owns the socket, and its reads and
// writes of it pass through a ScreenedSocket (screen/socket_hooks.cc routes
// grpc's recvmsg and sendmsg here), so the frame screen runs on grpc's own
// threads, inside the system calls grpc makes anyway: no copy of the bytes,
// no thread between the app and grpc.
//
// ScreenedConnections is what a listener's connections share: the limits,
// the count of open connections, the cut-off counting and logging, and the
// hand-over of sockets grpc closed to the listener's thread, which lingers on
// them (a FIN, then the app's bytes discarded until it closes) before closing.
#ifndef POOLSIDE_SCREEN_SCREENED_SOCKET_H_
#define POOLSIDE_SCREEN_SCREENED_SOCKET_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "metrics/hostile_peer.h"
#include "screen/frame_screen.h"

namespace poolside {

// Shared by a ScreenedListener and its sockets (which grpc may close after
// the listener has stopped). Thread-safe.
class ScreenedConnections {
 public:
  // `counter` (may be null) must stay valid until StopLingering.
  ScreenedConnections(const FrameScreenLimits& limits, HostilePeerCounter* counter);

  const FrameScreenLimits& limits() const { return limits_; }
  int64_t open() const { return open_.load(std::memory_order_relaxed); }
  void Opened() { open_.fetch_add(1, std::memory_order_relaxed); }

  // Counts a connection refused or cut off, and logs a cut-off one: at most
  // one line per reason every 10 s.
  void CountRefused(HostileReason reason);
  void ReportCut(const std::string& peer, HostileReason reason);

  // grpc closed `fd`: it goes to the listener's thread to linger, written
  // to `wake_fd` there, or is closed now once lingering has stopped.
  void Closed(int fd);
  // The listener's thread starts lingering; Closed wakes `wake_fd`.
  void StartLingering(int wake_fd);
  // The sockets grpc closed since the last call.
  std::vector<int> TakeClosed();
  // From here on Closed closes at once, and nothing is counted.
  void StopLingering();
  // Sends a FIN, closes and stops counting `fd`.
  void CloseNow(int fd);

 private:
  const FrameScreenLimits limits_;
  std::atomic<int64_t> open_{0};

  std::mutex mutex_;
  HostilePeerCounter* counter_ ABSL_GUARDED_BY(mutex_);
  int wake_fd_ ABSL_GUARDED_BY(mutex_) = -1;
  std::vector<int> closed_ ABSL_GUARDED_BY(mutex_);
  std::array<absl::Time, kHostileReasonCount> last_logged_ ABSL_GUARDED_BY(mutex_);
  std::array<int64_t, kHostileReasonCount> unlogged_ ABSL_GUARDED_BY(mutex_){};
};

class ScreenedSocket {
 public:
  using RecvmsgFunction = ssize_t (*)(int, msghdr*, int);
  using SendmsgFunction = ssize_t (*)(int, const msghdr*, int);

  ScreenedSocket(std::shared_ptr<ScreenedConnections> connections, std::string peer);
  // grpc's close: its last read or write may have run on another thread.
  ~ScreenedSocket() { std::scoped_lock last_use(read_mutex_, write_mutex_); }
  ScreenedSocket(const ScreenedSocket&) = delete;
  ScreenedSocket& operator=(const ScreenedSocket&) = delete;

  // grpc's read: what `recvmsg` returns, less a header block that has not
  // ended (withheld until it does: grpc 1.51 hands a call the headers parsed
  // so far when a connection closes mid-block). A broken rule cuts the
  // connection off: a GOAWAY (ENHANCE_YOUR_CALM) and a FIN to the app, and
  // ECONNRESET for grpc, which then cancels the connection's calls and
  // closes the socket.
  ssize_t Receive(int fd, msghdr* message, int flags, RecvmsgFunction recvmsg);
  // grpc's write; EPIPE once the connection is cut off.
  ssize_t Send(int fd, const msghdr* message, int flags, SendmsgFunction sendmsg);

  const std::shared_ptr<ScreenedConnections>& shared_connections() const { return connections_; }
  // The epoll set grpc's poller added the socket to (-1: none yet).
  void WatchedBy(int epoll_fd) { watched_by_.store(epoll_fd, std::memory_order_relaxed); }
  int watched_by() const { return watched_by_.load(std::memory_order_relaxed); }

 private:
  // Reads on while bytes wait in `ready_` or `held_`: hands grpc what is
  // ready, else reads into `scratch_` and screens it.
  ssize_t ReceiveWithheld(int fd, msghdr* message, int flags, RecvmsgFunction recvmsg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mutex_);
  // Moves a chunk just screened to `ready_`, keeping the bytes of a header
  // block that has not ended (from `block` on) in `held_`.
  void Withhold(const char* chunk, size_t size, uint64_t chunk_start, std::optional<uint64_t> block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mutex_);
  ssize_t Cut(int fd, HostileReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mutex_);

  const std::shared_ptr<ScreenedConnections> connections_;
  const std::string peer_;
  std::atomic<int> watched_by_{-1};

  // grpc reads a socket from one thread at a time, and writes it from one
  // thread at a time, but it hands both from thread to thread inside
  // libgrpc, where ThreadSanitizer does not see it; and the cut comes from
  // the reading side. Each side's lock is uncontended but for a cut, and
  // held only around one system call; a cut takes the write lock inside
  // the read lock.
  std::mutex read_mutex_;
  FrameScreen screen_ ABSL_GUARDED_BY(read_mutex_);
  bool cut_off_ ABSL_GUARDED_BY(read_mutex_) = false;
  // Screened bytes grpc has not taken yet, and an unfinished header block;
  // together within the header-block limit plus one read.
  std::string ready_ ABSL_GUARDED_BY(read_mutex_);
  size_t ready_begin_ ABSL_GUARDED_BY(read_mutex_) = 0;
  std::string held_ ABSL_GUARDED_BY(read_mutex_);
  std::unique_ptr<char[]> scratch_ ABSL_GUARDED_BY(read_mutex_);

  std::mutex write_mutex_;
  DownstreamFrames written_ ABSL_GUARDED_BY(write_mutex_);
  bool writes_refused_ ABSL_GUARDED_BY(write_mutex_) = false;
};

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_SCREENED_SOCKET_H_
