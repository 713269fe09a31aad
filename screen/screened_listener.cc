#include "screen/screened_listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/server_posix.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "config/config.h"

namespace poolside {
namespace {

// One read at a time per direction: the most a connection buffers in poolside.
constexpr size_t kRelayBufferBytes = 16 << 10;
// The send buffer of grpc's end of the socketpair. grpc 1.51 finishes a write
// that met EAGAIN through its tcp backup poller, and that wake-up comes late:
// 0.1 to several seconds, measured (GRPC_TRACE=tcp: "write: delayed", then
// nothing until an unrelated timer fires). A unix socket's default send
// buffer (net.core.wmem_default, 212,992 bytes of skb truesize, about 100 KB
// of 1 KiB messages) filled at every burst, so calls whose app reads slowly
// stalled for seconds (UpstreamFaultTest.UpstreamKilledMidStream...). A TCP
// socket, which grpc has without the screen, autotunes its send buffer up to
// tcp_wmem's maximum (4 MiB); this gives grpc's end the same room (the kernel
// caps it at net.core.wmem_max). HTTP/2 flow control still bounds what grpc
// queues, as it does on a TCP socket.
constexpr int kGrpcSendBufferBytes = 4 << 20;
// Accepts per wake-up, so a connection storm cannot starve the relaying.
constexpr int kAcceptsPerWake = 64;
// How long a cut-off connection may take to read its GOAWAY before it is closed.
constexpr absl::Duration kLinger = absl::Seconds(1);
// How long accepting pauses when the process is out of file descriptors.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// At most one log line per reason this often; every cut is counted.
constexpr absl::Duration kLogInterval = absl::Seconds(10);

absl::Status Errno(absl::string_view what, absl::string_view address) {
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address, ": ", what, ": ", std::strerror(errno)));
}

// A buffer written out before it is refilled.
struct Buffer {
  std::unique_ptr<uint8_t[]> data = std::make_unique<uint8_t[]>(kRelayBufferBytes);
  size_t begin = 0;
  size_t end = 0;
  bool empty() const { return begin == end; }
};

// Writes what it can of `buffer` to `fd`. False if the peer is gone.
bool Flush(int fd, Buffer& buffer) {
  while (!buffer.empty()) {
    const ssize_t written =
        send(fd, buffer.data.get() + buffer.begin, buffer.end - buffer.begin, MSG_NOSIGNAL);
    if (written < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    buffer.begin += static_cast<size_t>(written);
  }
  buffer.begin = buffer.end = 0;
  return true;
}

enum class ReadResult { kData, kAgain, kClosed };

ReadResult Fill(int fd, Buffer& buffer) {
  const ssize_t got = recv(fd, buffer.data.get(), kRelayBufferBytes, 0);
  if (got > 0) {
    buffer.begin = 0;
    buffer.end = static_cast<size_t>(got);
    return ReadResult::kData;
  }
  if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    return ReadResult::kAgain;
  }
  return ReadResult::kClosed;
}

std::string PeerName(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
    return absl::StrCat(text, ":", ntohs(v4.sin_port));
  }
  if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
    return absl::StrCat("[", text, "]:", ntohs(v6.sin6_port));
  }
  return "unix";
}

}  // namespace

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
  struct Connection;

  // The epoll cookie of one socket of a connection.
  struct End {
    Connection* connection;
    bool app;
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
    // Cut off: only reading and discarding what the app still sends, until
    // `linger_until`, so that it reads the GOAWAY before the socket resets.
    bool lingering = false;
    absl::Time linger_until;
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
  // when the connection has ended or been cut off.
  bool PumpUp(Connection& connection, absl::Time now);
  bool PumpDown(Connection& connection);
  void UpdateInterest(Connection& connection);
  // Moves the chunk just read from `up` to `up_out`, keeping back (in `held`)
  // the bytes of a header block that has not ended; `block` is where it begins.
  void Withhold(Connection& connection, uint64_t chunk_start, std::optional<uint64_t> block);
  // Writes what it can of `up_out`. False if grpc's end is gone.
  bool FlushOut(Connection& connection);
  void Cut(Connection& connection, HostileReason reason);
  // Relays the rest of the frame grpc's output stands in, as far as grpc has
  // written it and the app takes it. True when the app's side is then between
  // frames with nothing pending: a GOAWAY may go next.
  bool FinishDownFrame(Connection& connection);
  void Remove(Connection& connection);
  void CloseBoth(Connection& connection);
  void ExpireLingering(absl::Time now);

  ScreenedListener& owner_;
  int listen_fd_;
  grpc::Server* const server_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  bool accepting_ = true;
  absl::Time accept_paused_until_ = absl::InfinitePast();
  bool listen_watched_ = true;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  std::vector<Connection*> lingering_;
  std::vector<Connection*> removed_;
  std::array<absl::Time, kHostileReasonCount> last_logged_{};
  std::array<int64_t, kHostileReasonCount> unlogged_{};
};

