#include "config/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "config/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/spdlog.h"

namespace poolside {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

using Env = std::map<std::string, std::string>;
using Args = std::vector<std::string>;

constexpr char kTarget[] = "dns:///backend:50051";

// The environment of a minimal valid configuration plus `extra`.
Env WithTarget(Env extra = {}) {
  extra.emplace("GRPC_UPSTREAM_TARGET", kTarget);
  return extra;
}

Config ParseOrDie(const Env& env, const Args& args = {}) {
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine(env, args);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? parsed->config : Config();
}

// The error message for `env` and `args`, or "" if they parse.
std::string ErrorFor(const Env& env, const Args& args = {}) {
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine(env, args);
  if (parsed.ok()) return "";
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(parsed.status().message());
}

// Every variable with its flag and a valid value other than its default.
struct Setting {
  std::string env;
  std::string flag;
  std::string value;
};

const std::vector<Setting>& NonDefaultSettings() {
  static const auto* const settings = new std::vector<Setting>{
      {"GRPC_UPSTREAM_TARGET", "--upstream-target", "ipv4:10.0.0.1:8443"},
      {"GRPC_LISTEN_ADDR", "--listen-addr", "[::1]:0"},
      {"GRPC_ADMIN_ADDR", "--admin-addr", "127.0.0.1:9100"},
      {"GRPC_CONNECTION_POOL_SIZE", "--connection-pool-size", "42"},
      {"GRPC_CONNECTION_POOL_MIN", "--connection-pool-min", "7"},
      {"GRPC_POOL_SCALE_DOWN_SECS", "--pool-scale-down-secs", "30"},
      {"GRPC_CONNECTION_TIMEOUT_SECS", "--connection-timeout-secs", "7"},
      {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "--health-check-interval-secs", "86400"},
      {"GRPC_MAX_MESSAGE_BYTES", "--max-message-bytes", "2147483647"},
      {"GRPC_UPSTREAM_AUTHORITY", "--upstream-authority", "api.example.com:443"},
      {"GRPC_SHUTDOWN_GRACE_SECS", "--shutdown-grace-secs", "0"},
      {"GRPC_HEALTH_CHECK_MODE", "--health-check-mode", "connectivity"},
      {"GRPC_HEALTH_CHECK_SERVICE", "--health-check-service", "my.Service"},
      {"GRPC_HEALTH_CHECK_TIMEOUT_MS", "--health-check-timeout-ms", "250"},
      {"GRPC_HEALTH_CHECK_UNHEALTHY_THRESHOLD", "--health-check-unhealthy-threshold", "3"},
      {"GRPC_CONNECTION_MAX_AGE_SECS", "--connection-max-age-secs", "600"},
      {"GRPC_DNS_REFRESH_SECS", "--dns-refresh-secs", "5"},
      {"GRPC_MAX_STREAMS_PER_CONNECTION", "--max-streams-per-connection", "250"},
      {"GRPC_METRICS_MAX_METHODS", "--metrics-max-methods", "50"},
      {"GRPC_MAX_CONCURRENT_REQUESTS", "--max-concurrent-requests", "5000"},
      {"GRPC_MAX_PENDING_REQUESTS", "--max-pending-requests", "10"},
      {"GRPC_OUTLIER_CONSECUTIVE_FAILURES", "--outlier-consecutive-failures", "0"},
      {"GRPC_OUTLIER_EJECTION_SECS", "--outlier-ejection-secs", "30"},
      {"GRPC_TRANSPARENT_RETRY", "--transparent-retry", "false"},
      {"GRPC_FORWARDER", "--forwarder", "frames"},
      {"GRPC_HOLD_PINGPONG_READS", "--hold-pingpong-reads", "false"},
      {"GRPC_UPSTREAM_TLS", "--upstream-tls", "true"},
      {"GRPC_UPSTREAM_CA_FILE", "--upstream-ca-file", "/dev/null"},
      {"GRPC_UPSTREAM_CERT_FILE", "--upstream-cert-file", "/dev/null"},
      {"GRPC_UPSTREAM_KEY_FILE", "--upstream-key-file", "/dev/null"},
      {"GRPC_UPSTREAM_SERVER_NAME", "--upstream-server-name", "api.internal"},
      {"GRPC_WORKER_THREADS", "--worker-threads", "256"},
      {"GRPC_MEMORY_LIMIT_BYTES", "--memory-limit-bytes", "268435456"},
      {"GRPC_FRAME_SCREEN", "--frame-screen", "false"},
      {"GRPC_MAX_HEADER_BLOCK_BYTES", "--max-header-block-bytes", "16384"},
      {"GRPC_RAPID_RESET_MIN_STREAMS", "--rapid-reset-min-streams", "0"},
      {"GRPC_MAX_APP_CONNECTIONS", "--max-app-connections", "50"},
      {"GRPC_MAX_STREAMS_PER_APP_CONNECTION", "--max-streams-per-app-connection", "2000"},
      {"GRPC_APP_CONNECTION_MAX_SHARE_PERCENT", "--app-connection-max-share-percent", "25"},
      {"GRPC_LOG_LEVEL", "--log-level", "warn"},
      {"GRPC_LOG_FORMAT", "--log-format", "json"},
  };
  return *settings;
}

void ExpectNonDefaultConfig(const Config& config) {
  EXPECT_EQ(config.upstream_target, "ipv4:10.0.0.1:8443");
  EXPECT_EQ(config.listen_addr, "[::1]:0");
  EXPECT_EQ(config.admin_addr, "127.0.0.1:9100");
  EXPECT_EQ(config.pool_size, 42);
  EXPECT_EQ(config.pool_min, 7);
  EXPECT_EQ(config.pool_scale_down, absl::Seconds(30));
  EXPECT_EQ(config.connection_timeout, absl::Seconds(7));
  EXPECT_EQ(config.health_check_interval, absl::Seconds(86400));
  EXPECT_EQ(config.max_message_bytes, 2147483647);
  EXPECT_EQ(config.upstream_authority, "api.example.com:443");
  EXPECT_EQ(config.shutdown_grace, absl::ZeroDuration());
  EXPECT_EQ(config.health_check_mode, "connectivity");
  EXPECT_EQ(config.health_check_service, "my.Service");
  EXPECT_EQ(config.health_check_timeout_ms, 250);
  EXPECT_EQ(config.health_check_unhealthy_threshold, 3);
  EXPECT_EQ(config.connection_max_age, absl::Seconds(600));
  EXPECT_EQ(config.max_streams_per_connection, 250);
  EXPECT_EQ(config.metrics_max_methods, 50);
  EXPECT_EQ(config.max_concurrent_requests, 5000);
  EXPECT_EQ(config.max_pending_requests, 10);
  EXPECT_EQ(config.outlier_consecutive_failures, 0);
  EXPECT_EQ(config.outlier_ejection, absl::Seconds(30));
  EXPECT_FALSE(config.transparent_retry);
  EXPECT_EQ(config.forwarder, "frames");
  EXPECT_TRUE(config.upstream_tls);
  EXPECT_EQ(config.upstream_ca_file, "/dev/null");
  EXPECT_EQ(config.upstream_cert_file, "/dev/null");
  EXPECT_EQ(config.upstream_key_file, "/dev/null");
  EXPECT_EQ(config.upstream_server_name, "api.internal");
  EXPECT_EQ(config.worker_threads, 256);
  EXPECT_EQ(config.memory_limit_bytes, 268435456);
  EXPECT_FALSE(config.frame_screen);
  EXPECT_EQ(config.max_header_block_bytes, 16384);
  EXPECT_EQ(config.rapid_reset_min_streams, 0);
  EXPECT_EQ(config.max_app_connections, 50);
  EXPECT_EQ(config.max_streams_per_app_connection, 2000);
  EXPECT_EQ(config.app_connection_max_share_percent, 25);
  EXPECT_EQ(config.log_level, "warn");
  EXPECT_EQ(config.log_format, "json");
}

// Integer variables with their allowed ranges.
struct IntegerVariable {
  std::string env;
  int64_t min;
  int64_t max;
};

const std::vector<IntegerVariable>& IntegerVariables() {
  static const auto* const variables = new std::vector<IntegerVariable>{
      {"GRPC_CONNECTION_POOL_SIZE", 1, 1000},
      {"GRPC_CONNECTION_TIMEOUT_SECS", 1, 3600},
      {"GRPC_HEALTH_CHECK_INTERVAL_SECS", 1, 86400},
      {"GRPC_MAX_MESSAGE_BYTES", 1, 2147483647},
      {"GRPC_SHUTDOWN_GRACE_SECS", 0, 3600},
      {"GRPC_WORKER_THREADS", 0, 256},
      {"GRPC_HEALTH_CHECK_TIMEOUT_MS", 1, 60000},
      {"GRPC_HEALTH_CHECK_UNHEALTHY_THRESHOLD", 1, 100},
      {"GRPC_CONNECTION_MAX_AGE_SECS", 0, 2592000},
      {"GRPC_DNS_REFRESH_SECS", 1, 3600},
      {"GRPC_MAX_STREAMS_PER_CONNECTION", 1, 1000000},
      {"GRPC_METRICS_MAX_METHODS", 1, 100000},
      {"GRPC_MAX_CONCURRENT_REQUESTS", 0, 10000000},
      {"GRPC_MAX_PENDING_REQUESTS", 0, 10000000},
      {"GRPC_OUTLIER_CONSECUTIVE_FAILURES", 0, 1000},
      {"GRPC_OUTLIER_EJECTION_SECS", 1, 3600},
      {"GRPC_POOL_SCALE_DOWN_SECS", 1, 86400},
  };
  return *variables;
}

TEST(UnknownVariablesTest, NamesTyposWithTheClosestKnownVariable) {
  const std::vector<absl::string_view> known = {"GRPC_CONNECTION_POOL_SIZE",
                                                "GRPC_UPSTREAM_TARGET"};
  const std::vector<UnknownVariable> unknown =
      FindUnknownVariables({{"GRPC_CONECTION_POOL_SIZE", "4"},  // One letter missing.
                            {"GRPC_UPSTREAM_TARGET", "x:1"},    // Known.
                            {"GRPC_TRACE", "http"},             // gRPC core's.
                            {"GRPC_XDS_BOOTSTRAP", "/b.json"},  // gRPC core's.
                            {"GRPC_VERBOSTY", "debug"},         // gRPC core's, misspelt.
                            {"GRPC_SOMETHING_ELSE", "1"},       // Nothing near.
                            {"PATH", "/bin"}},                  // Not GRPC_*.
                           known);
  ASSERT_EQ(unknown.size(), 3u);
  EXPECT_EQ(unknown[0].name, "GRPC_CONECTION_POOL_SIZE");
  EXPECT_EQ(unknown[0].closest, "GRPC_CONNECTION_POOL_SIZE");
  EXPECT_EQ(unknown[1].name, "GRPC_SOMETHING_ELSE");
  EXPECT_EQ(unknown[1].closest, "");
  EXPECT_EQ(unknown[2].name, "GRPC_VERBOSTY");
  EXPECT_EQ(unknown[2].closest, "GRPC_VERBOSITY");
  EXPECT_EQ(DescribeUnknownVariable(unknown[0]),
            "GRPC_CONECTION_POOL_SIZE is not a poolside or gRPC setting; did you mean "
            "GRPC_CONNECTION_POOL_SIZE?");
  EXPECT_EQ(DescribeUnknownVariable(unknown[1]),
            "GRPC_SOMETHING_ELSE is not a poolside or gRPC setting and is ignored");
}

TEST(ConfigTest, StrictCheckConfigRefusesUnknownVariables) {
  const Env env = WithTarget({{"GRPC_CONECTION_POOL_SIZE", "4"}});
  absl::StatusOr<ParsedCommandLine> lenient = ParseCommandLine(env, {"--check-config"});
  ASSERT_TRUE(lenient.ok()) << lenient.status();
  ASSERT_EQ(lenient->unknown_variables.size(), 1u);
  EXPECT_EQ(lenient->config.pool_size, 10);
  EXPECT_EQ(ErrorFor(env, {"--check-config", "--strict"}),
            "GRPC_CONECTION_POOL_SIZE is not a poolside or gRPC setting; did you mean "
            "GRPC_CONNECTION_POOL_SIZE?");
  EXPECT_EQ(ErrorFor(WithTarget(), {"--strict"}), "--strict goes with --check-config");
  EXPECT_TRUE(ParseCommandLine(WithTarget(), {"--check-config", "--strict"}).ok());
}

TEST(ConfigTest, PoolMinimumMustNotExceedThePoolSize) {
  EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "16"},
                                   {"GRPC_CONNECTION_POOL_MIN", "16"}}))
                .pool_min,
            16);
  EXPECT_EQ(
      ErrorFor(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "4"}, {"GRPC_CONNECTION_POOL_MIN", "5"}})),
      "GRPC_CONNECTION_POOL_MIN (5) is above GRPC_CONNECTION_POOL_SIZE (4), the pool's "
      "maximum");
  EXPECT_EQ(ErrorFor(WithTarget({{"GRPC_CONNECTION_POOL_MIN", "-1"}})),
            "GRPC_CONNECTION_POOL_MIN=\"-1\" is invalid: expected an integer from 0 to 1000");
}

