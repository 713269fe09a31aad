// What poolside does when its upstream fails: killed mid-stream, shut down
// gracefully with calls in flight, silent, resetting streams, or too slow.
// Every test runs real processes on loopback and is bounded in time.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/faults/fault_support.h"
#include "tests/support/admin_http.h"
#include "tests/support/child_process.h"
#include "tests/support/generic_client.h"
#include "tests/support/h2_frames.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"
#include "tests/support/unary_load.h"

namespace poolside::test {
namespace {

// How soon every open call must end once its upstream is gone.
constexpr absl::Duration kPromptEnd = absl::Seconds(5);

constexpr char kInflight[] = "poolside_inflight_requests";

class UpstreamFaultTest : public E2eTest {
 protected:
  std::shared_ptr<grpc::Channel> PoolsideChannel() {
    return CreateTestChannel(poolside_->listen_target());
  }

  // Starts goaway_upstream.py and poolside in front of it (pool of 1,
  // connection timeout 1 s, `extra` on top).
  void StartRefusingUpstream(std::unique_ptr<ChildProcess>& upstream, const Environment& extra) {
    upstream = std::make_unique<ChildProcess>("/usr/bin/python3",
                                              std::vector<std::string>{GoawayUpstreamScript()});
    ASSERT_TRUE(upstream->Start().ok());
    absl::StatusOr<std::string> line = upstream->WaitForLine("PORT=", absl::Seconds(10));
    ASSERT_TRUE(line.ok()) << line.status();
    Environment env = {{"GRPC_UPSTREAM_TARGET", absl::StrCat("127.0.0.1:", line->substr(5))},
                       {"GRPC_CONNECTION_POOL_SIZE", "1"},
                       {"GRPC_CONNECTION_TIMEOUT_SECS", "1"},
                       // No probe may be the call the upstream refuses.
                       {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "3600"}};
    for (const auto& [key, value] : extra) env[key] = value;
    ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  }
};

// ---- Upstream killed (SIGKILL) mid-stream ----

// Calls of every shape, open on one channel, read one step at a time.
struct OpenCalls {
  std::vector<std::unique_ptr<InteractiveCall>> bidi;
  std::vector<std::unique_ptr<InteractiveCall>> server_streams;
  std::vector<std::future<CallResult>> unary_sleepers;
};

constexpr int kBidiCalls = 4;
constexpr int kServerStreams = 2;
constexpr int kUnarySleepers = 4;

// Opens the calls and checks that each bidi and server stream answered once.
void OpenCallsOn(const std::shared_ptr<grpc::Channel>& channel, OpenCalls& calls) {
  CallOptions options;
  options.wait = absl::Seconds(20);
  for (int i = 0; i < kBidiCalls; ++i) {
    calls.bidi.push_back(std::make_unique<InteractiveCall>(channel, kBidiMethod, options));
    ASSERT_TRUE(calls.bidi.back()->Write("ping"));
    ASSERT_EQ(calls.bidi.back()->Read(), "ping");
  }
  CallOptions streaming = options;
  // Far more than flow control lets through while nobody reads.
  streaming.metadata = {{"x-response-count", "100000"}};
  for (int i = 0; i < kServerStreams; ++i) {
    calls.server_streams.push_back(
        std::make_unique<InteractiveCall>(channel, kServerStreamMethod, streaming));
    ASSERT_TRUE(calls.server_streams.back()->Write(std::string(1024, 's')));
    ASSERT_TRUE(calls.server_streams.back()->WritesDone());
    ASSERT_TRUE(calls.server_streams.back()->Read().has_value());
  }
  for (int i = 0; i < kUnarySleepers; ++i) {
    calls.unary_sleepers.push_back(std::async(std::launch::async, [channel] {
      CallOptions sleeper;
      sleeper.metadata = {{"x-sleep-ms", "60000"}};
      sleeper.wait = absl::Seconds(20);
      return UnaryCall(channel, kUnaryMethod, "sleeping", sleeper);
    }));
  }
}

struct EndedCall {
  std::string kind;
  grpc::StatusCode code;
  std::string message;
  absl::Duration after_kill;
  bool timed_out;
};

// Waits for every call to end; how each ended and when, after `killed`.
std::vector<EndedCall> AwaitEnd(OpenCalls& calls, absl::Time killed) {
  std::vector<EndedCall> ended;
  const auto drain = [&](const char* kind, InteractiveCall& call) {
    // Messages already buffered may still arrive; then the stream ends.
    while (call.Read().has_value()) {
    }
    const CallResult result = call.Finish();
    ended.push_back({kind, result.status.error_code(), result.status.error_message(),
                     absl::Now() - killed, result.timed_out || call.timed_out()});
  };
  for (auto& call : calls.bidi) drain("bidi", *call);
  for (auto& call : calls.server_streams) drain("server stream", *call);
  for (auto& future : calls.unary_sleepers) {
    const CallResult result = future.get();
    ended.push_back({"unary", result.status.error_code(), result.status.error_message(),
                     absl::Now() - killed, result.timed_out});
  }
  return ended;
}

TEST_F(UpstreamFaultTest, UpstreamKilledMidStreamEndsEveryOpenCallWithUnavailableAndRecovers) {
  UpstreamProcess upstream;
  ASSERT_TRUE(upstream.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream.target()},
                                         {"GRPC_CONNECTION_POOL_SIZE", "4"},
                                         {"GRPC_CONNECTION_TIMEOUT_SECS", "10"}}));
  const auto via_poolside = PoolsideChannel();
  // The same calls straight to the upstream show what gRPC itself reports.
  const auto direct = CreateTestChannel(upstream.target());
  ASSERT_TRUE(UnaryCall(via_poolside, kUnaryMethod, "warm").status.ok());

  OpenCalls through_poolside;
  OpenCalls straight;
  ASSERT_NO_FATAL_FAILURE(OpenCallsOn(via_poolside, through_poolside));
  ASSERT_NO_FATAL_FAILURE(OpenCallsOn(direct, straight));
  // Every call through poolside is open (the sleepers have reached it).
  ASSERT_EQ(AwaitMetric(poolside_->admin_port(), kInflight,
                        kBidiCalls + kServerStreams + kUnarySleepers, absl::Seconds(5)),
            kBidiCalls + kServerStreams + kUnarySleepers);
  // The sleepers take a moment more to reach the upstream.
  absl::SleepFor(absl::Milliseconds(300));

  const absl::Time killed = absl::Now();
  upstream.Kill();
  const std::vector<EndedCall> via = AwaitEnd(through_poolside, killed);
  const std::vector<EndedCall> reference = AwaitEnd(straight, killed);

  ASSERT_EQ(via.size(), reference.size());
  for (size_t i = 0; i < via.size(); ++i) {
    SCOPED_TRACE(absl::StrCat(via[i].kind, " call ", i, ": \"", via[i].message, "\"; direct: code ",
                              reference[i].code, " \"", reference[i].message, "\""));
    EXPECT_FALSE(via[i].timed_out);
    EXPECT_EQ(via[i].code, grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(via[i].code, reference[i].code) << "poolside reports what a direct client sees";
    EXPECT_LT(via[i].after_kill, kPromptEnd);
  }
  absl::Duration slowest;
  for (const EndedCall& call : via) slowest = std::max(slowest, call.after_kill);
  std::printf("[ metric ] upstream SIGKILL: %zu open calls ended (UNAVAILABLE) within %s\n",
              via.size(), absl::FormatDuration(slowest).c_str());

  // poolside stays up and says the upstream is gone.
  EXPECT_EQ(AwaitHealthStatus(via_poolside, "unhealthy", absl::Seconds(5)), "unhealthy");
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);

  // The upstream is down a while (2 s; POOLSIDE_FAULTS_OUTAGE_SECONDS to
  // measure others), then comes back on the same port.
  int outage_seconds = 2;
  if (const char* outage = std::getenv("POOLSIDE_FAULTS_OUTAGE_SECONDS"); outage != nullptr) {
    if (!absl::SimpleAtoi(outage, &outage_seconds) || outage_seconds < 0) outage_seconds = 2;
  }
  absl::SleepFor(absl::Seconds(outage_seconds));
  UpstreamProcess restarted(upstream.port());
  ASSERT_TRUE(restarted.Start().ok());
  const absl::Time restarted_at = absl::Now();
  std::optional<absl::Duration> recovery;
  int failed_probes = 0;
  while (absl::Now() - restarted_at < absl::Seconds(30)) {
    CallOptions probe;
    probe.timeout = absl::Seconds(1);
    if (UnaryCall(via_poolside, kUnaryMethod, "probe", probe).status.ok()) {
      recovery = absl::Now() - restarted_at;
      break;
    }
    ++failed_probes;
  }
  ASSERT_TRUE(recovery.has_value()) << "no call succeeded within 30 s of the restart";
  const int64_t active = AwaitActiveConnections(via_poolside, 4, absl::Seconds(15));
  const absl::Duration full_pool = absl::Now() - restarted_at;
  std::printf(
      "[ metric ] upstream SIGKILL, %d s down, restart: first call OK %.2f s after the restart "
      "(%d probes failed); %lld of 4 connections active after %.2f s\n",
      outage_seconds, absl::ToDoubleSeconds(*recovery), failed_probes,
      static_cast<long long>(active), absl::ToDoubleSeconds(full_pool));
  // Reconnect back-off is capped at 5 s (±20% jitter) on the pool's channels.
  EXPECT_LT(*recovery, absl::Seconds(8));
  EXPECT_EQ(active, 4);

  // Once recovered, calls keep succeeding.
  const std::vector<CallResult> after = ConcurrentUnaryCalls(
      via_poolside, kUnaryMethod, std::vector<std::string>(50, "after"), CallOptions());
  for (const CallResult& result : after) EXPECT_TRUE(result.status.ok()) << result;
}

