// The relay thread of a ScreenedListener: its event loop, the listening
// socket once Start() hands it over, and every app connection with its two
// buffers and FrameScreen. Private to screen/: screened_listener.cc binds and
// accepts; connection_relay.cc runs the loop, moves one connection's bytes
// through the screen, and cuts off a connection that breaks a rule.
#ifndef POOLSIDE_SCREEN_RELAY_H_
#define POOLSIDE_SCREEN_RELAY_H_

#include <grpcpp/server.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/time/time.h"
#include "metrics/hostile_peer.h"
#include "screen/frame_screen.h"
#include "screen/screened_listener.h"

namespace poolside {
namespace screen_relay {

// One read at a time per direction: the most a connection buffers in poolside.
inline constexpr size_t kRelayBufferBytes = 16 << 10;

// A buffer written out before it is refilled.
struct Buffer {
  std::unique_ptr<uint8_t[]> data = std::make_unique<uint8_t[]>(kRelayBufferBytes);
  size_t begin = 0;
  size_t end = 0;
  bool empty() const { return begin == end; }
};

}  // namespace screen_relay

// The relay thread's state. Every member is confined to that thread, except
// the eventfd the main thread writes to.
class ScreenedListener::Relay {
 public:
  Relay(ScreenedListener& owner, int listen_fd, grpc::Server* server)
      : owner_(owner), listen_fd_(listen_fd), server_(server) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    Watch(wake_fd_, EPOLLIN, &wake_fd_);
    Watch(listen_fd_, EPOLLIN, &listen_fd_);
  }

  ~Relay() {
    for (auto& [key, connection] : connections_) CloseBoth(*connection);
    if (listen_fd_ >= 0) close(listen_fd_);
    close(epoll_fd_);
    close(wake_fd_);
  }

  // From the main thread.
  void Post(uint64_t command) { (void)!write(wake_fd_, &command, sizeof(command)); }
  static constexpr uint64_t kStopAccepting = 1;
  static constexpr uint64_t kShutdown = 1 << 20;

  void Run();

 private:
  using Buffer = screen_relay::Buffer;
  struct Connection;

  // The epoll cookie of one socket of a connection.
  struct End {
    Connection* connection;
    bool app;
  };

  // A connection relays both ways until one side ends. The app's end closes
  // it at once: the app is gone. grpc's end, or a rule broken (Cut), closes
  // it out so that the app reads everything sent to it before the socket
  // closes: a TCP socket closed with bytes unread sends a reset instead of a
  // FIN, and drops what it had not sent yet.
  enum class Phase {
    kRelaying,
    // grpc's end is gone: passing on what grpc wrote before it closed (grpc
    // sends a call's trailers, then closes), dropping what the app sends.
    kPassingOn,
    // FIN sent, grpc's end closed: reading and discarding what the app still
    // sends, until it closes, so that it reads all the rest first.
    kLingering,
  };

  struct Connection {
    int app_fd = -1;
    int grpc_fd = -1;
    std::string peer;
    Buffer up;    // app -> grpc, as read (the common case: no header block split)
    Buffer down;  // grpc -> app
    // app -> grpc when a header block spans reads: what may go to grpc, and
    // the unfinished block withheld from it (FrameScreen::unfinished_block_begin).
    // `held` stays within the header-block limit plus one read.
    std::string up_out;
    size_t up_out_begin = 0;
    std::string held;
    FrameScreen screen;
    DownstreamFrames down_frames;
    End app_end{this, true};
    End grpc_end{this, false};
    uint32_t app_events = 0;
    uint32_t grpc_events = 0;
    // grpc_fd is in the epoll set. Passing on, it leaves it while the app has
    // `down` to take: epoll reports a hang-up whatever the mask.
    bool grpc_watched = true;
    Phase phase = Phase::kRelaying;
    // Out of kRelaying: closed by then, whatever is left.
    absl::Time close_by;
    // Closed; freed once the current batch of events has been handled, as a
    // later event of the batch may still name it.
    bool removed = false;

    explicit Connection(const FrameScreenLimits& limits) : screen(limits) {}
  };

  void Watch(int fd, uint32_t events, void* cookie) {
    epoll_event event{};
    event.events = events;
    event.data.ptr = cookie;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
  }
  void Rewatch(int fd, uint32_t& current, uint32_t wanted, void* cookie) {
    if (current == wanted) return;
    current = wanted;
    epoll_event event{};
    event.events = wanted;
    event.data.ptr = cookie;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &event);
  }

  void Accept();
  void Serve(End& end, uint32_t events, absl::Time now);
  // Move bytes one way (app -> grpc through the screen, grpc -> app): write
  // out what is held, then read once more if that emptied the buffer. False
  // when the connection no longer relays: ended, cut off, or grpc's end gone.
  bool PumpUp(Connection& connection, absl::Time now);
  bool PumpDown(Connection& connection, absl::Time now);
  void UpdateInterest(Connection& connection);
  // Moves the chunk just read from `up` to `up_out`, keeping back (in `held`)
  // the bytes of a header block that has not ended; `block` is where it begins.
  void Withhold(Connection& connection, uint64_t chunk_start, std::optional<uint64_t> block);
  // Writes what it can of `up_out`. False if grpc's end is gone.
  bool FlushOut(Connection& connection);
  // Writes what it can of `up`, then of `up_out`. False if grpc's end is gone.
  bool FlushUp(Connection& connection);
  // Removes the connection; false, for a pump to return.
  bool Drop(Connection& connection);
  // grpc's end is gone: drops what the app sent and passes on what grpc
  // wrote before it closed. False, for a pump to return.
  bool StartPassingOn(Connection& connection, absl::Time now);
  // Passes on what it can of grpc's last bytes; lingers once all are out.
  void PassOn(Connection& connection, absl::Time now);
  void Cut(Connection& connection, HostileReason reason);
  // Closes grpc's end, sends the app a FIN and lingers (kLingering).
  void Linger(Connection& connection, absl::Time now);
  // Leaves kRelaying for `phase`; closed at `close_by` at the latest.
  void StartClosing(Connection& connection, Phase phase, absl::Time close_by);
  // Relays the rest of the frame grpc's output stands in, as far as grpc has
  // written it and the app takes it. True when the app's side is then between
  // frames with nothing pending: a GOAWAY may go next.
  bool FinishDownFrame(Connection& connection);
  void Remove(Connection& connection);
  void CloseBoth(Connection& connection);
  // On shutdown: passes on what grpc wrote as far as each app's socket takes
  // it now, and sends every app a FIN.
  void PassOnWhatIsLeft();
  // Removes the connections whose `close_by` has passed.
  void ExpireClosing(absl::Time now);

  ScreenedListener& owner_;
  int listen_fd_;
  grpc::Server* const server_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  bool accepting_ = true;
  absl::Time accept_paused_until_ = absl::InfinitePast();
  bool listen_watched_ = true;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  // The connections out of kRelaying.
  std::vector<Connection*> closing_;
  std::vector<Connection*> removed_;
  std::array<absl::Time, kHostileReasonCount> last_logged_{};
  std::array<int64_t, kHostileReasonCount> unlogged_{};
};

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_RELAY_H_