TEST(ConfigTest, DefaultsApplyWhenOnlyTheTargetIsSet) {
  const Config config = ParseOrDie(WithTarget());
  const Config defaults;
  EXPECT_EQ(config.upstream_target, kTarget);
  EXPECT_EQ(config.listen_addr, "127.0.0.1:15001");
  EXPECT_EQ(config.admin_addr, "0.0.0.0:15090");
  EXPECT_EQ(config.pool_size, 10);
  EXPECT_EQ(config.pool_min, 0);  // A fixed pool.
  EXPECT_EQ(config.pool_scale_down, absl::Seconds(120));
  EXPECT_EQ(config.connection_timeout, absl::Seconds(30));
  EXPECT_EQ(config.health_check_interval, absl::Seconds(60));
  EXPECT_EQ(config.max_message_bytes, 64 << 20);
  EXPECT_EQ(config.upstream_authority, "");
  EXPECT_EQ(config.shutdown_grace, absl::Seconds(25));
  EXPECT_EQ(config.worker_threads, 0);
  EXPECT_EQ(config.log_level, "info");
  EXPECT_EQ(config.log_format, "text");
  EXPECT_EQ(DescribeConfig(config), DescribeConfig([&] {
              Config expected;
              expected.upstream_target = kTarget;
              return expected;
            }()));
}