void ScreenedListener::Relay::Run() {
  std::array<epoll_event, 64> events;
  last_logged_.fill(absl::InfinitePast());
  while (true) {
    const int ready = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                                 lingering_.empty() && listen_watched_ ? 1000 : 50);
    const absl::Time now = absl::Now();
    for (int i = 0; i < ready; ++i) {
      void* cookie = events[i].data.ptr;
      if (cookie == &wake_fd_) {
        uint64_t commands = 0;
        (void)!read(wake_fd_, &commands, sizeof(commands));
        if (commands >= kShutdown) return;
        if (commands & kStopAccepting) accepting_ = false;
      } else if (cookie == &listen_fd_) {
        Accept();
      } else {
        Serve(*static_cast<End*>(cookie), events[i].events, now);
      }
    }
    for (Connection* connection : removed_) connections_.erase(connection);
    removed_.clear();
    if (!accepting_ && listen_fd_ >= 0) {
      // Closed, not just ignored: new connections are refused at once.
      close(listen_fd_);
      listen_fd_ = -1;
      listen_watched_ = false;
    }
    if (accepting_ && !listen_watched_ && now >= accept_paused_until_) {
      Watch(listen_fd_, EPOLLIN, &listen_fd_);
      listen_watched_ = true;
    }
    ExpireLingering(now);
  }
}

void ScreenedListener::Relay::Accept() {
  for (int i = 0; i < kAcceptsPerWake; ++i) {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    const int app_fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (app_fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors or memory: the pending connection stays queued.
        // Pause instead of spinning on the error (CVE-2023-4785).
        spdlog::warn("screen: cannot accept app connections: {}; pausing for {}",
                     std::strerror(errno), absl::FormatDuration(kAcceptPause));
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        listen_watched_ = false;
        accept_paused_until_ = absl::Now() + kAcceptPause;
      }
      return;
    }
    if (owner_.open_connections() >= owner_.options_.max_connections) {
      close(app_fd);
      if (owner_.counter_ != nullptr) {
        owner_.counter_->Count(PeerSide::kApp, HostileReason::kTooManyConnections);
      }
      continue;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
      spdlog::warn("screen: socketpair failed: {}", std::strerror(errno));
      close(app_fd);
      continue;
    }
    const int one = 1;
    setsockopt(app_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // grpc writes to pair[1]; see kGrpcSendBufferBytes.
    setsockopt(pair[1], SOL_SOCKET, SO_SNDBUF, &kGrpcSendBufferBytes, sizeof(kGrpcSendBufferBytes));
    auto connection = std::make_unique<Connection>(owner_.options_.limits);
    connection->app_fd = app_fd;
    connection->grpc_fd = pair[0];
    connection->peer = PeerName(address);
    // grpc owns pair[1] from here on.
    grpc::AddInsecureChannelFromFd(server_, pair[1]);
    connection->app_events = connection->grpc_events = EPOLLIN;
    Watch(app_fd, EPOLLIN, &connection->app_end);
    Watch(pair[0], EPOLLIN, &connection->grpc_end);
    owner_.open_connections_.fetch_add(1, std::memory_order_relaxed);
    Connection* key = connection.get();
    connections_.emplace(key, std::move(connection));
  }
}

