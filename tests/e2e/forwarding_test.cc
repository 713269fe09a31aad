// Transparent forwarding, end to end: a raw-bytes client, poolside as a child
// process, and a recording TestUpstream on loopback.
//
// Every test runs three times: "Direct" (client -> upstream) is the baseline
// that shows what gRPC itself does; "ThroughPoolside" (client -> poolside ->
// upstream) and "ThroughPoolsideFrames" (the same with GRPC_FORWARDER=frames,
// calls relayed as HTTP/2 frames) must be indistinguishable from it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

enum class Path { kDirect, kThroughPoolside, kThroughPoolsideFrames };

// The values of `key` in `metadata`, in order.
std::vector<std::string> ValuesOf(const Metadata& metadata, const std::string& key) {
  std::vector<std::string> values;
  auto [begin, end] = metadata.equal_range(key);
  for (auto it = begin; it != end; ++it) values.push_back(it->second);
  return values;
}

void PrintTo(Path path, std::ostream* os) {
  *os << (path == Path::kDirect            ? "direct"
          : path == Path::kThroughPoolside ? "through poolside"
                                           : "through poolside, frames");
}

std::string PrintPath(const ::testing::TestParamInfo<Path>& info) {
  return info.param == Path::kDirect            ? "Direct"
         : info.param == Path::kThroughPoolside ? "ThroughPoolside"
                                                : "ThroughPoolsideFrames";
}

