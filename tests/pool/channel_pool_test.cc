// ChannelPool and HealthMonitor against real grpc servers on loopback.
#include "pool/channel_pool.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/clock.h"
#include "pool/channel_factory.h"
#include "pool/health_monitor.h"
#include "tests/support/generic_client.h"
#include "tests/support/test_upstream.h"

namespace poolside {
namespace {

using test::TestUpstream;

// An upstream that has only grpc's own grpc.health.v1 service, whose serving
// status the test sets.
class HealthServer {
 public:
  HealthServer() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    // A server needs one service of its own; this one answers UNIMPLEMENTED.
    builder.RegisterCallbackGenericService(&unimplemented_);
    server_ = builder.BuildAndStart();
  }
  ~HealthServer() { server_->Shutdown(std::chrono::system_clock::now()); }

  void SetServing(bool serving) { server_->GetHealthCheckService()->SetServingStatus(serving); }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  grpc::CallbackGenericService unimplemented_;
  std::unique_ptr<grpc::Server> server_;
};

std::unique_ptr<ChannelPool> StartPool(const std::string& target, int size,
                                       absl::Duration ejection = absl::Seconds(10)) {
  PoolOptions options;
  options.target = target;
  options.size = size;
  options.outlier_consecutive_failures = 3;
  options.outlier_ejection = ejection;
  UpstreamChannelOptions channel_options;
  channel_options.target = target;
  auto pool = std::make_unique<ChannelPool>(options, NewUpstreamChannelFactory(channel_options));
  pool->Start();
  return pool;
}

// Waits for every channel to connect and for the pool to have seen it.
bool WaitUntilAllReady(ChannelPool& pool) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  for (int i = 0; i < pool.size(); ++i) {
    if (!pool.CurrentChannel(i)->channel().WaitForConnected(absl::ToChronoTime(deadline))) {
      return false;
    }
  }
  // The watcher learns of the change asynchronously.
  while (absl::Now() < deadline) {
    if (pool.Snapshot().HealthyCount() == pool.size()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

HealthMonitor::RoundCallback Ignore() {
  return [](const PoolSnapshot&) {};
}

// Runs one forced round and returns its snapshot.
PoolSnapshot RunRound(HealthMonitor& monitor) {
  std::promise<PoolSnapshot> result;
  monitor.RequestRound([&result](const PoolSnapshot& snapshot) { result.set_value(snapshot); });
  return result.get_future().get();
}

HealthCheckOptions QuickChecks() {
  HealthCheckOptions options;
  options.interval = absl::Hours(1);  // Rounds run only when a test asks.
  options.min_forced_round_spacing = absl::ZeroDuration();
  options.unhealthy_threshold = 2;
  options.replace_threshold = 4;
  return options;
}

TEST(ChannelPoolTest, OpensOneConnectionPerSlot) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 4);
  ASSERT_TRUE(WaitUntilAllReady(*pool));

  // Held leases push each pick to the least loaded, i.e. an unused, slot.
  std::vector<ChannelPool::Lease> leases;
  for (int i = 0; i < 4; ++i) {
    std::optional<ChannelPool::Lease> lease = pool->PickReady();
    ASSERT_TRUE(lease.has_value());
    EXPECT_TRUE(
        test::UnaryCall(lease->channel().shared_channel(), test::kUnaryMethod, "hi").status.ok());
    leases.push_back(std::move(*lease));
  }
  EXPECT_EQ(upstream.DistinctPeers(test::kUnaryMethod).size(), 4u);
}

TEST(ChannelPoolTest, PicksTheChannelWithFewestOutstandingCalls) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 3);
  ASSERT_TRUE(WaitUntilAllReady(*pool));

  std::vector<ChannelPool::Lease> leases;
  std::set<int> slots;
  for (int i = 0; i < 3; ++i) {
    leases.push_back(*pool->PickReady());
    slots.insert(leases.back().slot_index());
  }
  EXPECT_EQ(slots.size(), 3u);
  const int freed = leases[1].slot_index();
  leases.erase(leases.begin() + 1);
  EXPECT_EQ(pool->PickReady()->slot_index(), freed);
  EXPECT_EQ(pool->Snapshot().channels[leases[0].slot_index()].outstanding_calls, 1);
}

