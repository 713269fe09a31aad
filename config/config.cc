#include "config/config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <type_traits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "config/logging.h"

namespace poolside {
namespace {

// Decimal digits with at most a leading '-': what SimpleAtoi would also
// accept minus its leniency (spaces, '+').
bool IsStrictInteger(absl::string_view text) {
  absl::ConsumePrefix(&text, "-");
  return !text.empty() && std::all_of(text.begin(), text.end(), absl::ascii_isdigit);
}

std::optional<int64_t> ParseInteger(absl::string_view text, int64_t min, int64_t max) {
  int64_t value = 0;
  if (!IsStrictInteger(text) || !absl::SimpleAtoi(text, &value) || value < min || value > max) {
    return std::nullopt;
  }
  return value;
}

// Printable ASCII other than space: what may go in an address or :authority.
bool IsVisibleAscii(absl::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c > ' ' && c < '\x7f'; });
}

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

// host:port or [v6]:port, for connecting: the port may not be 0, and may be
// left out only if `port_optional` (the dns resolver defaults it to 443).
bool IsDialEndpoint(absl::string_view text, bool port_optional = false) {
  const std::optional<Endpoint> endpoint = SplitEndpoint(text);
  if (!endpoint || !IsValidHost(*endpoint)) return false;
  if (!endpoint->port) return port_optional;
  return ParseInteger(*endpoint->port, 1, 65535).has_value();
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

// Empty means "the target's own"; anything else goes out as a header value.
bool IsAuthority(absl::string_view authority) { return IsVisibleAscii(authority); }

// Value types. Each turns a variable's text into its Config field (false if the text is
// not allowed), says what is allowed, and prints the field back in a form
// Parse accepts. They are stateless so that the table can point at them.

template <auto kField, int64_t kMin, int64_t kMax>
struct Integer {
  using Field = std::remove_reference_t<decltype(std::declval<Config&>().*kField)>;
  static_assert(kMin >= std::numeric_limits<Field>::min() &&
                kMax <= std::numeric_limits<Field>::max());

  static bool Parse(absl::string_view text, Config& config) {
    const std::optional<int64_t> value = ParseInteger(text, kMin, kMax);
    if (value) config.*kField = static_cast<Field>(*value);
    return value.has_value();
  }
  static std::string Allowed() { return absl::StrCat("an integer from ", kMin, " to ", kMax); }
  static std::string Print(const Config& config) { return absl::StrCat(config.*kField); }
};

template <absl::Duration Config::*kField, int64_t kMin, int64_t kMax>
struct Seconds {
  static bool Parse(absl::string_view text, Config& config) {
    const std::optional<int64_t> value = ParseInteger(text, kMin, kMax);
    if (value) config.*kField = absl::Seconds(*value);
    return value.has_value();
  }
  static std::string Allowed() {
    return absl::StrCat("a whole number of seconds from ", kMin, " to ", kMax);
  }
  static std::string Print(const Config& config) {
    return absl::StrCat(absl::ToInt64Seconds(config.*kField));
  }
};

// GRPC_MEMORY_LIMIT_BYTES: 0 (derived), or a budget grpc can work within.
struct MemoryLimit {
  static constexpr int64_t kMin = 16 << 20;
  static constexpr int64_t kMax = int64_t{1} << 40;
  static bool Parse(absl::string_view text, Config& config) {
    const std::optional<int64_t> value = ParseInteger(text, 0, kMax);
    if (!value || (*value != 0 && *value < kMin)) return false;
    config.memory_limit_bytes = *value;
    return true;
  }
  static std::string Allowed() {
    return absl::StrCat("0 (derived from the container's memory limit) or a number of bytes from ",
                        kMin, " to ", kMax);
  }
  static std::string Print(const Config& config) { return absl::StrCat(config.memory_limit_bytes); }
};

struct TextRule {
  bool (*valid)(absl::string_view text);
  absl::string_view allowed;
};

template <std::string Config::*kField, const TextRule& kRule>
struct Text {
  static bool Parse(absl::string_view text, Config& config) {
    if (!kRule.valid(text)) return false;
    config.*kField = std::string(text);
    return true;
  }
  static std::string Allowed() { return std::string(kRule.allowed); }
  static std::string Print(const Config& config) { return config.*kField; }
};

template <bool Config::*kField>
struct Boolean {
  static bool Parse(absl::string_view text, Config& config) {
    if (text == "true" || text == "1") {
      config.*kField = true;
    } else if (text == "false" || text == "0") {
      config.*kField = false;
    } else {
      return false;
    }
    return true;
  }
  static std::string Allowed() { return "true, false, 1 or 0"; }
  static std::string Print(const Config& config) { return config.*kField ? "true" : "false"; }
};

template <std::string Config::*kField, const auto& kChoices>
struct OneOf {
  static bool Parse(absl::string_view text, Config& config) {
    if (std::find(std::begin(kChoices), std::end(kChoices), text) == std::end(kChoices)) {
      return false;
    }
    config.*kField = std::string(text);
    return true;
  }
  static std::string Allowed() { return absl::StrCat("one of ", absl::StrJoin(kChoices, ", ")); }
  static std::string Print(const Config& config) { return config.*kField; }
};

constexpr TextRule kUpstreamTarget = {
    IsUpstreamTarget,
    "a gRPC target (host:port, dns:///host[:port], ipv4:addr:port[,...], "
    "ipv6:[addr]:port[,...] or unix:///path)"};
constexpr TextRule kListenAddress = {IsListenAddress,
                                     "host:port or [v6]:port (port 0 to 65535), or unix:path"};
constexpr TextRule kAdminAddress = {IsAdminAddress, "host:port or [v6]:port (port 0 to 65535)"};
constexpr TextRule kFilePath = {IsVisibleAscii, "empty, or a file path without spaces"};
constexpr TextRule kHealthService = {IsAuthority, "empty, or a service name without spaces"};
constexpr absl::string_view kHealthCheckModes[] = {"grpc", "connectivity"};
constexpr TextRule kAuthority = {IsAuthority,
                                 "empty, or a host[:port] without spaces or control characters"};

enum class Presence { kOptional, kRequired };

// One setting: its environment variable, its flag, and how its value reads.
struct Variable {
  absl::string_view env;
  absl::string_view flag;  // Without the leading "--".
  absl::string_view meaning;
  Presence presence;
  bool (*parse)(absl::string_view text, Config& config);
  std::string (*allowed)();
  std::string (*print)(const Config& config);
};

template <typename Value>
constexpr Variable Define(absl::string_view env, absl::string_view flag, absl::string_view meaning,
                          Presence presence = Presence::kOptional) {
  return {env, flag, meaning, presence, &Value::Parse, &Value::Allowed, &Value::Print};
}

// Every setting poolside has, in the order --help and --check-config list
// them. Defaults are Config's own.
constexpr Variable kVariables[] = {
    Define<Text<&Config::upstream_target, kUpstreamTarget>>(
        "GRPC_UPSTREAM_TARGET", "upstream-target",
        "the upstream's gRPC target, e.g. dns:///my-service:50051", Presence::kRequired),
    Define<Text<&Config::listen_addr, kListenAddress>>("GRPC_LISTEN_ADDR", "listen-addr",
                                                       "where apps connect"),
    Define<Text<&Config::admin_addr, kAdminAddress>>(
        "GRPC_ADMIN_ADDR", "admin-addr",
        "HTTP side port serving /metrics, /healthz, /readyz and /pool"),
    Define<Integer<&Config::pool_size, 1, 1000>>(
        "GRPC_CONNECTION_POOL_SIZE", "connection-pool-size",
        "upstream connections in the pool; its maximum when GRPC_CONNECTION_POOL_MIN is lower"),
    Define<Integer<&Config::pool_min, 0, 1000>>(
        "GRPC_CONNECTION_POOL_MIN", "connection-pool-min",
        "fewest connections a pool sizing itself keeps; 0 means GRPC_CONNECTION_POOL_SIZE "
        "(a fixed pool)"),
    Define<Seconds<&Config::pool_scale_down, 1, 86400>>(
        "GRPC_POOL_SCALE_DOWN_SECS", "pool-scale-down-secs",
        "how long demand must stay below what a smaller pool carries before the pool drains "
        "a connection"),
    Define<Seconds<&Config::connection_timeout, 1, 3600>>(
        "GRPC_CONNECTION_TIMEOUT_SECS", "connection-timeout-secs",
        "how long a call may wait for a ready connection; also the connect timeout"),
    Define<Seconds<&Config::health_check_interval, 1, 86400>>(
        "GRPC_HEALTH_CHECK_INTERVAL_SECS", "health-check-interval-secs",
        "period of the background health check"),
    Define<Integer<&Config::max_message_bytes, 1, std::numeric_limits<int32_t>::max()>>(
        "GRPC_MAX_MESSAGE_BYTES", "max-message-bytes",
        "largest message forwarded, in either direction"),
    Define<Text<&Config::upstream_authority, kAuthority>>(
        "GRPC_UPSTREAM_AUTHORITY", "upstream-authority",
        ":authority sent upstream; empty means the upstream target's own"),
    Define<Seconds<&Config::shutdown_grace, 0, 3600>>(
        "GRPC_SHUTDOWN_GRACE_SECS", "shutdown-grace-secs",
        "on SIGTERM, how long calls in flight may take to finish before they are cancelled"),
    Define<OneOf<&Config::health_check_mode, kHealthCheckModes>>(
        "GRPC_HEALTH_CHECK_MODE", "health-check-mode",
        "grpc: probe each connection with grpc.health.v1.Health/Check; connectivity: state only"),
    Define<Text<&Config::health_check_service, kHealthService>>(
        "GRPC_HEALTH_CHECK_SERVICE", "health-check-service",
        "grpc.health.v1 service name to probe; empty means the server as a whole"),
    Define<Integer<&Config::health_check_timeout_ms, 1, 60000>>(
        "GRPC_HEALTH_CHECK_TIMEOUT_MS", "health-check-timeout-ms",
        "deadline of each health-check probe, in milliseconds"),
    Define<Integer<&Config::health_check_unhealthy_threshold, 1, 100>>(
        "GRPC_HEALTH_CHECK_UNHEALTHY_THRESHOLD", "health-check-unhealthy-threshold",
        "consecutive failed checks that mark a connection unhealthy"),
    Define<Seconds<&Config::connection_max_age, 0, 30 * 86400>>(
        "GRPC_CONNECTION_MAX_AGE_SECS", "connection-max-age-secs",
        "refresh connections older than this (with 10% jitter), one at a time; 0 means never"),
    Define<Seconds<&Config::dns_refresh, 1, 3600>>(
        "GRPC_DNS_REFRESH_SECS", "dns-refresh-secs",
        "how often a DNS target is resolved again (and at once when a connection is lost); the "
        "pool spreads over, and follows, the addresses found"),
    Define<Integer<&Config::max_streams_per_connection, 1, 1000000>>(
        "GRPC_MAX_STREAMS_PER_CONNECTION", "max-streams-per-connection",
        "concurrent calls one upstream connection is expected to carry (for utilization)"),
    Define<Integer<&Config::metrics_max_methods, 1, 100000>>(
        "GRPC_METRICS_MAX_METHODS", "metrics-max-methods",
        "distinct methods labelled in request metrics; further ones count as \"other\""),
    Define<Integer<&Config::max_concurrent_requests, 0, 10000000>>(
        "GRPC_MAX_CONCURRENT_REQUESTS", "max-concurrent-requests",
        "calls forwarded at once; past it a call fails with RESOURCE_EXHAUSTED; 0 means no limit"),
    Define<Integer<&Config::max_pending_requests, 0, 10000000>>(
        "GRPC_MAX_PENDING_REQUESTS", "max-pending-requests",
        "calls waiting for a ready connection; past it a call fails with UNAVAILABLE"),
    Define<Integer<&Config::outlier_consecutive_failures, 0, 1000>>(
        "GRPC_OUTLIER_CONSECUTIVE_FAILURES", "outlier-consecutive-failures",
        "consecutive UNAVAILABLE calls that take a connection out of rotation; 0 means never"),
    Define<Seconds<&Config::outlier_ejection, 1, 3600>>(
        "GRPC_OUTLIER_EJECTION_SECS", "outlier-ejection-secs",
        "how long an ejected connection stays out before a health check may return it"),
    Define<Boolean<&Config::transparent_retry>>(
        "GRPC_TRANSPARENT_RETRY", "transparent-retry",
        "retry calls the upstream provably never saw (refused, above a GOAWAY) once the "
        "connection is back; false saves about a tenth of the CPU per call"),
    Define<Boolean<&Config::upstream_tls>>("GRPC_UPSTREAM_TLS", "upstream-tls",
                                           "connect to the upstream with TLS"),
    Define<Text<&Config::upstream_ca_file, kFilePath>>(
        "GRPC_UPSTREAM_CA_FILE", "upstream-ca-file",
        "PEM root certificates for the upstream; empty means the system's roots"),
    Define<Text<&Config::upstream_cert_file, kFilePath>>(
        "GRPC_UPSTREAM_CERT_FILE", "upstream-cert-file",
        "PEM client certificate chain for mTLS (with GRPC_UPSTREAM_KEY_FILE)"),
    Define<Text<&Config::upstream_key_file, kFilePath>>(
        "GRPC_UPSTREAM_KEY_FILE", "upstream-key-file",
        "PEM private key for mTLS (with GRPC_UPSTREAM_CERT_FILE)"),
    Define<Text<&Config::upstream_server_name, kAuthority>>(
        "GRPC_UPSTREAM_SERVER_NAME", "upstream-server-name",
        "name the upstream certificate must match, also sent as SNI; empty means the target's"),
    Define<Integer<&Config::worker_threads, 0, 256>>(
        "GRPC_WORKER_THREADS", "worker-threads",
        "threads serving forwarded calls; 0: from the cgroup CPU quota, else one per core"),
    // Hostile peers (SECURITY.md).
    Define<MemoryLimit>(
        "GRPC_MEMORY_LIMIT_BYTES", "memory-limit-bytes",
        "memory budget for grpc's buffers on the app side (a ResourceQuota); 0 means "
        "3/4 of the container's memory limit, or none outside a container"),
    Define<Boolean<&Config::frame_screen>>(
        "GRPC_FRAME_SCREEN", "frame-screen",
        "screen the HTTP/2 frames apps send (rapid reset, CONTINUATION, PING and SETTINGS "
        "floods) before grpc reads them"),
    Define<Integer<&Config::max_header_block_bytes, 1024, 16 << 20>>(
        "GRPC_MAX_HEADER_BLOCK_BYTES", "max-header-block-bytes",
        "longest header block (HEADERS + CONTINUATION) an app may send; longer closes the "
        "connection (frame screen)"),
    Define<Integer<&Config::rapid_reset_min_streams, 0, 1000000>>(
        "GRPC_RAPID_RESET_MIN_STREAMS", "rapid-reset-min-streams",
        "an app connection that opens at least this many streams in 10 s and resets more than "
        "half is closed (frame screen); 0 turns the rule off"),
    Define<Integer<&Config::max_app_connections, 1, 1000000>>(
        "GRPC_MAX_APP_CONNECTIONS", "max-app-connections",
        "app connections open at once; further ones are closed at once (frame screen)"),
    Define<Integer<&Config::max_streams_per_app_connection, 1, 1000000>>(
        "GRPC_MAX_STREAMS_PER_APP_CONNECTION", "max-streams-per-app-connection",
        "concurrent calls one app connection may have open (HTTP/2 MAX_CONCURRENT_STREAMS)"),
    Define<Integer<&Config::app_connection_max_share_percent, 1, 100>>(
        "GRPC_APP_CONNECTION_MAX_SHARE_PERCENT", "app-connection-max-share-percent",
        "percent of the pool's upstream streams (pool size x max streams per connection) one "
        "app connection may hold; its further calls wait for its own to end"),
    Define<OneOf<&Config::log_level, kLogLevelNames>>("GRPC_LOG_LEVEL", "log-level",
                                                      "least severe level logged"),
    Define<OneOf<&Config::log_format, kLogFormatNames>>(
        "GRPC_LOG_FORMAT", "log-format", "stderr log lines as plain text or one JSON object each"),
};

// Flags that ask for something other than running. --help and --version
// answer even when the configuration is wrong or missing.
struct CommandFlag {
  absl::string_view flag;
  absl::string_view short_flag;  // Empty if there is none.
  Command command;
  absl::string_view meaning;
};

constexpr CommandFlag kCommandFlags[] = {
    {"--check-config", "", Command::kCheckConfig,
     "validate the configuration, print it as VAR=value lines and exit"},
    {"--strict", "", Command::kStrict,
     "with --check-config: also fail on GRPC_* variables nothing reads (typos)"},
    {"--help", "-h", Command::kHelp, "print this help and exit"},
    {"--version", "", Command::kVersion, "print the version and exit"},
};

const CommandFlag* FindCommandFlag(absl::string_view name) {
  for (const CommandFlag& command : kCommandFlags) {
    if (name == command.flag || (!command.short_flag.empty() && name == command.short_flag)) {
      return &command;
    }
  }
  return nullptr;
}

const Variable* FindVariableFlag(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "--")) return nullptr;
  for (const Variable& variable : kVariables) {
    if (name == variable.flag) return &variable;
  }
  return nullptr;
}

