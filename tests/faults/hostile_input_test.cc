// Hostile input on poolside's gRPC port: HTTP/1.1, random bytes, an HTTP/2
// preface followed by garbage, oversized header lists, requests that are not
// gRPC. Each must get an error or a closed connection — never a forwarded
// call — while a well-behaved client on another connection keeps working.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/h2_frames.h"
#include "tests/support/poolside_process.h"
#include "tests/support/raw_connection.h"
#include "tests/support/test_upstream.h"
#include "tests/support/unary_load.h"

namespace poolside::test {
namespace {

// How long poolside may take to answer or close a hostile connection.
constexpr absl::Duration kAnswerTimeout = absl::Seconds(5);

// How a raw HTTP/2 request stream ended, from the frames poolside sent back.
struct RawOutcome {
  std::vector<h2::Frame> frames;
  bool closed = false;
  // Stream 1 ended: RST_STREAM, a HEADERS frame with END_STREAM, or a GOAWAY.
  bool stream_ended = false;
  // A DATA frame on stream 1: a response message came back.
  bool got_data = false;
};

std::ostream& operator<<(std::ostream& os, const RawOutcome& outcome) {
  return os << (outcome.closed ? "closed; " : "open; ") << h2::Describe(outcome.frames);
}

RawOutcome Classify(const RawConnection::ReadResult& read) {
  RawOutcome outcome;
  outcome.frames = h2::ParseFrames(read.bytes);
  outcome.closed = read.closed;
  for (const h2::Frame& frame : outcome.frames) {
    if (frame.type == h2::kGoaway ||
        (frame.stream == 1 &&
         (frame.type == h2::kRstStream ||
          (frame.type == h2::kHeaders && (frame.flags & h2::kEndStream) != 0)))) {
      outcome.stream_ended = true;
    }
    if (frame.type == h2::kData && frame.stream == 1) outcome.got_data = true;
  }
  return outcome;
}

class HostileInputTest : public E2eTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(upstream_.Start().ok());
    ASSERT_NO_FATAL_FAILURE(StartPoolside(
        {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_CONNECTION_POOL_SIZE", "2"}}));
    ASSERT_TRUE(
        UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "warm").status.ok());
    CallOptions options;
    options.timeout = absl::Seconds(10);
    bystander_ = std::make_unique<UnaryLoad>(poolside_->listen_target(), 1, options);
    bystander_->Start();
  }

  // The well-behaved client worked all along, and still does.
  void TearDown() override {
    if (bystander_ != nullptr) {
      // Let it make calls after the hostile input too (a few: a loaded
      // machine under a sanitizer makes each call slow).
      const int64_t before = bystander_->finished();
      const absl::Time until = absl::Now() + absl::Seconds(10);
      while (bystander_->finished() < before + 5 && absl::Now() < until) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      const std::vector<TimedCall> calls = bystander_->Stop();
      EXPECT_GT(static_cast<int64_t>(calls.size()), before)
          << "the well-behaved client made no call after the hostile input";
      for (const TimedCall& call : calls) {
        EXPECT_EQ(call.code, grpc::StatusCode::OK)
            << "well-behaved call " << call.id << " failed: " << call.message;
      }
    }
    EXPECT_TRUE(poolside_ == nullptr || poolside_->running()) << "poolside died";
    E2eTest::TearDown();
  }

  // Connects to poolside, or to `port` (the upstream, to compare with).
  std::unique_ptr<RawConnection> Connect(int port = 0) {
    absl::StatusOr<std::unique_ptr<RawConnection>> connection =
        RawConnection::Connect(port != 0 ? port : poolside_->listen_port());
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.ok() ? std::move(*connection) : nullptr;
  }

  // Sends `bytes` on a new connection and returns what came back until
  // poolside closed it (or kAnswerTimeout passed).
  RawConnection::ReadResult SendAndAwaitClose(const std::string& bytes) {
    std::unique_ptr<RawConnection> connection = Connect();
    if (connection == nullptr) return {};
    // poolside may close before it has read everything: a failed send is fine.
    connection->Send(bytes);
    return connection->ReadUntilClosed(kAnswerTimeout);
  }

  // Sends an HTTP/2 connection whose stream 1 carries `block` (plus one
  // request message unless `message` is empty), then waits until stream 1
  // ends or the connection closes.
  RawOutcome SendRequest(const std::string& block, const std::string& message = "hello",
                         int port = 0) {
    std::unique_ptr<RawConnection> connection = Connect(port);
    if (connection == nullptr) return {};
    std::string bytes = std::string(h2::kClientPreface) + h2::Settings() +
                        h2::HeaderFrames(1, block, /*end_stream=*/message.empty());
    if (!message.empty()) bytes += h2::SerializeFrame(h2::kData, h2::kEndStream, 1, message);
    connection->Send(bytes);
    return Classify(connection->ReadUntil(
        [](const std::string& received) {
          return Classify({received, false}).stream_ended;
        },
        kAnswerTimeout));
  }

  // Calls the upstream saw with header `x-hostile`.
  size_t ForwardedHostileCalls() {
    size_t count = 0;
    for (const ObservedCall& call : upstream_.Calls()) {
      count += call.client_metadata.count("x-hostile");
    }
    return count;
  }

  TestUpstream upstream_;
  std::unique_ptr<UnaryLoad> bystander_;
};

TEST_F(HostileInputTest, Http11RequestsGetAnErrorOrAClosedConnection) {
  for (const std::string& request :
       {std::string("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        std::string(
            "POST /poolside.test.Echo/Unary HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/grpc\r\nX-Hostile: 1\r\nContent-Length: 10\r\n\r\n") +
            h2::GrpcMessage("hello"),
        std::string("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                    "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")}) {
    SCOPED_TRACE(request.substr(0, request.find('\r')));
    const RawConnection::ReadResult answer = SendAndAwaitClose(request);
    EXPECT_TRUE(answer.closed) << "still open after " << kAnswerTimeout;
    // Whatever came back is an HTTP/2 error, never a served request.
    EXPECT_FALSE(absl::StartsWith(answer.bytes, "HTTP/1.1 200")) << answer.bytes;
  }
  EXPECT_EQ(ForwardedHostileCalls(), 0u);
}

TEST_F(HostileInputTest, RandomBytesCloseTheConnection) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<size_t> size(1, 64 * 1024);
  for (int i = 0; i < 20; ++i) {
    const std::string garbage = RandomBytes(size(rng), rng);
    SCOPED_TRACE(absl::StrCat("garbage #", i, ", ", garbage.size(), " bytes"));
    EXPECT_TRUE(SendAndAwaitClose(garbage).closed);
  }
}

TEST_F(HostileInputTest, PrefaceFollowedByGarbageClosesTheConnection) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> size(1, 16 * 1024);
  int goaways = 0;
  int closed = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string garbage = RandomBytes(size(rng), rng);
    SCOPED_TRACE(absl::StrCat("garbage #", i, ", ", garbage.size(), " bytes"));
    const RawConnection::ReadResult answer =
        SendAndAwaitClose(std::string(h2::kClientPreface) + garbage);
    const RawOutcome outcome = Classify(answer);
    // Random bytes may happen to parse as frames that leave the connection
    // usable (e.g. a valid PING); then it waits for more, which is fine.
    if (!answer.closed) {
      EXPECT_FALSE(outcome.got_data) << outcome;
      continue;
    }
    ++closed;
    for (const h2::Frame& frame : outcome.frames) goaways += frame.type == h2::kGoaway ? 1 : 0;
  }
  std::printf("[ metric ] preface + garbage: %d of 20 connections closed, %d GOAWAY frames seen\n",
              closed, goaways);
  EXPECT_EQ(ForwardedHostileCalls(), 0u);
}

TEST_F(HostileInputTest, HeaderListOverTheLimitIsRefusedAndNotForwarded) {
  struct Case {
    const char* name;
    std::vector<std::pair<std::string, std::string>> headers;
  };
  std::vector<std::pair<std::string, std::string>> many;
  many.emplace_back("x-hostile", "many");
  for (int i = 0; i < 1000; ++i) many.emplace_back(absl::StrCat("x-h", i), std::string(100, 'v'));
  const Case cases[] = {
      {"one 64 KiB value", {{"x-hostile", "big"}, {"x-big", std::string(64 * 1024, 'b')}}},
      {"1000 headers of 100 bytes", many},
      {"one 1 MiB value", {{"x-hostile", "huge"}, {"x-huge", std::string(1 << 20, 'h')}}},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    const RawOutcome outcome =
        SendRequest(h2::GrpcRequestBlock(kUnaryMethod, "application/grpc", test_case.headers),
                    h2::GrpcMessage("hello"));
    std::printf("[ metric ] header list of %s: %s\n", test_case.name,
                ::testing::PrintToString(outcome).c_str());
    EXPECT_TRUE(outcome.stream_ended || outcome.closed) << outcome;
    EXPECT_FALSE(outcome.got_data) << outcome;
  }
  EXPECT_EQ(ForwardedHostileCalls(), 0u);

  // A gRPC client sending too much metadata gets an error status too.
  CallOptions options;
  options.metadata = {{"x-hostile", "client"}, {"x-big", std::string(64 * 1024, 'b')}};
  options.timeout = absl::Seconds(5);
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "big", options);
  std::printf("[ metric ] 64 KiB of metadata from a gRPC client: %s\n",
              ::testing::PrintToString(result).c_str());
  EXPECT_FALSE(result.status.ok()) << result;
  EXPECT_FALSE(result.timed_out) << result;
  EXPECT_EQ(ForwardedHostileCalls(), 0u);
}