TEST(ChannelPoolTest, AvoidsChannelsFailingHealthChecksWhileAHealthyOneIsReady) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));

  pool->SetProbeHealthy(0, false);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(pool->PickReady()->slot_index(), 1);
  // With no healthy channel left, a ready one still beats failing the call.
  pool->SetProbeHealthy(1, false);
  EXPECT_TRUE(pool->PickReady().has_value());
  EXPECT_EQ(pool->Snapshot().HealthyCount(), 0);
}

TEST(ChannelPoolTest, HasNothingReadyWhileTheUpstreamIsDown) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  const std::string target = upstream.target();
  upstream.Shutdown();
  auto pool = StartPool(target, 2);

  EXPECT_FALSE(pool->PickReady().has_value());
  EXPECT_EQ(PoolHealthOf(pool->Snapshot()), PoolHealth::kUnhealthy);
}

TEST(ChannelPoolTest, ReplacedChannelServesItsRunningCallsAndANewConnectionTakesTheSlot) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 1);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  ChannelPool::Lease old_lease = *pool->PickReady();
  ASSERT_TRUE(
      test::UnaryCall(old_lease.channel().shared_channel(), test::kUnaryMethod, "a").status.ok());

  pool->ReplaceChannel(0, pool->NewChannel(0));
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  ChannelPool::Lease new_lease = *pool->PickReady();

  EXPECT_NE(&old_lease.channel(), &new_lease.channel());
  EXPECT_TRUE(
      test::UnaryCall(old_lease.channel().shared_channel(), test::kUnaryMethod, "b").status.ok());
  EXPECT_TRUE(
      test::UnaryCall(new_lease.channel().shared_channel(), test::kUnaryMethod, "c").status.ok());
  EXPECT_EQ(upstream.DistinctPeers(test::kUnaryMethod).size(), 2u);
  EXPECT_EQ(pool->Snapshot().connections_created, 2u);
  EXPECT_EQ(pool->Snapshot().channels[0].outstanding_calls, 2);
}

TEST(ChannelPoolTest, EjectsAChannelAfterConsecutiveUnavailableCallsButNotTheLastOne) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));

  ChannelPool::Lease first = *pool->PickReady();
  const int ejected = first.slot_index();
  first.RecordOutcome(true);
  first.RecordOutcome(false);  // A success resets the count.
  for (int i = 0; i < 3; ++i) first.RecordOutcome(true);
  EXPECT_TRUE(pool->Snapshot().channels[ejected].ejected);
  for (int i = 0; i < 5; ++i) EXPECT_NE(pool->PickReady()->slot_index(), ejected);

  // The other channel is now the last one serving: it stays.
  ChannelPool::Lease second = *pool->PickReady();
  for (int i = 0; i < 10; ++i) second.RecordOutcome(true);
  EXPECT_FALSE(pool->Snapshot().channels[second.slot_index()].ejected);
  EXPECT_EQ(pool->Snapshot().outlier_ejections, 1u);

  // A passing check during the ejection time does not end it early.
  pool->EndEjection(ejected);
  EXPECT_TRUE(pool->Snapshot().channels[ejected].ejected);
}

TEST(ChannelPoolTest, EjectedChannelReturnsAfterItsTimeOnceACheckPasses) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 2, absl::Milliseconds(100));
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  ChannelPool::Lease lease = *pool->PickReady();
  for (int i = 0; i < 3; ++i) lease.RecordOutcome(true);
  ASSERT_TRUE(pool->Snapshot().channels[lease.slot_index()].ejected);

  absl::SleepFor(absl::Milliseconds(150));
  pool->EndEjection(lease.slot_index());
  EXPECT_FALSE(pool->Snapshot().channels[lease.slot_index()].ejected);
  EXPECT_TRUE(pool->Snapshot().channels[lease.slot_index()].healthy);
}

