// poolside's configuration: every GRPC_* environment variable, each also a
// --flag (flags win), validated once at start-up. Components receive their
// own slice of it (PoolOptions, ProxyOptions), never this struct as a global.
//
// The entry point of config/. Behind it, one file per idea:
//   variables.cc         the table of variables: names, defaults, validation
//   command_line.cc      flags and commands, ParseCommandLine, --help
//   address.h/.cc        the address grammar (targets, listen addresses)
//   effective_config.cc  --check-config's VAR=value printer
// Stateless functions; thread-safe.
#ifndef POOLSIDE_CONFIG_CONFIG_H_
#define POOLSIDE_CONFIG_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "config/address.h"
#include "config/unknown_variables.h"

namespace poolside {

struct Config {
  // Where the pool connects: host:port, dns:///host:port, ipv4:..., unix:///path.
  std::string upstream_target;
  // Where apps connect (host:port or unix:path).
  std::string listen_addr = "127.0.0.1:15001";
  // HTTP side port for /metrics, /healthz, /readyz, /pool.
  std::string admin_addr = "0.0.0.0:15090";
  // The pool's maximum; with pool_min below it, the pool sizes itself
  // between the two (pool/pool_sizer.h).
  int pool_size = 10;
  // 0 means pool_size: a fixed pool.
  int pool_min = 0;
  // Demand below a smaller pool's capacity for this long shrinks the pool.
  absl::Duration pool_scale_down = absl::Seconds(120);
  absl::Duration connection_timeout = absl::Seconds(30);
  absl::Duration health_check_interval = absl::Seconds(60);
  // Applied to both directions, on both the listening and the upstream side.
  int64_t max_message_bytes = 64 << 20;
  // :authority sent upstream; empty means the upstream target's own.
  std::string upstream_authority;
  absl::Duration shutdown_grace = absl::Seconds(25);
  // "grpc": probe each channel with grpc.health.v1.Health/Check;
  // "connectivity": judge channels by their connectivity state only.
  std::string health_check_mode = "grpc";
  // grpc.health.v1 service name to probe; empty means the server as a whole.
  std::string health_check_service;
  int health_check_timeout_ms = 1000;
  // Consecutive failed checks that mark a channel unhealthy.
  int health_check_unhealthy_threshold = 2;
  // Connections older than this (±10% jitter) are refreshed; 0 means never.
  absl::Duration connection_max_age = absl::ZeroDuration();
  // How often a DNS target is resolved again (also at once when a
  // connection is lost); the pool follows the addresses it finds.
  absl::Duration dns_refresh = absl::Seconds(10);
  // Streams one upstream connection is expected to carry, for utilization.
  int max_streams_per_connection = 100;
  // Distinct methods labelled in request metrics; the rest count as "other".
  int metrics_max_methods = 200;
  // Circuit breaking: calls forwarded at once (0 means no limit), and calls
  // waiting for a ready connection; past either a call fails at once.
  int max_concurrent_requests = 0;
  int max_pending_requests = 1024;
  // Consecutive UNAVAILABLE calls that eject a connection (0 turns ejection
  // off), and how long it stays out before it is probed.
  int outlier_consecutive_failures = 5;
  absl::Duration outlier_ejection = absl::Seconds(10);
  // Retry calls the upstream provably never saw (grpc's transparent retry,
  // waiting for the connection up to connection_timeout). Costs 3-6% more
  // CPU per call (bench/RESULTS.md); see pool/ARCHITECTURE.md.
  bool transparent_retry = true;
  // While a stream is ping-pong, a side's next read waits (1 ms at most) for
  // that side's next write, so that grpc's window update rides with it; see
  // proxy/ARCHITECTURE.md, "Held reads".
  bool hold_pingpong_reads = true;
  // "grpc": each call forwarded as a grpc++ call; "frames": relayed as HTTP/2
  // frames (proxy/frame_forwarder.h says what that mode lacks).
  std::string forwarder = "grpc";
  // TLS to the upstream. The files are re-read when they change (Kubernetes
  // rotates mounted secrets) and the pool rolls its connections over.
  bool upstream_tls = false;
  // PEM root certificates; empty means the system's roots.
  std::string upstream_ca_file;
  // PEM client certificate chain and key, for mTLS; both or neither.
  std::string upstream_cert_file;
  std::string upstream_key_file;
  // Name the upstream's certificate must match (and SNI); empty means the
  // target's host.
  std::string upstream_server_name;
  // Completion-queue threads serving forwarded calls; 0 means derived from the
  // cgroup CPU quota and the usable cores at start (config/cpu_limit.h).
  int worker_threads = 0;
  // Hostile peers (SECURITY.md).
  // Memory budget given to grpc's listening server (a ResourceQuota); 0 means
  // derived: 3/4 of the container's memory limit, or grpc's default (none)
  // outside a memory-limited container.
  int64_t memory_limit_bytes = 0;
  // Relay app connections through the frame screen (rapid reset, CONTINUATION,
  // PING and SETTINGS floods); false lets grpc listen on its own. On by
  // default: a sidecar pushed into an OOM kill takes every app of the pod
  // with it (SECURITY.md, "When to turn it off").
  bool frame_screen = true;
  // Longest header block (HEADERS + CONTINUATION) an app may send.
  int max_header_block_bytes = 64 << 10;
  // Streams an app connection opens in a window before the rapid-reset rule
  // (more than half reset) applies; 0 turns the rule off.
  int rapid_reset_min_streams = 500;
  // App connections open at once (frame screen only).
  int max_app_connections = 1000;
  // SETTINGS_MAX_CONCURRENT_STREAMS advertised to each app connection.
  int max_streams_per_app_connection = 1000;
  // Share (percent) of the pool's upstream streams (pool_size x
  // max_streams_per_connection) one app connection may hold; 100 means no
  // bound beyond the pool itself.
  int app_connection_max_share_percent = 100;
  // spdlog level name: trace, debug, info, warn, error, critical, off.
  std::string log_level = "info";
  // "text" or "json".
  std::string log_format = "text";
};

// What the command line asked for besides configuration.
// kStrict only modifies kCheckConfig; it is never the parsed command.
enum class Command { kRun, kHelp, kVersion, kCheckConfig, kStrict };

struct ParsedCommandLine {
  Command command = Command::kRun;
  Config config;
  // GRPC_* variables in the environment that nothing reads: warned about at
  // start; with --check-config --strict they fail the parse instead.
  std::vector<UnknownVariable> unknown_variables;
};

// Reads `env` (name -> value, normally the process environment) and then
// `args` (argv without argv[0]); a --flag overrides its variable. Every value
// is validated. On failure the status message is one line naming the variable
// (or flag), the value and what is allowed, ready to print before exit 2.
absl::StatusOr<ParsedCommandLine> ParseCommandLine(const std::map<std::string, std::string>& env,
                                                   const std::vector<std::string>& args);

// The process environment as a map, for ParseCommandLine.
std::map<std::string, std::string> ProcessEnvironment();

// --help text: every variable, its flag, default and meaning.
std::string HelpText();

// --check-config output: the effective configuration, one VAR=value per line.
std::string DescribeConfig(const Config& config);

// GRPC_FORWARDER=frames refuses the settings it cannot honour yet (rather
// than ignore what the operator asked for); InvalidArgument names the first.
// Checked at start and by --check-config, not by ParseCommandLine: each such
// setting is valid on its own.
absl::Status CheckForwarderSupports(const Config& config);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_CONFIG_H_
