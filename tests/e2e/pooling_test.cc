// The connection pool, end to end: distinct upstream connections, spreading,
// and riding out an upstream that is down or restarts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

using ::testing::HasSubstr;

class PoolingTest : public E2eTest {
 protected:
  // Starts poolside in front of `upstream_target` with `pool_size` channels.
  void StartPool(const std::string& upstream_target, int pool_size, Environment extra = {}) {
    extra["GRPC_UPSTREAM_TARGET"] = upstream_target;
    extra["GRPC_CONNECTION_POOL_SIZE"] = absl::StrCat(pool_size);
    ASSERT_NO_FATAL_FAILURE(StartPoolside(extra));
    channel_ = CreateTestChannel(poolside_->listen_target());
  }

  // `n` unary calls, all at once, each held 20 ms by the upstream so that
  // they overlap; every one must succeed.
  void RunConcurrentCalls(int n) {
    std::vector<std::string> requests;
    for (int i = 0; i < n; ++i) requests.push_back(absl::StrCat("call ", i));
    CallOptions options;
    options.metadata = {{"x-sleep-ms", "20"}};
    options.timeout = absl::Seconds(30);
    const std::vector<CallResult> results =
        ConcurrentUnaryCalls(channel_, kUnaryMethod, requests, options);
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(results[i].status.ok()) << "call " << i << ": " << results[i];
    }
  }

  TestUpstream upstream_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(PoolingTest, OpensExactlyPoolSizeDistinctUpstreamConnections) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 4));
  EXPECT_EQ(AwaitActiveConnections(channel_, 4, absl::Seconds(10)), 4);

  ASSERT_NO_FATAL_FAILURE(RunConcurrentCalls(200));
  // One client connection in, four upstream connections out: not one shared
  // connection, and not a new connection per call.
  EXPECT_EQ(upstream_.DistinctPeers(kUnaryMethod).size(), 4u);
}

TEST_F(PoolingTest, SpreadsCallsOverEveryConnection) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 4));
  EXPECT_EQ(AwaitActiveConnections(channel_, 4, absl::Seconds(10)), 4);

  constexpr int kCalls = 200;
  ASSERT_NO_FATAL_FAILURE(RunConcurrentCalls(kCalls));
  std::map<std::string, int> calls_per_peer;
  for (const ObservedCall& call : upstream_.Calls(kUnaryMethod)) ++calls_per_peer[call.peer];
  ASSERT_EQ(calls_per_peer.size(), 4u);
  for (const auto& [peer, calls] : calls_per_peer) {
    // An even spread is 50 each; least-outstanding or two random choices
    // stays near it, a pool that favours one channel does not.
    EXPECT_GE(calls, kCalls / 20) << peer;
  }
}

TEST_F(PoolingTest, CallIssuedWhileUpstreamIsDownSucceedsOnceItIsUp) {
  const int upstream_port = PickFreePort();
  ASSERT_NO_FATAL_FAILURE(StartPool(absl::StrCat("127.0.0.1:", upstream_port), 4,
                                    {{"GRPC_CONNECTION_TIMEOUT_SECS", "10"}}));
  auto pending = std::async(std::launch::async, [channel = channel_] {
    CallOptions options;
    options.timeout = absl::Seconds(20);
    return UnaryCall(channel, kUnaryMethod, "early bird", options);
  });
  // The call waits inside poolside for a connection instead of failing.
  ASSERT_EQ(pending.wait_for(std::chrono::milliseconds(700)), std::future_status::timeout)
      << "the call ended while the upstream was down: " << pending.get();

  TestUpstream::Options options;
  options.port = upstream_port;
  TestUpstream late_upstream(options);
  ASSERT_TRUE(late_upstream.Start().ok());
  const CallResult result = pending.get();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(result.responses, std::vector<std::string>{"early bird"});
  EXPECT_TRUE(late_upstream.WaitForCalls(1, absl::Seconds(5), kUnaryMethod));
}

TEST_F(PoolingTest, UpstreamRestartedWhileIdleLosesNoCall) {
  ASSERT_TRUE(upstream_.Start().ok());
  ASSERT_NO_FATAL_FAILURE(StartPool(upstream_.target(), 4));
  EXPECT_EQ(AwaitActiveConnections(channel_, 4, absl::Seconds(10)), 4);
  ASSERT_NO_FATAL_FAILURE(RunConcurrentCalls(40));

  // Every pooled connection drops; once poolside has seen that, the upstream
  // comes back on the same port. (Calls racing the drop itself can fail with
  // UNAVAILABLE even without a proxy: a plain gRPC client does the same.)
  upstream_.Shutdown();
  ASSERT_EQ(AwaitHealthStatus(channel_, "unhealthy", absl::Seconds(10)), "unhealthy");
  ASSERT_TRUE(upstream_.Start().ok());
  upstream_.ClearCalls();

  for (int i = 0; i < 50; ++i) {
    CallOptions options;
    options.timeout = absl::Seconds(20);
    const CallResult result = UnaryCall(channel_, kUnaryMethod, absl::StrCat("after ", i), options);
    ASSERT_TRUE(result.status.ok()) << "call " << i << " after the restart: " << result;
  }
  EXPECT_EQ(upstream_.Calls(kUnaryMethod).size(), 50u);
}

TEST_F(PoolingTest, NoUpstreamFailsWithUnavailableAfterTheConnectionTimeout) {
  const std::string nowhere = absl::StrCat("127.0.0.1:", PickFreePort());
  ASSERT_NO_FATAL_FAILURE(StartPool(nowhere, 2, {{"GRPC_CONNECTION_TIMEOUT_SECS", "1"}}));

  CallOptions options;
  options.timeout = absl::Seconds(10);
  const absl::Time start = absl::Now();
  const CallResult result = UnaryCall(channel_, kUnaryMethod, "m", options);
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
  // It waited for a connection for GRPC_CONNECTION_TIMEOUT_SECS, no more.
  EXPECT_GE(elapsed, absl::Milliseconds(800));
  EXPECT_LT(elapsed, absl::Seconds(4));
  EXPECT_THAT(result.status.error_message(), HasSubstr(nowhere));
}

}  // namespace
}  // namespace poolside::test
