// Fair share (issue 14): one app connection holding calls open (stream
// hoarding) may take at most GRPC_APP_CONNECTION_MAX_SHARE_PERCENT of the
// pool's upstream streams; its further calls wait in poolside, and other
// connections keep being served. FairShare's rules alone first, then the
// real poolside binary against an upstream that allows 20 streams per
// connection.
#include "proxy/fair_share.h"

#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"
#include "tests/support/test_upstream.h"

namespace poolside {
namespace {

// The next tag on `queue`, or nullptr if none arrives within a second.
void* NextTag(grpc::CompletionQueue& queue) {
  void* tag = nullptr;
  bool ok = false;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(1);
  if (queue.AsyncNext(&tag, &ok, deadline) != grpc::CompletionQueue::GOT_EVENT) return nullptr;
  return tag;
}

class FairShareTest : public ::testing::Test {
 protected:
  ~FairShareTest() override {
    queue_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (queue_.Next(&tag, &ok)) {
    }
  }

  // A call waiting for a place: the alarm that wakes it on queue_, and the
  // tag it is woken with (its address).
  struct WaitingCall {
    grpc::Alarm alarm;
    int tag = 0;
  };

  FairShare::Waiter WaiterFor(WaitingCall& call) { return {&call.alarm, &queue_, &call.tag}; }

  // Connection "a" takes the only place of `share`; `first`, then `second`,
  // queue for it.
  void HoldTheOnlyPlaceWithTwoWaiting(FairShare& share, WaitingCall& first, WaitingCall& second) {
    ASSERT_TRUE(share.TryAcquire("a"));
    EXPECT_FALSE(share.AcquireOrWait("a", WaiterFor(first)));
    EXPECT_FALSE(share.AcquireOrWait("a", WaiterFor(second)));
  }

  grpc::CompletionQueue queue_;
};

TEST_F(FairShareTest, EachConnectionGetsItsOwnPlaces) {
  FairShare share(2);
  EXPECT_TRUE(share.TryAcquire("a"));
  EXPECT_TRUE(share.TryAcquire("a"));
  EXPECT_FALSE(share.TryAcquire("a"));
  EXPECT_TRUE(share.TryAcquire("b"));
  EXPECT_EQ(share.held(), 3);
  share.Release("a");
  EXPECT_TRUE(share.TryAcquire("a"));
}

TEST_F(FairShareTest, ReleasedPlaceGoesToTheFirstWaiterOfThatConnection) {
  FairShare share(1);
  WaitingCall first;
  WaitingCall second;
  ASSERT_NO_FATAL_FAILURE(HoldTheOnlyPlaceWithTwoWaiting(share, first, second));
  EXPECT_EQ(share.waiting(), 2);
  // Another connection is not held up, nor does it free a's places.
  EXPECT_TRUE(share.TryAcquire("b"));
  share.Release("b");

  share.Release("a");
  EXPECT_EQ(NextTag(queue_), &first.tag);
  EXPECT_EQ(share.held(), 1);  // Handed over, not given back.
  // A newcomer does not jump the queue.
  EXPECT_FALSE(share.TryAcquire("a"));
  share.Release("a");
  EXPECT_EQ(NextTag(queue_), &second.tag);
  share.Release("a");
  EXPECT_EQ(share.held(), 0);
  EXPECT_EQ(share.waiting(), 0);
}

TEST_F(FairShareTest, CancelledWaiterIsSkippedAndToldWhetherItGotAPlace) {
  FairShare share(1);
  WaitingCall cancelled;
  WaitingCall granted;
  ASSERT_NO_FATAL_FAILURE(HoldTheOnlyPlaceWithTwoWaiting(share, cancelled, granted));
  EXPECT_TRUE(share.Cancel("a", WaiterFor(cancelled)));
  share.Release("a");
  EXPECT_EQ(NextTag(queue_), &granted.tag);
  // Already handed a place: Cancel says so, and the place is the caller's.
  EXPECT_FALSE(share.Cancel("a", WaiterFor(granted)));
  share.Release("a");
  EXPECT_EQ(share.held(), 0);
}

}  // namespace

namespace test {
namespace {

// Pool of 2 connections x 20 streams: 40 upstream streams.
constexpr int kUpstreamStreams = 20;
constexpr int kHoardedCalls = 60;

class FairShareE2eTest : public E2eTest {
 protected:
  void StartWithShare(int percent) {
    TestUpstream::Options options;
    options.max_concurrent_streams = kUpstreamStreams;
    upstream_ = std::make_unique<TestUpstream>(options);
    ASSERT_TRUE(upstream_->Start().ok());
    ASSERT_NO_FATAL_FAILURE(
        StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_->target()},
                       {"GRPC_CONNECTION_POOL_SIZE", "2"},
                       {"GRPC_MAX_STREAMS_PER_CONNECTION", absl::StrCat(kUpstreamStreams)},
                       {"GRPC_APP_CONNECTION_MAX_SHARE_PERCENT", absl::StrCat(percent)}}));
    // Both pooled connections up before the hoarding starts.
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "warm")
                      .status.ok());
    }
  }

  // Opens kHoardedCalls bidi calls on one app connection and never finishes
  // them: the upstream holds each open until the client half-closes.
  void Hoard() {
    hoarder_channel_ = CreateTestChannel(poolside_->listen_target());
    for (int i = 0; i < kHoardedCalls; ++i) {
      CallOptions options;
      options.wait = absl::Seconds(20);
      options.metadata = {{"x-hoarded-call", absl::StrCat(i)}};
      hoarded_.push_back(std::make_unique<InteractiveCall>(hoarder_channel_, kBidiMethod, options));
    }
  }

  void TearDown() override {
    for (auto& call : hoarded_) call->Cancel();
    hoarded_.clear();
    E2eTest::TearDown();
  }

  std::unique_ptr<TestUpstream> upstream_;
  std::shared_ptr<grpc::Channel> hoarder_channel_;
  std::vector<std::unique_ptr<InteractiveCall>> hoarded_;
};

