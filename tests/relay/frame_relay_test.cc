// FrameRelay (relay/frame_relay.h), end to end: a raw-bytes grpc++ client,
// the relay running in this process on its own thread with two upstream
// connections, and a recording TestUpstream, all on loopback with free-picked
// ports. The cases mirror tests/e2e/forwarding_test.cc, which holds poolside
// itself to the same transparency contract: what the client sends reaches the
// upstream unchanged, and what the upstream answers reaches the client
// unchanged.
#include "relay/frame_relay.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/support/child_process.h"
#include "tests/support/generic_client.h"
#include "tests/support/payloads.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

using ::poolside::relay::FrameRelay;
using ::poolside::relay::FrameRelayOptions;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// How long Run() may take to return after Stop().
constexpr absl::Duration kStopTimeout = absl::Seconds(15);
// How long the relay may take to serve its first call.
constexpr absl::Duration kReadyTimeout = absl::Seconds(5);

// Every byte value 0..255, in order, `repeat` times.
std::string AllByteValues(int repeat = 1) {
  std::string bytes;
  for (int r = 0; r < repeat; ++r) {
    for (int value = 0; value < 256; ++value) bytes.push_back(static_cast<char>(value));
  }
  return bytes;
}

// The values of `key` in `metadata`, in order.
std::vector<std::string> ValuesOf(const Metadata& metadata, const std::string& key) {
  std::vector<std::string> values;
  auto [begin, end] = metadata.equal_range(key);
  for (auto it = begin; it != end; ++it) values.push_back(it->second);
  return values;
}

// A FrameRelay whose Run() loop runs on a thread of its own until Stop(), so
// that no test leaves a thread behind, and a Run() that does not return
// after Stop() ends the test binary with a message instead of hanging it.
class RunningRelay {
 public:
  static absl::StatusOr<std::unique_ptr<RunningRelay>> Start(const FrameRelayOptions& options) {
    absl::StatusOr<std::unique_ptr<FrameRelay>> relay = FrameRelay::Create(options);
    if (!relay.ok()) return relay.status();
    return std::unique_ptr<RunningRelay>(new RunningRelay(*std::move(relay)));
  }

  ~RunningRelay() { Stop(); }

  RunningRelay(const RunningRelay&) = delete;
  RunningRelay& operator=(const RunningRelay&) = delete;

  // Stops the relay and joins its thread; a failure if Run() had returned
  // before it was asked to. Idempotent.
  void Stop() {
    if (!thread_.joinable()) return;
    if (returned_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      ADD_FAILURE() << "FrameRelay::Run() returned before Stop() was called";
    }
    relay_->Stop();
    if (returned_.wait_for(absl::ToChronoMilliseconds(kStopTimeout)) != std::future_status::ready) {
      std::fprintf(stderr, "FrameRelay::Run() did not return %s after Stop(); aborting\n",
                   absl::FormatDuration(kStopTimeout).c_str());
      std::abort();
    }
    thread_.join();
    relay_.reset();
  }

  int port() const { return port_; }
  FrameRelay& relay() const { return *relay_; }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  explicit RunningRelay(std::unique_ptr<FrameRelay> relay)
      : relay_(std::move(relay)), port_(relay_->port()) {
    std::promise<void> returned;
    returned_ = returned.get_future();
    thread_ = std::thread([relay = relay_.get(), returned = std::move(returned)]() mutable {
      relay->Run();
      returned.set_value();
    });
  }

  std::unique_ptr<FrameRelay> relay_;
  const int port_;
  std::future<void> returned_;
  std::thread thread_;
};

// A TestUpstream, a FrameRelay in front of it with two upstream connections,
// and a client channel to the relay.
class FrameRelayTest : public ::testing::Test {
 protected:
  static constexpr int kUpstreamConnections = 2;

  void SetUp() override {
    TestUpstream::Options upstream_options;
    // Room for the 8 MiB messages (gRPC's default limit is 4 MiB).
    upstream_options.max_receive_message_size = 64 << 20;
    upstream_ = std::make_unique<TestUpstream>(upstream_options);
    ASSERT_TRUE(upstream_->Start().ok());

    FrameRelayOptions options;
    options.upstreams = {{"127.0.0.1", upstream_->port()}};
    options.upstream_connections = kUpstreamConnections;
    absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
    ASSERT_TRUE(relay.ok()) << relay.status();
    relay_ = *std::move(relay);
    ASSERT_GT(relay_->port(), 0);
    channel_ = CreateTestChannel(relay_->target());
    ASSERT_NO_FATAL_FAILURE(AwaitFirstCall());
  }

  void TearDown() override {
    if (relay_ != nullptr) relay_->Stop();
    channel_.reset();
    if (upstream_ != nullptr) upstream_->Shutdown();
  }