// ---- Upstream graceful shutdown (GOAWAY) with calls in flight ----

TEST_F(UpstreamFaultTest, GracefulUpstreamShutdownFinishesCallsInFlightAndFailsNoCall) {
  TestUpstream old_upstream;
  ASSERT_TRUE(old_upstream.Start().ok());
  const int port = old_upstream.port();
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", old_upstream.target()},
                                         {"GRPC_CONNECTION_POOL_SIZE", "4"},
                                         {"GRPC_CONNECTION_TIMEOUT_SECS", "15"}}));
  const auto channel = PoolsideChannel();
  ASSERT_TRUE(UnaryCall(channel, kUnaryMethod, "warm").status.ok());

  // Steady load over the whole changeover...
  CallOptions load_options;
  load_options.timeout = absl::Seconds(20);
  load_options.metadata = {{"x-via", "poolside"}};
  UnaryLoad load(poolside_->listen_target(), 3, load_options);
  load.Start();
  // The same load straight to the upstream, for comparison.
  CallOptions direct_options = load_options;
  direct_options.metadata = {{"x-via", "direct"}};
  UnaryLoad direct_load(old_upstream.target(), 3, direct_options);
  direct_load.Start();
  // ...and slow calls in flight when the upstream starts to drain.
  constexpr int kSlowCalls = 8;
  std::vector<std::future<CallResult>> slow;
  for (int i = 0; i < kSlowCalls; ++i) {
    slow.push_back(std::async(std::launch::async, [channel, i] {
      CallOptions options;
      options.metadata = {{"x-sleep-ms", "2000"}, {"x-slow", absl::StrCat(i)}};
      options.timeout = absl::Seconds(20);
      return UnaryCall(channel, kUnaryMethod, "slow", options);
    }));
  }
  CallOptions stream_options;
  stream_options.metadata = {{"x-sleep-ms", "2000"}, {"x-response-count", "100"}};
  stream_options.timeout = absl::Seconds(20);
  std::future<CallResult> slow_stream = std::async(std::launch::async, [&] {
    return StreamingCall(channel, kServerStreamMethod, {"stream"}, stream_options);
  });
  // The same stream straight to the upstream, for comparison.
  std::future<CallResult> direct_stream =
      std::async(std::launch::async, [&, target = old_upstream.target()] {
        return StreamingCall(CreateTestChannel(target), kServerStreamMethod, {"stream"},
                             stream_options);
      });
  const auto slow_calls_seen = [&] {
    int seen = 0;
    for (const ObservedCall& call : old_upstream.Calls()) {
      if (call.client_metadata.count("x-slow") > 0) ++seen;
      if (call.method == kServerStreamMethod) ++seen;
    }
    return seen;
  };
  const absl::Time wait_until = absl::Now() + absl::Seconds(5);
  while (slow_calls_seen() < kSlowCalls + 2 && absl::Now() < wait_until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(slow_calls_seen(), kSlowCalls + 2);
  // Anchors: calls through poolside that outlast all of the above, so that
  // none of the calls judged here is the last stream on its upstream
  // connection. A draining grpc++ server closes a connection as its last
  // stream ends, and may reset it before that stream's response is out: seen
  // here both through poolside and on a direct connection (FINDINGS.md). The
  // anchors themselves are exposed to that and are only reported.
  constexpr int kAnchors = 8;
  std::vector<std::future<CallResult>> anchors;
  for (int i = 0; i < kAnchors; ++i) {
    anchors.push_back(std::async(std::launch::async, [channel] {
      CallOptions options;
      options.metadata = {{"x-sleep-ms", "4500"}, {"x-anchor", "1"}};
      options.timeout = absl::Seconds(20);
      return UnaryCall(channel, kUnaryMethod, "anchor", options);
    }));
  }
  const auto anchors_seen = [&old_upstream] {
    size_t seen = 0;
    for (const ObservedCall& call : old_upstream.Calls(kUnaryMethod)) {
      seen += call.client_metadata.count("x-anchor");
    }
    return seen;
  };
  const absl::Time anchors_by = absl::Now() + absl::Seconds(5);
  while (anchors_seen() < kAnchors && absl::Now() < anchors_by) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(anchors_seen(), static_cast<size_t>(kAnchors));

  // GOAWAY: the old upstream stops listening at once and drains for up to 10 s.
  const absl::Time drain_started = absl::Now();
  std::thread drain([&old_upstream] { old_upstream.Shutdown(absl::Seconds(10)); });
  // Its replacement takes the port as soon as it is free. (Waiting for that
  // rather than retrying Start: a grpc++ server that fails to bind seems to
  // close a descriptor twice, which once broke a client connection being
  // opened in this process at that moment — FINDINGS.md.)
  TestUpstream::Options options;
  options.port = port;
  TestUpstream new_upstream(options);
  while (PortAcceptsConnections(port) && absl::Now() - drain_started < absl::Seconds(5)) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  absl::Status started;
  while (!(started = new_upstream.Start()).ok() && absl::Now() - drain_started < absl::Seconds(5)) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(started.ok()) << started;
  const absl::Duration gap = absl::Now() - drain_started;

  for (auto& call : slow) {
    const CallResult result = call.get();
    EXPECT_TRUE(result.status.ok()) << "a call in flight failed: " << result;
  }
  const CallResult stream = slow_stream.get();
  const CallResult reference_stream = direct_stream.get();
  std::printf(
      "[ metric ] slow server stream through poolside: status %d, %zu messages; direct: "
      "status %d, %zu messages\n",
      stream.status.error_code(), stream.responses.size(), reference_stream.status.error_code(),
      reference_stream.responses.size());
  EXPECT_TRUE(stream.status.ok()) << stream;
  if (!stream.status.ok()) {
    // Which side failed: poolside counts a relayed upstream error under its
    // code, an app that went away as CANCELLED.
    const absl::StatusOr<std::string> metrics = HttpGet(poolside_->admin_port(), "/metrics");
    for (absl::string_view line : absl::StrSplit(metrics.value_or(""), '\n')) {
      if (absl::StartsWith(line, "poolside_requests_total")) {
        std::printf("%s\n", std::string(line).c_str());
      }
    }
  }
  EXPECT_EQ(stream.responses.size(), 100u);
  std::vector<std::string> anchor_outcomes;
  for (auto& anchor : anchors) {
    const CallResult result = anchor.get();
    anchor_outcomes.push_back(result.status.ok() ? "OK" : result.status.error_message());
  }
  drain.join();
  const absl::Duration drained = absl::Now() - drain_started;

  // New calls reach the new upstream for a while.
  const int64_t before = static_cast<int64_t>(new_upstream.Calls(kUnaryMethod).size());
  const absl::Time load_until = absl::Now() + absl::Seconds(5);
  while (static_cast<int64_t>(new_upstream.Calls(kUnaryMethod).size()) < before + 50 &&
         absl::Now() < load_until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const std::vector<TimedCall> calls = load.Stop();
  const std::vector<TimedCall> direct_calls = direct_load.Stop();

  std::vector<TimedCall> failed;
  absl::Duration slowest;
  for (const TimedCall& call : calls) {
    if (call.code != grpc::StatusCode::OK) failed.push_back(call);
    slowest = std::max(slowest, call.end - call.start);
  }
  std::printf(
      "[ metric ] graceful upstream shutdown: port free after %s, old upstream drained in %s; "
      "%zu load calls (%s), slowest %s\n",
      absl::FormatDuration(gap).c_str(), absl::FormatDuration(drained).c_str(), calls.size(),
      SummarizeCodes(calls).c_str(), absl::FormatDuration(slowest).c_str());
  std::printf("[ metric ] the same load straight to the upstream: %zu calls (%s)\n",
              direct_calls.size(), SummarizeCodes(direct_calls).c_str());
  std::printf("[ metric ] anchors: %s\n", absl::StrJoin(anchor_outcomes, ", ").c_str());
  // What the upstreams saw of each failed call.
  std::map<std::string, ObservedCall> seen;
  for (const TestUpstream* upstream : {&old_upstream, &new_upstream}) {
    for (const ObservedCall& call : upstream->Calls(kUnaryMethod)) {
      const auto via = call.client_metadata.find("x-via");
      const auto id = call.client_metadata.find("x-call-id");
      if (via != call.client_metadata.end() && via->second == "poolside" &&
          id != call.client_metadata.end()) {
        seen[id->second] = call;
      }
    }
  }
  for (const TimedCall& call : failed) {
    const auto it = seen.find(absl::StrCat(call.id));
    std::printf("failed call %lld at +%s: \"%s\"; upstream: %s\n", static_cast<long long>(call.id),
                absl::FormatDuration(call.start - drain_started).c_str(), call.message.c_str(),
                it == seen.end() ? "never saw it" : ::testing::PrintToString(it->second).c_str());
  }
  // gRPC's own server cancels the calls that reach it as it begins to shut
  // down (not yet matched to a handler, or finishing just then): a direct
  // client sees those CANCELLED too (see the line above), and poolside relays
  // the upstream's status unchanged. Those are the only failures allowed:
  // poolside itself may fail no call (no UNAVAILABLE, nothing else).
  EXPECT_LE(failed.size(), 5u) << SummarizeCodes(calls);
  for (const TimedCall& call : failed) {
    EXPECT_EQ(call.code, grpc::StatusCode::CANCELLED)
        << "call " << call.id
        << " failed across the upstream's graceful shutdown: " << call.message;
    EXPECT_LT(absl::AbsDuration(call.start - drain_started), absl::Milliseconds(100))
        << "call " << call.id << " was cancelled but did not race the upstream's shutdown";
  }
  EXPECT_GE(new_upstream.Calls(kUnaryMethod).size(), static_cast<size_t>(before + 50))
      << "new calls did not reach the new upstream";

  // The new upstream's calls came over new connections.
  const std::set<std::string> old_peers = old_upstream.DistinctPeers();
  for (const std::string& peer : new_upstream.DistinctPeers()) {
    EXPECT_EQ(old_peers.count(peer), 0u) << peer << " served both upstreams";
  }
  // Not one call was cancelled on the old upstream.
  for (const ObservedCall& call : old_upstream.Calls()) {
    if (call.method == kUnaryMethod || call.method == kServerStreamMethod) {
      EXPECT_FALSE(call.cancelled) << call;
    }
  }
}

// ---- Upstreams that misbehave ----

TEST_F(UpstreamFaultTest, UpstreamThatNeverSpeaksHttp2FailsCallsWithUnavailableAfterTheTimeout) {
  RawUpstream silent(RawUpstream::Behavior::kSilent);
  ASSERT_TRUE(silent.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", silent.target()},
                                         {"GRPC_CONNECTION_POOL_SIZE", "2"},
                                         {"GRPC_CONNECTION_TIMEOUT_SECS", "2"}}));
  const auto channel = PoolsideChannel();

  // No deadline of its own: poolside's connection timeout ends it.
  CallOptions patient;
  patient.wait = absl::Seconds(20);
  absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel, kUnaryMethod, "hello?", patient);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
  EXPECT_FALSE(result.timed_out) << "poolside held the call without end";
  EXPECT_GE(took, absl::Milliseconds(1500));
  EXPECT_LT(took, absl::Seconds(6));

  // A deadline shorter than that is honoured.
  CallOptions hurried;
  hurried.timeout = absl::Seconds(1);
  start = absl::Now();
  const CallResult deadline = UnaryCall(channel, kUnaryMethod, "hello?", hurried);
  EXPECT_EQ(deadline.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << deadline;
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2500));

  EXPECT_GT(silent.connections_accepted(), 0) << "poolside never connected";
  EXPECT_EQ(AwaitHealthStatus(channel, "unhealthy", absl::Seconds(2)), "unhealthy");
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
}