TEST(ConfigTest, CommandDefaultsToRun) {
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine(WithTarget(), {});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->command, Command::kRun);
}

TEST(ConfigTest, ReadsEveryVariableFromTheEnvironment) {
  Env env;
  for (const Setting& setting : NonDefaultSettings()) env[setting.env] = setting.value;
  ExpectNonDefaultConfig(ParseOrDie(env));
}

TEST(ConfigTest, ReadsEveryVariableFromFlagWithEquals) {
  Args args;
  for (const Setting& setting : NonDefaultSettings()) {
    args.push_back(setting.flag + "=" + setting.value);
  }
  ExpectNonDefaultConfig(ParseOrDie({}, args));
}

TEST(ConfigTest, ReadsEveryVariableFromFlagWithSeparateValue) {
  Args args;
  for (const Setting& setting : NonDefaultSettings()) {
    args.push_back(setting.flag);
    args.push_back(setting.value);
  }
  ExpectNonDefaultConfig(ParseOrDie({}, args));
}

TEST(ConfigTest, FlagOverridesEnvironment) {
  const Config config =
      ParseOrDie(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "3"}, {"GRPC_LOG_LEVEL", "debug"}}),
                 {"--connection-pool-size=5", "--upstream-target", "unix:///run/up.sock"});
  EXPECT_EQ(config.pool_size, 5);
  EXPECT_EQ(config.upstream_target, "unix:///run/up.sock");
  EXPECT_EQ(config.log_level, "debug");
}

TEST(ConfigTest, FlagOverridesInvalidEnvironmentValue) {
  const Config config =
      ParseOrDie(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "lots"}}), {"--connection-pool-size=5"});
  EXPECT_EQ(config.pool_size, 5);
}

TEST(ConfigTest, LastFlagWins) {
  const Config config = ParseOrDie(WithTarget(), {"--worker-threads=2", "--worker-threads", "4",
                                                  "--log-format=json", "--log-format=text"});
  EXPECT_EQ(config.worker_threads, 4);
  EXPECT_EQ(config.log_format, "text");
}