class ForwardingTest : public E2eTest, public ::testing::WithParamInterface<Path> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(upstream_.Start().ok());
    std::string target = upstream_.target();
    if (GetParam() == Path::kThroughPoolside) {
      ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}}));
      target = poolside_->listen_target();
    }
    if (GetParam() == Path::kThroughPoolsideFrames) {
      ASSERT_NO_FATAL_FAILURE(StartPoolside(
          {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_FORWARDER", "frames"}}));
      target = poolside_->listen_target();
    }
    channel_ = CreateTestChannel(target);
  }

  TestUpstream upstream_;
  std::shared_ptr<grpc::Channel> channel_;
  std::mt19937 rng_{20240501};
};

INSTANTIATE_TEST_SUITE_P(Paths, ForwardingTest,
                         ::testing::Values(Path::kDirect, Path::kThroughPoolside,
                                           Path::kThroughPoolsideFrames),
                         PrintPath);

TEST_P(ForwardingTest, UnaryReturnsRandomBytesUnchanged) {
  for (size_t size : {0, 1, 2, 100, 4096, 65535, 65536, 65537, 1 << 20}) {
    const std::string request = RandomBytes(size, rng_);
    const CallResult result = UnaryCall(channel_, kUnaryMethod, request);
    ASSERT_TRUE(result.status.ok()) << "size " << size << ": " << result;
    ASSERT_THAT(result.responses, ElementsAre(request)) << "size " << size;
  }
}

TEST_P(ForwardingTest, ServerStreamDeliversEveryCopyUnchanged) {
  const std::string request = RandomBytes(10000, rng_);
  CallOptions options;
  options.metadata = {{"x-response-count", "5"}};
  const CallResult result = StreamingCall(channel_, kServerStreamMethod, {request}, options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(result.responses, std::vector<std::string>(5, request));
}

TEST_P(ForwardingTest, ServerStreamDeliversEmptyMessages) {
  CallOptions options;
  options.metadata = {{"x-response-count", "3"}};
  const CallResult result = StreamingCall(channel_, kServerStreamMethod, {""}, options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("", "", ""));
}

TEST_P(ForwardingTest, ClientStreamDeliversEveryRequestInOrder) {
  std::vector<std::string> requests;
  std::string all;
  for (size_t size : {7, 0, 70000, 1, 0, 3000}) {
    requests.push_back(RandomBytes(size, rng_));
    all += requests.back();
  }
  const CallResult result = StreamingCall(channel_, kClientStreamMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre(all));
}

TEST_P(ForwardingTest, BidiEchoesEveryMessageIncludingEmptyOnes) {
  const std::vector<std::string> requests = {RandomBytes(5, rng_), "", RandomBytes(100000, rng_),
                                             "", ""};
  const CallResult result = StreamingCall(channel_, kBidiMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(result.responses, requests);
}

TEST_P(ForwardingTest, BidiKeepsOrderOfAThousandMessages) {
  std::vector<std::string> requests;
  std::uniform_int_distribution<size_t> size(0, 3000);
  for (int i = 0; i < 1000; ++i) {
    // Distinct messages, so that a reordering cannot go unnoticed.
    requests.push_back(absl::StrCat(i, ":", RandomBytes(size(rng_), rng_)));
  }
  // Writes and reads run concurrently: many messages are in flight at once.
  const CallResult result = StreamingCall(channel_, kBidiMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_EQ(result.responses.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(result.responses[i], requests[i]) << "first difference at message " << i;
  }
}

TEST_P(ForwardingTest, ForwardsRequestMetadataUnchanged) {
  const std::string binary = RandomBytes(300, rng_);
  CallOptions options;
  options.metadata = {{"x-custom", "plain value"},
                      {"x-custom-bin", binary},
                      {"x-repeated", "first"},
                      {"x-repeated", "second"},
                      {"x-empty", ""}};
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  ASSERT_TRUE(result.status.ok()) << result;

  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  const Metadata seen = upstream_.Calls(kUnaryMethod).front().client_metadata;
  EXPECT_THAT(ValuesOf(seen, "x-custom"), ElementsAre("plain value"));
  EXPECT_THAT(ValuesOf(seen, "x-custom-bin"), ElementsAre(binary));
  EXPECT_THAT(ValuesOf(seen, "x-repeated"), ElementsAre("first", "second"));
  EXPECT_THAT(ValuesOf(seen, "x-empty"), ElementsAre(""));
}

TEST_P(ForwardingTest, ReturnsInitialAndTrailingMetadataUnchanged) {
  const std::string header_bytes = RandomBytes(64, rng_);
  const std::string trailer_bytes = RandomBytes(64, rng_);
  CallOptions options;
  options.metadata = {
      {"x-echo-text", "hello, world"}, {"x-echo-data-bin", header_bytes},
      {"x-echo-multi", "1"},           {"x-echo-multi", "2"},
      {"x-trailer-text", "goodbye"},   {"x-trailer-data-bin", trailer_bytes},
  };
  for (const char* method : {kUnaryMethod, kBidiMethod}) {
    const CallResult result = StreamingCall(channel_, method, {"m"}, options);
    ASSERT_TRUE(result.status.ok()) << method << ": " << result;
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-text"), ElementsAre("hello, world"))
        << method;
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-data-bin"), ElementsAre(header_bytes))
        << method;
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-multi"), ElementsAre("1", "2")) << method;
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-text"), ElementsAre("goodbye"))
        << method;
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-data-bin"),
                ElementsAre(trailer_bytes))
        << method;
    // Headers stay headers and trailers stay trailers.
    EXPECT_EQ(result.initial_metadata.count("x-trailer-text"), 0u) << method;
    EXPECT_EQ(result.trailing_metadata.count("x-echo-text"), 0u) << method;
  }
}

// Every non-OK code, with a message (non-ASCII and '%' included: grpc-message
// is percent-encoded on the wire) and binary details, answered both as
// headers + trailers and as trailers-only.
TEST_P(ForwardingTest, ForwardsEveryStatusCodeWithMessageAndDetails) {
  for (const bool trailers_only : {false, true}) {
    for (int code = 1; code <= 16; ++code) {
      SCOPED_TRACE(absl::StrCat("code ", code, trailers_only ? " trailers-only" : ""));
      const std::string message = absl::StrCat("failure ", code, ": 100% ünïcödé\t\"quoted\"");
      const std::string details = RandomBytes(40 + code, rng_);
      CallOptions options;
      options.metadata = {{"x-status-code", absl::StrCat(code)},
                          {"x-status-message-bin", message},
                          {"x-status-details-bin", details},
                          {"x-trailer-code", absl::StrCat(code)}};
      if (trailers_only) options.metadata.emplace_back("x-trailers-only", "1");

      const CallResult result = UnaryCall(channel_, kUnaryMethod, "request", options);
      EXPECT_FALSE(result.timed_out);
      EXPECT_EQ(result.status.error_code(), static_cast<grpc::StatusCode>(code)) << result;
      EXPECT_EQ(result.status.error_message(), message);
      EXPECT_EQ(result.status.error_details(), details);
      // Sent exactly once (copying it as a trailer as well would duplicate it).
      EXPECT_EQ(result.trailing_metadata.count("grpc-status-details-bin"), 1u);
      EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-code"),
                  ElementsAre(absl::StrCat(code)));
    }
  }
}

TEST_P(ForwardingTest, ServerStreamDeliversMessagesBeforeAnErrorStatus) {
  CallOptions options;
  options.metadata = {
      {"x-response-count", "2"}, {"x-status-code", "5"}, {"x-status-message", "gone after two"}};
  const CallResult result = StreamingCall(channel_, kServerStreamMethod, {"item"}, options);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::NOT_FOUND) << result;
  EXPECT_EQ(result.status.error_message(), "gone after two");
  EXPECT_THAT(result.responses, ElementsAre("item", "item"));
}

TEST_P(ForwardingTest, OkStatusWithTrailersOnlyAnswer) {
  CallOptions options;
  options.metadata = {{"x-trailers-only", "1"}, {"x-trailer-note", "fine"}};
  const CallResult result = StreamingCall(channel_, kBidiMethod, {"ignored"}, options);
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_TRUE(result.responses.empty());
  EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-note"), ElementsAre("fine"));
}

TEST_P(ForwardingTest, UpstreamFinishingEndsTheClientsStream) {
  CallOptions options;
  options.metadata = {
      {"x-trailers-only", "1"}, {"x-status-code", "9"}, {"x-status-message", "stop now"}};
  InteractiveCall call(channel_, kBidiMethod, options);
  // The client never half-closes: the upstream's end alone ends the call.
  EXPECT_EQ(call.Read(), std::nullopt);
  const CallResult result = call.Finish();
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << result;
  EXPECT_EQ(result.status.error_message(), "stop now");
}

TEST_P(ForwardingTest, HalfCloseReachesUpstream) {
  InteractiveCall call(channel_, kBidiMethod);
  ASSERT_TRUE(call.Write("a"));
  EXPECT_EQ(call.Read(), "a");
  ASSERT_TRUE(call.WritesDone());
  // The upstream finishes the bidi call only when it sees the half-close.
  EXPECT_EQ(call.Read(), std::nullopt);
  const CallResult result = call.Finish();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_FALSE(result.timed_out);
}

TEST_P(ForwardingTest, ClientDeadlineReachesUpstream) {
  CallOptions options;
  options.timeout = absl::Seconds(20);
  const auto client_deadline =
      std::chrono::system_clock::now() + absl::ToChronoMilliseconds(*options.timeout);
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  ASSERT_TRUE(result.status.ok()) << result;

  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  const auto upstream_deadline = upstream_.Calls(kUnaryMethod).front().deadline;
  ASSERT_NE(upstream_deadline, std::chrono::system_clock::time_point::max())
      << "the upstream saw no deadline";
  const auto difference =
      std::chrono::duration_cast<std::chrono::milliseconds>(client_deadline - upstream_deadline);
  EXPECT_LT(std::abs(difference.count()), 1000)
      << "upstream deadline differs from the client's by " << difference.count() << " ms";
}

TEST_P(ForwardingTest, DeadlineExceededWhenUpstreamSleepsPastIt) {
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "10000"}};
  options.timeout = absl::Milliseconds(500);
  const absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << result;
  EXPECT_LT(elapsed, absl::Seconds(3));
  // The deadline ended the upstream's call too, long before its 10 s sleep.
  EXPECT_TRUE(upstream_.WaitForCancelled(1, absl::Seconds(3), kUnaryMethod))
      << ::testing::PrintToString(upstream_.Calls(kUnaryMethod));
}

