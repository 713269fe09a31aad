#include "screen/screened_listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/server_posix.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
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
#include "screen/socket_hooks.h"

namespace poolside {
namespace {

// The send buffer of an app's unix socket. grpc 1.51 finishes a write that
// met EAGAIN through its tcp backup poller, and that wake-up comes late: 0.1
// to several seconds, measured (GRPC_TRACE=tcp: "write: delayed", then
// nothing until an unrelated timer fires). A unix socket's default send
// buffer (net.core.wmem_default, 212,992 bytes of skb truesize, about 100 KB
// of 1 KiB messages) fills at every burst, so calls whose app reads slowly
// stalled for seconds (UpstreamFaultTest.UpstreamKilledMidStream...). A TCP
// socket autotunes its send buffer up to tcp_wmem's maximum (4 MiB); this
// gives a unix socket the same room (the kernel caps it at
// net.core.wmem_max). HTTP/2 flow control still bounds what grpc queues.
constexpr int kUnixSendBufferBytes = 4 << 20;
// Accepts per wake-up, so a connection storm cannot starve the relaying.
constexpr int kAcceptsPerWake = 64;
// How long accepting pauses when the process is out of file descriptors.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// How long an app may take to read the last bytes grpc sent it (a cut-off
// connection's GOAWAY, a drained call's trailers) and close, once it has its FIN.
constexpr absl::Duration kLinger = absl::Seconds(1);

absl::Status Errno(absl::string_view what, absl::string_view address) {
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address, ": ", what, ": ", std::strerror(errno)));
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

// The listener's thread: accepts app connections and lingers on the sockets
// grpc closed. Everything here is confined to that thread, except the
// eventfd other threads wake it with and the two flags they set.
class ScreenedListener::Loop {
 public:
  Loop(const ScreenOptions& options, std::shared_ptr<ScreenedConnections> connections,
       int listen_fd, grpc::Server* server)
      : options_(options),
        connections_(std::move(connections)),
        listen_fd_(listen_fd),
        server_(server),
        epoll_fd_(epoll_create1(EPOLL_CLOEXEC)),
        wake_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    Watch(wake_fd_);
    Watch(listen_fd_);
    connections_->StartLingering(wake_fd_);
  }

  ~Loop() {
    connections_->StopLingering();
    for (const auto& [fd, close_by] : lingering_) connections_->CloseNow(fd);
    if (listen_fd_ >= 0) close(listen_fd_);
    close(epoll_fd_);
    close(wake_fd_);
  }

  // From another thread.
  void StopAccepting() { Post(stop_accepting_); }
  void Stop() { Post(stop_); }

  void Run();

 private:
  void Post(std::atomic<bool>& flag) {
    flag.store(true, std::memory_order_release);
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  void Watch(int fd) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
  }
  bool accept_paused() const { return listen_fd_ >= 0 && !listen_watched_; }
  void Accept();
  void StartLingering(int fd, absl::Time now);
  // Reads and discards what the app sent; closes the socket at its end.
  void Discard(int fd);
  void ExpireLingering(absl::Time now);

  const ScreenOptions& options_;
  const std::shared_ptr<ScreenedConnections> connections_;
  int listen_fd_;
  grpc::Server* const server_;
  const int epoll_fd_;
  const int wake_fd_;
  std::atomic<bool> stop_accepting_{false};
  std::atomic<bool> stop_{false};
  bool listen_watched_ = true;
  absl::Time accept_paused_until_ = absl::InfinitePast();
  // Sockets grpc closed, each with the time it is closed by at the latest.
  std::unordered_map<int, absl::Time> lingering_;
  std::array<char, 16 << 10> discarded_;
};