void ScreenedListener::Relay::Serve(End& end, uint32_t events, absl::Time now) {
  Connection& connection = *end.connection;
  if (connection.removed) return;
  if (connection.lingering) {
    // Discard what the app still sends; its end means we may close.
    if (end.app && Fill(connection.app_fd, connection.up) != ReadResult::kClosed) return;
    return Remove(connection);
  }
  // Only the direction the event is about moves: trying the other one as
  // well cost a recv that failed with EAGAIN on nearly every wake-up. A
  // socket's writability frees its buffer, so the read that was waiting for
  // it follows at once instead of on the next wake-up. A hang-up or error
  // moves both ways, so that what is left is read out and passed on.
  bool alive = true;
  if ((events & (EPOLLHUP | EPOLLERR)) != 0) {
    alive = PumpUp(connection, now) && PumpDown(connection);
  } else if (end.app) {
    if ((events & EPOLLIN) != 0) alive = PumpUp(connection, now);
    if (alive && (events & EPOLLOUT) != 0) alive = PumpDown(connection);
  } else {
    if ((events & EPOLLIN) != 0) alive = PumpDown(connection);
    if (alive && (events & EPOLLOUT) != 0) alive = PumpUp(connection, now);
  }
  if (alive) UpdateInterest(connection);
}

bool ScreenedListener::Relay::PumpUp(Connection& connection, absl::Time now) {
  // app -> screen -> grpc.
  if (!Flush(connection.grpc_fd, connection.up) || !FlushOut(connection)) {
    Remove(connection);
    return false;
  }
  if (!connection.up.empty() || !connection.up_out.empty()) return true;
  const uint64_t chunk_start = connection.screen.fed_bytes();
  switch (Fill(connection.app_fd, connection.up)) {
    case ReadResult::kData: {
      const HostileReason broken =
          connection.screen.Feed(connection.up.data.get(), connection.up.end, now);
      if (broken != HostileReason::kNone) {
        Cut(connection, broken);
        return false;
      }
      const std::optional<uint64_t> block = connection.screen.unfinished_block_begin();
      if (block || !connection.held.empty()) Withhold(connection, chunk_start, block);
      if (!Flush(connection.grpc_fd, connection.up) || !FlushOut(connection)) {
        Remove(connection);
        return false;
      }
      return true;
    }
    case ReadResult::kAgain:
      return true;
    case ReadResult::kClosed:
      // The app is gone; grpc learns it when its end closes.
      Remove(connection);
      return false;
  }
  return true;
}

bool ScreenedListener::Relay::PumpDown(Connection& connection) {
  // grpc -> app.
  if (!Flush(connection.app_fd, connection.down)) {
    Remove(connection);
    return false;
  }
  if (!connection.down.empty()) return true;
  switch (Fill(connection.grpc_fd, connection.down)) {
    case ReadResult::kData:
      connection.down_frames.Feed(connection.down.data.get(), connection.down.end);
      if (!Flush(connection.app_fd, connection.down)) {
        Remove(connection);
        return false;
      }
      return true;
    case ReadResult::kAgain:
      return true;
    case ReadResult::kClosed:
      // grpc closed the connection (GOAWAY sent, or shut down): pass it on
      // once its last bytes are out; they are, as `down` is empty.
      Remove(connection);
      return false;
  }
  return true;
}

void ScreenedListener::Relay::Withhold(Connection& connection, uint64_t chunk_start,
                                       std::optional<uint64_t> block) {
  Buffer& up = connection.up;
  const auto* chunk = reinterpret_cast<const char*>(up.data.get());
  const size_t size = up.end;
  // The chunk's bytes before the unfinished block may go; the rest waits.
  const size_t sendable = !block ? size
                                 : static_cast<size_t>(std::min<uint64_t>(
                                       size, *block > chunk_start ? *block - chunk_start : 0));
  if (sendable > 0 || !block) {
    // Whatever was held belongs before these bytes: its block has ended.
    connection.up_out.assign(connection.held);
    connection.up_out.append(chunk, sendable);
    connection.up_out_begin = 0;
    connection.held.clear();
  }
  connection.held.append(chunk + sendable, size - sendable);
  up.begin = up.end = 0;
}

