#include "pool/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace poolside {
namespace {

// A literal target: the same answer every time.
class FixedResolver : public Resolver {
 public:
  explicit FixedResolver(std::vector<BackendAddress> addresses)
      : addresses_(std::move(addresses)) {}
  absl::StatusOr<std::vector<BackendAddress>> Resolve() override { return addresses_; }

 private:
  const std::vector<BackendAddress> addresses_;
};

// One c-ares channel, driven on the calling thread with poll(2) until the
// lookup ends or its deadline passes. Owns the channel; confined to the
// thread calling Resolve().
class CaresResolver : public Resolver {
 public:
  CaresResolver(ares_channel channel, std::string host, int port, absl::Duration timeout)
      : channel_(channel), host_(std::move(host)), port_(port), timeout_(timeout) {}
  ~CaresResolver() override { ares_destroy(channel_); }
  CaresResolver(const CaresResolver&) = delete;
  CaresResolver& operator=(const CaresResolver&) = delete;

  absl::StatusOr<std::vector<BackendAddress>> Resolve() override {
    Lookup lookup;
    lookup.port = port_;
    ares_addrinfo_hints hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ares_getaddrinfo(channel_, host_.c_str(), nullptr, &hints, &OnDone, &lookup);
    const absl::Time deadline = absl::Now() + timeout_;
    while (!lookup.done) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        ares_cancel(channel_);  // Runs OnDone with ARES_ECANCELLED.
        break;
      }
      Pump(left);
    }
    if (!lookup.status.ok()) return lookup.status;
    if (lookup.addresses.empty()) {
      return absl::NotFoundError(absl::StrCat("DNS has no address for ", host_));
    }
    std::sort(lookup.addresses.begin(), lookup.addresses.end());
    lookup.addresses.erase(std::unique(lookup.addresses.begin(), lookup.addresses.end()),
                           lookup.addresses.end());
    return std::move(lookup.addresses);
  }

 private:
  struct Lookup {
    int port = 0;
    bool done = false;
    absl::Status status;
    std::vector<BackendAddress> addresses;
  };

  static void OnDone(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
    Lookup& lookup = *static_cast<Lookup*>(arg);
    lookup.done = true;
    if (status != ARES_SUCCESS) {
      lookup.status = status == ARES_ENOTFOUND || status == ARES_ENODATA
                          ? absl::NotFoundError(ares_strerror(status))
                          : absl::UnavailableError(ares_strerror(status));
      if (result != nullptr) ares_freeaddrinfo(result);
      return;
    }
    for (const ares_addrinfo_node* node = result->nodes; node != nullptr; node = node->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      if (node->ai_family == AF_INET) {
        const auto* address = reinterpret_cast<const sockaddr_in*>(node->ai_addr);
        inet_ntop(AF_INET, &address->sin_addr, text, sizeof(text));
      } else if (node->ai_family == AF_INET6) {
        const auto* address = reinterpret_cast<const sockaddr_in6*>(node->ai_addr);
        inet_ntop(AF_INET6, &address->sin6_addr, text, sizeof(text));
      } else {
        continue;
      }
      lookup.addresses.push_back(IpBackend(text, lookup.port));
    }
    ares_freeaddrinfo(result);
  }

  // Waits (at most `left`) for c-ares's sockets or its next timeout, then
  // lets it process what happened.
  void Pump(absl::Duration left) {
    ares_socket_t sockets[ARES_GETSOCK_MAXNUM];
    const int bits = ares_getsock(channel_, sockets, ARES_GETSOCK_MAXNUM);
    pollfd fds[ARES_GETSOCK_MAXNUM];
    nfds_t count = 0;
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
      const bool read = ARES_GETSOCK_READABLE(bits, i);
      const bool write = ARES_GETSOCK_WRITABLE(bits, i);
      if (!read && !write) continue;
      fds[count].fd = sockets[i];
      fds[count].events = static_cast<short>((read ? POLLIN : 0) | (write ? POLLOUT : 0));
      fds[count].revents = 0;
      ++count;
    }
    timeval max_wait = absl::ToTimeval(left);
    timeval wait{};
    ares_timeout(channel_, &max_wait, &wait);
    const int wait_ms = static_cast<int>(wait.tv_sec * 1000 + (wait.tv_usec + 999) / 1000);
    const int ready = poll(fds, count, wait_ms);
    if (ready <= 0) {
      ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // Timeouts, retries.
      return;
    }
    for (nfds_t i = 0; i < count; ++i) {
      const bool readable = (fds[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
      const bool writable = (fds[i].revents & POLLOUT) != 0;
      ares_process_fd(channel_, readable ? fds[i].fd : ARES_SOCKET_BAD,
                      writable ? fds[i].fd : ARES_SOCKET_BAD);
    }
  }

  const ares_channel channel_;
  const std::string host_;
  const int port_;
  const absl::Duration timeout_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Resolver>> NewResolver(const UpstreamTarget& target,
                                                      absl::Duration timeout) {
  if (target.kind == UpstreamTarget::Kind::kFixed) {
    return std::make_unique<FixedResolver>(target.addresses);
  }
  // ares_library_init matters only on Windows; on Linux c-ares needs none.
  ares_options options{};
  // Per try; two tries fit a lookup into `timeout`.
  options.timeout = static_cast<int>(std::max<int64_t>(absl::ToInt64Milliseconds(timeout) / 2, 1));
  options.tries = 2;
  int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  // A target that names its DNS server means that server's answer, not
  // /etc/hosts ("b": DNS only).
  char dns_only[] = "b";
  if (!target.dns_server.empty()) {
    options.lookups = dns_only;
    mask |= ARES_OPT_LOOKUPS;
  }
  ares_channel channel = nullptr;
  const int init = ares_init_options(&channel, &options, mask);
  if (init != ARES_SUCCESS) {
    return absl::InternalError(absl::StrCat("c-ares: cannot start: ", ares_strerror(init)));
  }
  if (!target.dns_server.empty()) {
    const int set = ares_set_servers_ports_csv(channel, target.dns_server.c_str());
    if (set != ARES_SUCCESS) {
      ares_destroy(channel);
      return absl::InvalidArgumentError(
          absl::StrCat("DNS server ", target.dns_server, ": ", ares_strerror(set)));
    }
  }
  return std::make_unique<CaresResolver>(channel, target.host, target.port, timeout);
}

}  // namespace poolside
