#include "config/variables.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config/address.h"
#include "config/logging.h"
#include "config/value_text.h"

namespace poolside {
namespace {

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
    const std::optional<int64_t> value = ParseStrictInteger(text, kMin, kMax);
    if (value) config.*kField = static_cast<Field>(*value);
    return value.has_value();
  }
  static std::string Allowed() { return absl::StrCat("an integer from ", kMin, " to ", kMax); }
  static std::string Print(const Config& config) { return absl::StrCat(config.*kField); }
};

template <absl::Duration Config::*kField, int64_t kMin, int64_t kMax>
struct Seconds {
  static bool Parse(absl::string_view text, Config& config) {
    const std::optional<int64_t> value = ParseStrictInteger(text, kMin, kMax);
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
    const std::optional<int64_t> value = ParseStrictInteger(text, 0, kMax);
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
constexpr absl::string_view kForwarders[] = {"grpc", "frames"};
constexpr TextRule kAuthority = {IsAuthority,
                                 "empty, or a host[:port] without spaces or control characters"};

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
        "connection is back; false saves 3-6% of the CPU per call"),
    Define<OneOf<&Config::forwarder, kForwarders>>(
        "GRPC_FORWARDER", "forwarder",
        "grpc: every call forwarded as a grpc++ call (every feature); frames: relayed as HTTP/2 "
        "frames, far cheaper per call, without unix sockets, pool sizing, the fair share, "
        "outlier ejection or PoolAdmin yet (README)"),
    Define<Boolean<&Config::hold_pingpong_reads>>(
        "GRPC_HOLD_PINGPONG_READS", "hold-pingpong-reads",
        "in a ping-pong stream, post a side's next read with its next write (1 ms at most): "
        "fewer writes per message; false never delays a message that breaks the pattern"),
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

}  // namespace

absl::Span<const Variable> Variables() { return kVariables; }

absl::Status CheckVariableCombinations(const Config& config) {
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
          name, "=", QuoteValue(path), " is invalid: cannot read it: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckForwarderSupports(const Config& config) {
  if (config.forwarder != "frames") return absl::OkStatus();
  const std::pair<bool, absl::string_view> unsupported[] = {
      {absl::StartsWith(config.listen_addr, "unix:"), "a unix: GRPC_LISTEN_ADDR"},
      {absl::StartsWith(config.upstream_target, "unix:"), "a unix: GRPC_UPSTREAM_TARGET"},
      {config.pool_min > 0, "GRPC_CONNECTION_POOL_MIN (a pool sizing itself)"},
      {config.app_connection_max_share_percent < 100, "GRPC_APP_CONNECTION_MAX_SHARE_PERCENT"},
  };
  for (const auto& [set, what] : unsupported) {
    if (set) {
      return absl::InvalidArgumentError(absl::StrCat("GRPC_FORWARDER=frames does not support ",
                                                     what, " yet; use GRPC_FORWARDER=grpc"));
    }
  }
  return absl::OkStatus();
}

}  // namespace poolside