bool ScreenedListener::Relay::FlushOut(Connection& connection) {
  std::string& out = connection.up_out;
  while (connection.up_out_begin < out.size()) {
    const ssize_t written = send(connection.grpc_fd, out.data() + connection.up_out_begin,
                                 out.size() - connection.up_out_begin, MSG_NOSIGNAL);
    if (written < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    connection.up_out_begin += static_cast<size_t>(written);
  }
  out.clear();
  connection.up_out_begin = 0;
  return true;
}

void ScreenedListener::Relay::UpdateInterest(Connection& connection) {
  // Read a side only when its buffer is free; wait for writability only
  // while bytes are held for that side.
  const bool up_empty = connection.up.empty() && connection.up_out.empty();
  const uint32_t app_wanted = (up_empty ? EPOLLIN : 0u) | (connection.down.empty() ? 0u : EPOLLOUT);
  const uint32_t grpc_wanted =
      (connection.down.empty() ? EPOLLIN : 0u) | (up_empty ? 0u : EPOLLOUT);
  Rewatch(connection.app_fd, connection.app_events, app_wanted, &connection.app_end);
  Rewatch(connection.grpc_fd, connection.grpc_events, grpc_wanted, &connection.grpc_end);
}

void ScreenedListener::Relay::Cut(Connection& connection, HostileReason reason) {
  if (owner_.counter_ != nullptr) owner_.counter_->Count(PeerSide::kApp, reason);
  const size_t index = static_cast<size_t>(reason);
  const absl::Time now = absl::Now();
  if (now - last_logged_[index] >= kLogInterval) {
    spdlog::warn("screen: closed app connection from {}: {}{}", connection.peer,
                 std::string(HostileReasonName(reason)),
                 unlogged_[index] > 0
                     ? absl::StrCat(" (and ", unlogged_[index], " more since the last such line)")
                     : std::string());
    last_logged_[index] = now;
    unlogged_[index] = 0;
  } else {
    ++unlogged_[index];
  }
  // The GOAWAY may only go between grpc's frames.
  const bool between_frames = FinishDownFrame(connection);
  // grpc sees its end close and cancels this connection's calls.
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection.grpc_fd, nullptr);
  close(connection.grpc_fd);
  connection.grpc_fd = -1;
  if (between_frames) {
    const std::string goaway = GoawayFrame(connection.screen.last_stream_id(), kEnhanceYourCalm);
    (void)!send(connection.app_fd, goaway.data(), goaway.size(), MSG_NOSIGNAL);
  }
  shutdown(connection.app_fd, SHUT_WR);
  connection.lingering = true;
  connection.linger_until = now + kLinger;
  connection.up.begin = connection.up.end = 0;
  Rewatch(connection.app_fd, connection.app_events, EPOLLIN, &connection.app_end);
  lingering_.push_back(&connection);
}

bool ScreenedListener::Relay::FinishDownFrame(Connection& connection) {
  // A busy connection (rapid reset: grpc answering hundreds of streams) is
  // usually cut with part of a frame relayed, as the relay reads grpc's
  // output in chunks that ignore frame boundaries. Reading exactly the rest of
  // that frame, when grpc has written it (at most one frame, 16 KiB by
  // default), lets the GOAWAY follow it instead of being left out.
  Buffer& down = connection.down;
  while (true) {
    if (!Flush(connection.app_fd, down) || !down.empty()) return false;
    if (connection.down_frames.AtBoundary()) return true;
    const size_t wanted = std::min(connection.down_frames.BytesToBoundary(), kRelayBufferBytes);
    const ssize_t got = recv(connection.grpc_fd, down.data.get(), wanted, 0);
    if (got <= 0) return false;
    down.begin = 0;
    down.end = static_cast<size_t>(got);
    connection.down_frames.Feed(down.data.get(), down.end);
  }
}

void ScreenedListener::Relay::ExpireLingering(absl::Time now) {
  for (size_t i = 0; i < lingering_.size();) {
    Connection* connection = lingering_[i];
    if (now >= connection->linger_until) {
      Remove(*connection);  // Also drops it from lingering_.
    } else {
      ++i;
    }
  }
  for (Connection* connection : removed_) connections_.erase(connection);
  removed_.clear();
}