struct ResetCase {
  const char* name;
  RawUpstream::Behavior behavior;
  uint32_t error_code;
  absl::Duration reset_delay = absl::ZeroDuration();
};

class StreamResetTest : public UpstreamFaultTest,
                        public ::testing::WithParamInterface<ResetCase> {};

TEST_P(StreamResetTest, UpstreamResettingStreamsEndsCallsAsADirectCallWouldEnd) {
  RawUpstream resetting(GetParam().behavior, GetParam().error_code, GetParam().reset_delay);
  ASSERT_TRUE(resetting.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", resetting.target()},
                                         {"GRPC_CONNECTION_POOL_SIZE", "1"},
                                         {"GRPC_CONNECTION_TIMEOUT_SECS", "5"}}));
  // A direct channel like poolside's own upstream channels: retries off.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  const auto direct =
      grpc::CreateCustomChannel(resetting.target(), grpc::InsecureChannelCredentials(), args);
  const auto via_poolside = PoolsideChannel();

  CallOptions options;
  options.timeout = absl::Seconds(5);
  options.wait = absl::Seconds(10);
  for (const char* method : {kUnaryMethod, kServerStreamMethod, kBidiMethod}) {
    SCOPED_TRACE(method);
    const CallResult reference = StreamingCall(direct, method, {"request"}, options);
    const absl::Time start = absl::Now();
    const CallResult result = StreamingCall(via_poolside, method, {"request"}, options);
    EXPECT_LT(absl::Now() - start, absl::Seconds(3)) << result;
    EXPECT_FALSE(result.status.ok()) << result;
    EXPECT_EQ(result.status.error_code(), reference.status.error_code())
        << "through poolside: " << result << "; direct: " << reference;
    const bool same_segment = GetParam().behavior == RawUpstream::Behavior::kMessageThenReset &&
                              GetParam().reset_delay == absl::ZeroDuration();
    if (same_segment) {
      // A message and the reset in one TCP segment: gRPC drops a message
      // that no Read was waiting for when the reset arrives, and poolside
      // reads upstream messages only after relaying the headers, so the
      // message is lost through poolside (see FINDINGS.md). The status holds.
      std::printf("[ metric ] %s, %s: %zu messages through poolside, %zu direct\n", GetParam().name,
                  method, result.responses.size(), reference.responses.size());
      EXPECT_LE(result.responses.size(), reference.responses.size());
    } else {
      EXPECT_EQ(result.responses.size(), reference.responses.size());
    }
  }
  EXPECT_GT(resetting.streams_reset(), 0);
  // poolside is unharmed: its own admin calls answer.
  EXPECT_TRUE(AdminHealthCheck(via_poolside).ok());
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Resets, StreamResetTest,
    ::testing::Values(
        ResetCase{"Cancel", RawUpstream::Behavior::kResetStreams, h2::kCancel},
        ResetCase{"RefusedStream", RawUpstream::Behavior::kResetStreams, h2::kRefusedStream},
        ResetCase{"InternalError", RawUpstream::Behavior::kResetStreams, h2::kInternalError},
        ResetCase{"EnhanceYourCalm", RawUpstream::Behavior::kResetStreams, h2::kEnhanceYourCalm},
        ResetCase{"CancelAfterOneMessage", RawUpstream::Behavior::kMessageThenReset, h2::kCancel},
        ResetCase{"InternalErrorAfterOneMessage", RawUpstream::Behavior::kMessageThenReset,
                  h2::kInternalError},
        ResetCase{"CancelSoonAfterOneMessage", RawUpstream::Behavior::kMessageThenReset,
                  h2::kCancel, absl::Milliseconds(100)},
        ResetCase{"InternalErrorSoonAfterOneMessage", RawUpstream::Behavior::kMessageThenReset,
                  h2::kInternalError, absl::Milliseconds(100)}),
    [](const ::testing::TestParamInfo<ResetCase>& info) { return info.param.name; });