TEST(ConfigTest, FlagValueMayContainEquals) {
  const Config config = ParseOrDie({}, {"--upstream-target=unix:/tmp/a=b.sock"});
  EXPECT_EQ(config.upstream_target, "unix:/tmp/a=b.sock");
}

TEST(ConfigTest, IgnoresOtherEnvironmentVariables) {
  // grpc core reads GRPC_VERBOSITY, GRPC_TRACE and others of its own.
  const Config config = ParseOrDie(WithTarget({{"GRPC_VERBOSITY", "debug"},
                                               {"GRPC_TRACE", "all"},
                                               {"GRPC_UNKNOWN_THING", "x"},
                                               {"PATH", "/usr/bin"}}));
  EXPECT_EQ(config.upstream_target, kTarget);
}

TEST(ConfigTest, MissingTargetIsRequired) {
  EXPECT_EQ(ErrorFor({}),
            "GRPC_UPSTREAM_TARGET is required: the upstream's gRPC target, e.g. "
            "dns:///my-service:50051");
  EXPECT_EQ(ErrorFor({{"GRPC_CONNECTION_POOL_SIZE", "5"}}, {"--log-level=debug"}), ErrorFor({}));
}

TEST(ConfigTest, EmptyTargetIsInvalid) {
  EXPECT_THAT(ErrorFor({{"GRPC_UPSTREAM_TARGET", ""}}),
              StartsWith("GRPC_UPSTREAM_TARGET=\"\" is invalid: expected a gRPC target"));
  EXPECT_THAT(ErrorFor({}, {"--upstream-target="}),
              StartsWith("--upstream-target=\"\" is invalid: expected a gRPC target"));
}

TEST(ConfigTest, AcceptsTargetForms) {
  for (const char* target : {
           "backend:50051",
           "backend.ns.svc.cluster.local:50051",
           "10.1.2.3:443",
           "[::1]:50051",
           "[fe80::1%eth0]:50051",
           "dns:///backend:50051",
           "dns:///backend",
           "dns://8.8.8.8:53/backend:50051",
           "dns:backend:50051",
           "ipv4:10.0.0.1:80",
           "ipv4:10.0.0.1:80,10.0.0.2:81",
           "ipv4:///10.0.0.1:80",
           "ipv6:[::1]:80",
           "ipv6:[::1]:80,[2001:db8::2]:81",
           "unix:/run/upstream.sock",
           "unix:///run/upstream.sock",
           "unix:relative.sock",
       }) {
    SCOPED_TRACE(target);
    EXPECT_EQ(ParseOrDie({{"GRPC_UPSTREAM_TARGET", target}}).upstream_target, target);
  }
}

TEST(ConfigTest, RejectsMalformedTargets) {
  for (const char* target : {
           "",
           " ",
           "backend",              // plain host:port needs the port
           "backend:",             // empty port
           "backend:http",         // port is a number
           "backend:0",            // nothing listens on port 0
           "backend:65536",        // out of range
           ":50051",               // no host
           " backend:50051",       // whitespace
           "backend:50051 ",       //
           "back end:50051",       //
           "backend:50051\n",      // control character
           "::1:50051",            // IPv6 needs brackets
           "[::1:50051",           // unclosed bracket
           "[not-v6]:50051",       //
           "http://backend:80",    // not a gRPC target
           "dns:",                 //
           "dns:///",              //
           "dns://backend:50051",  // authority without a path
           "ipv4:",                //
           "ipv4:10.0.0.1",        // needs a port
           "ipv4:backend:80",      // needs a literal
           "ipv4:10.0.0.1:80,",    // trailing comma
           "ipv4:[::1]:80",        // wrong family
           "ipv6:::1:80",          // needs brackets
           "ipv6:[10.0.0.1]:80",   // wrong family
           "unix:",                //
           "unix://",              //
           "unix://host/path",     // unix:// takes no authority
       }) {
    SCOPED_TRACE(target);
    EXPECT_THAT(ErrorFor({{"GRPC_UPSTREAM_TARGET", target}}),
                StartsWith("GRPC_UPSTREAM_TARGET=\""));
  }
}

TEST(ConfigTest, AcceptsListenAddressForms) {
  for (const char* address :
       {"127.0.0.1:15001", "0.0.0.0:0", "localhost:65535", "[::]:15001", "[::1]:0",
        "unix:/run/poolside.sock", "unix:///run/poolside.sock", "unix:poolside.sock"}) {
    SCOPED_TRACE(address);
    EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_LISTEN_ADDR", address}})).listen_addr, address);
  }
}

TEST(ConfigTest, RejectsMalformedListenAddresses) {
  for (const char* address :
       {"", "15001", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "::1:15001",
        "[::1]", "host :1", "unix:", "unix://", "unix:/a b"}) {
    SCOPED_TRACE(address);
    EXPECT_THAT(ErrorFor(WithTarget({{"GRPC_LISTEN_ADDR", address}})),
                StartsWith("GRPC_LISTEN_ADDR=\""));
  }
}

TEST(ConfigTest, AdminAddressIsHostAndPortOnly) {
  EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_ADMIN_ADDR", "[::]:0"}})).admin_addr, "[::]:0");
  for (const char* address : {"", "unix:/run/admin.sock", "15090", "0.0.0.0", "0.0.0.0:99999"}) {
    SCOPED_TRACE(address);
    EXPECT_THAT(ErrorFor(WithTarget({{"GRPC_ADMIN_ADDR", address}})),
                StartsWith("GRPC_ADMIN_ADDR=\""));
  }
}

TEST(ConfigTest, IntegerVariablesAcceptTheirWholeRange) {
  for (const IntegerVariable& variable : IntegerVariables()) {
    for (int64_t value : {variable.min, variable.max}) {
      SCOPED_TRACE(variable.env + "=" + std::to_string(value));
      EXPECT_EQ(ErrorFor(WithTarget({{variable.env, std::to_string(value)}})), "");
    }
  }
}