TEST_P(ForwardingTest, ClientCancelOfUnaryCallReachesUpstream) {
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "30000"}};
  InteractiveCall call(channel_, kUnaryMethod, options);
  ASSERT_TRUE(call.Write("m"));
  ASSERT_TRUE(call.WritesDone());
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));

  call.Cancel();
  const CallResult result = call.Finish();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED) << result;
  ASSERT_TRUE(upstream_.WaitForCancelled(1, absl::Seconds(5), kUnaryMethod))
      << "the upstream call was not cancelled: "
      << ::testing::PrintToString(upstream_.Calls(kUnaryMethod));
}

TEST_P(ForwardingTest, ClientCancelMidBidiReachesUpstream) {
  InteractiveCall call(channel_, kBidiMethod);
  ASSERT_TRUE(call.Write("one"));
  ASSERT_EQ(call.Read(), "one");

  call.Cancel();
  const CallResult result = call.Finish();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED) << result;
  ASSERT_TRUE(upstream_.WaitForCancelled(1, absl::Seconds(5), kBidiMethod))
      << "the upstream call was not cancelled: "
      << ::testing::PrintToString(upstream_.Calls(kBidiMethod));
}

TEST_P(ForwardingTest, UpstreamCallStartsBeforeTheAppSendsAnything) {
  // poolside starts an upstream call with the app's first message when that
  // is already there; an app that waits for the upstream to speak first
  // must not wait for poolside.
  CallOptions options;
  options.metadata = {{"x-echo-first", "upstream speaks first"}};
  InteractiveCall call(channel_, kBidiMethod, options);
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kBidiMethod))
      << "the upstream never saw a call whose app has not written yet";
  ASSERT_TRUE(call.Write("then the app"));
  EXPECT_EQ(call.Read(), "then the app");
  ASSERT_TRUE(call.WritesDone());
  const CallResult result = call.Finish();
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-first"),
              ElementsAre("upstream speaks first"));
}