  // The relay's upstream connections come up in its Run() loop, and a call
  // that arrives before one is up is answered UNAVAILABLE by design: retries
  // one small call until it passes, so that the tests see a relay that
  // serves, then forgets the upstream's record of it.
  void AwaitFirstCall() {
    const absl::Time deadline = absl::Now() + kReadyTimeout;
    CallOptions options;
    options.timeout = absl::Seconds(2);
    options.wait = absl::Seconds(3);
    int attempts = 0;
    CallResult result;
    while (true) {
      ++attempts;
      result = UnaryCall(channel_, kUnaryMethod, "ready?", options);
      if (result.status.ok() || absl::Now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(result.status.ok())
        << "the relay served no call within " << absl::FormatDuration(kReadyTimeout) << " ("
        << attempts << " attempts); last: " << result;
    ASSERT_THAT(result.responses, ElementsAre("ready?"));
    if (attempts > 1) {
      std::fprintf(stderr, "note: the relay's first call passed at attempt %d\n", attempts);
    }
    ASSERT_TRUE(upstream_->WaitForDone(1, absl::Seconds(5), kUnaryMethod));
    upstream_->ClearCalls();
  }

  std::unique_ptr<TestUpstream> upstream_;
  std::unique_ptr<RunningRelay> relay_;
  std::shared_ptr<grpc::Channel> channel_;
  std::mt19937 rng_{20240501};
};

// 1. Messages are bytes: every size and byte value round-trips unchanged.
TEST_F(FrameRelayTest, UnaryEchoReturnsEveryByteValueUnchanged) {
  const std::string all_bytes = AllByteValues();
  const CallResult result = UnaryCall(channel_, kUnaryMethod, all_bytes);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre(all_bytes));

  for (size_t size : {0, 1, 2, 100, 4096, 16383, 16384, 16385, 65535, 65536, 65537, 1 << 20}) {
    const std::string request = RandomBytes(size, rng_);
    const CallResult sized = UnaryCall(channel_, kUnaryMethod, request);
    ASSERT_TRUE(sized.status.ok()) << "size " << size << ": " << sized;
    ASSERT_THAT(sized.responses, ElementsAre(request)) << "size " << size;
  }
}

// 2. Request headers reach the upstream as sent: text and -bin values, keys
// repeated in order, an empty value, and the client's :authority.
TEST_F(FrameRelayTest, RequestMetadataAndAuthorityReachTheUpstreamUnchanged) {
  const std::string binary = AllByteValues(2);
  const std::string random_binary = RandomBytes(300, rng_);
  CallOptions options;
  options.metadata = {{"x-custom", "plain value"},
                      {"x-custom-bin", binary},
                      {"x-random-bin", random_binary},
                      {"x-repeated", "first"},
                      {"x-repeated", "second"},
                      {"x-repeated", "third"},
                      {"x-repeated-bin", std::string("\0\1", 2)},
                      {"x-repeated-bin", std::string("\xff\xfe", 2)},
                      {"x-empty", ""}};
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("m"));

  ASSERT_TRUE(upstream_->WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
  const std::vector<ObservedCall> calls = upstream_->Calls(kUnaryMethod);
  ASSERT_EQ(calls.size(), 1u);
  const Metadata& seen = calls.front().client_metadata;
  EXPECT_THAT(ValuesOf(seen, "x-custom"), ElementsAre("plain value"));
  EXPECT_THAT(ValuesOf(seen, "x-custom-bin"), ElementsAre(binary));
  EXPECT_THAT(ValuesOf(seen, "x-random-bin"), ElementsAre(random_binary));
  EXPECT_THAT(ValuesOf(seen, "x-repeated"), ElementsAre("first", "second", "third"));
  EXPECT_THAT(ValuesOf(seen, "x-repeated-bin"),
              ElementsAre(std::string("\0\1", 2), std::string("\xff\xfe", 2)));
  EXPECT_THAT(ValuesOf(seen, "x-empty"), ElementsAre(""));
  // The client's channel sends its target as :authority; the relay passes
  // headers through as sent, so the upstream sees the relay's address (where
  // poolside, a grpc++ hop, substitutes the upstream's own).
  EXPECT_EQ(calls.front().authority, relay_->target());
}

// 3. Response headers stay headers and trailers stay trailers, unchanged.
TEST_F(FrameRelayTest, ResponseInitialAndTrailingMetadataComeBackUnchanged) {
  const std::string header_bytes = AllByteValues();
  const std::string trailer_bytes = RandomBytes(64, rng_);
  CallOptions options;
  options.metadata = {
      {"x-echo-text", "hello, world"}, {"x-echo-data-bin", header_bytes},
      {"x-echo-multi", "1"},           {"x-echo-multi", "2"},
      {"x-trailer-text", "goodbye"},   {"x-trailer-data-bin", trailer_bytes},
      {"x-trailer-multi", "a"},        {"x-trailer-multi", "b"},
  };
  for (const char* method : {kUnaryMethod, kBidiMethod}) {
    SCOPED_TRACE(method);
    const CallResult result = StreamingCall(channel_, method, {"m"}, options);
    ASSERT_TRUE(result.status.ok()) << result;
    EXPECT_THAT(result.responses, ElementsAre("m"));
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-text"), ElementsAre("hello, world"));
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-data-bin"), ElementsAre(header_bytes));
    EXPECT_THAT(ValuesOf(result.initial_metadata, "x-echo-multi"), ElementsAre("1", "2"));
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-text"), ElementsAre("goodbye"));
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-data-bin"),
                ElementsAre(trailer_bytes));
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-multi"), ElementsAre("a", "b"));
    EXPECT_EQ(result.initial_metadata.count("x-trailer-text"), 0u);
    EXPECT_EQ(result.trailing_metadata.count("x-echo-text"), 0u);
  }
}

// 4a. A non-OK status keeps its code, its message (non-ASCII and '%'
// included: grpc-message is percent-encoded on the wire) and its details.
TEST_F(FrameRelayTest, NonOkStatusWithMessageAndDetailsComesBackIntact) {
  for (int code : {2, 3, 5, 9, 13, 16}) {
    SCOPED_TRACE(absl::StrCat("code ", code));
    const std::string message = absl::StrCat("failure ", code, ": 100% ünïcödé\t\"quoted\"");
    const std::string details = AllByteValues() + RandomBytes(40 + code, rng_);
    CallOptions options;
    options.metadata = {{"x-status-code", absl::StrCat(code)},
                        {"x-status-message-bin", message},
                        {"x-status-details-bin", details},
                        {"x-trailer-code", absl::StrCat(code)}};
    const CallResult result = UnaryCall(channel_, kUnaryMethod, "request", options);
    EXPECT_FALSE(result.timed_out);
    EXPECT_EQ(result.status.error_code(), static_cast<grpc::StatusCode>(code)) << result;
    EXPECT_EQ(result.status.error_message(), message);
    EXPECT_EQ(result.status.error_details(), details);
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "grpc-status-details-bin"),
                ElementsAre(details));
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-code"),
                ElementsAre(absl::StrCat(code)));
  }
}

// 4b. Details on an OK status are a trailer like any other.
TEST_F(FrameRelayTest, OkStatusWithDetailsTrailerComesBackIntact) {
  const std::string details = AllByteValues();
  CallOptions options;
  options.metadata = {{"x-status-details-bin", details}};
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "payload", options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("payload"));
  // grpc++ keeps no details in an OK grpc::Status (Status() in
  // CallOpClientRecvStatus::FinishOp): the trailer is what reaches the app.
  EXPECT_THAT(ValuesOf(result.trailing_metadata, "grpc-status-details-bin"), ElementsAre(details));
}

