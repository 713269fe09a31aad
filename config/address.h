// The address grammar: what GRPC_UPSTREAM_TARGET, GRPC_LISTEN_ADDR and
// GRPC_ADMIN_ADDR may say, and the one parser that splits a listening
// host:port. Everything that binds or validates an address asks here, so
// that config accepts exactly what the servers can bind. Stateless;
// thread-safe.
#ifndef POOLSIDE_CONFIG_ADDRESS_H_
#define POOLSIDE_CONFIG_ADDRESS_H_

#include <sys/socket.h>

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside {

// An address split into host and port; an IPv6 host has lost its brackets.
struct HostPort {
  std::string host;
  int port = 0;
};

// Splits "host:port" or "[v6]:port" (port 0..65535), the form GRPC_ADMIN_ADDR
// and a non-unix GRPC_LISTEN_ADDR take; InvalidArgument if it is not one.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address);

// A socket address to bind `host_port` to: an IPv4 or IPv6 literal, "localhost"
// (127.0.0.1), or empty, "0.0.0.0" and "*" (every IPv4 address). nullopt for
// any other host name, which only a resolver can turn into addresses.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};
std::optional<SocketAddress> ToSocketAddress(const HostPort& host_port);

// An address to connect to: "host", "host:port", "[v6]" or "[v6]:port". The
// host is a name or an IPv6 literal in brackets (dropped here); the port,
// where given, is 1 to 65535. What IPv4 and IPv6 literals, names and DNS
// servers each allow beyond that is the caller's to check.
struct DialEndpoint {
  std::string host;
  std::optional<int> port;
};

// `text` split as a DialEndpoint, or nullopt if it is not one. Used by the
// upstream target grammar below and by pool/upstream_target.cc, which takes
// a validated target apart.
std::optional<DialEndpoint> ParseDialEndpoint(absl::string_view text);

// A gRPC target poolside can pool: host:port, dns:[//server]/host[:port],
// ipv4:/ipv6: address lists, or unix:path.
bool IsUpstreamTarget(absl::string_view target);

// Where apps may connect: what ParseHostPort accepts, or unix:path.
bool IsListenAddress(absl::string_view address);

// Where the HTTP side port may listen: what ParseHostPort accepts.
bool IsAdminAddress(absl::string_view address);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_ADDRESS_H_
