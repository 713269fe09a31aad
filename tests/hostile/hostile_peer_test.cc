// Hostile HTTP/2 apps against the real poolside binary (issue 14): a
// python3-h2 attacker (h2_attacker.py) on one connection to the app port
// while a well-behaved client calls through poolside on its own connections.
// For each attack, with each forwarder: poolside stays alive, its RSS grows by
// at most 64 MiB, the attacker is cut off where the attack calls for it
// (GOAWAY ENHANCE_YOUR_CALM where the frame screen acts) and the cut is
// counted, and the well-behaved client loses no call and keeps at least half
// the rate it had just before the attack.
//
// Every loop is bounded: the attacker by --seconds and --max-frames, the
// waits here by their timeouts.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/admin_http.h"
#include "tests/support/child_process.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/process_stats.h"
#include "tests/support/test_upstream.h"
#include "tests/support/unary_load.h"

namespace poolside::test {
namespace {

constexpr int64_t kMaxRssGrowthKib = 64 * 1024;
// How long the well-behaved client's rate is measured before the attack.
constexpr absl::Duration kBaselineTime = absl::Seconds(2);
// How long each attack may last, and how many connections the attacker may
// open one after another when cut off (the longer runs used 20).
constexpr int kAttackSeconds = 4;
constexpr int kAttackConnections = 1;
// The well-behaved rate is measured over the attack and what follows it, for
// at least this long: a poolside still digesting an attack fails here too.
constexpr absl::Duration kMinRateWindow = absl::Seconds(2);
// The well-behaved client: 4 calls in flight, as in the table.
constexpr int kBystanderThreads = 4;

struct Attack {
  std::string name;
  // poolside_hostile_peer_total's reason label; empty: no cut is expected to
  // be counted (grpc's own limits handle the attack).
  std::string reason;
  // The attacker must see the connection closed.
  bool expect_closed = true;
  // ... after GOAWAYs with these codes, as h2_attacker prints them ("[11]":
  // one, ENHANCE_YOUR_CALM); empty: not checked.
  std::string goaway_codes = "[11]";
  // GRPC_FORWARDER: "grpc" (the frame screen in front of grpc's server) or
  // "frames" (nghttp2's own limits).
  std::string forwarder = "grpc";
};

std::ostream& operator<<(std::ostream& os, const Attack& attack) {
  return os << attack.forwarder << "/" << attack.name;
}

// What h2_attacker.py printed, parsed from its one JSON line.
struct AttackResult {
  std::string json;
  int64_t sent = 0;
  int64_t connections = 0;
  // Connections poolside closed.
  int64_t cut = 0;
  // Connections poolside left open although the attacker had time left.
  int64_t outlasted = -1;
  // The GOAWAY error codes poolside sent, as printed: "[11]".
  std::string goaway_codes;
};

// A field of a flat JSON object, as text ("true", "11", "null").
std::string JsonField(const std::string& json, const std::string& name) {
  const std::string key = absl::StrCat("\"", name, "\": ");
  const size_t at = json.find(key);
  if (at == std::string::npos) return "";
  const size_t start = at + key.size();
  const size_t end = json.find_first_of(",}", start);
  return json.substr(start, end - start);
}

AttackResult ParseAttackResult(const std::string& json) {
  AttackResult result;
  result.json = json;
  absl::SimpleAtoi(JsonField(json, "sent"), &result.sent);
  absl::SimpleAtoi(JsonField(json, "connections"), &result.connections);
  absl::SimpleAtoi(JsonField(json, "cut"), &result.cut);
  absl::SimpleAtoi(JsonField(json, "outlasted"), &result.outlasted);
  const size_t open = json.find('[');
  if (open != std::string::npos) result.goaway_codes = json.substr(open, json.find(']') - open + 1);
  return result;
}

// Samples a process's RSS until stopped; keeps the highest value.
class RssWatch {
 public:
  explicit RssWatch(pid_t pid) : pid_(pid) {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        if (std::optional<int64_t> rss = ResidentKib(pid_)) {
          peak_kib_.store(std::max(peak_kib_.load(), *rss));
        }
        absl::SleepFor(absl::Milliseconds(20));
      }
    });
  }
  ~RssWatch() { Stop(); }
  int64_t Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    return peak_kib_.load();
  }

 private:
  const pid_t pid_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> peak_kib_{0};
  std::thread thread_;
};