// 5. A trailers-only answer (one HEADERS frame with END_STREAM) reaches the
// client with its code, message and trailers, and no messages.
TEST_F(FrameRelayTest, TrailersOnlyAnswerReachesTheClientWithItsCode) {
  CallOptions options;
  options.metadata = {{"x-trailers-only", "1"},
                      {"x-status-code", "7"},
                      {"x-status-message", "not for you"},
                      {"x-trailer-note", "trailers only"}};
  for (const char* method : {kUnaryMethod, kBidiMethod}) {
    SCOPED_TRACE(method);
    const CallResult result = StreamingCall(channel_, method, {"ignored"}, options);
    EXPECT_FALSE(result.timed_out);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << result;
    EXPECT_EQ(result.status.error_message(), "not for you");
    EXPECT_THAT(result.responses, IsEmpty());
    EXPECT_THAT(ValuesOf(result.trailing_metadata, "x-trailer-note"), ElementsAre("trailers only"));
  }

  // And with status OK.
  CallOptions ok_options;
  ok_options.metadata = {{"x-trailers-only", "1"}, {"x-trailer-note", "fine"}};
  const CallResult ok = StreamingCall(channel_, kBidiMethod, {"ignored"}, ok_options);
  EXPECT_TRUE(ok.status.ok()) << ok;
  EXPECT_THAT(ok.responses, IsEmpty());
  EXPECT_THAT(ValuesOf(ok.trailing_metadata, "x-trailer-note"), ElementsAre("fine"));
}

// 6a.
TEST_F(FrameRelayTest, ServerStreamDeliversFiftyResponsesInOrder) {
  constexpr int kResponses = 50;
  const std::string request = AllByteValues(40);  // 10240 bytes
  CallOptions options;
  options.metadata = {{"x-response-count", absl::StrCat(kResponses)}};
  const CallResult result = StreamingCall(channel_, kServerStreamMethod, {request}, options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(result.responses.size(), static_cast<size_t>(kResponses));
  EXPECT_TRUE(result.responses == std::vector<std::string>(kResponses, request))
      << "a response differs from the request";
}

// 6b. The upstream answers with the concatenation of the requests: any loss,
// change or reordering shows.
TEST_F(FrameRelayTest, ClientStreamDeliversFiftyRequestsInOrder) {
  constexpr int kRequests = 50;
  std::vector<std::string> requests;
  std::string all;
  std::uniform_int_distribution<size_t> size(0, 20000);
  for (int i = 0; i < kRequests; ++i) {
    requests.push_back(absl::StrCat("<", i, ":", RandomBytes(size(rng_), rng_), ">"));
    all += requests.back();
  }
  const CallResult result = StreamingCall(channel_, kClientStreamMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_EQ(result.responses.size(), 1u);
  EXPECT_TRUE(result.responses.front() == all)
      << "the upstream's concatenation differs from the requests sent ("
      << result.responses.front().size() << " bytes vs " << all.size() << ")";
  ASSERT_TRUE(upstream_->WaitForDone(1, absl::Seconds(5), kClientStreamMethod));
}

// 6c. Messages in flight both ways at once, distinct so a reordering shows.
TEST_F(FrameRelayTest, BidiEchoesTwentyMessagesInOrder) {
  constexpr int kMessages = 20;
  std::vector<std::string> requests;
  std::uniform_int_distribution<size_t> size(0, 40000);
  for (int i = 0; i < kMessages; ++i) {
    requests.push_back(i % 5 == 4 ? "" : absl::StrCat(i, ":", RandomBytes(size(rng_), rng_)));
  }
  const CallResult result = StreamingCall(channel_, kBidiMethod, requests);
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_EQ(result.responses.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(result.responses[i] == requests[i]) << "first difference at message " << i;
  }

  // Interleaved, one message at a time: each echo must come back before the
  // next message is sent (nothing waits for more bytes or for END_STREAM).
  InteractiveCall call(channel_, kBidiMethod);
  for (int i = 0; i < kMessages; ++i) {
    const std::string message = absl::StrCat("ping ", i);
    ASSERT_TRUE(call.Write(message)) << "message " << i;
    ASSERT_EQ(call.Read(), message) << "message " << i;
  }
  ASSERT_TRUE(call.WritesDone());
  EXPECT_EQ(call.Read(), std::nullopt);
  const CallResult interactive = call.Finish();
  EXPECT_TRUE(interactive.status.ok()) << interactive;
  EXPECT_FALSE(interactive.timed_out);
}

// 7. The client's deadline ends the call at the client, and the upstream's
// call ends cancelled long before its 5 s sleep.
TEST_F(FrameRelayTest, DeadlineExceededAtTheClientCancelsTheUpstreamCall) {
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "5000"}};
  options.timeout = absl::Milliseconds(300);
  options.wait = absl::Seconds(10);
  const absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << result;
  EXPECT_FALSE(result.timed_out);
  EXPECT_LT(elapsed, absl::Seconds(3));
  EXPECT_TRUE(upstream_->WaitForCancelled(1, absl::Seconds(3), kUnaryMethod))
      << ::testing::PrintToString(upstream_->Calls(kUnaryMethod));
  // The upstream's call is over, not just flagged.
  EXPECT_TRUE(upstream_->WaitForDone(1, absl::Seconds(3), kUnaryMethod))
      << ::testing::PrintToString(upstream_->Calls(kUnaryMethod));
}

// 7b. Without a deadline the upstream cannot end the call by itself: only
// the client's RST_STREAM, passed on by the relay, cancels it.
TEST_F(FrameRelayTest, ClientCancelWithoutDeadlineCancelsTheUpstreamCall) {
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "30000"}};
  InteractiveCall call(channel_, kUnaryMethod, options);
  ASSERT_TRUE(call.Write("m"));
  ASSERT_TRUE(call.WritesDone());
  ASSERT_TRUE(upstream_->WaitForCalls(1, absl::Seconds(5), kUnaryMethod));

  call.Cancel();
  const CallResult result = call.Finish();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED) << result;
  EXPECT_TRUE(upstream_->WaitForCancelled(1, absl::Seconds(5), kUnaryMethod))
      << "the upstream call was not cancelled: "
      << ::testing::PrintToString(upstream_->Calls(kUnaryMethod));
}

