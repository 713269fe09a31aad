// Bad configuration: one line on stderr naming the variable and the value,
// exit status 2, never a crash and never a silent default.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "tests/support/poolside_process.h"

namespace poolside::test {
namespace {

using ::testing::HasSubstr;

struct BadValue {
  const char* variable;
  const char* value;
};

void PrintTo(const BadValue& bad, std::ostream* os) { *os << bad.variable << "=" << bad.value; }

class ConfigErrorsTest : public ::testing::TestWithParam<BadValue> {};

TEST_P(ConfigErrorsTest, ExitsWithTwoNamingTheVariableAndValue) {
  const BadValue& bad = GetParam();
  const PoolsideProcess::ExitResult result = PoolsideProcess::RunToExit(
      {{"GRPC_UPSTREAM_TARGET", "127.0.0.1:1"}, {bad.variable, bad.value}}, {}, absl::Seconds(10));
  EXPECT_EQ(result.exit_code, 2) << result.stderr_output;
  EXPECT_THAT(result.stderr_output, HasSubstr(bad.variable));
  EXPECT_THAT(result.stderr_output, HasSubstr(bad.value));
  const absl::string_view text = absl::StripTrailingAsciiWhitespace(result.stderr_output);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 0) << "expected one line:\n"
                                                           << result.stderr_output;
}

INSTANTIATE_TEST_SUITE_P(
    BadValues, ConfigErrorsTest,
    ::testing::Values(
        BadValue{"GRPC_CONNECTION_POOL_SIZE", "0"}, BadValue{"GRPC_CONNECTION_POOL_SIZE", "-3"},
        BadValue{"GRPC_CONNECTION_POOL_SIZE", "ten"}, BadValue{"GRPC_CONNECTION_POOL_SIZE", "4x"},
        BadValue{"GRPC_CONNECTION_TIMEOUT_SECS", "-1"},
        BadValue{"GRPC_CONNECTION_TIMEOUT_SECS", "soon"},
        BadValue{"GRPC_HEALTH_CHECK_INTERVAL_SECS", "often"},
        BadValue{"GRPC_MAX_MESSAGE_BYTES", "huge"}, BadValue{"GRPC_MAX_MESSAGE_BYTES", "-1"},
        BadValue{"GRPC_SHUTDOWN_GRACE_SECS", "forever"}, BadValue{"GRPC_LOG_LEVEL", "loud"},
        BadValue{"GRPC_LISTEN_ADDR", "127.0.0.1:99999"},
        BadValue{"GRPC_ADMIN_ADDR", "127.0.0.1:port"},
        // Hostile-peer settings (issue 14).
        BadValue{"GRPC_MEMORY_LIMIT_BYTES", "1024"}, BadValue{"GRPC_MEMORY_LIMIT_BYTES", "lots"},
        BadValue{"GRPC_FRAME_SCREEN", "maybe"}, BadValue{"GRPC_MAX_HEADER_BLOCK_BYTES", "100"},
        BadValue{"GRPC_RAPID_RESET_MIN_STREAMS", "-1"}, BadValue{"GRPC_MAX_APP_CONNECTIONS", "0"},
        BadValue{"GRPC_MAX_STREAMS_PER_APP_CONNECTION", "0"},
        BadValue{"GRPC_APP_CONNECTION_MAX_SHARE_PERCENT", "0"},
        BadValue{"GRPC_APP_CONNECTION_MAX_SHARE_PERCENT", "101"}),
    [](const ::testing::TestParamInfo<BadValue>& info) {
      return absl::StrCat(info.param.variable, "_", info.index);
    });

TEST(RequiredConfigTest, MissingUpstreamTargetExitsWithTwo) {
  const PoolsideProcess::ExitResult result = PoolsideProcess::RunToExit({}, {}, absl::Seconds(10));
  EXPECT_EQ(result.exit_code, 2) << result.stderr_output;
  EXPECT_THAT(result.stderr_output, HasSubstr("GRPC_UPSTREAM_TARGET"));
}

// The typo guard: a misspelt GRPC_* variable is named with its closest known
// one; --check-config --strict refuses it with exit 2 and one line.
TEST(TypoGuardTest, CheckConfigWarnsAndStrictRefusesAMisspeltVariable) {
  const Environment env = {{"GRPC_UPSTREAM_TARGET", "127.0.0.1:1"},
                           {"GRPC_CONECTION_POOL_SIZE", "4"},
                           {"GRPC_VERBOSITY", "error"}};
  const PoolsideProcess::ExitResult warned =
      PoolsideProcess::RunToExit(env, {"--check-config"}, absl::Seconds(10));
  EXPECT_EQ(warned.exit_code, 0) << warned.stderr_output;
  EXPECT_THAT(warned.stderr_output,
              HasSubstr("GRPC_CONECTION_POOL_SIZE is not a poolside or gRPC setting; did you "
                        "mean GRPC_CONNECTION_POOL_SIZE?"));
  // gRPC core's own variables are known.
  EXPECT_THAT(warned.stderr_output, ::testing::Not(HasSubstr("GRPC_VERBOSITY")));

  const PoolsideProcess::ExitResult refused =
      PoolsideProcess::RunToExit(env, {"--check-config", "--strict"}, absl::Seconds(10));
  EXPECT_EQ(refused.exit_code, 2) << refused.stderr_output;
  EXPECT_THAT(refused.stderr_output, HasSubstr("did you mean GRPC_CONNECTION_POOL_SIZE?"));
  const absl::string_view text = absl::StripTrailingAsciiWhitespace(refused.stderr_output);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 0) << refused.stderr_output;

  const PoolsideProcess::ExitResult alone =
      PoolsideProcess::RunToExit(env, {"--strict"}, absl::Seconds(10));
  EXPECT_EQ(alone.exit_code, 2) << alone.stderr_output;
  EXPECT_THAT(alone.stderr_output, HasSubstr("--strict goes with --check-config"));
}

}  // namespace
}  // namespace poolside::test