// ---- Upstream slower than the client's deadline ----

TEST_F(UpstreamFaultTest, UpstreamSlowerThanTheDeadlineEndsWithDeadlineExceededPromptly) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream.target()}}));
  const auto channel = PoolsideChannel();
  ASSERT_TRUE(UnaryCall(channel, kUnaryMethod, "warm").status.ok());

  CallOptions options;
  options.metadata = {{"x-sleep-ms", "20000"}};
  options.timeout = absl::Milliseconds(500);
  const absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel, kUnaryMethod, "slow", options);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << result;
  EXPECT_GE(took, absl::Milliseconds(450));
  EXPECT_LT(took, absl::Milliseconds(1500));
  // The upstream had the deadline too and gave up the call with it.
  ASSERT_TRUE(upstream.WaitForCancelled(1, absl::Seconds(3), kUnaryMethod));
  const std::vector<ObservedCall> seen = upstream.Calls(kUnaryMethod);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_LT(seen[1].deadline, std::chrono::system_clock::now() + std::chrono::seconds(1));

  // A stream that has answered once, then waits past its deadline.
  CallOptions stream_options;
  stream_options.timeout = absl::Seconds(1);
  const absl::Time stream_start = absl::Now();
  InteractiveCall stream(channel, kBidiMethod, stream_options);
  ASSERT_TRUE(stream.Write("one"));
  ASSERT_EQ(stream.Read(), "one");
  EXPECT_EQ(stream.Read(), std::nullopt);
  const CallResult ended = stream.Finish();
  EXPECT_EQ(ended.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << ended;
  EXPECT_LT(absl::Now() - stream_start, absl::Seconds(2));
  EXPECT_TRUE(upstream.WaitForCancelled(1, absl::Seconds(3), kBidiMethod));
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
}