TEST_P(ForwardingTest, StreamedMessageReachesTheAppWhileTheUpstreamWaitsToSendMore) {
  // Once the app has half-closed, poolside holds each upstream message until
  // its next read shows whether the status follows (one batch for both); a
  // message whose successor is not there yet must go on at once.
  CallOptions options;
  options.metadata = {{"x-response-count", "2"}, {"x-response-interval-ms", "60000"}};
  options.wait = absl::Seconds(20);
  InteractiveCall call(channel_, kServerStreamMethod, options);
  ASSERT_TRUE(call.Write("first of two"));
  ASSERT_TRUE(call.WritesDone());
  EXPECT_EQ(call.Read(), "first of two")
      << "the first message waited for the second, which the upstream sends a minute later";
  EXPECT_FALSE(call.timed_out());
  const std::vector<ObservedCall> calls = upstream_.Calls(kServerStreamMethod);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_FALSE(calls[0].done) << "the upstream was meant to be still waiting to send more";
  call.Cancel();
  EXPECT_EQ(call.Finish().status.error_code(), grpc::StatusCode::CANCELLED);
}

TEST_P(ForwardingTest, ThousandConcurrentUnaryCallsAllSucceed) {
  constexpr int kCalls = 1000;
  std::vector<std::string> requests;
  for (int i = 0; i < kCalls; ++i) requests.push_back(absl::StrCat("request ", i));
  CallOptions options;
  // Each call takes 200 ms upstream: done one after another they would take
  // 200 s, so finishing well within the bound below means they overlapped.
  options.metadata = {{"x-sleep-ms", "200"}};
  options.timeout = absl::Seconds(60);
  options.wait = absl::Seconds(60);
  const absl::Time start = absl::Now();
  const std::vector<CallResult> results =
      ConcurrentUnaryCalls(channel_, kUnaryMethod, requests, options);
  const absl::Duration elapsed = absl::Now() - start;

  int failures = 0;
  for (int i = 0; i < kCalls; ++i) {
    if (!results[i].status.ok() || results[i].responses != std::vector<std::string>{requests[i]}) {
      if (++failures <= 5) ADD_FAILURE() << "call " << i << ": " << results[i];
    }
  }
  EXPECT_EQ(failures, 0);
  EXPECT_LT(elapsed, absl::Seconds(30));
  EXPECT_EQ(upstream_.Calls(kUnaryMethod).size(), static_cast<size_t>(kCalls));
}