TEST(HealthMonitorTest, MarksChannelsUnhealthyAfterThresholdAndHealthyAfterOneSuccess) {
  HealthServer upstream;
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthMonitor monitor(*pool, QuickChecks(), Ignore());
  monitor.Start();

  EXPECT_EQ(PoolHealthOf(RunRound(monitor)), PoolHealth::kHealthy);
  upstream.SetServing(false);
  PoolSnapshot first_failure = RunRound(monitor);
  EXPECT_EQ(PoolHealthOf(first_failure), PoolHealth::kHealthy) << "one failure is below threshold";
  EXPECT_EQ(first_failure.health_check_failures, 2u);
  EXPECT_EQ(PoolHealthOf(RunRound(monitor)), PoolHealth::kUnhealthy);

  upstream.SetServing(true);
  const PoolSnapshot recovered = RunRound(monitor);
  EXPECT_EQ(PoolHealthOf(recovered), PoolHealth::kHealthy);
  EXPECT_GT(recovered.last_health_check, absl::Now() - absl::Seconds(10));
}

TEST(HealthMonitorTest, ReplacesAChannelThatStaysBroken) {
  HealthServer upstream;
  auto pool = StartPool(upstream.target(), 1);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthMonitor monitor(*pool, QuickChecks(), Ignore());
  monitor.Start();
  upstream.SetServing(false);

  for (int round = 0; round < 3; ++round) RunRound(monitor);
  EXPECT_EQ(pool->Snapshot().connections_created, 1u);
  RunRound(monitor);  // The fourth consecutive failure.
  EXPECT_EQ(pool->Snapshot().connections_created, 2u);
}

TEST(HealthMonitorTest, FallsBackToConnectivityWhenTheUpstreamHasNoHealthService) {
  TestUpstream upstream;  // Answers UNIMPLEMENTED to grpc.health.v1.
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthMonitor monitor(*pool, QuickChecks(), Ignore());
  monitor.Start();

  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(PoolHealthOf(RunRound(monitor)), PoolHealth::kHealthy);
  }
}

TEST(HealthMonitorTest, ConnectivityModeNeverProbes) {
  TestUpstream upstream;
  ASSERT_TRUE(upstream.Start().ok());
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthCheckOptions options = QuickChecks();
  options.probe_with_grpc_health = false;
  HealthMonitor monitor(*pool, options, Ignore());
  monitor.Start();

  EXPECT_EQ(PoolHealthOf(RunRound(monitor)), PoolHealth::kHealthy);
  EXPECT_TRUE(upstream.Calls("/grpc.health.v1.Health/Check").empty());
}

TEST(HealthMonitorTest, RefreshesConnectionsOlderThanTheMaximumAge) {
  HealthServer upstream;
  auto pool = StartPool(upstream.target(), 2);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthCheckOptions options = QuickChecks();
  options.max_connection_age = absl::Milliseconds(500);
  HealthMonitor monitor(*pool, options, Ignore());
  monitor.Start();

  // Both channels pass their age (±10%) within a second and are refreshed.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (pool->Snapshot().connections_created < 4 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const PoolSnapshot snapshot = pool->Snapshot();
  EXPECT_GE(snapshot.connections_created, 4u);
  for (const ChannelSnapshot& channel : snapshot.channels) {
    EXPECT_LT(channel.age, absl::Seconds(1)) << "channel " << channel.index;
  }
}

TEST(HealthMonitorTest, ForcedRoundsAreRateLimited) {
  HealthServer upstream;
  auto pool = StartPool(upstream.target(), 1);
  ASSERT_TRUE(WaitUntilAllReady(*pool));
  HealthCheckOptions options = QuickChecks();
  options.min_forced_round_spacing = absl::Hours(1);
  HealthMonitor monitor(*pool, options, Ignore());
  monitor.Start();

  const PoolSnapshot first = RunRound(monitor);
  const PoolSnapshot second = RunRound(monitor);
  EXPECT_EQ(first.last_health_check, second.last_health_check);
  EXPECT_EQ(second.health_check_failures, 0u);
}

}  // namespace
}  // namespace poolside