// 8. 8 MiB each way: many times the 1 MiB stream window, so the relay must
// pass WINDOW_UPDATEs along as it writes (flow control end to end).
TEST_F(FrameRelayTest, EightMebibyteMessagesRoundTripThroughFlowControl) {
  const std::string request = RandomBytes(8 << 20, rng_);
  CallOptions options;
  options.timeout = absl::Seconds(60);
  options.wait = absl::Seconds(60);
  const CallResult result = UnaryCall(channel_, kUnaryMethod, request, options);
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_EQ(result.responses.size(), 1u);
  EXPECT_EQ(result.responses.front().size(), request.size());
  EXPECT_TRUE(result.responses.front() == request) << "the 8 MiB response differs from the request";

  // Two at once on one client connection: the connection windows are shared.
  std::vector<std::string> requests = {RandomBytes(8 << 20, rng_), RandomBytes(8 << 20, rng_)};
  const std::vector<CallResult> results =
      ConcurrentUnaryCalls(channel_, kUnaryMethod, requests, options);
  ASSERT_EQ(results.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << "call " << i << ": " << results[i];
    ASSERT_EQ(results[i].responses.size(), 1u) << "call " << i;
    EXPECT_TRUE(results[i].responses.front() == requests[i]) << "call " << i << " differs";
  }
}

// 9. Calls from many client connections share the relay's two upstream
// connections: all succeed, and the upstream sees exactly two peers.
TEST_F(FrameRelayTest, TwoHundredConcurrentCallsFromFourChannelsUseTwoUpstreamConnections) {
  constexpr int kChannels = 4;
  constexpr int kCallsPerChannel = 50;
  CallOptions options;
  // Each call takes 100 ms upstream, so the calls overlap and the relay has
  // to spread them over its connections (fewest streams open first).
  options.metadata = {{"x-sleep-ms", "100"}};
  options.timeout = absl::Seconds(30);
  options.wait = absl::Seconds(40);

  std::vector<std::vector<std::string>> requests(kChannels);
  std::vector<std::vector<CallResult>> results(kChannels);
  std::vector<std::thread> threads;
  for (int c = 0; c < kChannels; ++c) {
    for (int i = 0; i < kCallsPerChannel; ++i) {
      requests[c].push_back(absl::StrCat("channel ", c, " call ", i));
    }
  }
  const absl::Time start = absl::Now();
  for (int c = 0; c < kChannels; ++c) {
    threads.emplace_back([&, c] {
      const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay_->target());
      results[c] = ConcurrentUnaryCalls(channel, kUnaryMethod, requests[c], options);
    });
  }
  for (std::thread& thread : threads) thread.join();
  const absl::Duration elapsed = absl::Now() - start;

  int failures = 0;
  for (int c = 0; c < kChannels; ++c) {
    ASSERT_EQ(results[c].size(), static_cast<size_t>(kCallsPerChannel));
    for (int i = 0; i < kCallsPerChannel; ++i) {
      const CallResult& result = results[c][i];
      if (!result.status.ok() || result.responses != std::vector<std::string>{requests[c][i]}) {
        if (++failures <= 5) ADD_FAILURE() << "channel " << c << " call " << i << ": " << result;
      }
    }
  }
  EXPECT_EQ(failures, 0);
  // One after another they would take 20 s.
  EXPECT_LT(elapsed, absl::Seconds(10));

  ASSERT_TRUE(
      upstream_->WaitForCalls(kChannels * kCallsPerChannel, absl::Seconds(5), kUnaryMethod));
  EXPECT_EQ(upstream_->Calls(kUnaryMethod).size(),
            static_cast<size_t>(kChannels * kCallsPerChannel));
  const std::set<std::string> peers = upstream_->DistinctPeers(kUnaryMethod);
  EXPECT_EQ(peers.size(), static_cast<size_t>(kUpstreamConnections))
      << ::testing::PrintToString(peers);
}

// 10. With no upstream, a call fails fast with UNAVAILABLE (trailers-only,
// by design) instead of waiting for a connection, and the relay still stops.
TEST(FrameRelayNoUpstreamTest, CallIsUnavailableWithinTwoSeconds) {
  const int dead_port = PickFreePort();
  ASSERT_GT(dead_port, 0);
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", dead_port}};
  options.upstream_connections = 2;
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << "Create() must not fail for a refused upstream (it retries): "
                          << relay.status();
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel((*relay)->target());

  CallOptions call_options;
  call_options.timeout = absl::Seconds(10);
  call_options.wait = absl::Seconds(15);
  for (int attempt = 0; attempt < 3; ++attempt) {
    SCOPED_TRACE(absl::StrCat("call ", attempt));
    const absl::Time start = absl::Now();
    const CallResult result = UnaryCall(channel, kUnaryMethod, "anyone?", call_options);
    const absl::Duration elapsed = absl::Now() - start;
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
    EXPECT_FALSE(result.timed_out);
    EXPECT_LT(elapsed, absl::Seconds(2));
    EXPECT_THAT(result.responses, IsEmpty());
  }
  (*relay)->Stop();
}