TEST_P(ForwardingTest, HundredConcurrentBidiStreamsStayIndependent) {
  constexpr int kStreams = 100;
  constexpr int kRounds = 5;
  std::vector<std::unique_ptr<InteractiveCall>> calls;
  for (int i = 0; i < kStreams; ++i) {
    calls.push_back(std::make_unique<InteractiveCall>(channel_, kBidiMethod));
  }
  for (int round = 0; round < kRounds; ++round) {
    for (int i = 0; i < kStreams; ++i) {
      ASSERT_TRUE(calls[i]->Write(absl::StrCat("stream ", i, " round ", round))) << "stream " << i;
    }
    for (int i = 0; i < kStreams; ++i) {
      ASSERT_EQ(calls[i]->Read(), absl::StrCat("stream ", i, " round ", round)) << "stream " << i;
    }
    if (round == 0) {
      // Every stream is open at the upstream at the same time.
      ASSERT_TRUE(upstream_.WaitForCalls(kStreams, absl::Seconds(5), kBidiMethod));
      EXPECT_FALSE(upstream_.WaitForDone(1, absl::ZeroDuration(), kBidiMethod));
    }
  }
  for (int i = 0; i < kStreams; ++i) ASSERT_TRUE(calls[i]->WritesDone()) << "stream " << i;
  for (int i = 0; i < kStreams; ++i) {
    const CallResult result = calls[i]->Finish();
    EXPECT_TRUE(result.status.ok()) << "stream " << i << ": " << result;
  }
}

TEST_P(ForwardingTest, UnknownMethodIsAnsweredByTheUpstream) {
  const CallResult result = UnaryCall(channel_, "/poolside.test.Nope/Missing", "m");
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << result;
  EXPECT_THAT(result.status.error_message(), HasSubstr("test upstream: unknown method"));
  EXPECT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), "/poolside.test.Nope/Missing"));
}

TEST_P(ForwardingTest, HealthCheckIsForwardedToTheUpstream) {
  constexpr char kHealthCheck[] = "/grpc.health.v1.Health/Check";
  CallOptions options;
  // Tells this call apart from poolside's own health probes.
  options.metadata = {{"x-probe", "from-the-test"}};
  // An empty grpc.health.v1.HealthCheckRequest is zero bytes.
  const CallResult result = UnaryCall(channel_, kHealthCheck, "", options);
  // The test upstream has no health service: its answer, not poolside's.
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << result;
  EXPECT_THAT(result.status.error_message(), HasSubstr("test upstream: unknown method"));
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kHealthCheck));
  int forwarded = 0;
  for (const ObservedCall& call : upstream_.Calls(kHealthCheck)) {
    forwarded += call.client_metadata.count("x-probe");
  }
  EXPECT_EQ(forwarded, 1);
}