class HostilePeerTest : public E2eTest, public ::testing::WithParamInterface<Attack> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(upstream_.Start().ok());
    ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()},
                                           {"GRPC_CONNECTION_POOL_SIZE", "2"},
                                           {"GRPC_FORWARDER", GetParam().forwarder},
                                           {"GRPC_FRAME_SCREEN", "true"}}));
    ASSERT_TRUE(
        UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "warm").status.ok());
    pid_ = poolside_->pid();
    ASSERT_GT(pid_, 0);
  }

  // Starts the attacker, which reconnects whenever it is cut off until
  // kAttackSeconds have passed or it has used kAttackConnections; returns once
  // it has begun (python started).
  std::unique_ptr<ChildProcess> StartAttacker(const std::string& attack) {
    auto attacker = std::make_unique<ChildProcess>(
        POOLSIDE_TEST_PYTHON,
        std::vector<std::string>{POOLSIDE_H2_ATTACKER, "--port",
                                 absl::StrCat(poolside_->listen_port()), "--attack", attack,
                                 "--seconds", absl::StrCat(kAttackSeconds), "--reconnect",
                                 "--max-connections", absl::StrCat(kAttackConnections)});
    const absl::Status started = attacker->Start();
    EXPECT_TRUE(started.ok()) << started;
    const absl::StatusOr<std::string> line = attacker->WaitForLine("started", absl::Seconds(20));
    EXPECT_TRUE(line.ok()) << "the attacker did not start (" << POOLSIDE_TEST_PYTHON
                           << " with python3-h2): " << line.status();
    return attacker;
  }

  // Waits for the attacker's report and its exit.
  AttackResult FinishAttacker(ChildProcess& attacker) {
    absl::StatusOr<std::string> line =
        attacker.WaitForLine("{", absl::Seconds(kAttackSeconds + 20));
    EXPECT_TRUE(line.ok()) << line.status();
    EXPECT_EQ(attacker.WaitForExit(absl::Seconds(10)), 0);
    return line.ok() ? ParseAttackResult(*line) : AttackResult{};
  }

  TestUpstream upstream_;
  pid_t pid_ = -1;
};

