// ChannelPool and HealthMonitor against real grpc servers on loopback.
#include "pool/channel_pool.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "pool/channel_factory.h"
#include "pool/health_monitor.h"
#include "pool/upstream_target.h"
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

// Upstreams on 127.0.0.2, .3 and .4, one port: three backends of one name.
class RebalanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* host : {"127.0.0.2", "127.0.0.3", "127.0.0.4"}) {
      TestUpstream::Options options;
      options.host = host;
      options.port = upstreams_.empty() ? 0 : upstreams_.front()->port();
      upstreams_.push_back(std::make_unique<TestUpstream>(options));
      ASSERT_TRUE(upstreams_.back()->Start().ok());
      backends_.push_back(IpBackend(host, upstreams_.front()->port()));
    }
    PoolOptions options;
    options.target = "dns:///backends.test:1";
    options.size = 4;
    UpstreamChannelOptions channel_options;
    channel_options.target = options.target;
    pool_ = std::make_unique<ChannelPool>(options, NewUpstreamChannelFactory(channel_options));
  }

  // Rebalances until settled (each step polls the new connections).
  bool Settle(const std::vector<BackendAddress>& backends,
              absl::Duration grace = absl::Seconds(30)) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (!pool_->Rebalance(backends, {absl::Seconds(5), grace})) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  std::map<std::string, std::string> Phases() const {
    std::map<std::string, std::string> phases;
    for (const ChannelSnapshot& channel : pool_->Snapshot().channels) {
      phases[std::to_string(channel.index)] = channel.backend + " " + SlotPhaseName(channel.phase);
    }
    return phases;
  }

  std::map<std::string, int> ActivePerBackend() const {
    std::map<std::string, int> spread;
    for (const BackendSnapshot& backend : pool_->Snapshot().backends) {
      spread[backend.address] = backend.active_connections;
    }
    return spread;
  }

  std::vector<std::unique_ptr<TestUpstream>> upstreams_;
  std::vector<BackendAddress> backends_;
  std::unique_ptr<ChannelPool> pool_;
};

TEST_F(RebalanceTest, StartSpreadsSlotsRoundRobin) {
  pool_->Start({backends_[0], backends_[1], backends_[2]});
  EXPECT_EQ(ActivePerBackend(),
            (std::map<std::string, int>{
                {backends_[0].label, 2}, {backends_[1].label, 1}, {backends_[2].label, 1}}));
  EXPECT_FALSE(pool_->Rebalance({backends_[0], backends_[1], backends_[2]},
                                {absl::Seconds(5), absl::Seconds(5)}))
      << "already settled";
}

TEST_F(RebalanceTest, ScaleOutConnectsNewBackendFirstThenDrainsTheSurplus) {
  pool_->Start({backends_[0], backends_[1]});
  ASSERT_TRUE(Settle({backends_[0], backends_[1], backends_[2]}));
  const std::map<std::string, int> spread = ActivePerBackend();
  EXPECT_EQ(spread.at(backends_[2].label), 1);
  EXPECT_EQ(spread.at(backends_[0].label) + spread.at(backends_[1].label), 3);
  EXPECT_EQ(pool_->Snapshot().ActiveCount(), 4);
  EXPECT_EQ(pool_->Snapshot().channels.size(), 4u) << "drained slots are freed";
}

TEST_F(RebalanceTest, DrainingSlotWaitsForItsCallsThenLeaves) {
  pool_->Start({backends_[0], backends_[1], backends_[2]});
  ASSERT_TRUE(WaitUntilAllReady(*pool_));
  // Calls on every slot of backend 2, which is about to leave the set.
  std::vector<ChannelPool::Lease> leases;
  for (int i = 0; i < 8; ++i) leases.push_back(*pool_->PickReady());
  const std::vector<BackendAddress> two = {backends_[0], backends_[1]};
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ActivePerBackend()[backends_[1].label] < 2 && absl::Now() < deadline) {
    pool_->Rebalance(two, {absl::Seconds(5), absl::Seconds(30)});
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(pool_->Rebalance(two, {absl::Seconds(5), absl::Seconds(30)}))
      << "the drain waits for the calls";
  int draining = 0;
  for (const ChannelSnapshot& channel : pool_->Snapshot().channels) {
    if (channel.phase == SlotPhase::kDraining) {
      ++draining;
      EXPECT_EQ(channel.backend, backends_[2].label);
      EXPECT_GT(channel.outstanding_calls, 0);
    }
  }
  EXPECT_EQ(draining, 1);
  // A draining slot takes no new call.
  for (int i = 0; i < 20; ++i) {
    std::optional<ChannelPool::Lease> lease = pool_->PickReady();
    ASSERT_TRUE(lease.has_value());
    EXPECT_TRUE(pool_->IsActive(lease->slot_index()));
  }
  leases.clear();
  EXPECT_TRUE(Settle(two));
  EXPECT_EQ(ActivePerBackend(),
            (std::map<std::string, int>{{backends_[0].label, 2}, {backends_[1].label, 2}}));
}

TEST_F(RebalanceTest, DrainGivesUpAfterItsGraceAndTheCallKeepsItsChannel) {
  pool_->Start({backends_[0], backends_[1], backends_[2]});
  ASSERT_TRUE(WaitUntilAllReady(*pool_));
  std::vector<ChannelPool::Lease> leases;
  for (int i = 0; i < 4; ++i) leases.push_back(*pool_->PickReady());
  ASSERT_TRUE(Settle({backends_[0], backends_[1]}, absl::Milliseconds(100)));
  EXPECT_EQ(pool_->Snapshot().channels.size(), 4u);
  // The call that outlived the grace still has a working channel.
  for (ChannelPool::Lease& lease : leases) {
    EXPECT_TRUE(
        test::UnaryCall(lease.channel().shared_channel(), test::kUnaryMethod, "x").status.ok());
  }
}

TEST_F(RebalanceTest, NewBackendThatNeverConnectsTakesNoSlotFromAWorkingOne) {
  pool_->Start({backends_[0], backends_[1]});
  ASSERT_TRUE(WaitUntilAllReady(*pool_));
  upstreams_[2]->Shutdown();
  for (int i = 0; i < 20; ++i) {
    EXPECT_TRUE(pool_->Rebalance(backends_, {absl::Milliseconds(50), absl::Seconds(5)}));
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(ActivePerBackend(),
            (std::map<std::string, int>{
                {backends_[0].label, 2}, {backends_[1].label, 2}, {backends_[2].label, 0}}));
  EXPECT_EQ(PoolHealthOf(pool_->Snapshot()), PoolHealth::kHealthy);
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