// ---- A call the upstream never saw, and no connection to retry it on ----

// Upstream calls wait for their connection, so that grpc's transparent retry
// of a call the upstream provably never saw can outlast a reconnect. When the
// upstream refuses the call (GOAWAY, last stream 0) and then goes away for
// good, that wait must still end, with UNAVAILABLE after the connection
// timeout, not at the call's own deadline.
TEST_F(UpstreamFaultTest, CallRefusedByAnUpstreamThatThenVanishesEndsUnavailableAfterTheTimeout) {
  std::unique_ptr<ChildProcess> upstream;
  ASSERT_NO_FATAL_FAILURE(StartRefusingUpstream(upstream, {}));
  const auto channel = PoolsideChannel();
  ASSERT_EQ(AwaitActiveConnections(channel, 1, absl::Seconds(10)), 1);

  CallOptions options;
  options.timeout = absl::Seconds(60);
  const absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel, kUnaryMethod, "refused", options);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
  EXPECT_TRUE(absl::StrContains(result.status.error_message(), "was lost before the call"))
      << result;
  // The connection timeout (1 s) plus a check interval, far from the call's
  // own 60 s deadline.
  EXPECT_LT(took, absl::Seconds(10));
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->calls_ended_connection_lost(), 1u);
}

// GRPC_TRANSPARENT_RETRY=false: the refused call fails at once with grpc's
// own UNAVAILABLE, as a direct call without transparent retry would.
TEST_F(UpstreamFaultTest, WithTransparentRetryOffARefusedCallFailsAtOnce) {
  std::unique_ptr<ChildProcess> upstream;
  ASSERT_NO_FATAL_FAILURE(StartRefusingUpstream(upstream, {{"GRPC_TRANSPARENT_RETRY", "false"}}));
  const auto channel = PoolsideChannel();
  ASSERT_EQ(AwaitActiveConnections(channel, 1, absl::Seconds(10)), 1);

  CallOptions options;
  options.timeout = absl::Seconds(60);
  const CallResult result = UnaryCall(channel, kUnaryMethod, "refused", options);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
  EXPECT_FALSE(absl::StrContains(result.status.error_message(), "was lost before the call"))
      << result;
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->calls_ended_connection_lost(), 0u);
}