TEST(ConfigTest, IntegerVariablesRejectValuesOutsideTheirRange) {
  for (const IntegerVariable& variable : IntegerVariables()) {
    for (int64_t value : {variable.min - 1, variable.max + 1}) {
      const std::string text = std::to_string(value);
      SCOPED_TRACE(variable.env + "=" + text);
      EXPECT_THAT(ErrorFor(WithTarget({{variable.env, text}})),
                  AllOf(StartsWith(variable.env + "=\"" + text + "\" is invalid: expected "),
                        HasSubstr(" from " + std::to_string(variable.min) + " to " +
                                  std::to_string(variable.max))));
    }
  }
}

TEST(ConfigTest, IntegerVariablesRejectAnythingButPlainDecimal) {
  for (const IntegerVariable& variable : IntegerVariables()) {
    for (const char* text : {"", "abc", "5x", "x5", " 5", "5 ", "+5", "5.0", "1e3", "0x10", "--5",
                             "99999999999999999999", "-99999999999999999999"}) {
      SCOPED_TRACE(variable.env + "=" + text);
      EXPECT_THAT(ErrorFor(WithTarget({{variable.env, text}})),
                  StartsWith(variable.env + "=\"" + text + "\" is invalid: expected "));
    }
  }
}

TEST(ConfigTest, IntegerAllowsLeadingZeros) {
  EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "007"}})).pool_size, 7);
}

TEST(ConfigTest, InvalidValueMessageNamesVariableValueAndWhatIsAllowed) {
  EXPECT_EQ(ErrorFor(WithTarget({{"GRPC_CONNECTION_POOL_SIZE", "abc"}})),
            "GRPC_CONNECTION_POOL_SIZE=\"abc\" is invalid: expected an integer from 1 to 1000");
  EXPECT_EQ(ErrorFor(WithTarget(), {"--connection-pool-size=abc"}),
            "--connection-pool-size=\"abc\" is invalid: expected an integer from 1 to 1000");
  EXPECT_EQ(ErrorFor(WithTarget(), {"--connection-pool-size", "abc"}),
            "--connection-pool-size=\"abc\" is invalid: expected an integer from 1 to 1000");
  EXPECT_EQ(ErrorFor(WithTarget({{"GRPC_CONNECTION_TIMEOUT_SECS", "0"}})),
            "GRPC_CONNECTION_TIMEOUT_SECS=\"0\" is invalid: expected a whole number of seconds "
            "from 1 to 3600");
  EXPECT_EQ(ErrorFor(WithTarget({{"GRPC_LOG_LEVEL", "verbose"}})),
            "GRPC_LOG_LEVEL=\"verbose\" is invalid: expected one of trace, debug, info, warn, "
            "error, critical, off");
  EXPECT_EQ(ErrorFor(WithTarget({{"GRPC_LOG_FORMAT", "yaml"}})),
            "GRPC_LOG_FORMAT=\"yaml\" is invalid: expected one of text, json");
}

TEST(ConfigTest, EveryVariableRejectsAnInvalidValueByName) {
  const std::vector<Setting> invalid = {
      {"GRPC_UPSTREAM_TARGET", "--upstream-target", "backend"},
      {"GRPC_LISTEN_ADDR", "--listen-addr", "nowhere"},
      {"GRPC_ADMIN_ADDR", "--admin-addr", "unix:/admin"},
      {"GRPC_CONNECTION_POOL_SIZE", "--connection-pool-size", "0"},
      {"GRPC_CONNECTION_TIMEOUT_SECS", "--connection-timeout-secs", "30s"},
      {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "--health-check-interval-secs", "1m"},
      {"GRPC_MAX_MESSAGE_BYTES", "--max-message-bytes", "64MiB"},
      {"GRPC_UPSTREAM_AUTHORITY", "--upstream-authority", "bad authority"},
      {"GRPC_SHUTDOWN_GRACE_SECS", "--shutdown-grace-secs", "-1"},
      {"GRPC_WORKER_THREADS", "--worker-threads", "auto"},
      {"GRPC_LOG_LEVEL", "--log-level", "INFO"},
      {"GRPC_LOG_FORMAT", "--log-format", "JSON"},
  };
  for (const Setting& setting : invalid) {
    SCOPED_TRACE(setting.env);
    const std::string expected = "=\"" + setting.value + "\" is invalid: expected ";
    EXPECT_THAT(ErrorFor(WithTarget({{setting.env, setting.value}})),
                StartsWith(setting.env + expected));
    EXPECT_THAT(ErrorFor(WithTarget(), {setting.flag + "=" + setting.value}),
                StartsWith(setting.flag + expected));
  }
}

TEST(ConfigTest, ErrorMessageIsOneLineWhateverTheValue) {
  const std::string message =
      ErrorFor(WithTarget({{"GRPC_UPSTREAM_AUTHORITY", "evil\nGRPC_FAKE=\"1\"\r\x01"}}));
  EXPECT_THAT(message, StartsWith("GRPC_UPSTREAM_AUTHORITY=\"evil\\n"));
  EXPECT_THAT(message, Not(HasSubstr("\n")));
  EXPECT_THAT(message, Not(HasSubstr("\r")));
}