// Polls the relay's stats until every upstream connection is up, or
// `timeout` passes; whether they all were.
bool AwaitConnected(const FrameRelay& relay, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    const relay::FrameRelayStats stats = relay.Stats();
    bool all = true;
    for (const auto& upstream : stats.upstreams) all = all && upstream.connected;
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Starts a relay with `options` and waits for every upstream connection to
// be up; null, with the reason recorded as a failure, if either fails.
std::unique_ptr<RunningRelay> ConnectedRelay(const FrameRelayOptions& options) {
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  if (!relay.ok()) {
    ADD_FAILURE() << relay.status();
    return nullptr;
  }
  if (!AwaitConnected((*relay)->relay(), absl::Seconds(5))) {
    ADD_FAILURE() << "the relay's upstream connections did not come up";
    return nullptr;
  }
  return *std::move(relay);
}

// The connections are split evenly over the addresses, interleaved
// (connection i to address i mod n): every backend gets its share, as
// poolside's pool spreads over every resolved address.
TEST(FrameRelaySpreadTest, ConnectionsSpreadOverEveryUpstreamAddress) {
  TestUpstream first;
  TestUpstream second;
  ASSERT_TRUE(first.Start().ok());
  ASSERT_TRUE(second.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", first.port()}, {"127.0.0.1", second.port()}};
  options.upstream_connections = 4;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const relay::FrameRelayStats stats = relay->relay().Stats();
  ASSERT_EQ(stats.upstreams.size(), 4u);
  EXPECT_EQ(stats.upstreams[0].address, absl::StrCat("127.0.0.1:", first.port()));
  EXPECT_EQ(stats.upstreams[1].address, absl::StrCat("127.0.0.1:", second.port()));
  EXPECT_EQ(stats.upstreams[2].address, stats.upstreams[0].address);

  // Calls that overlap (each held 100 ms upstream) fill every connection.
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());
  CallOptions call_options;
  call_options.metadata = {{"x-sleep-ms", "100"}};
  std::vector<std::future<CallResult>> calls;
  for (int i = 0; i < 40; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      return UnaryCall(channel, kUnaryMethod, "spread", call_options);
    }));
  }
  for (auto& call : calls) {
    const CallResult result = call.get();
    EXPECT_TRUE(result.status.ok()) << result;
  }
  EXPECT_EQ(first.DistinctPeers(kUnaryMethod).size(), 2u);
  EXPECT_EQ(second.DistinctPeers(kUnaryMethod).size(), 2u);
  relay->Stop();
  first.Shutdown();
  second.Shutdown();
}

// An upstream that refuses a call (a GOAWAY that saw none of its streams)
// never processed it: the relay sends it again, whole, on another
// connection, and the app sees only the answer.
TEST(FrameRelayReplayTest, ACallTheUpstreamRefusedIsSentAgainOnAnotherConnection) {
  ChildProcess refusing("/usr/bin/python3", {POOLSIDE_GOAWAY_UPSTREAM_SCRIPT});
  ASSERT_TRUE(refusing.Start().ok());
  absl::StatusOr<std::string> line = refusing.WaitForLine("PORT=", absl::Seconds(10));
  ASSERT_TRUE(line.ok()) << line.status();
  TestUpstream serving;
  ASSERT_TRUE(serving.Start().ok());
  FrameRelayOptions options;
  // Connection 0 (the refusing one) takes the first call: both are idle and
  // the pick starts there.
  options.upstreams = {{"127.0.0.1", std::atoi(line->substr(5).c_str())},
                       {"127.0.0.1", serving.port()}};
  options.upstream_connections = 2;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);

  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());
  std::mt19937 rng(7);
  const std::string request = RandomBytes(100000, rng);
  CallOptions call_options;
  call_options.timeout = absl::Seconds(10);
  const CallResult result = UnaryCall(channel, kUnaryMethod, request, call_options);
  ASSERT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre(request));
  EXPECT_EQ(serving.Calls().size(), 1u);
  EXPECT_EQ(relay->relay().Stats().replayed_streams, 1u);
  relay->Stop();
  serving.Shutdown();
  refusing.Signal(SIGTERM);
  refusing.WaitForExit(absl::Seconds(5));
}

// What a CallObserver is told: each call's :path and the status the app saw.
class RecordingObserver : public relay::CallObserver {
 public:
  struct Ended {
    std::string path;
    int grpc_status;
  };

  uint32_t CallStarted(absl::string_view path) override {
    absl::MutexLock lock(&mutex_);
    paths_.emplace_back(path);
    return static_cast<uint32_t>(paths_.size() - 1);
  }
  void CallEnded(uint32_t started, int grpc_status, absl::Duration elapsed) override {
    absl::MutexLock lock(&mutex_);
    EXPECT_GE(elapsed, absl::ZeroDuration());
    ended_.push_back({paths_.at(started), grpc_status});
  }
  void AppConnectionCut(relay::AppCutReason) override {
    ADD_FAILURE() << "a well-behaved app was cut off";
  }
  void CallOverLimit(relay::CallLimit limit) override {
    absl::MutexLock lock(&mutex_);
    ++over_limit_[limit == relay::CallLimit::kConcurrent ? 0 : 1];
  }
  // Calls turned away: [0] by the concurrency limit, [1] by the waiting one.
  std::array<int, 2> OverLimit() {
    absl::MutexLock lock(&mutex_);
    return over_limit_;
  }
  void MessageRelayed(bool upward, uint32_t length) override {
    absl::MutexLock lock(&mutex_);
    (upward ? upward_lengths_ : downward_lengths_).push_back(length);
  }
  // The lengths of the messages relayed each way so far.
  std::vector<uint32_t> UpwardLengths() {
    absl::MutexLock lock(&mutex_);
    return upward_lengths_;
  }
  std::vector<uint32_t> DownwardLengths() {
    absl::MutexLock lock(&mutex_);
    return downward_lengths_;
  }
  // Waits until `n` calls have ended (5 s at most) and returns them.
  std::vector<Ended> AwaitEnded(size_t n) {
    absl::MutexLock lock(&mutex_);
    auto done = [this, n] { return ended_.size() >= n; };
    mutex_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(5));
    return ended_;
  }

 private:
  absl::Mutex mutex_;
  std::vector<std::string> paths_;
  std::vector<Ended> ended_;
  std::vector<uint32_t> upward_lengths_;
  std::vector<uint32_t> downward_lengths_;
  std::array<int, 2> over_limit_ = {0, 0};
};

// Messages are counted as they pass, each with its length, however DATA
// frames split them: a 100,000-byte message spans several.
TEST(FrameRelayObserverTest, EachMessageIsReportedWithItsLengthBothWays) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  RecordingObserver observer;
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.observer = &observer;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const CallResult result =
      StreamingCall(CreateTestChannel(relay->target()), kBidiMethod,
                    {"abc", std::string(100000, 'x'), "", std::string(17, 'y')});
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_EQ(observer.AwaitEnded(1).size(), 1u);
  EXPECT_THAT(observer.UpwardLengths(), ElementsAre(3, 100000, 0, 17));
  EXPECT_THAT(observer.DownwardLengths(), ElementsAre(3, 100000, 0, 17));
  relay->Stop();
  upstream.Shutdown();
}