// One app's oversized request must cost only that request: the pooled
// upstream connection, and every other call on it, must survive. (A grpc++
// upstream answers metadata over its 8 KiB limit by dropping the whole
// connection, so poolside must not forward what the upstream cannot take.)
class OversizedMetadataTest : public E2eTest {
 protected:
  void SetUp() override { ASSERT_TRUE(upstream_.Start().ok()); }
  TestUpstream upstream_;
};

TEST_F(OversizedMetadataTest, OversizedMetadataCostsNoOtherCallItsUpstreamConnection) {
  // One upstream connection, so that the bystander's call and the
  // oversized ones share it.
  ASSERT_NO_FATAL_FAILURE(StartPoolside(
      {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_CONNECTION_POOL_SIZE", "1"}}));
  const auto channel = CreateTestChannel(poolside_->listen_target());
  CallOptions options;
  options.wait = absl::Seconds(10);
  InteractiveCall bystander(channel, kBidiMethod, options);
  ASSERT_TRUE(bystander.Write("before"));
  ASSERT_EQ(bystander.Read(), "before");

  for (const size_t size : {9000, 12000, 20000}) {
    SCOPED_TRACE(absl::StrCat(size, " bytes of metadata"));
    // From another client connection: only the upstream one is shared. Raw
    // frames, so that no client library second-guesses the size.
    absl::StatusOr<std::unique_ptr<RawConnection>> connection =
        RawConnection::Connect(poolside_->listen_port());
    ASSERT_TRUE(connection.ok()) << connection.status();
    (*connection)
        ->Send(std::string(h2::kClientPreface) + h2::Settings() +
               h2::HeaderFrames(1,
                                h2::GrpcRequestBlock(kUnaryMethod, "application/grpc",
                                                     {{"x-big", std::string(size, 'b')}}),
                                /*end_stream=*/false) +
               h2::SerializeFrame(h2::kData, h2::kEndStream, 1, h2::GrpcMessage("big")));
    const RawConnection::ReadResult answer =
        (*connection)
            ->ReadUntil(
                [](const std::string& bytes) {
                  for (const h2::Frame& frame : h2::ParseFrames(bytes)) {
                    if (frame.stream == 1 &&
                        (frame.type == h2::kRstStream ||
                         (frame.type == h2::kHeaders && (frame.flags & h2::kEndStream) != 0))) {
                      return true;
                    }
                  }
                  return false;
                },
                absl::Seconds(5));
    for (const h2::Frame& frame : h2::ParseFrames(answer.bytes)) {
      EXPECT_FALSE(frame.type == h2::kData && frame.stream == 1) << "the oversized call succeeded";
    }
    // The call in flight on the same upstream connection goes on.
    if (!bystander.Write("after") || bystander.Read() != "after") {
      ADD_FAILURE() << "the call sharing the upstream connection died: " << bystander.Finish();
      return;
    }
  }
  ASSERT_TRUE(bystander.WritesDone());
  EXPECT_EQ(bystander.Read(), std::nullopt);
  const CallResult ended = bystander.Finish();
  EXPECT_TRUE(ended.status.ok()) << "the bystander's call died with the upstream connection: "
                                 << ended;
  // Later calls still use the connection the bystander's call used.
  ASSERT_TRUE(UnaryCall(channel, kUnaryMethod, "later").status.ok());
  const std::vector<ObservedCall> bidi = upstream_.Calls(kBidiMethod);
  const std::vector<ObservedCall> unary = upstream_.Calls(kUnaryMethod);
  ASSERT_EQ(bidi.size(), 1u);
  ASSERT_FALSE(unary.empty());
  EXPECT_EQ(unary.back().peer, bidi.front().peer) << "the upstream connection was dropped";
}

// grpc core 1.51 removes content-type before any application code sees it,
// so poolside cannot refuse a request on it (FINDINGS.md, bug 3). What it can
// promise is transparency: such a request gets exactly what the upstream
// itself would answer, and it harms no other client.
TEST_F(HostileInputTest, RequestsWithoutGrpcContentTypeGetWhatTheUpstreamItselfAnswers) {
  for (const std::optional<std::string>& content_type : std::vector<std::optional<std::string>>{
           "text/plain", "application/json", std::nullopt, "application/grpcx"}) {
    const std::string name = content_type.value_or("(none)");
    SCOPED_TRACE(absl::StrCat("content-type: ", name));
    const std::string block =
        h2::GrpcRequestBlock(kUnaryMethod, content_type, {{"x-hostile", name}});
    const RawOutcome direct = SendRequest(block, h2::GrpcMessage("hello"), upstream_.port());
    const RawOutcome proxied = SendRequest(block, h2::GrpcMessage("hello"));
    EXPECT_TRUE(proxied.stream_ended || proxied.closed) << proxied;
    EXPECT_EQ(proxied.got_data, direct.got_data)
        << "direct: " << direct << "\npoolside: " << proxied;
  }
}

TEST_F(HostileInputTest, MalformedGrpcMessagesEndTheCallWithAnError) {
  // A length prefix claiming 4 GiB, and a message cut short by the end of
  // the stream.
  const std::string four_gib = std::string("\0\xff\xff\xff\xff", 5) + "short";
  const std::string truncated = std::string("\0\0\0\0\x64", 5) + "only a part";
  for (const std::string& message : {four_gib, truncated}) {
    SCOPED_TRACE(::testing::PrintToString(message));
    const RawOutcome outcome = SendRequest(
        h2::GrpcRequestBlock(kUnaryMethod, "application/grpc", {{"x-malformed", "1"}}), message);
    EXPECT_TRUE(outcome.stream_ended || outcome.closed) << outcome;
    EXPECT_FALSE(outcome.got_data) << outcome;
  }
  // The upstream may have seen these calls start, but none completed OK
  // (its record of a cancel may lag the client's view a little).
  const auto malformed_calls = [this] {
    std::vector<ObservedCall> calls;
    for (const ObservedCall& call : upstream_.Calls(kUnaryMethod)) {
      if (call.client_metadata.count("x-malformed") > 0) calls.push_back(call);
    }
    return calls;
  };
  const absl::Time settle_by = absl::Now() + absl::Seconds(5);
  while (absl::Now() < settle_by) {
    bool settled = true;
    for (const ObservedCall& call : malformed_calls()) settled &= call.done || call.cancelled;
    if (settled) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (const ObservedCall& call : malformed_calls()) {
    EXPECT_TRUE(call.cancelled || (call.done && call.status_code != grpc::StatusCode::OK)) << call;
  }
}

TEST_F(HostileInputTest, ManyIdleConnectionsDoNotStopOtherClients) {
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 200; ++i) {
    idle.push_back(Connect());
    ASSERT_NE(idle.back(), nullptr);
    // Half of them get as far as the preface, then stall.
    if (i % 2 == 0) idle.back()->Send(h2::kClientPreface);
  }
  CallOptions options;
  options.timeout = absl::Seconds(5);
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "hi", options);
  EXPECT_TRUE(result.status.ok()) << result;
  for (auto& connection : idle) connection->Reset();
}

}  // namespace
}  // namespace poolside::test