TEST(ConfigTest, AuthorityMayBeEmptyButNotContainSpacesOrControlCharacters) {
  EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_UPSTREAM_AUTHORITY", ""}})).upstream_authority, "");
  EXPECT_EQ(
      ParseOrDie(WithTarget({{"GRPC_UPSTREAM_AUTHORITY", "svc.internal"}})).upstream_authority,
      "svc.internal");
  for (const char* authority : {" ", "a b", "a\tb", "a\x7f", "caf\xc3\xa9"}) {
    SCOPED_TRACE(authority);
    EXPECT_THAT(ErrorFor(WithTarget({{"GRPC_UPSTREAM_AUTHORITY", authority}})),
                StartsWith("GRPC_UPSTREAM_AUTHORITY=\""));
  }
}

TEST(ConfigTest, AcceptsEveryLogLevelAndFormat) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_LOG_LEVEL", level}})).log_level, level);
  }
  for (const char* format : {"text", "json"}) {
    EXPECT_EQ(ParseOrDie(WithTarget({{"GRPC_LOG_FORMAT", format}})).log_format, format);
  }
}

TEST(ConfigTest, UnknownFlagIsAnError) {
  EXPECT_EQ(ErrorFor(WithTarget(), {"--pool-size=3"}), "unknown flag \"--pool-size\"; see --help");
  EXPECT_EQ(ErrorFor(WithTarget(), {"-x"}), "unknown flag \"-x\"; see --help");
}

TEST(ConfigTest, PositionalArgumentIsAnError) {
  EXPECT_EQ(ErrorFor(WithTarget(), {"serve"}), "unexpected argument \"serve\"; see --help");
}

TEST(ConfigTest, FlagWithoutValueIsAnError) {
  EXPECT_EQ(ErrorFor(WithTarget(), {"--listen-addr"}), "--listen-addr requires a value");
}

TEST(ConfigTest, CommandFlagTakesNoValue) {
  EXPECT_EQ(ErrorFor(WithTarget(), {"--check-config=yes"}), "--check-config takes no value");
}

TEST(ConfigTest, HelpWorksWithoutTarget) {
  for (const char* flag : {"--help", "-h"}) {
    absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine({}, {flag});
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->command, Command::kHelp);
  }
}

