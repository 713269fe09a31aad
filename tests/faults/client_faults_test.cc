// What poolside does when its clients fail: a client process killed mid-call,
// a connection reset mid-stream, and SIGTERM while clients keep calling.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/faults/fault_support.h"
#include "tests/support/admin_http.h"
#include "tests/support/child_process.h"
#include "tests/support/generic_client.h"
#include "tests/support/h2_frames.h"
#include "tests/support/poolside_process.h"
#include "tests/support/raw_connection.h"
#include "tests/support/test_upstream.h"
#include "tests/support/unary_load.h"

namespace poolside::test {
namespace {

constexpr char kInflight[] = "poolside_inflight_requests";

class ClientFaultTest : public E2eTest {
 protected:
  void SetUp() override { ASSERT_TRUE(upstream_.Start().ok()); }

  // The upstream's calls that carry `key: value`.
  std::vector<ObservedCall> CallsTagged(const std::string& key, const std::string& value) {
    std::vector<ObservedCall> tagged;
    for (ObservedCall& call : upstream_.Calls()) {
      const auto it = call.client_metadata.find(key);
      if (it != call.client_metadata.end() && it->second == value) tagged.push_back(call);
    }
    return tagged;
  }

  TestUpstream upstream_;
};

TEST_F(ClientFaultTest, ClientKilledMidCallCancelsItsUpstreamCallsWhileOthersKeepWorking) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside(
      {{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_CONNECTION_POOL_SIZE", "2"}}));
  CallOptions load_options;
  load_options.timeout = absl::Seconds(10);
  UnaryLoad bystander(poolside_->listen_target(), 2, load_options);
  bystander.Start();

  constexpr int kBidi = 8;
  constexpr int kSleepers = 8;
  ChildProcess client(FaultClientBinary(),
                      {"--target", poolside_->listen_target(), "--bidi", absl::StrCat(kBidi),
                       "--sleepers", absl::StrCat(kSleepers), "--tag", "doomed"});
  ASSERT_TRUE(client.Start().ok());
  ASSERT_TRUE(client.WaitForLine("READY", absl::Seconds(20)).ok());
  const absl::Time wait_until = absl::Now() + absl::Seconds(5);
  while (CallsTagged("x-fault-client", "doomed").size() < kBidi + kSleepers &&
         absl::Now() < wait_until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(CallsTagged("x-fault-client", "doomed").size(), static_cast<size_t>(kBidi + kSleepers));

  const absl::Time killed = absl::Now();
  client.Signal(SIGKILL);
  EXPECT_EQ(client.WaitForExit(absl::Seconds(5)), 128 + SIGKILL);

  // Every call of the dead client is cancelled upstream, promptly.
  const absl::Time cancel_deadline = killed + absl::Seconds(5);
  std::vector<ObservedCall> doomed;
  while (true) {
    doomed = CallsTagged("x-fault-client", "doomed");
    int cancelled = 0;
    for (const ObservedCall& call : doomed) cancelled += call.cancelled ? 1 : 0;
    if (cancelled == kBidi + kSleepers || absl::Now() > cancel_deadline) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  const absl::Duration took = absl::Now() - killed;
  for (const ObservedCall& call : doomed) EXPECT_TRUE(call.cancelled) << call;
  std::printf("[ metric ] client SIGKILL: %zu upstream calls cancelled within %s\n", doomed.size(),
              absl::FormatDuration(took).c_str());

  // The other client never noticed.
  absl::SleepFor(absl::Milliseconds(500));
  const std::vector<TimedCall> calls = bystander.Stop();
  EXPECT_GT(calls.size(), 0u);
  for (const TimedCall& call : calls) {
    EXPECT_EQ(call.code, grpc::StatusCode::OK)
        << "bystander call " << call.id << ": " << call.message;
  }
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
}

TEST_F(ClientFaultTest, ConnectionResetMidStreamCancelsTheUpstreamCall) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}}));
  absl::StatusOr<std::unique_ptr<RawConnection>> connection =
      RawConnection::Connect(poolside_->listen_port());
  ASSERT_TRUE(connection.ok()) << connection.status();
  const std::string request =
      std::string(h2::kClientPreface) + h2::Settings() +
      h2::HeaderFrames(1, h2::GrpcRequestBlock(kBidiMethod, "application/grpc", {{"x-raw", "1"}}),
                       /*end_stream=*/false) +
      h2::SerializeFrame(h2::kData, 0, 1, h2::GrpcMessage("are you there"));
  ASSERT_TRUE((*connection)->Send(request));
  // The echo coming back proves the stream is open end to end.
  const RawConnection::ReadResult echoed =
      (*connection)
          ->ReadUntil(
              [](const std::string& bytes) {
                for (const h2::Frame& frame : h2::ParseFrames(bytes)) {
                  if (frame.type == h2::kData && frame.stream == 1) return true;
                }
                return false;
              },
              absl::Seconds(5));
  ASSERT_FALSE(echoed.closed) << h2::Describe(h2::ParseFrames(echoed.bytes));
  ASSERT_EQ(CallsTagged("x-raw", "1").size(), 1u);