void ScreenedListener::Relay::CloseBoth(Connection& connection) {
  if (connection.app_fd >= 0) close(connection.app_fd);
  if (connection.grpc_fd >= 0) close(connection.grpc_fd);
  connection.app_fd = connection.grpc_fd = -1;
}

void ScreenedListener::Relay::Remove(Connection& connection) {
  if (connection.removed) return;
  // Closing a descriptor also takes it out of the epoll set.
  CloseBoth(connection);
  if (connection.lingering) {
    for (size_t i = 0; i < lingering_.size(); ++i) {
      if (lingering_[i] == &connection) {
        lingering_[i] = lingering_.back();
        lingering_.pop_back();
        break;
      }
    }
  }
  owner_.open_connections_.fetch_sub(1, std::memory_order_relaxed);
  connection.removed = true;
  removed_.push_back(&connection);
}

ScreenedListener::ScreenedListener(ScreenOptions options, HostilePeerCounter* counter)
    : options_(std::move(options)), counter_(counter) {}

ScreenedListener::~ScreenedListener() {
  Shutdown();
  if (listen_fd_ >= 0) close(listen_fd_);
}

absl::Status ScreenedListener::Bind() {
  const std::string& address = options_.listen_addr;
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (absl::StartsWith(address, "unix:")) {
    std::string path = address.substr(5);
    if (absl::StartsWith(path, "//")) path = path.substr(2);
    auto* un = reinterpret_cast<sockaddr_un*>(&storage);
    if (path.size() >= sizeof(un->sun_path)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot listen on ", address, ": path too long"));
    }
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, path.data(), path.size());
    length = sizeof(sockaddr_un);
    unlink(path.c_str());  // grpc's own listener replaces a stale socket file too.
  } else {
    // The grammar config validated GRPC_LISTEN_ADDR with.
    const absl::StatusOr<HostPort> host_port = ParseHostPort(address);
    if (!host_port.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot listen on ", address, ": ", host_port.status().message()));
    }
    const std::string& host = host_port->host;
    const int port = host_port->port;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
    if (host.empty() || host == "0.0.0.0" || host == "*") {
      v4->sin_family = AF_INET;
      v4->sin_addr.s_addr = htonl(INADDR_ANY);
      v4->sin_port = htons(static_cast<uint16_t>(port));
      length = sizeof(*v4);
    } else if (host == "localhost" || inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
      if (host == "localhost") v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      v4->sin_family = AF_INET;
      v4->sin_port = htons(static_cast<uint16_t>(port));
      length = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(static_cast<uint16_t>(port));
      length = sizeof(*v6);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot listen on ", address,
          ": the frame screen needs an IP address or unix: path (GRPC_FRAME_SCREEN=false lets "
          "grpc resolve a host name)"));
    }
  }
  listen_fd_ = socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Errno("socket", address);
  const int one = 1;
  if (storage.ss_family != AF_UNIX) {
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  }
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&storage), length) != 0) {
    return Errno("bind", address);
  }
  if (listen(listen_fd_, SOMAXCONN) != 0) return Errno("listen", address);
  if (storage.ss_family != AF_UNIX) {
    sockaddr_storage bound{};
    socklen_t bound_length = sizeof(bound);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_length);
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(bound).sin6_port
                                              : reinterpret_cast<sockaddr_in&>(bound).sin_port);
  }
  return absl::OkStatus();
}

void ScreenedListener::Start(grpc::Server* server) {
  // The relay owns the listening socket from here on.
  relay_ = std::make_unique<Relay>(*this, listen_fd_, server);
  listen_fd_ = -1;
  thread_ = std::thread([relay = relay_.get()] { relay->Run(); });
}

void ScreenedListener::StopAccepting() {
  if (relay_ != nullptr) relay_->Post(Relay::kStopAccepting);
}

void ScreenedListener::Shutdown() {
  if (relay_ == nullptr) return;
  relay_->Post(Relay::kShutdown);
  thread_.join();
  relay_.reset();
}

}  // namespace poolside
