// What GRPC_UPSTREAM_TARGET names, taken apart so that poolside can resolve
// it itself and give each pool slot one backend address.
//
// Plain data; thread-compatible.
#ifndef POOLSIDE_POOL_UPSTREAM_TARGET_H_
#define POOLSIDE_POOL_UPSTREAM_TARGET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside {

// One backend a slot connects to.
struct BackendAddress {
  // What the slot's channel is created with: "ipv4:10.0.0.7:50051",
  // "ipv6:[fd00::7]:50051", or the whole target for unix: sockets.
  std::string channel_target;
  // How logs, /pool and metrics name it: "10.0.0.7:50051", "[fd00::7]:50051",
  // "unix:///run/app.sock". Two addresses are the same backend when their
  // labels are equal.
  std::string label;

  bool operator==(const BackendAddress& other) const { return label == other.label; }
  bool operator!=(const BackendAddress& other) const { return label != other.label; }
  bool operator<(const BackendAddress& other) const { return label < other.label; }
};

struct UpstreamTarget {
  enum class Kind {
    // A name to look up in DNS (dns:///host:port, dns://server/host:port,
    // host:port): re-resolved as it changes.
    kDns,
    // Addresses given literally (ipv4:/ipv6: lists, an IP literal host:port,
    // unix:): never change.
    kFixed,
  };

  Kind kind = Kind::kFixed;
  // kDns: the name and port to look up, and the DNS server to ask
  // ("host:port" or "[v6]:port"; empty means the system's resolv.conf).
  std::string host;
  int port = 443;
  std::string dns_server;
  // kFixed: the addresses, in the order given.
  std::vector<BackendAddress> addresses;
  // The :authority grpc itself would send for this target (and check a TLS
  // certificate against): "host:port" for host:port and dns:///host:port,
  // the address list for ipv4:/ipv6:.
  std::string default_authority;
};

// Takes `target` apart. InvalidArgument for what gRPC would not accept
// either; config/address.cc has already refused most of that.
absl::StatusOr<UpstreamTarget> ParseUpstreamTarget(absl::string_view target);

// The address of an IPv4 or IPv6 literal `ip` (no brackets) at `port`.
BackendAddress IpBackend(absl::string_view ip, int port);

}  // namespace poolside

#endif  // POOLSIDE_POOL_UPSTREAM_TARGET_H_