// grpc 1.51 reads errno after taking mutexes while its connect() is still in
// progress, and absl's first queued mutex waiter in a process reads the CPU
// frequency from a file most VMs lack, leaving errno at ENOENT. Where the two
// met, an upstream connect failed as "No such file or directory" and its
// channel backed off for a second; poolside now takes the reading at start.
// The shim makes the reading land inside every connect grpc starts.
TEST_F(UpstreamFaultTest, UpstreamConnectsSurviveAbslsFirstMutexWaitLandingInsideThem) {
  if (access("/sys/devices/system/cpu/cpu0/tsc_freq_khz", R_OK) == 0) {
    GTEST_SKIP() << "absl reads the CPU frequency here without an error: no stale errno to leave";
  }
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  // The shim is loaded ahead of AddressSanitizer's runtime.
  const char* asan_options = std::getenv("ASAN_OPTIONS");
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream.target()},
                     {"GRPC_CONNECTION_POOL_SIZE", "2"},
                     {"LD_PRELOAD", FirstMutexWaitShim()},
                     {"ASAN_OPTIONS", absl::StrCat(asan_options != nullptr ? asan_options : "",
                                                   asan_options != nullptr ? ":" : "",
                                                   "verify_asan_link_order=0")}}));
  const auto channel = PoolsideChannel();
  ASSERT_EQ(AwaitActiveConnections(channel, 2, absl::Seconds(10)), 2);
  EXPECT_TRUE(UnaryCall(channel, kUnaryMethod, "first").status.ok());
  // A channel whose first connect failed logs its recovery from this state,
  // and counts the failed attempt.
  EXPECT_FALSE(absl::StrContains(poolside_->Stderr(), "TRANSIENT_FAILURE"));
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->connection_errors(), 0u);
}

}  // namespace
}  // namespace poolside::test