void ScreenedListener::Loop::Run() {
  std::array<epoll_event, 64> events;
  while (true) {
    // Asleep until something happens, but for lingering sockets' and a
    // paused accept's deadlines.
    const int ready = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                                 lingering_.empty() && !accept_paused() ? -1 : 50);
    const absl::Time now = absl::Now();
    for (int i = 0; i < ready; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        uint64_t count = 0;
        (void)!read(wake_fd_, &count, sizeof(count));
        if (stop_.load(std::memory_order_acquire)) return;
        for (const int closed : connections_->TakeClosed()) StartLingering(closed, now);
      } else if (fd == listen_fd_) {
        Accept();
      } else if (lingering_.count(fd) != 0) {
        Discard(fd);
      }
    }
    if (stop_accepting_.load(std::memory_order_acquire) && listen_fd_ >= 0) {
      // Closed, not just ignored: new connections are refused at once.
      close(listen_fd_);
      listen_fd_ = -1;
      listen_watched_ = false;
    }
    if (accept_paused() && now >= accept_paused_until_) {
      Watch(listen_fd_);
      listen_watched_ = true;
    }
    ExpireLingering(now);
  }
}

void ScreenedListener::Loop::Accept() {
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
    if (connections_->open() >= options_.max_connections) {
      close(app_fd);
      connections_->CountRefused(HostileReason::kTooManyConnections);
      continue;
    }
    if (address.ss_family == AF_UNIX) {
      setsockopt(app_fd, SOL_SOCKET, SO_SNDBUF, &kUnixSendBufferBytes,
                 sizeof(kUnixSendBufferBytes));
    } else {
      const int one = 1;
      setsockopt(app_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (!RegisterScreenedSocket(
            app_fd, std::make_unique<ScreenedSocket>(connections_, PeerName(address)))) {
      close(app_fd);
      connections_->CountRefused(HostileReason::kTooManyConnections);
      continue;
    }
    connections_->Opened();
    // grpc owns the socket from here on; its reads and writes pass the screen.
    grpc::AddInsecureChannelFromFd(server_, app_fd);
  }
}

void ScreenedListener::Loop::StartLingering(int fd, absl::Time now) {
  // The app reads a FIN after the rest; a close with its bytes unread would
  // send a reset instead, and drop what is not sent yet.
  shutdown(fd, SHUT_WR);
  lingering_.emplace(fd, now + kLinger);
  Watch(fd);
  Discard(fd);
}

void ScreenedListener::Loop::Discard(int fd) {
  while (true) {
    const ssize_t got = recv(fd, discarded_.data(), discarded_.size(), 0);
    if (got > 0) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    // The app closed (or reset) its end: nothing it reads is lost any more.
    lingering_.erase(fd);
    connections_->CloseNow(fd);
    return;
  }
}

void ScreenedListener::Loop::ExpireLingering(absl::Time now) {
  for (auto it = lingering_.begin(); it != lingering_.end();) {
    if (now < it->second) {
      ++it;
      continue;
    }
    connections_->CloseNow(it->first);
    it = lingering_.erase(it);
  }
}

ScreenedListener::ScreenedListener(ScreenOptions options, HostilePeerCounter* counter)
    : options_(std::move(options)),
      connections_(std::make_shared<ScreenedConnections>(options_.limits, counter)) {}

ScreenedListener::~ScreenedListener() {
  Shutdown();
  if (listen_fd_ >= 0) close(listen_fd_);
}

absl::Status ScreenedListener::Bind() {
  if (absl::Status hooks = CheckSocketHooks(); !hooks.ok()) return hooks;
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
    const std::optional<SocketAddress> resolved = ToSocketAddress(*host_port);
    if (!resolved) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot listen on ", address,
          ": the frame screen needs an IP address or unix: path (GRPC_FRAME_SCREEN=false lets "
          "grpc resolve a host name)"));
    }
    storage = resolved->storage;
    length = resolved->length;
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
  // The loop owns the listening socket from here on.
  loop_ = std::make_unique<Loop>(options_, connections_, listen_fd_, server);
  listen_fd_ = -1;
  thread_ = std::thread([loop = loop_.get()] {
    pthread_setname_np(pthread_self(), "ps-screen");
    loop->Run();
  });
}

void ScreenedListener::StopAccepting() {
  if (loop_ != nullptr) loop_->StopAccepting();
}

void ScreenedListener::Shutdown() {
  if (loop_ == nullptr) return;
  loop_->Stop();
  thread_.join();
  loop_.reset();
}

}  // namespace poolside
