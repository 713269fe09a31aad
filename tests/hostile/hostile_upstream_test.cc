// Hostile upstreams against the real poolside binary (issue 14): a pool of
// four slots spread over two backends, one well-behaved (TestUpstream) and one
// hostile (hostile_upstream.py) that answers every call with a header block
// that never ends, or with a frame the HTTP/2 codec must reject. For each:
// poolside stays alive and its RSS grows by at most 64 MiB, grpc's client
// closes every connection to the hostile upstream (the slot reconnects like
// any broken one), the cut is counted by reason on side="upstream", and calls
// that land on the well-behaved backend keep succeeding.
//
// Every loop is bounded: the upstream by --seconds, the load by its duration,
// the waits here by their timeouts.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proxy/upstream_abuse.h"
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
constexpr int kUpstreamSeconds = 12;
constexpr absl::Duration kLoadTime = absl::Seconds(4);

struct UpstreamAttack {
  std::string name;
  // poolside_hostile_peer_total's reason label.
  std::string reason;
  // How the calls that reached the hostile upstream fail.
  grpc::StatusCode code;
};

std::ostream& operator<<(std::ostream& os, const UpstreamAttack& attack) {
  return os << attack.name;
}

class HostileUpstreamTest : public E2eTest, public ::testing::WithParamInterface<UpstreamAttack> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(good_.Start().ok());
    hostile_ = std::make_unique<ChildProcess>(
        POOLSIDE_TEST_PYTHON,
        std::vector<std::string>{POOLSIDE_HOSTILE_UPSTREAM, "--attack", GetParam().name,
                                 "--seconds", absl::StrCat(kUpstreamSeconds)});
    ASSERT_TRUE(hostile_->Start().ok());
    const absl::StatusOr<std::string> port_line = hostile_->WaitForLine("PORT=", absl::Seconds(20));
    ASSERT_TRUE(port_line.ok()) << "the hostile upstream did not start (" << POOLSIDE_TEST_PYTHON
                                << " with python3-h2): " << port_line.status();
    hostile_port_ = port_line->substr(5);
    // Four slots spread over the two addresses: two on each.
    ASSERT_NO_FATAL_FAILURE(
        StartPoolside({{"GRPC_UPSTREAM_TARGET", absl::StrCat("ipv4:127.0.0.1:", good_.port(),
                                                             ",127.0.0.1:", hostile_port_)},
                       {"GRPC_CONNECTION_POOL_SIZE", "4"}}));
    pid_ = poolside_->pid();
    ASSERT_GT(pid_, 0);
  }

  TestUpstream good_;
  std::unique_ptr<ChildProcess> hostile_;
  std::string hostile_port_;
  pid_t pid_ = -1;
};

TEST_P(HostileUpstreamTest, HostileConnectionsAreClosedAndCountedWhileOtherSlotsServe) {
  const UpstreamAttack& attack = GetParam();
  const int64_t rss_before = ResidentKib(pid_).value_or(0);
  int64_t rss_peak = rss_before;
  CallOptions options;
  options.timeout = absl::Seconds(10);
  UnaryLoad load(poolside_->listen_target(), 4, options);
  load.Start();
  const absl::Time end = absl::Now() + kLoadTime;
  while (absl::Now() < end) {
    rss_peak = std::max(rss_peak, ResidentKib(pid_).value_or(0));
    absl::SleepFor(absl::Milliseconds(20));
  }
  const std::vector<TimedCall> calls = load.Stop();
  SCOPED_TRACE(SummarizeCodes(calls));
  // The figures tests/hostile/FINDINGS.md quotes.
  std::cout << attack.name << ": calls " << SummarizeCodes(calls) << "; RSS " << rss_before
            << " -> " << rss_peak << " KiB\n";

  EXPECT_TRUE(poolside_->running()) << "poolside died";
  if (!kUnderSanitizer) {
    EXPECT_LE(rss_peak - rss_before, kMaxRssGrowthKib)
        << "RSS " << rss_before << " -> " << rss_peak << " KiB";
  }
  int64_t ok = 0;
  int64_t hostile = 0;
  for (const TimedCall& call : calls) {
    if (call.code == grpc::StatusCode::OK) {
      ++ok;
    } else if (call.code == attack.code) {
      ++hostile;
    } else {
      ADD_FAILURE() << "call " << call.id << " failed otherwise: " << call.code << " "
                    << call.message;
    }
  }
  // The well-behaved backend's slots kept serving, and the hostile one was
  // reached (else the test proves nothing).
  EXPECT_GE(ok, 20);
  EXPECT_GE(hostile, 1);

  // Counted by reason on the upstream side.
  const std::string series =
      absl::StrCat("poolside_hostile_peer_total{reason=\"", attack.reason, "\",side=\"upstream\"}");
  EXPECT_GE(AwaitMetric(poolside_->admin_port(), series, 1, absl::Seconds(5)).value_or(0), 1)
      << series;

  // grpc's client closed every connection on which the hostile upstream
  // answered a call. The upstream prints one line per connection as it ends,
  // and ends the idle ones (slots that reconnected) when its time is up.
  const absl::Time report_deadline = absl::Now() + absl::Seconds(kUpstreamSeconds + 10);
  int attacked = 0;
  while (true) {
    absl::StatusOr<std::string> line =
        hostile_->WaitForLine("{", std::max(report_deadline - absl::Now(), absl::ZeroDuration()));
    if (!line.ok()) break;
    if (absl::StrContains(*line, "\"flooded_bytes\": 0,")) continue;
    ++attacked;
    EXPECT_TRUE(absl::StrContains(*line, "\"closed_by_client\": true")) << *line;
  }
  EXPECT_EQ(hostile_->WaitForExit(absl::Seconds(5)), 0);
  EXPECT_GE(attacked, 1);

  // poolside still serves through its good slots.
  int served = 0;
  for (int i = 0; i < 8; ++i) {
    if (UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "after")
            .status.ok()) {
      ++served;
    }
  }
  EXPECT_GE(served, 1);
}

INSTANTIATE_TEST_SUITE_P(
    Attacks, HostileUpstreamTest,
    ::testing::Values(UpstreamAttack{"continuation", "header_block_too_large",
                                     grpc::StatusCode::RESOURCE_EXHAUSTED},
                      UpstreamAttack{"bad_frame", "malformed", grpc::StatusCode::UNKNOWN}),
    [](const ::testing::TestParamInfo<UpstreamAttack>& info) { return info.param.name; });

// The wording of grpc 1.51 that UpstreamAbuseReason matches.
TEST(UpstreamAbuseReasonTest, RecognisesGrpcsOwnCodecErrorsOnly) {
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                             "received initial metadata size exceeds limit")),
            HostileReason::kHeaderBlockTooLarge);
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                             "received trailing metadata size exceeds limit")),
            HostileReason::kHeaderBlockTooLarge);
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status(grpc::StatusCode::UNKNOWN, "Stream removed")),
            HostileReason::kMalformed);
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "quota")),
            HostileReason::kNone);
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status(grpc::StatusCode::UNAVAILABLE, "Socket closed")),
            HostileReason::kNone);
  EXPECT_EQ(UpstreamAbuseReason(grpc::Status::OK), HostileReason::kNone);
}

}  // namespace
}  // namespace poolside::test
