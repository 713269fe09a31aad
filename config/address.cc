#include "config/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "config/value_text.h"

namespace poolside {
namespace {

bool IsHostName(absl::string_view host) {
  return !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_';
  });
}

bool IsIpv4Literal(absl::string_view address) {
  in_addr parsed;
  return inet_pton(AF_INET, std::string(address).c_str(), &parsed) == 1;
}

// An IPv6 address, optionally with a %zone (fe80::1%eth0).
bool IsIpv6Literal(absl::string_view address) {
  const size_t percent = address.find('%');
  if (percent != absl::string_view::npos && !IsHostName(address.substr(percent + 1))) return false;
  in6_addr parsed;
  return inet_pton(AF_INET6, std::string(address.substr(0, percent)).c_str(), &parsed) == 1;
}

// "host", "host:port", "[v6]" or "[v6]:port", split but not yet validated
// beyond its shape. An unbracketed IPv6 address is not one.
struct Endpoint {
  absl::string_view host;
  bool bracketed = false;
  std::optional<absl::string_view> port;
};

std::optional<Endpoint> SplitEndpoint(absl::string_view text) {
  Endpoint endpoint;
  if (absl::ConsumePrefix(&text, "[")) {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) return std::nullopt;
    endpoint.host = text.substr(0, close);
    endpoint.bracketed = true;
    text.remove_prefix(close + 1);
    if (text.empty()) return endpoint;
    if (!absl::ConsumePrefix(&text, ":")) return std::nullopt;
    endpoint.port = text;
    return endpoint;
  }
  const size_t colon = text.find(':');
  endpoint.host = text.substr(0, colon);
  if (colon != absl::string_view::npos) {
    endpoint.port = text.substr(colon + 1);
    if (endpoint.port->find(':') != absl::string_view::npos) return std::nullopt;
  }
  return endpoint;
}

bool IsValidHost(const Endpoint& endpoint) {
  return endpoint.bracketed ? IsIpv6Literal(endpoint.host) : IsHostName(endpoint.host);
}

// host:port or [v6]:port, for connecting: the port may be left out only if
// `port_optional` (the dns resolver defaults it to 443).
bool IsDialEndpoint(absl::string_view text, bool port_optional = false) {
  const std::optional<DialEndpoint> endpoint = ParseDialEndpoint(text);
  return endpoint && (endpoint->port || port_optional);
}

// The part after "unix:": a path, or "//" followed by an absolute path.
bool IsUnixPath(absl::string_view path) {
  if (absl::ConsumePrefix(&path, "//")) return path.size() > 1 && path.front() == '/';
  return !path.empty();
}

// The part after "ipv4:" or "ipv6:": comma-separated literal addresses with
// ports, optionally behind an empty authority ("ipv4:///1.2.3.4:80").
bool IsAddressList(absl::string_view list, bool ipv6) {
  if (absl::ConsumePrefix(&list, "//") && !absl::ConsumePrefix(&list, "/")) return false;
  for (absl::string_view address : absl::StrSplit(list, ',')) {
    const std::optional<Endpoint> endpoint = SplitEndpoint(address);
    if (!endpoint || endpoint->bracketed != ipv6 || !IsDialEndpoint(address)) return false;
    if (!ipv6 && !IsIpv4Literal(endpoint->host)) return false;
  }
  return true;
}

}  // namespace

std::optional<DialEndpoint> ParseDialEndpoint(absl::string_view text) {
  const std::optional<Endpoint> endpoint = SplitEndpoint(text);
  if (!endpoint || !IsValidHost(*endpoint)) return std::nullopt;
  DialEndpoint parsed{std::string(endpoint->host), std::nullopt};
  if (endpoint->port) {
    const std::optional<int64_t> port = ParseStrictInteger(*endpoint->port, 1, 65535);
    if (!port) return std::nullopt;
    parsed.port = static_cast<int>(*port);
  }
  return parsed;
}

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const std::optional<Endpoint> endpoint = SplitEndpoint(address);
  const std::optional<int64_t> port =
      endpoint && endpoint->port ? ParseStrictInteger(*endpoint->port, 0, 65535) : std::nullopt;
  if (!port || !IsValidHost(*endpoint)) {
    return absl::InvalidArgumentError(absl::StrCat(
        QuoteValue(address), " is not host:port or [v6]:port with a port from 0 to 65535"));
  }
  return HostPort{std::string(endpoint->host), static_cast<int>(*port)};
}

bool IsUpstreamTarget(absl::string_view target) {
  if (target.empty() || !IsVisibleAscii(target)) return false;
  if (absl::ConsumePrefix(&target, "unix:")) return IsUnixPath(target);
  if (absl::ConsumePrefix(&target, "ipv4:")) return IsAddressList(target, /*ipv6=*/false);
  if (absl::ConsumePrefix(&target, "ipv6:")) return IsAddressList(target, /*ipv6=*/true);
  if (absl::ConsumePrefix(&target, "dns:")) {
    // dns://dns-server/host:port names the DNS server to ask; dns:/// does not.
    if (absl::ConsumePrefix(&target, "//")) {
      const size_t slash = target.find('/');
      if (slash == absl::string_view::npos) return false;
      const absl::string_view dns_server = target.substr(0, slash);
      if (!dns_server.empty() && !IsDialEndpoint(dns_server)) return false;
      target.remove_prefix(slash + 1);
    }
    return IsDialEndpoint(target, /*port_optional=*/true);
  }
  return IsDialEndpoint(target);
}

bool IsListenAddress(absl::string_view address) {
  if (!IsVisibleAscii(address)) return false;
  if (absl::ConsumePrefix(&address, "unix:")) return IsUnixPath(address);
  return ParseHostPort(address).ok();
}

bool IsAdminAddress(absl::string_view address) { return ParseHostPort(address).ok(); }

std::optional<SocketAddress> ToSocketAddress(const HostPort& host_port) {
  SocketAddress address;
  const std::string& host = host_port.host;
  const auto port = htons(static_cast<uint16_t>(host_port.port));
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
  if (host.empty() || host == "0.0.0.0" || host == "*" || host == "localhost" ||
      inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    if (host == "localhost") v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (host.empty() || host == "0.0.0.0" || host == "*") v4->sin_addr.s_addr = htonl(INADDR_ANY);
    v4->sin_family = AF_INET;
    v4->sin_port = port;
    address.length = sizeof(*v4);
    return address;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = port;
    address.length = sizeof(*v6);
    return address;
  }
  return std::nullopt;
}

}  // namespace poolside