// GRPC_MAX_MESSAGE_BYTES in the relay: a message over the limit, either
// way, ends its call RESOURCE_EXHAUSTED, as grpc ends it; messages at the
// limit pass, and the connection serves on.
TEST(FrameRelayLimitTest, AMessageOverTheLimitEitherWayEndsItsCallResourceExhausted) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.max_message_bytes = 1024;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());

  const CallResult at_limit = UnaryCall(channel, kUnaryMethod, std::string(1024, 'a'));
  EXPECT_TRUE(at_limit.status.ok()) << at_limit;
  // Upward: the request is too long.
  const CallResult request_too_long = UnaryCall(channel, kUnaryMethod, std::string(1025, 'b'));
  EXPECT_EQ(request_too_long.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << request_too_long;
  // Downward: two requests within the limit, one answer (their concatenation)
  // past it.
  const CallResult answer_too_long =
      StreamingCall(channel, kClientStreamMethod, {std::string(800, 'c'), std::string(800, 'd')});
  EXPECT_EQ(answer_too_long.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << answer_too_long;
  EXPECT_THAT(answer_too_long.responses, IsEmpty());
  const CallResult after = UnaryCall(channel, kUnaryMethod, "still here");
  EXPECT_TRUE(after.status.ok()) << after;
  relay->Stop();
  upstream.Shutdown();
}

TEST(FrameRelayObserverTest, EachCallIsReportedOnceWithTheStatusTheAppSaw) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  RecordingObserver observer;
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.observer = &observer;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());

  EXPECT_TRUE(UnaryCall(channel, kUnaryMethod, "ok").status.ok());
  CallOptions not_found;
  not_found.metadata = {{"x-status-code", "5"}};
  EXPECT_EQ(UnaryCall(channel, kServerStreamMethod, "nf", not_found).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  CallOptions trailers_only;
  trailers_only.metadata = {{"x-trailers-only", "1"}, {"x-status-code", "7"}};
  EXPECT_EQ(UnaryCall(channel, kUnaryMethod, "to", trailers_only).status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  CallOptions cancelled;
  cancelled.metadata = {{"x-sleep-ms", "5000"}};
  cancelled.timeout = absl::Milliseconds(200);
  EXPECT_EQ(UnaryCall(channel, kBidiMethod, "late", cancelled).status.error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);

  const std::vector<RecordingObserver::Ended> ended = observer.AwaitEnded(4);
  ASSERT_EQ(ended.size(), 4u);
  EXPECT_EQ(ended[0].path, kUnaryMethod);
  EXPECT_EQ(ended[0].grpc_status, 0);
  EXPECT_EQ(ended[1].path, kServerStreamMethod);
  EXPECT_EQ(ended[1].grpc_status, 5);
  EXPECT_EQ(ended[2].grpc_status, 7);
  EXPECT_EQ(ended[3].path, kBidiMethod);
  // Both ends enforce the deadline: either the upstream's DEADLINE_EXCEEDED
  // trailers pass through first, or the client's reset does (CANCELLED).
  EXPECT_THAT(ended[3].grpc_status, AnyOf(1, 4));
  relay->Stop();
  upstream.Shutdown();
}

// Drain: the call in flight finishes, Run() returns once it has, and the
// relay takes no new connection.
TEST(FrameRelayDrainTest, TheCallInFlightFinishesThenRunReturns) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  absl::StatusOr<std::unique_ptr<FrameRelay>> relay = FrameRelay::Create(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  std::promise<void> returned;
  std::future<void> run_returned = returned.get_future();
  std::thread loop([&relay, &returned] {
    (*relay)->Run();
    returned.set_value();
  });
  ASSERT_TRUE(AwaitConnected(**relay, absl::Seconds(5)));
  const std::shared_ptr<grpc::Channel> channel =
      CreateTestChannel(absl::StrCat("127.0.0.1:", (*relay)->port()));
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "500"}};
  std::future<CallResult> in_flight = std::async(
      std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "finish me", slow); });
  ASSERT_TRUE(upstream.WaitForCalls(1, absl::Seconds(5)));
  (*relay)->Drain();
  const CallResult result = in_flight.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("finish me"));
  EXPECT_EQ(run_returned.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_FALSE(PortAcceptsConnections((*relay)->port()));
  (*relay)->Stop();
  loop.join();
  upstream.Shutdown();
}

// The addresses each upstream connection goes to, as Stats() reports them.
std::vector<std::string> Addresses(const FrameRelay& relay) {
  std::vector<std::string> addresses;
  for (const auto& upstream : relay.Stats().upstreams) addresses.push_back(upstream.address);
  return addresses;
}

// Polls until every upstream connection is up and goes to one of `wanted`,
// each of which has one, or `timeout` passes; whether that happened.
bool AwaitAllOn(const FrameRelay& relay, const std::set<std::string>& wanted,
                absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    bool all = true;
    std::set<std::string> used;
    for (const auto& upstream : relay.Stats().upstreams) {
      all = all && upstream.connected && wanted.count(upstream.address) > 0;
      used.insert(upstream.address);
    }
    if (all && used == wanted) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// DNS moved the upstream: new calls go to the new address at once, and the
// call in flight on the old one finishes there, unharmed.
TEST(FrameRelayAddressTest, NewAddressesTakeNewCallsWhileTheCallInFlightFinishes) {
  TestUpstream old_upstream;
  TestUpstream new_upstream;
  ASSERT_TRUE(old_upstream.Start().ok());
  ASSERT_TRUE(new_upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", old_upstream.port()}};
  options.upstream_connections = 2;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "1000"}};
  std::future<CallResult> in_flight = std::async(
      std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "stay", slow); });
  ASSERT_TRUE(old_upstream.WaitForCalls(1, absl::Seconds(5)));

  const std::string new_address = absl::StrCat("127.0.0.1:", new_upstream.port());
  ASSERT_TRUE(relay->relay().SetUpstreams({{"127.0.0.1", new_upstream.port()}}).ok());
  ASSERT_TRUE(AwaitAllOn(relay->relay(), {new_address}, absl::Seconds(5)))
      << absl::StrJoin(Addresses(relay->relay()), ",");
  for (int i = 0; i < 10; ++i) {
    const CallResult result = UnaryCall(channel, kUnaryMethod, "moved");
    EXPECT_TRUE(result.status.ok()) << result;
  }
  EXPECT_EQ(new_upstream.Calls(kUnaryMethod).size(), 10u);
  EXPECT_EQ(old_upstream.Calls(kUnaryMethod).size(), 1u);
  const CallResult result = in_flight.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("stay"));
  relay->Stop();
  old_upstream.Shutdown();
  new_upstream.Shutdown();
}

