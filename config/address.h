// The address grammar: what GRPC_UPSTREAM_TARGET, GRPC_LISTEN_ADDR and
// GRPC_ADMIN_ADDR may say, and the one parser that splits a listening
// host:port. Everything that binds or validates an address asks here, so
// that config accepts exactly what the servers can bind. Stateless;
// thread-safe.
#ifndef POOLSIDE_CONFIG_ADDRESS_H_
#define POOLSIDE_CONFIG_ADDRESS_H_

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

// A gRPC target poolside can pool: host:port, dns:[//server]/host[:port],
// ipv4:/ipv6: address lists, or unix:path.
bool IsUpstreamTarget(absl::string_view target);

// Where apps may connect: what ParseHostPort accepts, or unix:path.
bool IsListenAddress(absl::string_view address);

// Where the HTTP side port may listen: what ParseHostPort accepts.
bool IsAdminAddress(absl::string_view address);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_ADDRESS_H_
