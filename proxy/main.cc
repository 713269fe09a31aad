// poolside: wires configuration, the upstream pool, the admin service and the
// forwarding server together, then waits for SIGTERM/SIGINT to drain.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "admin/admin_http_server.h"
#include "admin/admin_service.h"
#include "config/config.h"
#include "config/cpu_limit.h"
#include "config/logging.h"
#include "config/memory_limit.h"
#include "metrics/poolside_metrics.h"
#include "pool/address_tracker.h"
#include "pool/channel_factory.h"
#include "pool/channel_pool.h"
#include "pool/health_monitor.h"
#include "pool/pool_sizer.h"
#include "pool/resolver.h"
#include "pool/upstream_target.h"
#include "proxy/forwarding_server.h"
#include "proxy/frame_forwarder.h"
#include "proxy/grpc_logging.h"
#include "proxy/grpc_runtime.h"
#include "proxy/heap_release.h"

namespace {

// How long one DNS lookup of the upstream may take (start-up included).
constexpr absl::Duration kResolveTimeout = absl::Seconds(2);

// Each component gets its own slice of the configuration.

poolside::UpstreamChannelOptions ChannelOptionsFrom(const poolside::Config& config) {
  poolside::UpstreamChannelOptions options;
  options.target = config.upstream_target;
  options.authority = config.upstream_authority;
  options.max_message_bytes = config.max_message_bytes;
  options.tls = config.upstream_tls;
  options.transparent_retries = config.transparent_retry;
  options.ca_file = config.upstream_ca_file;
  options.cert_file = config.upstream_cert_file;
  options.key_file = config.upstream_key_file;
  options.server_name = config.upstream_server_name;
  return options;
}

poolside::PoolOptions PoolOptionsFrom(const poolside::Config& config) {
  poolside::PoolOptions options;
  options.target = config.upstream_target;
  options.size = config.pool_size;
  options.min_size = config.pool_min;
  options.max_streams_per_connection = config.max_streams_per_connection;
  options.outlier_consecutive_failures = config.outlier_consecutive_failures;
  options.outlier_ejection = config.outlier_ejection;
  // The forwarding threads drain the connectivity watches too: a thread of
  // the pool's own waiting in grpc would poll the forwarded connections.
  options.watch_on_caller_queues = true;
  return options;
}

// Both the address tracker and the sizer move the pool with these.
poolside::RebalanceTiming RebalanceTimingFrom(const poolside::Config& config) {
  return {config.connection_timeout, config.shutdown_grace};
}

// Null for a target whose addresses are literal: nothing to follow.
std::unique_ptr<poolside::AddressTracker> NewAddressTracker(const poolside::Config& config,
                                                            poolside::ChannelPool& pool) {
  absl::StatusOr<poolside::UpstreamTarget> target =
      poolside::ParseUpstreamTarget(config.upstream_target);
  if (!target.ok() || target->kind != poolside::UpstreamTarget::Kind::kDns) return nullptr;
  absl::StatusOr<std::unique_ptr<poolside::Resolver>> resolver =
      poolside::NewResolver(*target, kResolveTimeout);
  if (!resolver.ok()) {
    spdlog::warn(
        "pool: cannot resolve {} here ({}); grpc resolves it, every connection to the "
        "address it picks",
        config.upstream_target, std::string(resolver.status().message()));
    return nullptr;
  }
  poolside::AddressTrackerOptions options;
  options.target = config.upstream_target;
  options.refresh_interval = config.dns_refresh;
  options.rebalance = RebalanceTimingFrom(config);
  return std::make_unique<poolside::AddressTracker>(pool, *std::move(resolver), options);
}

poolside::PoolSizerOptions SizerOptionsFrom(const poolside::Config& config) {
  poolside::PoolSizerOptions options;
  options.scale_down = config.pool_scale_down;
  options.rebalance = RebalanceTimingFrom(config);
  return options;
}

poolside::HealthCheckOptions HealthOptionsFrom(
    const poolside::Config& config, const poolside::UpstreamChannelOptions& channel_options) {
  poolside::HealthCheckOptions options;
  options.interval = config.health_check_interval;
  options.probe_with_grpc_health = config.health_check_mode == "grpc";
  options.service = config.health_check_service;
  options.probe_timeout = absl::Milliseconds(config.health_check_timeout_ms);
  options.unhealthy_threshold = config.health_check_unhealthy_threshold;
  options.replace_threshold = 2 * config.health_check_unhealthy_threshold;
  options.max_connection_age = config.connection_max_age;
  options.connect_timeout = config.connection_timeout;
  options.credential_files = poolside::CredentialFiles(channel_options);
  return options;
}

// GRPC_MEMORY_LIMIT_BYTES, or its default from the container's limit.
int64_t EffectiveMemoryLimit(const poolside::Config& config) {
  if (config.memory_limit_bytes > 0) return config.memory_limit_bytes;
  return poolside::DefaultMemoryLimitBytes(poolside::ContainerMemoryLimitBytes());
}

// REQUIRES: config.worker_threads > 0 (resolved by Run).
poolside::ProxyOptions ProxyOptionsFrom(const poolside::Config& config) {
  poolside::ProxyOptions options;
  options.listen_addr = config.listen_addr;
  options.max_message_bytes = config.max_message_bytes;
  options.connection_timeout = config.connection_timeout;
  options.wait_for_ready = config.transparent_retry;
  options.hold_pingpong_reads = config.hold_pingpong_reads;
  options.threads = config.worker_threads;
  options.max_concurrent_requests = config.max_concurrent_requests;
  options.max_pending_requests = config.max_pending_requests;
  options.frame_screen = config.frame_screen;
  options.screen_limits.max_header_block_bytes = config.max_header_block_bytes;
  options.screen_limits.rapid_reset_min_streams = config.rapid_reset_min_streams;
  options.max_app_connections = config.max_app_connections;
  options.max_streams_per_app_connection = config.max_streams_per_app_connection;
  options.memory_limit_bytes = EffectiveMemoryLimit(config);
  // At 100% the share is the pool's whole capacity, which a connection past
  // it could only queue in grpc's transports anyway: no bound, and no lock
  // on the hot path.
  if (config.app_connection_max_share_percent < 100) {
    const int64_t capacity =
        static_cast<int64_t>(config.pool_size) * config.max_streams_per_connection;
    options.max_upstream_calls_per_app_connection =
        std::max<int64_t>(1, capacity * config.app_connection_max_share_percent / 100);
  }
  return options;
}

// How often the main thread looks at the resident size. A burst's memory is
// back within this period plus the trim; in steady state a look is one read
// of /proc/self/statm.
constexpr int kHeapReleasePeriodSecs = 5;

// The side port (/metrics, /healthz, /readyz, /pool) over `snapshot`'s view of
// the pool; null, with the error printed, when it cannot listen.
std::unique_ptr<poolside::AdminHttpServer> StartAdminHttp(
    const poolside::Config& config, poolside::PoolsideMetrics& metrics,
    std::function<poolside::PoolSnapshot()> snapshot) {
  poolside::AdminHttpOptions options;
  options.address = config.admin_addr;
  poolside::AdminHttpHandlers handlers;
  handlers.metrics_text = [&metrics, snapshot] {
    metrics.UpdateFromPool(snapshot());
    return metrics.Serialize();
  };
  handlers.pool_snapshot = std::move(snapshot);
  auto server = std::make_unique<poolside::AdminHttpServer>(options, handlers);
  if (absl::Status started = server->Start(); !started.ok()) {
    std::fprintf(stderr, "poolside: GRPC_ADMIN_ADDR: %s\n", std::string(started.message()).c_str());
    return nullptr;
  }
  return server;
}

// GRPC_FORWARDER=frames: the relay serves the listen port, the admin port
// reports it; no grpc channel exists (proxy/frame_forwarder.h).
int RunFrames(const poolside::Config& config, const sigset_t& stop_signals) {
  absl::StatusOr<poolside::UpstreamTarget> target =
      poolside::ParseUpstreamTarget(config.upstream_target);
  if (!target.ok()) {
    std::fprintf(stderr, "poolside: GRPC_UPSTREAM_TARGET: %s\n",
                 std::string(target.status().message()).c_str());
    return 1;
  }
  poolside::FrameForwarderOptions options;
  if (target->kind == poolside::UpstreamTarget::Kind::kDns) {
    absl::StatusOr<std::unique_ptr<poolside::Resolver>> resolver =
        poolside::NewResolver(*target, kResolveTimeout);
    if (!resolver.ok()) {
      std::fprintf(stderr, "poolside: GRPC_UPSTREAM_TARGET: %s\n",
                   std::string(resolver.status().message()).c_str());
      return 1;
    }
    options.resolver = *std::move(resolver);
    options.tracking.target = config.upstream_target;
    options.tracking.refresh_interval = config.dns_refresh;
    options.tracking.rebalance = RebalanceTimingFrom(config);
  } else {
    options.backends = target->addresses;
  }
  poolside::MetricsOptions metrics_options;
  metrics_options.version = POOLSIDE_VERSION;
  metrics_options.max_methods = config.metrics_max_methods;
  poolside::PoolsideMetrics metrics(metrics_options);
  options.listen_addr = config.listen_addr;
  options.connections = config.pool_size;
  options.connection_wait = config.connection_timeout;
  options.authority = config.upstream_authority;
  if (options.authority.empty()) options.authority = target->default_authority;
  options.max_streams_per_app_connection = config.max_streams_per_app_connection;
  options.max_app_connections = config.max_app_connections;
  options.max_message_bytes = static_cast<uint32_t>(config.max_message_bytes);
  options.max_concurrent_requests = config.max_concurrent_requests;
  options.max_pending_requests = config.max_pending_requests;
  options.connect_timeout = config.connection_timeout;
  if (config.upstream_tls) {
    options.tls.enabled = true;
    options.tls.ca_file = config.upstream_ca_file;
    options.tls.cert_file = config.upstream_cert_file;
    options.tls.key_file = config.upstream_key_file;
    // The name the certificate is checked against: the override, else the
    // target's host, as one grpc channel to the target checks it.
    options.tls.server_name = config.upstream_server_name;
    if (options.tls.server_name.empty() && target->kind == poolside::UpstreamTarget::Kind::kDns) {
      options.tls.server_name = target->host;
    } else if (options.tls.server_name.empty()) {
      absl::StatusOr<poolside::HostPort> first =
          poolside::ParseHostPort(target->addresses.front().label);
      if (first.ok()) options.tls.server_name = first->host;
    }
  }
  if (config.health_check_mode == "grpc") {
    options.health.interval = config.health_check_interval;
    options.health.service = config.health_check_service;
    options.health.timeout = absl::Milliseconds(config.health_check_timeout_ms);
    options.health.unhealthy_threshold = config.health_check_unhealthy_threshold;
  }
  absl::StatusOr<std::unique_ptr<poolside::FrameForwarder>> forwarder =
      poolside::FrameForwarder::Start(std::move(options), &metrics);
  if (!forwarder.ok()) {
    // TLS files name themselves; anything else is the listening socket.
    const std::string message(forwarder.status().message());
    std::fprintf(stderr, "poolside: %s%s\n",
                 absl::StartsWith(message, "TLS") ? "GRPC_UPSTREAM_TLS: " : "GRPC_LISTEN_ADDR: ",
                 message.c_str());
    return 1;
  }
  poolside::FrameForwarder& relay = **forwarder;
  spdlog::info(
      "forwarder: HTTP/2 frames (GRPC_FORWARDER=frames), {} connections over {} "
      "address(es)",
      config.pool_size, relay.initial_backends().size());
  std::unique_ptr<poolside::AdminHttpServer> admin_http =
      StartAdminHttp(config, metrics, [&relay] { return relay.Snapshot(); });
  if (admin_http == nullptr) return 1;
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::info("received {}: draining for up to {}", strsignal(signal_number),
               absl::FormatDuration(config.shutdown_grace));
  admin_http->SetDraining();
  relay.Shutdown(config.shutdown_grace);
  admin_http->Shutdown();
  spdlog::info("poolside stopped");
  return 0;
}

int Run(poolside::Config config) {
  // Blocked before any thread starts, so that only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  spdlog::info("poolside {} starting", POOLSIDE_VERSION);
  for (absl::string_view line :
       absl::StrSplit(poolside::DescribeConfig(config), '\n', absl::SkipEmpty())) {
    spdlog::info("config: {}", std::string(line));
  }
  // The frame forwarder uses no grpc at all: grpc's own threads (its timer,
  // its resolver executor) are not started for it.
  if (config.forwarder == "frames") return RunFrames(config, stop_signals);
  poolside::MapGrpcReadBuffersApart();
  poolside::RouteGrpcLogsToSpdlog();
  poolside::StartGrpcRuntime();
  if (config.worker_threads > 0) {
    spdlog::info("worker threads: {} (GRPC_WORKER_THREADS)", config.worker_threads);
  } else {
    // The container's CPU quota, not the node's cores: a sidecar limited to
    // 500m gains nothing from 16 polling threads but throttling.
    const poolside::WorkerThreadChoice choice = poolside::DefaultWorkerThreads();
    config.worker_threads = choice.threads;
    spdlog::info("worker threads: {} ({})", choice.threads, choice.reason);
  }

  const poolside::UpstreamChannelOptions channel_options = ChannelOptionsFrom(config);
  poolside::ChannelPool pool(PoolOptionsFrom(config),
                             poolside::NewUpstreamChannelFactory(channel_options));
  // A DNS name is resolved here, so that each slot gets one backend address.
  std::unique_ptr<poolside::AddressTracker> tracker = NewAddressTracker(config, pool);
  // The pool's watcher thread calls the tracker: on every way out of Run(),
  // it stops before the tracker is destroyed.
  struct StopPoolFirst {
    poolside::ChannelPool& pool;
    ~StopPoolFirst() { pool.Shutdown(); }
  } stop_pool_first{pool};
  // Declared before everything that records into it, so it outlives them.
  poolside::MetricsOptions metrics_options;
  metrics_options.version = POOLSIDE_VERSION;
  metrics_options.max_methods = config.metrics_max_methods;
  poolside::PoolsideMetrics metrics(metrics_options);
  poolside::HealthMonitor monitor(
      pool, HealthOptionsFrom(config, channel_options),
      [&metrics](const poolside::PoolSnapshot& snapshot) { metrics.UpdateFromPool(snapshot); });
  pool.SetEjectionListener([&monitor](absl::Time probe_at) { monitor.ProbeAt(probe_at); });
  if (tracker != nullptr) {
    pool.SetConnectionLostListener([&tracker] { tracker->RequestResolve(); });
    const std::vector<poolside::BackendAddress> initial = tracker->ResolveInitial();
    if (initial.empty()) {
      pool.Start();  // On the name itself, until it resolves.
    } else {
      pool.Start(initial);
    }
    tracker->Start();
  } else {
    pool.Start();
  }
  monitor.Start();
  poolside::PoolSizer sizer(pool, SizerOptionsFrom(config));
  sizer.Start();

  poolside::AdminService admin(pool, monitor);
  poolside::ForwardingServer server(ProxyOptionsFrom(config), pool, &metrics);
  if (absl::Status started = server.Start(&admin); !started.ok()) {
    std::fprintf(stderr, "poolside: GRPC_LISTEN_ADDR: %s\n",
                 std::string(started.message()).c_str());
    return 1;
  }

  std::unique_ptr<poolside::AdminHttpServer> admin_http =
      StartAdminHttp(config, metrics, [&pool] { return pool.Snapshot(); });
  if (admin_http == nullptr) return 1;

  // The main thread has nothing else to do: between signals it gives memory
  // that a burst of calls left behind back to the system (heap_release.h).
  poolside::HeapReleaseOptions release_options;
  release_options.idle_bytes = poolside::ResidentBytes();
  poolside::HeapReleaser releaser(std::move(release_options));
  int signal_number = -1;
  while (signal_number <= 0) {
    const timespec period{kHeapReleasePeriodSecs, 0};
    // -1 with EAGAIN when the period passed, EINTR on a stray signal.
    signal_number = sigtimedwait(&stop_signals, nullptr, &period);
    if (signal_number > 0) break;
    const absl::Time started = absl::Now();
    if (const int64_t released = releaser.MaybeRelease(); released > 0) {
      // The trim holds the allocator's lock: how long says what it cost the
      // forwarding threads.
      spdlog::debug("returned {} MiB of freed heap to the system in {}", released >> 20,
                    absl::FormatDuration(absl::Now() - started));
    }
  }
  spdlog::info("received {}: draining for up to {}", strsignal(signal_number),
               absl::FormatDuration(config.shutdown_grace));
  admin_http->SetDraining();
  server.Shutdown(config.shutdown_grace);
  admin_http->Shutdown();
  monitor.Shutdown();
  sizer.Shutdown();
  if (tracker != nullptr) tracker->Shutdown();
  pool.Shutdown();
  spdlog::info("poolside stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists: glibc assigns arenas to threads as they start.
  poolside::ConfigureAllocator();
  // grpc takes absl mutexes on every call; their debug-only deadlock graph
  // cost a fifth of poolside's instructions per call (measured with callgrind).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<poolside::ParsedCommandLine> parsed =
      poolside::ParseCommandLine(poolside::ProcessEnvironment(), args);
  if (!parsed.ok()) {
    std::fprintf(stderr, "poolside: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  switch (parsed->command) {
    case poolside::Command::kHelp:
      std::fputs(poolside::HelpText().c_str(), stdout);
      return 0;
    case poolside::Command::kVersion:
      std::printf("poolside %s\n", POOLSIDE_VERSION);
      return 0;
    case poolside::Command::kCheckConfig:
      if (absl::Status supported = poolside::CheckForwarderSupports(parsed->config);
          !supported.ok()) {
        std::fprintf(stderr, "poolside: %s\n", std::string(supported.message()).c_str());
        return 2;
      }
      for (const poolside::UnknownVariable& unknown : parsed->unknown_variables) {
        std::fprintf(stderr, "poolside: warning: %s\n",
                     poolside::DescribeUnknownVariable(unknown).c_str());
      }
      std::fputs(poolside::DescribeConfig(parsed->config).c_str(), stdout);
      return 0;
    case poolside::Command::kStrict:  // Never the parsed command.
    case poolside::Command::kRun:
      break;
  }
  if (absl::Status supported = poolside::CheckForwarderSupports(parsed->config); !supported.ok()) {
    std::fprintf(stderr, "poolside: %s\n", std::string(supported.message()).c_str());
    return 2;
  }
  if (absl::Status logging =
          poolside::ConfigureLogging(parsed->config.log_level, parsed->config.log_format);
      !logging.ok()) {
    std::fprintf(stderr, "poolside: %s\n", std::string(logging.message()).c_str());
    return 2;
  }
  for (const poolside::UnknownVariable& unknown : parsed->unknown_variables) {
    spdlog::warn("config: {}", poolside::DescribeUnknownVariable(unknown));
  }
  return Run(parsed->config);
}