// Quotes a value for a one-line message, escaping anything unprintable.
std::string Quote(absl::string_view value) {
  return absl::StrCat("\"", absl::CHexEscape(value), "\"");
}

// Rules that involve more than one variable.
absl::Status CheckCombination(const Config& config) {
  if (config.pool_min > config.pool_size) {
    return absl::InvalidArgumentError(absl::StrCat("GRPC_CONNECTION_POOL_MIN (", config.pool_min,
                                                   ") is above GRPC_CONNECTION_POOL_SIZE (",
                                                   config.pool_size, "), the pool's maximum"));
  }
  const bool has_cert = !config.upstream_cert_file.empty();
  const bool has_key = !config.upstream_key_file.empty();
  if (has_cert != has_key) {
    return absl::InvalidArgumentError(
        "GRPC_UPSTREAM_CERT_FILE and GRPC_UPSTREAM_KEY_FILE must be set together (mTLS needs "
        "both)");
  }
  const bool has_tls_setting =
      has_cert || !config.upstream_ca_file.empty() || !config.upstream_server_name.empty();
  if (has_tls_setting && !config.upstream_tls) {
    return absl::InvalidArgumentError(
        "GRPC_UPSTREAM_CA_FILE, _CERT_FILE, _KEY_FILE and _SERVER_NAME need "
        "GRPC_UPSTREAM_TLS=true; poolside never falls back to plaintext silently");
  }
  for (const auto& [name, path] : {std::pair<absl::string_view, const std::string&>{
                                       "GRPC_UPSTREAM_CA_FILE", config.upstream_ca_file},
                                   {"GRPC_UPSTREAM_CERT_FILE", config.upstream_cert_file},
                                   {"GRPC_UPSTREAM_KEY_FILE", config.upstream_key_file}}) {
    if (!path.empty() && access(path.c_str(), R_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, "=", Quote(path), " is invalid: cannot read it: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ParsedCommandLine> ParseCommandLine(const std::map<std::string, std::string>& env,
                                                   const std::vector<std::string>& args) {
  // First only sort the arguments out: which commands were asked for, and the
  // last value given to each flag. Errors wait until we know that neither
  // --help nor --version was asked for.
  std::set<Command> commands;
  std::optional<std::string> flag_values[std::size(kVariables)];
  absl::Status argument_error;
  const auto fail = [&argument_error](std::string message) {
    if (argument_error.ok()) argument_error = absl::InvalidArgumentError(std::move(message));
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const absl::string_view arg = args[i];
    const size_t equals = arg.find('=');
    const absl::string_view name = arg.substr(0, equals);
    if (const CommandFlag* command = FindCommandFlag(name)) {
      if (equals == absl::string_view::npos) {
        commands.insert(command->command);
      } else {
        fail(absl::StrCat(name, " takes no value"));
      }
      continue;
    }
    const Variable* variable = FindVariableFlag(name);
    if (variable == nullptr) {
      fail(absl::StrCat(absl::StartsWith(arg, "-") ? "unknown flag " : "unexpected argument ",
                        Quote(name), "; see --help"));
      continue;
    }
    std::optional<std::string>& value = flag_values[variable - kVariables];
    if (equals != absl::string_view::npos) {
      value = std::string(arg.substr(equals + 1));
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      fail(absl::StrCat(name, " requires a value"));
    }
  }

  ParsedCommandLine parsed;
  for (Command command : {Command::kHelp, Command::kVersion}) {
    if (commands.count(command) > 0) {
      parsed.command = command;
      return parsed;
    }
  }
  if (!argument_error.ok()) return argument_error;
  if (commands.count(Command::kCheckConfig) > 0) parsed.command = Command::kCheckConfig;
  const bool strict = commands.count(Command::kStrict) > 0;
  if (strict && parsed.command != Command::kCheckConfig) {
    return absl::InvalidArgumentError("--strict goes with --check-config");
  }
  std::vector<absl::string_view> known;
  for (const Variable& variable : kVariables) known.push_back(variable.env);
  parsed.unknown_variables = FindUnknownVariables(env, known);
  if (strict && !parsed.unknown_variables.empty()) {
    return absl::InvalidArgumentError(DescribeUnknownVariable(parsed.unknown_variables.front()));
  }

  for (size_t i = 0; i < std::size(kVariables); ++i) {
    const Variable& variable = kVariables[i];
    std::string source;
    absl::string_view value;
    if (flag_values[i]) {
      source = absl::StrCat("--", variable.flag);
      value = *flag_values[i];
    } else if (auto it = env.find(std::string(variable.env)); it != env.end()) {
      source = std::string(variable.env);
      value = it->second;
    } else if (variable.presence == Presence::kRequired) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable.env, " is required: ", variable.meaning));
    } else {
      continue;
    }
    if (!variable.parse(value, parsed.config)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, "=", Quote(value), " is invalid: expected ", variable.allowed()));
    }
  }
  if (absl::Status combined = CheckCombination(parsed.config); !combined.ok()) return combined;
  return parsed;
}

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const absl::string_view text = *entry;
    const size_t equals = text.find('=');
    if (equals == absl::string_view::npos) continue;
    // Like getenv, the first of duplicate entries wins.
    env.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return env;
}