// A third address takes its share from the others, moving one connection
// of four, not every connection whose i mod n changed.
TEST(FrameRelayAddressTest, AnAddedAddressMovesAsFewConnectionsAsItCan) {
  std::vector<std::unique_ptr<TestUpstream>> upstreams;
  for (int i = 0; i < 3; ++i) {
    upstreams.push_back(std::make_unique<TestUpstream>());
    ASSERT_TRUE(upstreams.back()->Start().ok());
  }
  auto address = [&upstreams](int i) { return absl::StrCat("127.0.0.1:", upstreams[i]->port()); };
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstreams[0]->port()}, {"127.0.0.1", upstreams[1]->port()}};
  options.upstream_connections = 4;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const std::vector<std::string> before = Addresses(relay->relay());

  ASSERT_TRUE(relay->relay()
                  .SetUpstreams({{"127.0.0.1", upstreams[0]->port()},
                                 {"127.0.0.1", upstreams[1]->port()},
                                 {"127.0.0.1", upstreams[2]->port()}})
                  .ok());
  ASSERT_TRUE(AwaitAllOn(relay->relay(), {address(0), address(1), address(2)}, absl::Seconds(5)));
  const std::vector<std::string> after = Addresses(relay->relay());
  ASSERT_EQ(after.size(), 4u);
  int moved = 0;
  std::map<std::string, int> per_address;
  for (size_t i = 0; i < after.size(); ++i) {
    moved += after[i] != before[i] ? 1 : 0;
    ++per_address[after[i]];
  }
  EXPECT_EQ(moved, 1) << absl::StrJoin(before, ",") << " -> " << absl::StrJoin(after, ",");
  EXPECT_EQ(per_address[address(0)], 2);
  EXPECT_EQ(per_address[address(1)], 1);
  EXPECT_EQ(per_address[address(2)], 1);
  relay->Stop();
  for (auto& upstream : upstreams) upstream->Shutdown();
}

// A relay may start before DNS has answered: a call waits for the first
// address, then goes through.
TEST(FrameRelayAddressTest, ACallWaitsForTheFirstAddressThenPasses) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstream_connections = 2;
  options.connection_wait = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel((*relay)->target());
  std::future<CallResult> waiting = std::async(
      std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "first address?"); });
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  ASSERT_TRUE((*relay)->relay().SetUpstreams({{"127.0.0.1", upstream.port()}}).ok());
  const CallResult result = waiting.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_THAT(result.responses, ElementsAre("first address?"));
  (*relay)->Stop();
  upstream.Shutdown();
}

TEST(FrameRelayAddressTest, AnEmptyOrNonLiteralListIsRefusedAndChangesNothing) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  EXPECT_EQ((*relay)->relay().SetUpstreams({}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*relay)->relay().SetUpstreams({{"upstream.example", 80}}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(AwaitConnected((*relay)->relay(), absl::Seconds(5)));
  EXPECT_TRUE(UnaryCall(CreateTestChannel((*relay)->target()), kUnaryMethod, "same").status.ok());
  (*relay)->Stop();
  upstream.Shutdown();
}

constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// Polls until the upstream connections' health is `wanted`, in Stats()
// order, or `timeout` passes; whether it was.
bool AwaitHealth(const FrameRelay& relay, const std::vector<bool>& wanted, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::vector<bool> health;
    for (const auto& upstream : relay.Stats().upstreams) {
      health.push_back(upstream.connected && upstream.healthy);
    }
    if (health == wanted) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// The relay probes each connection with grpc.health.v1 itself: a connection
// to an upstream that says NOT_SERVING takes no call while a healthy one is
// up, and takes calls again once it serves.
TEST(FrameRelayHealthTest, ANotServingUpstreamTakesNoCallsUntilItServesAgain) {
  TestUpstream::Options upstream_options;
  upstream_options.health_service = true;
  TestUpstream serving(upstream_options);
  TestUpstream failing(upstream_options);
  ASSERT_TRUE(serving.Start().ok());
  ASSERT_TRUE(failing.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", serving.port()}, {"127.0.0.1", failing.port()}};
  options.upstream_connections = 2;
  options.health.interval = absl::Milliseconds(50);
  options.health.unhealthy_threshold = 2;
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  ASSERT_TRUE(AwaitHealth((*relay)->relay(), {true, true}, absl::Seconds(5)));

  failing.SetHealthServing(false);
  ASSERT_TRUE(AwaitHealth((*relay)->relay(), {true, false}, absl::Seconds(5)));
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel((*relay)->target());
  for (int i = 0; i < 20; ++i) {
    const CallResult result = UnaryCall(channel, kUnaryMethod, "healthy only");
    EXPECT_TRUE(result.status.ok()) << result;
  }
  EXPECT_EQ(serving.Calls(kUnaryMethod).size(), 20u);
  EXPECT_THAT(failing.Calls(kUnaryMethod), IsEmpty());

  failing.SetHealthServing(true);
  ASSERT_TRUE(AwaitHealth((*relay)->relay(), {true, true}, absl::Seconds(5)));
  // Overlapping calls (each held 100 ms) fill both connections again.
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "100"}};
  std::vector<std::future<CallResult>> calls;
  for (int i = 0; i < 10; ++i) {
    calls.push_back(std::async(std::launch::async,
                               [&] { return UnaryCall(channel, kUnaryMethod, "both", slow); }));
  }
  for (auto& call : calls) EXPECT_TRUE(call.get().status.ok());
  EXPECT_FALSE(failing.Calls(kUnaryMethod).empty());
  (*relay)->Stop();
  serving.Shutdown();
  failing.Shutdown();
}

// While every connection fails its probes, calls still go to them: a hop
// that refused everything would fail more calls than the upstream does.
TEST(FrameRelayHealthTest, CallsStillGoThroughWhileNoConnectionIsHealthy) {
  TestUpstream::Options upstream_options;
  upstream_options.health_service = true;
  TestUpstream upstream(upstream_options);
  ASSERT_TRUE(upstream.Start().ok());
  upstream.SetHealthServing(false);
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.upstream_connections = 2;
  options.health.interval = absl::Milliseconds(50);
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  ASSERT_TRUE(AwaitHealth((*relay)->relay(), {false, false}, absl::Seconds(5)));
  const CallResult result =
      UnaryCall(CreateTestChannel((*relay)->target()), kUnaryMethod, "anyway");
  EXPECT_TRUE(result.status.ok()) << result;
  (*relay)->Stop();
  upstream.Shutdown();
}

// An upstream without grpc.health.v1 (UNIMPLEMENTED) is probed once per
// connection, then judged by its connections being up, as poolside's
// HealthMonitor does.
TEST(FrameRelayHealthTest, AnUpstreamWithoutAHealthServiceIsNotProbedAgain) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.upstream_connections = 2;
  options.health.interval = absl::Milliseconds(50);
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  ASSERT_TRUE(upstream.WaitForDone(1, absl::Seconds(5), kHealthCheckMethod));
  absl::SleepFor(absl::Milliseconds(500));  // Ten intervals.
  EXPECT_LE(upstream.Calls(kHealthCheckMethod).size(), 2u);
  EXPECT_TRUE(AwaitHealth((*relay)->relay(), {true, true}, absl::Seconds(1)));
  EXPECT_TRUE(UnaryCall(CreateTestChannel((*relay)->target()), kUnaryMethod, "up").status.ok());
  (*relay)->Stop();
  upstream.Shutdown();
}