TEST_F(FairShareE2eTest, HoardingConnectionGetsItsShareAndOthersKeepBeingServed) {
  ASSERT_NO_FATAL_FAILURE(StartWithShare(50));  // 20 of the 40 streams.
  Hoard();
  ASSERT_TRUE(upstream_->WaitForCalls(20, absl::Seconds(10), kBidiMethod))
      << "the hoarder's first calls never reached the upstream";

  // Other app connections are served at once, one after another.
  CallOptions options;
  options.timeout = absl::Seconds(5);
  for (int i = 0; i < 20; ++i) {
    const CallResult result =
        UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "other", options);
    EXPECT_TRUE(result.status.ok()) << "call " << i << ": " << result;
  }
  // The hoarder holds no more than its share upstream; the rest of its calls
  // wait in poolside.
  EXPECT_EQ(upstream_->Calls(kBidiMethod).size(), 20u);

  // One of its calls that holds a place ending hands that place to the next
  // of its waiting calls. Which calls hold one is the queues' choice: the
  // upstream names one.
  const std::vector<ObservedCall> placed = upstream_->Calls(kBidiMethod);
  const auto index = placed.front().client_metadata.find("x-hoarded-call");
  ASSERT_NE(index, placed.front().client_metadata.end());
  int cancelled = -1;
  ASSERT_TRUE(absl::SimpleAtoi(index->second, &cancelled));
  ASSERT_LT(cancelled, kHoardedCalls);
  hoarded_[cancelled]->Cancel();
  EXPECT_TRUE(upstream_->WaitForCalls(21, absl::Seconds(10), kBidiMethod))
      << "no waiting call took the place of hoarded call " << cancelled;
  EXPECT_EQ(upstream_->Calls(kBidiMethod).size(), 21u);
}

TEST_F(FairShareE2eTest, WithoutABoundAHoardingConnectionStarvesTheOthers) {
  // What the share is for: at 100% the hoarder takes all 40 streams.
  ASSERT_NO_FATAL_FAILURE(StartWithShare(100));
  Hoard();
  ASSERT_TRUE(upstream_->WaitForCalls(2 * kUpstreamStreams, absl::Seconds(10), kBidiMethod));
  CallOptions options;
  options.timeout = absl::Seconds(2);
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "other", options);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << result;
}

}  // namespace
}  // namespace test
}  // namespace poolside