std::string HelpText() {
  const Config defaults;
  std::string help =
      "Usage: poolside [--FLAG=VALUE | --FLAG VALUE]... [--check-config [--strict] | --help | "
      "--version]\n"
      "\n"
      "poolside is a gRPC connection-pooling sidecar proxy. Each setting below is an\n"
      "environment variable and a flag; the flag wins.\n"
      "\n"
      "Settings:\n";
  for (const Variable& variable : kVariables) {
    const std::string default_value = variable.print(defaults);
    const std::string presence = variable.presence == Presence::kRequired ? "required"
                                 : default_value.empty()                  ? "default: empty"
                                                         : absl::StrCat("default: ", default_value);
    absl::StrAppend(&help, "  --", variable.flag, ", ", variable.env, " (", presence, ")\n",
                    "      ", variable.meaning, "\n", "      allowed: ", variable.allowed(), "\n");
  }
  absl::StrAppend(&help, "\nCommands:\n");
  for (const CommandFlag& command : kCommandFlags) {
    const std::string names = command.short_flag.empty()
                                  ? std::string(command.flag)
                                  : absl::StrCat(command.short_flag, ", ", command.flag);
    absl::StrAppend(&help, absl::StrFormat("  %-18s%s\n", names, command.meaning));
  }
  return help;
}

std::string DescribeConfig(const Config& config) {
  std::string description;
  for (const Variable& variable : kVariables) {
    absl::StrAppend(&description, variable.env, "=", variable.print(config), "\n");
  }
  return description;
}

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const std::optional<Endpoint> endpoint = SplitEndpoint(address);
  const std::optional<int64_t> port =
      endpoint && endpoint->port ? ParseInteger(*endpoint->port, 0, 65535) : std::nullopt;
  if (!port || !IsValidHost(*endpoint)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(address), " is not host:port or [v6]:port with a port from 0 to 65535"));
  }
  return HostPort{std::string(endpoint->host), static_cast<int>(*port)};
}

}  // namespace poolside