TEST(ConfigTest, VersionWorksWithoutTarget) {
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine({}, {"--version"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->command, Command::kVersion);
}

TEST(ConfigTest, HelpAndVersionWorkDespiteInvalidConfiguration) {
  const Env bad_env = {{"GRPC_CONNECTION_POOL_SIZE", "lots"}};
  absl::StatusOr<ParsedCommandLine> help =
      ParseCommandLine(bad_env, {"--bogus", "--listen-addr=nowhere", "--help"});
  ASSERT_TRUE(help.ok()) << help.status();
  EXPECT_EQ(help->command, Command::kHelp);
  absl::StatusOr<ParsedCommandLine> version = ParseCommandLine(bad_env, {"--version", "--bogus"});
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(version->command, Command::kVersion);
}

TEST(ConfigTest, HelpWinsOverVersionAndCheckConfig) {
  absl::StatusOr<ParsedCommandLine> parsed =
      ParseCommandLine({}, {"--check-config", "--version", "-h"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->command, Command::kHelp);
}

TEST(ConfigTest, CheckConfigValidatesLikeRun) {
  absl::StatusOr<ParsedCommandLine> parsed =
      ParseCommandLine(WithTarget({{"GRPC_WORKER_THREADS", "8"}}), {"--check-config"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->command, Command::kCheckConfig);
  EXPECT_EQ(parsed->config.worker_threads, 8);
  EXPECT_THAT(ErrorFor({}, {"--check-config"}), StartsWith("GRPC_UPSTREAM_TARGET is required"));
}

TEST(ConfigTest, DescribeConfigListsEveryVariableInOrder) {
  Config config;
  config.upstream_target = kTarget;
  EXPECT_EQ(DescribeConfig(config),
            "GRPC_UPSTREAM_TARGET=dns:///backend:50051\n"
            "GRPC_LISTEN_ADDR=127.0.0.1:15001\n"
            "GRPC_ADMIN_ADDR=0.0.0.0:15090\n"
            "GRPC_CONNECTION_POOL_SIZE=10\n"
            "GRPC_CONNECTION_POOL_MIN=0\n"
            "GRPC_POOL_SCALE_DOWN_SECS=120\n"
            "GRPC_CONNECTION_TIMEOUT_SECS=30\n"
            "GRPC_HEALTH_CHECK_INTERVAL_SECS=60\n"
            "GRPC_MAX_MESSAGE_BYTES=67108864\n"
            "GRPC_UPSTREAM_AUTHORITY=\n"
            "GRPC_SHUTDOWN_GRACE_SECS=25\n"
            "GRPC_HEALTH_CHECK_MODE=grpc\n"
            "GRPC_HEALTH_CHECK_SERVICE=\n"
            "GRPC_HEALTH_CHECK_TIMEOUT_MS=1000\n"
            "GRPC_HEALTH_CHECK_UNHEALTHY_THRESHOLD=2\n"
            "GRPC_CONNECTION_MAX_AGE_SECS=0\n"
            "GRPC_DNS_REFRESH_SECS=10\n"
            "GRPC_MAX_STREAMS_PER_CONNECTION=100\n"
            "GRPC_METRICS_MAX_METHODS=200\n"
            "GRPC_MAX_CONCURRENT_REQUESTS=0\n"
            "GRPC_MAX_PENDING_REQUESTS=1024\n"
            "GRPC_OUTLIER_CONSECUTIVE_FAILURES=5\n"
            "GRPC_OUTLIER_EJECTION_SECS=10\n"
            "GRPC_TRANSPARENT_RETRY=true\n"
            "GRPC_FORWARDER=grpc\n"
            "GRPC_HOLD_PINGPONG_READS=true\n"
            "GRPC_UPSTREAM_TLS=false\n"
            "GRPC_UPSTREAM_CA_FILE=\n"
            "GRPC_UPSTREAM_CERT_FILE=\n"
            "GRPC_UPSTREAM_KEY_FILE=\n"
            "GRPC_UPSTREAM_SERVER_NAME=\n"
            "GRPC_WORKER_THREADS=0\n"
            "GRPC_MEMORY_LIMIT_BYTES=0\n"
            "GRPC_FRAME_SCREEN=true\n"
            "GRPC_MAX_HEADER_BLOCK_BYTES=65536\n"
            "GRPC_RAPID_RESET_MIN_STREAMS=500\n"
            "GRPC_MAX_APP_CONNECTIONS=1000\n"
            "GRPC_MAX_STREAMS_PER_APP_CONNECTION=1000\n"
            "GRPC_APP_CONNECTION_MAX_SHARE_PERCENT=100\n"
            "GRPC_LOG_LEVEL=info\n"
            "GRPC_LOG_FORMAT=text\n");
}

// Parses DescribeConfig's output back as an environment.
Env DescriptionAsEnv(const std::string& description) {
  Env env;
  for (absl::string_view line : absl::StrSplit(description, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> entry = absl::StrSplit(line, absl::MaxSplits('=', 1));
    EXPECT_TRUE(env.insert(entry).second) << "duplicate " << entry.first;
  }
  return env;
}

TEST(ConfigTest, FramesForwarderRefusesEverySettingItCannotHonour) {
  const Config defaults = ParseOrDie(WithTarget());
  EXPECT_TRUE(CheckForwarderSupports(defaults).ok());
  Config frames = defaults;
  frames.forwarder = "frames";
  EXPECT_TRUE(CheckForwarderSupports(frames).ok());
  const std::vector<std::pair<std::function<void(Config&)>, std::string>> refused = {
      {[](Config& c) { c.listen_addr = "unix:///tmp/poolside.sock"; }, "GRPC_LISTEN_ADDR"},
      {[](Config& c) { c.upstream_target = "unix:///tmp/app.sock"; }, "GRPC_UPSTREAM_TARGET"},
      {[](Config& c) { c.pool_min = 1; }, "GRPC_CONNECTION_POOL_MIN"},
      {[](Config& c) { c.app_connection_max_share_percent = 50; },
       "GRPC_APP_CONNECTION_MAX_SHARE_PERCENT"},
  };
  for (const auto& [set, name] : refused) {
    Config config = frames;
    set(config);
    const absl::Status status = CheckForwarderSupports(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(status.message()), HasSubstr(name));
    EXPECT_THAT(std::string(status.message()), HasSubstr("GRPC_FORWARDER=grpc"));
    // The grpc++ forwarder honours every one of them.
    config.forwarder = "grpc";
    EXPECT_TRUE(CheckForwarderSupports(config).ok()) << name;
  }
}

TEST(ConfigTest, DescribeConfigRoundTrips) {
  Env env;
  for (const Setting& setting : NonDefaultSettings()) env[setting.env] = setting.value;
  for (const Env& start : {env, WithTarget()}) {
    const Config config = ParseOrDie(start);
    const std::string description = DescribeConfig(config);
    const Env described = DescriptionAsEnv(description);
    EXPECT_EQ(described.size(), NonDefaultSettings().size());
    const Config reparsed = ParseOrDie(described);
    EXPECT_EQ(DescribeConfig(reparsed), description);
    EXPECT_EQ(reparsed.pool_size, config.pool_size);
    EXPECT_EQ(reparsed.connection_timeout, config.connection_timeout);
    EXPECT_EQ(reparsed.upstream_authority, config.upstream_authority);
  }
  ExpectNonDefaultConfig(ParseOrDie(DescriptionAsEnv(DescribeConfig(ParseOrDie(env)))));
}

TEST(ConfigTest, HelpTextNamesEveryVariableFlagAndDefault) {
  const std::string help = HelpText();
  for (const Setting& setting : NonDefaultSettings()) {
    EXPECT_THAT(help, HasSubstr(setting.flag + ", " + setting.env + " ("));
  }
  EXPECT_THAT(help, HasSubstr("GRPC_UPSTREAM_TARGET (required)"));
  EXPECT_THAT(help, HasSubstr("GRPC_LISTEN_ADDR (default: 127.0.0.1:15001)"));
  EXPECT_THAT(help, HasSubstr("GRPC_CONNECTION_POOL_SIZE (default: 10)"));
  EXPECT_THAT(help, HasSubstr("GRPC_UPSTREAM_AUTHORITY (default: empty)"));
  EXPECT_THAT(help, HasSubstr("an integer from 1 to 1000"));
  for (const char* command : {"--check-config", "-h, --help", "--version"}) {
    EXPECT_THAT(help, HasSubstr(command));
  }
}

TEST(ConfigTest, ProcessEnvironmentReadsEnviron) {
  ASSERT_EQ(setenv("POOLSIDE_CONFIG_TEST_VALUE", "a=b", /*overwrite=*/1), 0);
  const Env env = ProcessEnvironment();
  ASSERT_EQ(env.count("POOLSIDE_CONFIG_TEST_VALUE"), 1u);
  EXPECT_EQ(env.at("POOLSIDE_CONFIG_TEST_VALUE"), "a=b");
  unsetenv("POOLSIDE_CONFIG_TEST_VALUE");
}

TEST(HostPortTest, SplitsHostAndPort) {
  absl::StatusOr<HostPort> v4 = ParseHostPort("0.0.0.0:15090");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->host, "0.0.0.0");
  EXPECT_EQ(v4->port, 15090);
  absl::StatusOr<HostPort> v6 = ParseHostPort("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
}

TEST(HostPortTest, RejectsOtherForms) {
  for (const char* address : {"", ":80", "host", "host:", "host:x", "host:65536", "::1:80", "[::1]",
                              "[::1]80", "unix:/a"}) {
    SCOPED_TRACE(address);
    EXPECT_EQ(ParseHostPort(address).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(HostPortTest, BindsLiteralsLocalhostAndWildcardsButNotHostNames) {
  const auto ipv4 = [](const HostPort& host_port) {
    std::optional<SocketAddress> address = ToSocketAddress(host_port);
    EXPECT_TRUE(address.has_value()) << host_port.host;
    if (!address) return sockaddr_in{};
    EXPECT_EQ(address->storage.ss_family, AF_INET);
    EXPECT_EQ(address->length, sizeof(sockaddr_in));
    return reinterpret_cast<const sockaddr_in&>(address->storage);
  };
  EXPECT_EQ(ipv4({"127.0.0.2", 15001}).sin_addr.s_addr, htonl(0x7f000002));
  EXPECT_EQ(ipv4({"127.0.0.2", 15001}).sin_port, htons(15001));
  EXPECT_EQ(ipv4({"localhost", 1}).sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  for (const char* wildcard : {"", "0.0.0.0", "*"}) {
    EXPECT_EQ(ipv4({wildcard, 1}).sin_addr.s_addr, htonl(INADDR_ANY)) << wildcard;
  }
  std::optional<SocketAddress> v6 = ToSocketAddress({"::1", 443});
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->storage.ss_family, AF_INET6);
  EXPECT_EQ(reinterpret_cast<const sockaddr_in6&>(v6->storage).sin6_port, htons(443));
  EXPECT_FALSE(ToSocketAddress({"upstream.internal", 80}).has_value());
}

// Logs `message` at info through a freshly configured default logger and
// returns what reached stderr.
std::string LogAndCapture(const std::string& format, const std::string& message) {
  EXPECT_TRUE(ConfigureLogging("info", format).ok());
  ::testing::internal::CaptureStderr();
  spdlog::info(message);
  spdlog::debug("below the level");
  spdlog::default_logger()->flush();
  return ::testing::internal::GetCapturedStderr();
}

TEST(LoggingTest, TextLinesCarryTimestampLevelAndMessage) {
  const std::string line = LogAndCapture("text", "hello");
  EXPECT_THAT(line, StartsWith("["));
  EXPECT_THAT(line, HasSubstr("] [info] hello\n"));
  EXPECT_THAT(line, Not(HasSubstr("below the level")));
}

TEST(LoggingTest, JsonLinesEscapeTheMessage) {
  const std::string line =
      LogAndCapture("json", "say \"hi\"\n\tto C:\\ \x01 caf\xc3\xa9 bad\xff end");
  EXPECT_THAT(line, StartsWith("{\"ts\":\""));
  EXPECT_THAT(line, HasSubstr("Z\",\"level\":\"info\",\"msg\":\"say \\\"hi\\\"\\n\\tto C:\\\\ "
                              "\\u0001 caf\xc3\xa9 bad\\ufffd end\"}\n"));
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  EXPECT_THAT(line, Not(HasSubstr("below the level")));
}

TEST(LoggingTest, JsonReplacesTruncatedUtf8) {
  EXPECT_THAT(LogAndCapture("json", "cut \xe2\x82"), HasSubstr("\"msg\":\"cut \\ufffd\\ufffd\"}"));
}

TEST(LoggingTest, RejectsUnknownLevelOrFormat) {
  EXPECT_EQ(ConfigureLogging("loud", "text").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ConfigureLogging("info", "xml").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ConfigureLogging("off", "text").ok());
}

}  // namespace
}  // namespace poolside

namespace poolside {
namespace {

TEST(ConfigTest, TlsFilesRequireTlsSoPlaintextIsNeverASilentFallback) {
  Env env = WithTarget();
  env["GRPC_UPSTREAM_CA_FILE"] = "/dev/null";
  const auto parsed = ParseCommandLine(env, {});
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("GRPC_UPSTREAM_TLS=true"));
}

TEST(ConfigTest, ClientCertificateAndKeyComeTogether) {
  Env env = WithTarget();
  env["GRPC_UPSTREAM_TLS"] = "true";
  env["GRPC_UPSTREAM_CERT_FILE"] = "/dev/null";
  const auto parsed = ParseCommandLine(env, {});
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("GRPC_UPSTREAM_KEY_FILE"));
}

TEST(ConfigTest, UnreadableTlsFileIsNamed) {
  Env env = WithTarget();
  env["GRPC_UPSTREAM_TLS"] = "true";
  env["GRPC_UPSTREAM_CA_FILE"] = "/nonexistent/ca.pem";
  const auto parsed = ParseCommandLine(env, {});
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()),
              HasSubstr("GRPC_UPSTREAM_CA_FILE=\"/nonexistent/ca.pem\" is invalid"));
}

TEST(ConfigTest, BooleansAcceptOnlyTrueFalseOneZero) {
  for (const char* value : {"true", "false", "1", "0"}) {
    Env env = WithTarget();
    env["GRPC_UPSTREAM_TLS"] = value;
    EXPECT_TRUE(ParseCommandLine(env, {}).ok()) << value;
  }
  for (const char* value : {"yes", "TRUE", "", "2"}) {
    Env env = WithTarget();
    env["GRPC_UPSTREAM_TLS"] = value;
    EXPECT_FALSE(ParseCommandLine(env, {}).ok()) << value;
  }
}

}  // namespace
}  // namespace poolside