  (*connection)->Reset();
  ASSERT_TRUE(upstream_.WaitForCancelled(1, absl::Seconds(5), kBidiMethod))
      << ::testing::PrintToString(upstream_.Calls(kBidiMethod));
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
  EXPECT_TRUE(UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "still here")
                  .status.ok());
}

TEST_F(ClientFaultTest, UploadsCutOffByConnectionResetsAreCancelledNotCompleted) {
  // One forwarding thread, busy with other calls: its queue decides the
  // order in which poolside learns of a failed read and of the cancel.
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()}, {"GRPC_WORKER_THREADS", "1"}}));
  CallOptions load_options;
  load_options.timeout = absl::Seconds(10);
  UnaryLoad bystander(poolside_->listen_target(), 4, load_options);
  bystander.Start();
  // Client-streaming uploads, each on its own connection, each one message
  // in and not half-closed: the client is still sending.
  constexpr int kUploads = 100;
  std::vector<std::unique_ptr<RawConnection>> connections;
  for (int i = 0; i < kUploads; ++i) {
    absl::StatusOr<std::unique_ptr<RawConnection>> connection =
        RawConnection::Connect(poolside_->listen_port());
    ASSERT_TRUE(connection.ok()) << connection.status();
    ASSERT_TRUE(
        (*connection)
            ->Send(std::string(h2::kClientPreface) + h2::Settings() +
                   h2::HeaderFrames(1,
                                    h2::GrpcRequestBlock(kClientStreamMethod, "application/grpc",
                                                         {{"x-upload", "cut"}}),
                                    /*end_stream=*/false) +
                   h2::SerializeFrame(h2::kData, 0, 1, h2::GrpcMessage("first part"))));
    connections.push_back(std::move(*connection));
  }
  const absl::Time wait_until = absl::Now() + absl::Seconds(10);
  while (CallsTagged("x-upload", "cut").size() < kUploads && absl::Now() < wait_until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(CallsTagged("x-upload", "cut").size(), static_cast<size_t>(kUploads));
  // Let the first message reach the upstream.
  absl::SleepFor(absl::Milliseconds(200));

  // The clients vanish, all at once.
  for (auto& connection : connections) connection->Reset();
  const absl::Time settle_by = absl::Now() + absl::Seconds(5);
  std::vector<ObservedCall> uploads;
  while (true) {
    uploads = CallsTagged("x-upload", "cut");
    int ended = 0;
    for (const ObservedCall& call : uploads) ended += call.cancelled || call.done ? 1 : 0;
    if (ended == kUploads || absl::Now() > settle_by) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  // A cut-off upload must never look complete to the upstream: it must see
  // a cancel, not a half-close it would answer (and commit) with OK.
  int completed = 0;
  for (const ObservedCall& call : uploads) {
    EXPECT_TRUE(call.cancelled) << call;
    completed += call.done && !call.cancelled && call.status_code == grpc::StatusCode::OK;
  }
  std::printf("[ metric ] %d uploads cut off by a connection reset: %d completed OK upstream\n",
              kUploads, completed);
  EXPECT_EQ(completed, 0) << "uploads the client never finished were completed upstream";
  for (const TimedCall& call : bystander.Stop()) {
    EXPECT_EQ(call.code, grpc::StatusCode::OK) << call.message;
  }
  EXPECT_EQ(AwaitMetric(poolside_->admin_port(), kInflight, 0, absl::Seconds(5)), 0);
}

TEST_F(ClientFaultTest, SigtermUnderLoadFinishesCallsInFlightRefusesNewOnesAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()},
                                         {"GRPC_CONNECTION_POOL_SIZE", "2"},
                                         {"GRPC_SHUTDOWN_GRACE_SECS", "10"}}));
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "300"}};
  options.timeout = absl::Seconds(15);
  options.wait = absl::Seconds(20);
  UnaryLoad load(poolside_->listen_target(), 6, options);
  load.Start();
  const absl::Time load_until = absl::Now() + absl::Seconds(10);
  while (upstream_.Calls(kUnaryMethod).size() < 30 && absl::Now() < load_until) {
    absl::SleepFor(absl::Milliseconds(20));
  }

  const absl::Time terminated = absl::Now();
  poolside_->Terminate();
  // New connections are refused at once, while calls are still in flight.
  const absl::Time closed_by = terminated + absl::Seconds(1);
  while (PortAcceptsConnections(poolside_->listen_port()) && absl::Now() < closed_by) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Duration port_closed_after = absl::Now() - terminated;
  EXPECT_FALSE(PortAcceptsConnections(poolside_->listen_port()));
  const std::optional<int> exit_code = poolside_->WaitForExit(absl::Seconds(12));
  const absl::Duration exited_after = absl::Now() - terminated;
  const std::vector<TimedCall> calls = load.Stop();
  EXPECT_EQ(exit_code, 0) << Tail(poolside_->Stderr());
  // The calls in flight take 300 ms; the grace period is 10 s.
  EXPECT_LT(exited_after, absl::Seconds(5));

  std::set<int64_t> reached_upstream;
  std::map<int64_t, const ObservedCall*> upstream_call;
  const std::vector<ObservedCall> observed = upstream_.Calls(kUnaryMethod);
  for (const ObservedCall& call : observed) {
    int64_t id = 0;
    const auto it = call.client_metadata.find("x-call-id");
    if (it != call.client_metadata.end() && absl::SimpleAtoi(it->second, &id)) {
      reached_upstream.insert(id);
      upstream_call[id] = &call;
    }
  }
  int in_flight_at_sigterm = 0;
  int refused = 0;
  for (const TimedCall& call : calls) {
    if (reached_upstream.count(call.id) > 0) {
      // Accepted and forwarded: it must complete, whenever it started.
      EXPECT_EQ(call.code, grpc::StatusCode::OK) << "call " << call.id << " reached the upstream "
                                                 << "but failed: " << call.message;
      EXPECT_FALSE(upstream_call[call.id]->cancelled) << *upstream_call[call.id];
      if (call.start < terminated && call.end > terminated) ++in_flight_at_sigterm;
    } else {
      // Never forwarded: refused, never anything else.
      EXPECT_EQ(call.code, grpc::StatusCode::UNAVAILABLE)
          << "call " << call.id << " failed with " << call.message;
      EXPECT_GT(call.end, terminated) << "call " << call.id << " failed before SIGTERM";
      ++refused;
    }
  }
  EXPECT_GE(in_flight_at_sigterm, 3) << "too few calls were in flight to test anything";
  std::printf(
      "[ metric ] SIGTERM under load: %d calls in flight finished OK, %d later calls refused; "
      "port closed after %s, exit 0 after %s\n",
      in_flight_at_sigterm, refused, absl::FormatDuration(port_closed_after).c_str(),
      absl::FormatDuration(exited_after).c_str());
}

}  // namespace
}  // namespace poolside::test