TEST_P(ForwardingTest, UpstreamSeesItsOwnTargetAsAuthority) {
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m");
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_TRUE(upstream_.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  EXPECT_EQ(upstream_.Calls(kUnaryMethod).front().authority, upstream_.target());
}

// Message size limits apply on both sides of poolside (only meaningful
// through it: the upstream's own limit is left at gRPC's default, 4 MiB),
// with either forwarder (the parameter: GRPC_FORWARDER).
class MessageSizeTest : public E2eTest, public ::testing::WithParamInterface<std::string> {
 protected:
  static constexpr size_t kLimit = 1 << 20;

  void SetUp() override {
    ASSERT_TRUE(upstream_.Start().ok());
    ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()},
                                           {"GRPC_FORWARDER", GetParam()},
                                           {"GRPC_MAX_MESSAGE_BYTES", absl::StrCat(kLimit)}}));
    channel_ = CreateTestChannel(poolside_->listen_target());
  }

  TestUpstream upstream_;
  std::shared_ptr<grpc::Channel> channel_;
  std::mt19937 rng_{7};
};

TEST_P(MessageSizeTest, MessageExactlyAtTheLimitPassesBothWays) {
  const std::string request = RandomBytes(kLimit, rng_);
  const CallResult result = UnaryCall(channel_, kUnaryMethod, request);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_TRUE(result.responses == std::vector<std::string>{request});
}

TEST_P(MessageSizeTest, RequestOneByteOverTheLimitFailsWithResourceExhausted) {
  const CallResult result = UnaryCall(channel_, kUnaryMethod, RandomBytes(kLimit + 1, rng_));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << result;
  // Whatever reached the upstream, no call there succeeded with it.
  for (const ObservedCall& call : upstream_.Calls(kUnaryMethod)) {
    EXPECT_FALSE(call.done && call.status_code == grpc::StatusCode::OK);
  }
}

TEST_P(MessageSizeTest, ResponseOneByteOverTheLimitFailsWithResourceExhausted) {
  // Two requests under the limit; the upstream answers with both at once.
  const std::vector<std::string> requests = {RandomBytes(kLimit / 2, rng_),
                                             RandomBytes(kLimit / 2 + 1, rng_)};
  const CallResult result = StreamingCall(channel_, kClientStreamMethod, requests);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << result;
  EXPECT_TRUE(result.responses.empty());
}

TEST_P(MessageSizeTest, ResponseExactlyAtTheLimitPasses) {
  const std::vector<std::string> requests = {RandomBytes(kLimit / 2, rng_),
                                             RandomBytes(kLimit / 2, rng_)};
  const CallResult result = StreamingCall(channel_, kClientStreamMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_TRUE(result.responses == std::vector<std::string>{requests[0] + requests[1]});
}

INSTANTIATE_TEST_SUITE_P(Forwarders, MessageSizeTest, ::testing::Values("grpc", "frames"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// gRPC's own default limit is 4 MiB each way; poolside's default is 64 MiB.
TEST(DefaultMessageSizeTest, MessagesOverGrpcsDefaultLimitPassByDefault) {
  TestUpstream::Options upstream_options;
  upstream_options.max_receive_message_size = 16 << 20;
  TestUpstream upstream(upstream_options);
  ASSERT_TRUE(upstream.Start().ok());
  PoolsideProcess poolside({{"GRPC_UPSTREAM_TARGET", upstream.target()}});
  ASSERT_TRUE(poolside.Start().ok());
  const absl::Status serving = poolside.WaitUntilServing(kStartTimeout);
  ASSERT_TRUE(serving.ok()) << serving;

  std::mt19937 rng(5);
  const std::string request = RandomBytes(6 << 20, rng);
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside.listen_target()), kUnaryMethod, request);
  ASSERT_TRUE(result.status.ok()) << result << "\n" << Tail(poolside.Stderr());
  EXPECT_TRUE(result.responses == std::vector<std::string>{request});
}

}  // namespace
}  // namespace poolside::test