// Circuit breaking (GRPC_MAX_CONCURRENT_REQUESTS): a call past the limit is
// answered RESOURCE_EXHAUSTED at once and counted; the calls in flight are
// untouched, and a place that frees takes the next call.
TEST(FrameRelayLimitTest, ACallPastTheConcurrencyLimitIsRefusedAtOnce) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  RecordingObserver observer;
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.max_concurrent_calls = 2;
  options.observer = &observer;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(relay->target());
  CallOptions slow;
  slow.metadata = {{"x-sleep-ms", "1000"}};
  std::vector<std::future<CallResult>> in_flight;
  for (int i = 0; i < 2; ++i) {
    in_flight.push_back(std::async(
        std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "in flight", slow); }));
  }
  ASSERT_TRUE(upstream.WaitForCalls(2, absl::Seconds(5), kUnaryMethod));
  const absl::Time start = absl::Now();
  const CallResult refused = UnaryCall(channel, kUnaryMethod, "one too many");
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused;
  EXPECT_THAT(refused.status.error_message(), ::testing::HasSubstr("GRPC_MAX_CONCURRENT_REQUESTS"));
  EXPECT_EQ(upstream.Calls(kUnaryMethod).size(), 2u);
  for (auto& call : in_flight) EXPECT_TRUE(call.get().status.ok());
  EXPECT_TRUE(UnaryCall(channel, kUnaryMethod, "room again").status.ok());
  EXPECT_EQ(observer.OverLimit(), (std::array<int, 2>{1, 0}));
  relay->Stop();
  upstream.Shutdown();
}

// GRPC_MAX_PENDING_REQUESTS: while no connection is up, calls wait for one
// up to the limit; the next is answered UNAVAILABLE at once and counted.
TEST(FrameRelayLimitTest, ACallPastTheWaitingLimitIsRefusedAtOnce) {
  const int dead_port = PickFreePort();
  ASSERT_GT(dead_port, 0);
  RecordingObserver observer;
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", dead_port}};
  options.connection_wait = absl::Seconds(1);
  options.max_waiting_calls = 1;
  options.observer = &observer;
  absl::StatusOr<std::unique_ptr<RunningRelay>> relay = RunningRelay::Start(options);
  ASSERT_TRUE(relay.ok()) << relay.status();
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel((*relay)->target());
  std::future<CallResult> waiting =
      std::async(std::launch::async, [&] { return UnaryCall(channel, kUnaryMethod, "waits"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const absl::Time start = absl::Now();
  const CallResult refused = UnaryCall(channel, kUnaryMethod, "no room to wait");
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused;
  EXPECT_THAT(refused.status.error_message(), ::testing::HasSubstr("GRPC_MAX_PENDING_REQUESTS"));
  // The waiting call had its full wait, then UNAVAILABLE of its own.
  const CallResult waited = waiting.get();
  EXPECT_EQ(waited.status.error_code(), grpc::StatusCode::UNAVAILABLE) << waited;
  EXPECT_THAT(waited.status.error_message(), ::testing::HasSubstr("became ready within 1s"));
  EXPECT_EQ(observer.OverLimit(), (std::array<int, 2>{0, 1}));
  (*relay)->Stop();
}

// GRPC_MAX_APP_CONNECTIONS: a connection past the cap is closed as it is
// accepted; the open one serves on, and a place that frees takes the next.
TEST(FrameRelayConnectionLimitTest, AConnectionPastTheCapIsClosedAsItIsAccepted) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  FrameRelayOptions options;
  options.upstreams = {{"127.0.0.1", upstream.port()}};
  options.max_app_connections = 1;
  const std::unique_ptr<RunningRelay> relay = ConnectedRelay(options);
  ASSERT_NE(relay, nullptr);
  std::shared_ptr<grpc::Channel> first = CreateTestChannel(relay->target());
  ASSERT_TRUE(UnaryCall(first, kUnaryMethod, "first").status.ok());

  CallOptions quick;
  quick.timeout = absl::Seconds(2);
  const CallResult refused =
      UnaryCall(CreateTestChannel(relay->target()), kUnaryMethod, "second", quick);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused;
  EXPECT_TRUE(UnaryCall(first, kUnaryMethod, "first again").status.ok());

  first.reset();  // Its connection closes; the relay sees it go.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  CallResult next;
  do {
    next = UnaryCall(CreateTestChannel(relay->target()), kUnaryMethod, "next", quick);
  } while (!next.status.ok() && absl::Now() < deadline);
  EXPECT_TRUE(next.status.ok()) << next;
  relay->Stop();
  upstream.Shutdown();
}

}  // namespace
}  // namespace poolside::test
