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
#include "screen/relay.h"

namespace poolside {
namespace {

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
// How long accepting pauses when the process is out of file descriptors.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);

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
  // The relay owns the listening socket from here on.
  relay_ = std::make_unique<Relay>(*this, listen_fd_, server);
  listen_fd_ = -1;
  thread_ = std::thread([relay = relay_.get()] {
    pthread_setname_np(pthread_self(), "ps-screen");
    relay->Run();
  });
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