TEST_P(HostilePeerTest, AttackerIsCutOffWhileOthersKeepTheirRateAndMemoryStaysBounded) {
  const Attack& attack = GetParam();
  CallOptions options;
  options.timeout = absl::Seconds(20);
  UnaryLoad bystander(poolside_->listen_target(), kBystanderThreads, options);
  bystander.Start();
  absl::SleepFor(absl::Milliseconds(300));  // Let its channels connect.
  const int64_t baseline_start = bystander.finished();
  absl::SleepFor(kBaselineTime);
  const double baseline_rate =
      (bystander.finished() - baseline_start) / absl::ToDoubleSeconds(kBaselineTime);

  const int64_t rss_before = ResidentKib(pid_).value_or(0);
  RssWatch rss(pid_);
  std::unique_ptr<ChildProcess> attacker = StartAttacker(attack.name);
  // The rate is measured while the attack runs, not while python starts.
  const int64_t attack_start_calls = bystander.finished();
  const absl::Time attack_start = absl::Now();
  const AttackResult result = FinishAttacker(*attacker);
  absl::SleepFor(attack_start + kMinRateWindow - absl::Now());
  const absl::Duration attack_time = absl::Now() - attack_start;
  const double attack_rate =
      (bystander.finished() - attack_start_calls) / absl::ToDoubleSeconds(attack_time);
  const int64_t rss_peak = rss.Stop();
  const std::vector<TimedCall> calls = bystander.Stop();

  SCOPED_TRACE(absl::StrCat("attacker: ", result.json));
  EXPECT_TRUE(poolside_->running()) << "poolside died";
  EXPECT_GT(result.sent, 0);
  if (attack.expect_closed) {
    EXPECT_GE(result.cut, 1) << "the attacker was not cut off";
    EXPECT_EQ(result.outlasted, 0) << "some attacking connections were never cut off";
  }
  if (!attack.goaway_codes.empty()) {
    EXPECT_EQ(result.goaway_codes, attack.goaway_codes);
  }
  if (!kUnderSanitizer) {
    EXPECT_LE(rss_peak - rss_before, kMaxRssGrowthKib)
        << "RSS " << rss_before << " -> " << rss_peak << " KiB";
  }
  for (const TimedCall& call : calls) {
    EXPECT_EQ(call.code, grpc::StatusCode::OK)
        << "well-behaved call " << call.id << " failed: " << call.message;
  }
  std::cout << "[ metric ] well-behaved calls/s: " << baseline_rate << " before, " << attack_rate
            << " during\n";
  // Under a sanitizer the screen and grpc run several times slower and share
  // two cores with the attacker, so the rate says more about the machine
  // than about poolside; the memory bound is skipped there for the same kind
  // of reason.
  if (!kUnderSanitizer) {
    EXPECT_GE(attack_rate, baseline_rate / 2)
        << "well-behaved calls/s: " << baseline_rate << " before, " << attack_rate << " during";
  }
  if (!attack.reason.empty()) {
    // prometheus-cpp prints labels in name order.
    const std::string series =
        absl::StrCat("poolside_hostile_peer_total{reason=\"", attack.reason, "\",side=\"app\"}");
    const std::optional<double> cut = AwaitMetric(
        poolside_->admin_port(), series, static_cast<double>(result.cut), absl::Seconds(5));
    EXPECT_GE(cut.value_or(0), 1) << series;
  }
  // poolside still serves a new connection.
  EXPECT_TRUE(
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "after").status.ok());
}

INSTANTIATE_TEST_SUITE_P(
    Attacks, HostilePeerTest,
    ::testing::Values(Attack{"rapid_reset", "rapid_reset"},
                      Attack{"continuation", "header_block_too_large"},
                      Attack{"ping_flood", "ping_flood"},
                      Attack{"settings_flood", "settings_flood"},
                      // Never acknowledges SETTINGS, so grpc would not enforce its stream limit.
                      Attack{"hoard", "settings_not_acked"},
                      // Acknowledges them: grpc closes the connection past the limit itself.
                      Attack{"hoard_acked", "", /*expect_closed=*/true, /*goaway_codes=*/""}),
    [](const ::testing::TestParamInfo<Attack>& info) { return info.param.name; });

// GRPC_FORWARDER=frames: no frame screen; nghttp2 (Debian's 1.52, with the
// rapid reset and CONTINUATION fixes) bounds each attack itself, the relay
// sends the GOAWAY (ENHANCE_YOUR_CALM for a flood, nghttp2's own code where
// nghttp2 ends the session), lingers for it to arrive, and counts the cut.
INSTANTIATE_TEST_SUITE_P(
    Frames, HostilePeerTest,
    ::testing::Values(
        // Past nghttp2's stream reset rate: its own GOAWAY, INTERNAL_ERROR.
        Attack{"rapid_reset", "rapid_reset", true, "[2]", "frames"},
        Attack{"continuation", "header_block_too_large", true, "[11]", "frames"},
        Attack{"ping_flood", "ping_flood", true, "[11]", "frames"},
        Attack{"settings_flood", "settings_flood", true, "[11]", "frames"},
        // nghttp2 holds an app to the stream limit it offered before the
        // SETTINGS are acknowledged: the streams past 1000 are refused, one
        // by one, and nothing grows; the connection stays.
        Attack{"hoard", "", /*expect_closed=*/false, "", "frames"},
        // Acknowledged, then broken: a protocol error ends the connection.
        Attack{"hoard_acked", "malformed", true, "[1]", "frames"}),
    [](const ::testing::TestParamInfo<Attack>& info) { return info.param.name; });

}  // namespace
}  // namespace poolside::test
