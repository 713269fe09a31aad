#include "pool/upstream_target.h"

#include <arpa/inet.h>

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "config/address.h"

namespace poolside {
namespace {

// The port grpc's dns resolver assumes when the target names none.
constexpr int kDefaultPort = 443;

bool IsIpLiteral(const std::string& host, int family) {
  unsigned char parsed[sizeof(in6_addr)];
  const std::string without_zone = host.substr(0, host.find('%'));
  return inet_pton(family, without_zone.c_str(), parsed) == 1;
}

absl::Status Invalid(absl::string_view target, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("upstream target \"", target, "\": ", why));
}

absl::StatusOr<UpstreamTarget> ParseAddressList(absl::string_view target, absl::string_view list,
                                                int family) {
  UpstreamTarget parsed;
  parsed.kind = UpstreamTarget::Kind::kFixed;
  // grpc's own default authority for a sockaddr target is its path.
  if (absl::ConsumePrefix(&list, "//")) absl::ConsumePrefix(&list, "/");
  parsed.default_authority = std::string(list);
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    std::optional<DialEndpoint> address = ParseDialEndpoint(entry);
    if (!address || !address->port || !IsIpLiteral(address->host, family)) {
      return Invalid(target, absl::StrCat("\"", entry, "\" is not an address with a port"));
    }
    BackendAddress backend = IpBackend(address->host, *address->port);
    bool seen = false;
    for (const BackendAddress& other : parsed.addresses) seen = seen || other == backend;
    if (!seen) parsed.addresses.push_back(std::move(backend));
  }
  return parsed;
}

}  // namespace

BackendAddress IpBackend(absl::string_view ip, int port) {
  const bool v6 = absl::StrContains(ip, ':');
  BackendAddress backend;
  backend.label = v6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
  backend.channel_target = absl::StrCat(v6 ? "ipv6:" : "ipv4:", backend.label);
  return backend;
}

absl::StatusOr<UpstreamTarget> ParseUpstreamTarget(absl::string_view target) {
  absl::string_view rest = target;
  if (absl::StartsWith(rest, "unix:") || absl::StartsWith(rest, "unix-abstract:")) {
    // One backend; the channel resolves the socket path itself.
    UpstreamTarget parsed;
    parsed.kind = UpstreamTarget::Kind::kFixed;
    parsed.addresses.push_back(BackendAddress{std::string(target), std::string(target)});
    parsed.default_authority = "localhost";
    return parsed;
  }
  if (absl::ConsumePrefix(&rest, "ipv4:")) return ParseAddressList(target, rest, AF_INET);
  if (absl::ConsumePrefix(&rest, "ipv6:")) return ParseAddressList(target, rest, AF_INET6);

  UpstreamTarget parsed;
  if (absl::ConsumePrefix(&rest, "dns:")) {
    if (absl::ConsumePrefix(&rest, "//")) {
      // dns://server:port/host:port names the DNS server to ask.
      const size_t slash = rest.find('/');
      if (slash == absl::string_view::npos) return Invalid(target, "no '/' after the DNS server");
      parsed.dns_server = std::string(rest.substr(0, slash));
      rest.remove_prefix(slash + 1);
      if (!parsed.dns_server.empty()) {
        std::optional<DialEndpoint> server = ParseDialEndpoint(parsed.dns_server);
        if (!server ||
            !(IsIpLiteral(server->host, AF_INET) || IsIpLiteral(server->host, AF_INET6))) {
          return Invalid(target, "the DNS server must be an IP address with an optional port");
        }
        // c-ares takes "ip:port" or "[v6]:port"; 53 when left out.
        const bool v6 = absl::StrContains(server->host, ':');
        parsed.dns_server = absl::StrCat(v6 ? "[" : "", server->host, v6 ? "]" : "", ":",
                                         server->port.value_or(53));
      }
    } else {
      absl::ConsumePrefix(&rest, "/");
    }
  }
  std::optional<DialEndpoint> endpoint = ParseDialEndpoint(rest);
  if (!endpoint) return Invalid(target, "expected host:port");
  parsed.default_authority = std::string(rest);
  parsed.port = endpoint->port.value_or(kDefaultPort);
  if (IsIpLiteral(endpoint->host, AF_INET) || IsIpLiteral(endpoint->host, AF_INET6)) {
    parsed.kind = UpstreamTarget::Kind::kFixed;
    parsed.addresses.push_back(IpBackend(endpoint->host, parsed.port));
    return parsed;
  }
  parsed.kind = UpstreamTarget::Kind::kDns;
  parsed.host = std::move(endpoint->host);
  return parsed;
}

}  // namespace poolside
