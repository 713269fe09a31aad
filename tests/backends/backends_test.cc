// Spreading over backends and following DNS, end to end: the poolside binary
// between real clients under load and real upstreams on 127.0.0.2, .3 and .4
// (one port, as pods behind one Service), with a DNS responder the test
// changes mid-test.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/admin_http.h"
#include "tests/support/dns_responder.h"
#include "tests/support/generic_client.h"
#include "tests/support/sanitizer.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

constexpr char kName[] = "backends.poolside.test";
const std::vector<std::string> kHosts = {"127.0.0.2", "127.0.0.3", "127.0.0.4"};
// How long the pool may take to settle after a change (DNS refresh 1 s,
// connect, drain).
constexpr absl::Duration kSettleTimeout = absl::Seconds(20);

// Calls kept running through poolside from several threads until Stop(),
// each status counted. Every call is bounded by its wait; Stop() joins.
bool IsWriteIntoAClosingSocket(const std::string& message) {
  return absl::StrContains(message, "Broken pipe") ||
         absl::StrContains(message, "Connection reset by peer");
}

class Load {
 public:
  // Each call waits `sleep_ms` in the upstream (0: answers at once).
  Load(const std::string& target, int threads, int sleep_ms = 5) {
    channel_ = CreateTestChannel(target);
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, sleep_ms] {
        CallOptions options;
        if (sleep_ms > 0) options.metadata = {{"x-sleep-ms", std::to_string(sleep_ms)}};
        options.wait = absl::Seconds(20);
        while (!stopping_.load()) {
          const CallResult result = UnaryCall(channel_, kUnaryMethod, "ping", options);
          absl::MutexLock lock(&mutex_);
          ++codes_[result.status.error_code()];
          if (result.status.error_code() == grpc::StatusCode::UNAVAILABLE &&
              IsWriteIntoAClosingSocket(result.status.error_message())) {
            ++unavailable_on_write_;
          }
          if (!result.status.ok() && failures_.size() < 5) {
            failures_.push_back(
                absl::StrCat(result.status.error_code(), ": ", result.status.error_message()));
          }
        }
      });
    }
  }
  ~Load() { Stop(); }

  void Stop() {
    stopping_.store(true);
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

  int64_t Count(grpc::StatusCode code) const {
    absl::MutexLock lock(&mutex_);
    auto it = codes_.find(code);
    return it == codes_.end() ? 0 : it->second;
  }
  // UNAVAILABLE calls whose request was being written into a socket the
  // upstream was closing ("Broken pipe", "Connection reset by peer").
  int64_t UnavailableOnWrite() const {
    absl::MutexLock lock(&mutex_);
    return unavailable_on_write_;
  }
  int64_t Failed() const {
    absl::MutexLock lock(&mutex_);
    int64_t failed = 0;
    for (const auto& [code, count] : codes_) failed += code == grpc::StatusCode::OK ? 0 : count;
    return failed;
  }
  std::string FirstFailures() const {
    absl::MutexLock lock(&mutex_);
    return absl::StrJoin(failures_, "; ");
  }
  // Waits until `n` more calls have succeeded than when called.
  bool AwaitMoreSuccesses(int64_t n, absl::Duration timeout) const {
    const int64_t wanted = Count(grpc::StatusCode::OK) + n;
    const absl::Time deadline = absl::Now() + timeout;
    while (Count(grpc::StatusCode::OK) < wanted) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mutex_;
  std::map<grpc::StatusCode, int64_t> codes_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> failures_ ABSL_GUARDED_BY(mutex_);
  int64_t unavailable_on_write_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<std::thread> threads_;
};

class BackendsTest : public E2eTest {
 protected:
  void SetUp() override {
    // One port for all three, as pods behind one Service: the first picks
    // it; the others are different addresses, so it is free there too.
    for (const std::string& host : kHosts) {
      TestUpstream::Options options;
      options.host = host;
      options.port = upstreams_.empty() ? 0 : upstreams_.front()->port();
      upstreams_.push_back(std::make_unique<TestUpstream>(options));
      ASSERT_TRUE(upstreams_.back()->Start().ok()) << "cannot listen on " << host;
    }
    port_ = upstreams_.front()->port();
    dns_ = std::make_unique<DnsResponder>(kName);
    ASSERT_TRUE(dns_->Start().ok());
  }

  std::string Address(int i) const { return absl::StrCat(kHosts[i], ":", port_); }
  std::string DnsTarget() const {
    return absl::StrCat("dns://", dns_->address(), "/", kName, ":", port_);
  }

  Environment DnsEnvironment(int pool_size) const {
    return {{"GRPC_UPSTREAM_TARGET", DnsTarget()},
            {"GRPC_CONNECTION_POOL_SIZE", std::to_string(pool_size)},
            {"GRPC_DNS_REFRESH_SECS", "1"},
            {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "1"},
            {"GRPC_SHUTDOWN_GRACE_SECS", "5"}};
  }

  std::shared_ptr<grpc::Channel> AdminChannel() {
    if (admin_ == nullptr) admin_ = CreateTestChannel(poolside_->listen_target());
    return admin_;
  }

  // Active connections per backend address as poolside reports them, with
  // "+connecting"/"+draining" entries when any are.
  std::map<std::string, int> ReportedSpread() {
    std::map<std::string, int> spread;
    absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics =
        AdminPoolMetrics(AdminChannel());
    if (!metrics.ok()) return {{"error: " + metrics.status().ToString(), 0}};
    for (const admin::v1::ChannelMetrics& channel : metrics->channels()) {
      const std::string key =
          channel.phase() == "active" ? channel.backend() : "+" + channel.phase();
      ++spread[key];
    }
    return spread;
  }

  // Waits until poolside reports exactly `wanted` (settled: nothing
  // connecting or draining); the last spread seen.
  std::map<std::string, int> AwaitSpread(const std::map<std::string, int>& wanted) {
    const absl::Time deadline = absl::Now() + kSettleTimeout;
    std::map<std::string, int> spread;
    while (absl::Now() < deadline) {
      spread = ReportedSpread();
      if (spread == wanted) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return spread;
  }

  // Distinct client connections each upstream saw Unary calls on, from
  // calls made after this is called (under `load`).
  std::vector<size_t> ConnectionsPerUpstream(const Load& load) {
    for (auto& upstream : upstreams_) upstream->ClearCalls();
    EXPECT_TRUE(load.AwaitMoreSuccesses(600, absl::Seconds(20)));
    std::vector<size_t> connections;
    for (auto& upstream : upstreams_) {
      connections.push_back(upstream->DistinctPeers(kUnaryMethod).size());
    }
    return connections;
  }

  // Polls ConnectionsPerUpstream until it is `wanted` or kSettleTimeout
  // passes; the last answer.
  std::vector<size_t> AwaitConnectionsPerUpstream(const Load& load,
                                                  const std::vector<size_t>& wanted) {
    const absl::Time deadline = absl::Now() + kSettleTimeout;
    std::vector<size_t> connections;
    while (absl::Now() < deadline) {
      connections = ConnectionsPerUpstream(load);
      if (connections == wanted) break;
    }
    return connections;
  }

  int port_ = 0;
  std::vector<std::unique_ptr<TestUpstream>> upstreams_;
  std::unique_ptr<DnsResponder> dns_;
  std::shared_ptr<grpc::Channel> admin_;
};

std::string Describe(const std::map<std::string, int>& spread) {
  return absl::StrJoin(spread, ", ", absl::PairFormatter("="));
}

TEST_F(BackendsTest, Ipv4ListSpreadsConnectionsEvenly) {
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET",
                      absl::StrCat("ipv4:", Address(0), ",", Address(1), ",", Address(2))},
                     {"GRPC_CONNECTION_POOL_SIZE", "9"}}));
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}, {Address(2), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}, {Address(2), 3}}));
  Load load(poolside_->listen_target(), 24);
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{3, 3, 3}));
  load.Stop();
  EXPECT_EQ(load.Failed(), 0) << load.FirstFailures();
}

TEST_F(BackendsTest, UnevenSplitDiffersByAtMostOne) {
  ASSERT_NO_FATAL_FAILURE(
      StartPoolside({{"GRPC_UPSTREAM_TARGET",
                      absl::StrCat("ipv4:", Address(0), ",", Address(1), ",", Address(2))},
                     {"GRPC_CONNECTION_POOL_SIZE", "4"}}));
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 2}, {Address(1), 1}, {Address(2), 1}})),
            Describe({{Address(0), 2}, {Address(1), 1}, {Address(2), 1}}));
}

TEST_F(BackendsTest, DnsNameSpreadsAndKeepsItsNameAsAuthority) {
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(6)));
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}}));
  Load load(poolside_->listen_target(), 16);
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{3, 3, 0}));
  load.Stop();
  EXPECT_EQ(load.Failed(), 0) << load.FirstFailures();
  // Each upstream sees the name, as with one channel to it, never the
  // address the connection went to.
  for (int i = 0; i < 2; ++i) {
    std::set<std::string> authorities;
    for (const ObservedCall& call : upstreams_[i]->Calls(kUnaryMethod)) {
      authorities.insert(call.authority);
    }
    EXPECT_EQ(authorities, (std::set<std::string>{absl::StrCat(kName, ":", port_)}))
        << "upstream " << kHosts[i];
  }
}

TEST_F(BackendsTest, AuthorityOverrideStillWins) {
  dns_->SetAddresses({kHosts[0]});
  Environment env = DnsEnvironment(2);
  env["GRPC_UPSTREAM_AUTHORITY"] = "virtual.example:443";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "hi");
  ASSERT_TRUE(result.status.ok()) << result;
  ASSERT_FALSE(upstreams_[0]->Calls(kUnaryMethod).empty());
  EXPECT_EQ(upstreams_[0]->Calls(kUnaryMethod).front().authority, "virtual.example:443");
}

TEST_F(BackendsTest, FollowsScaleOutAndScaleInUnderLoadWithoutFailingCalls) {
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(6)));
  ASSERT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}}));
  Load load(poolside_->listen_target(), 16);
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{3, 3, 0}));

  // Scale out 2 -> 3: the new backend gets its share.
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}})),
            Describe({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}}));
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{2, 2, 2}));
  EXPECT_EQ(load.Failed(), 0) << "scale out failed calls: " << load.FirstFailures();

  // Scale in 3 -> 2: the removed backend is drained, then stops gracefully.
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}}));
  upstreams_[2]->Shutdown(absl::Seconds(5));
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{3, 3, 0}));
  load.Stop();
  EXPECT_EQ(load.Failed(), 0) << load.FirstFailures();

  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics =
      AdminPoolMetrics(AdminChannel());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->address_set_changes(), 2u);
}

// A backend that leaves the address set but keeps serving: its connections
// drain, and a call still on one when GRPC_SHUTDOWN_GRACE_SECS is up is
// ended with UNAVAILABLE instead of holding the connection open. Calls on
// the other backends are untouched.
TEST_F(BackendsTest, CallsOutlivingTheDrainGraceOfARemovedBackendEndUnavailable) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  Environment env = DnsEnvironment(3);
  env["GRPC_SHUTDOWN_GRACE_SECS"] = "1";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  ASSERT_EQ(Describe(AwaitSpread({{Address(0), 1}, {Address(1), 1}, {Address(2), 1}})),
            Describe({{Address(0), 1}, {Address(1), 1}, {Address(2), 1}}));
  const auto channel = CreateTestChannel(poolside_->listen_target());
  CallOptions options;
  options.metadata = {{"x-sleep-ms", "8000"}};
  options.wait = absl::Seconds(30);
  constexpr int kCalls = 6;
  std::vector<std::future<CallResult>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::async(std::launch::async,
                               [&] { return UnaryCall(channel, kUnaryMethod, "long", options); }));
  }
  ASSERT_TRUE(upstreams_[0]->WaitForCalls(1, absl::Seconds(10), kUnaryMethod) &&
              upstreams_[1]->WaitForCalls(1, absl::Seconds(10), kUnaryMethod) &&
              upstreams_[2]->WaitForCalls(1, absl::Seconds(10), kUnaryMethod))
      << "the calls did not reach every backend";
  absl::SleepFor(absl::Milliseconds(200));
  const size_t on_removed = upstreams_[2]->Calls(kUnaryMethod).size();

  const absl::Time removed = absl::Now();
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  size_t cut = 0;
  size_t succeeded = 0;
  for (auto& call : calls) {
    const CallResult result = call.get();
    if (result.status.ok()) {
      ++succeeded;
      continue;
    }
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
    EXPECT_TRUE(absl::StrContains(result.status.error_message(), "drained")) << result;
    ++cut;
  }
  EXPECT_EQ(cut, on_removed);
  EXPECT_EQ(succeeded, kCalls - on_removed);
  // The removed backend saw its calls cancelled, long before they would
  // have ended (8 s) on their own.
  EXPECT_TRUE(upstreams_[2]->WaitForCancelled(on_removed, absl::Seconds(1), kUnaryMethod));
  EXPECT_LT(absl::Now() - removed, absl::Seconds(20));
  // Three connections over the two backends left; which gets two is the
  // pool's choice.
  const absl::Time deadline = absl::Now() + kSettleTimeout;
  std::map<std::string, int> spread = ReportedSpread();
  while (spread.size() != 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
    spread = ReportedSpread();
  }
  EXPECT_EQ(spread[Address(0)] + spread[Address(1)], 3) << Describe(spread);
  EXPECT_EQ(spread.size(), 2u) << Describe(spread);
  absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics =
      AdminPoolMetrics(AdminChannel());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->calls_ended_drain_grace(), on_removed);
  EXPECT_EQ(metrics->calls_ended_connection_lost(), 0u);
}

// Kubernetes removes a terminating pod from DNS and sends it SIGTERM at about
// the same time: the upstream may go away before poolside hears of it.
TEST_F(BackendsTest, BackendStoppingBeforeDnsDropsItFailsNoCallWithUnavailable) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(6)));
  ASSERT_EQ(Describe(AwaitSpread({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}})),
            Describe({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}}));
  Load load(poolside_->listen_target(), 16);
  ASSERT_TRUE(load.AwaitMoreSuccesses(200, absl::Seconds(20)));
  upstreams_[2]->Shutdown(absl::Seconds(5));
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}}));
  EXPECT_TRUE(load.AwaitMoreSuccesses(300, absl::Seconds(20)));
  load.Stop();
  EXPECT_EQ(load.Count(grpc::StatusCode::UNAVAILABLE), 0) << load.FirstFailures();
}

// With an hour between refreshes, only a lost connection can make poolside
// look the name up again.
TEST_F(BackendsTest, LostConnectionResolvesTheNameAgainAtOnce) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  Environment env = DnsEnvironment(6);
  env["GRPC_DNS_REFRESH_SECS"] = "3600";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  ASSERT_EQ(Describe(AwaitSpread({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}})),
            Describe({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}}));
  const int64_t queries_before = dns_->queries();
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  upstreams_[2]->Shutdown(absl::Seconds(1));
  EXPECT_EQ(Describe(AwaitSpread({{Address(0), 3}, {Address(1), 3}})),
            Describe({{Address(0), 3}, {Address(1), 3}}));
  EXPECT_GT(dns_->queries(), queries_before);
}

// Calls a rolling-restart test may lose to grpc 1.51's write-into-a-closing-
// socket race (explained below). A hop without transparent retry fails about
// every call in flight at each restart: 3 restarts x 32 callers. The race is
// rarer on an optimized build (0-5 calls a run) than under a sanitizer (up to
// 17 seen), where grpc is several times slower.
constexpr int64_t kWriteRaceAllowance = kUnderSanitizer ? 48 : 10;

// Restarts upstream 0 three times under 32 callers, then expects no
// UNAVAILABLE but the write race's, which it counts apart.
void RestartUpstreamThriceUnderLoad(const std::string& target, TestUpstream& upstream,
                                    int64_t successes_after) {
  Load load(target, 32, /*sleep_ms=*/0);
  for (int restart = 0; restart < 3; ++restart) {
    ASSERT_TRUE(load.AwaitMoreSuccesses(2000, absl::Seconds(20)));
    upstream.Shutdown(absl::Seconds(2));
    ASSERT_TRUE(upstream.Start().ok());
  }
  ASSERT_TRUE(load.AwaitMoreSuccesses(successes_after, absl::Seconds(20)));
  load.Stop();
  std::cout << "[ metric ] UNAVAILABLE on a write into the closing socket: "
            << load.UnavailableOnWrite() << "\n";
  EXPECT_EQ(load.Count(grpc::StatusCode::UNAVAILABLE) - load.UnavailableOnWrite(), 0)
      << load.FirstFailures();
  EXPECT_LE(load.UnavailableOnWrite(), kWriteRaceAllowance) << load.FirstFailures();
}

TEST_F(BackendsTest, RollingRestartsOfOneUpstreamFailNoCallWithUnavailable) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(6)));
  ASSERT_EQ(Describe(AwaitSpread({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}})),
            Describe({{Address(0), 2}, {Address(1), 2}, {Address(2), 2}}));
  RestartUpstreamThriceUnderLoad(poolside_->listen_target(), *upstreams_[0],
                                 /*successes_after=*/200);
}

// The issue's own reproduction: one upstream, restarted three times under
// load. Calls that never reached it are retried by grpc once the connection
// is back (transparent retry + wait-for-ready); none may fail. One race stays
// open in grpc 1.51: a request written into the socket at the moment the
// upstream closes it fails the write ("Broken pipe") before grpc reads the
// GOAWAY that would prove the stream unseen, so it fails as it would on a
// direct connection. Seen in about 1 run of 10 on a loaded machine, a few
// calls each; such calls are counted apart, every other UNAVAILABLE fails the
// test.
TEST_F(BackendsTest, RollingRestartsOfTheOnlyUpstreamFailNoCallWithUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", Address(0)},
                                         {"GRPC_CONNECTION_POOL_SIZE", "4"},
                                         {"GRPC_SHUTDOWN_GRACE_SECS", "5"}}));
  RestartUpstreamThriceUnderLoad(poolside_->listen_target(), *upstreams_[0],
                                 /*successes_after=*/2000);
}

TEST_F(BackendsTest, NameThatStopsResolvingKeepsThePool) {
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(4)));
  const std::map<std::string, int> spread = {{Address(0), 2}, {Address(1), 2}};
  ASSERT_EQ(Describe(AwaitSpread(spread)), Describe(spread));
  Load load(poolside_->listen_target(), 4);

  for (DnsResponder::Failure failure :
       {DnsResponder::Failure::kServerFailure, DnsResponder::Failure::kNoSuchName}) {
    dns_->SetFailure(failure);
    const absl::Time deadline = absl::Now() + kSettleTimeout;
    uint64_t failures = 0;
    while (absl::Now() < deadline && failures < 2) {
      absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics =
          AdminPoolMetrics(AdminChannel());
      if (metrics.ok() && metrics->resolution_failing()) failures = metrics->resolution_failures();
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_GE(failures, 2u);
    EXPECT_EQ(Describe(ReportedSpread()), Describe(spread));
    EXPECT_TRUE(load.AwaitMoreSuccesses(100, absl::Seconds(20)));
    const std::string readyz = AwaitHealthStatus(AdminChannel(), "healthy", absl::Seconds(5));
    EXPECT_EQ(readyz, "healthy");
  }
  dns_->SetFailure(DnsResponder::Failure::kNone);
  const absl::Time deadline = absl::Now() + kSettleTimeout;
  bool recovered = false;
  while (!recovered && absl::Now() < deadline) {
    absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics =
        AdminPoolMetrics(AdminChannel());
    recovered = metrics.ok() && !metrics->resolution_failing();
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(recovered);
  load.Stop();
  EXPECT_EQ(load.Failed(), 0) << load.FirstFailures();
  // Logged once per outage, not once per lookup.
  const std::string log = poolside_->Stderr();
  size_t warnings = 0;
  for (size_t at = log.find("cannot resolve"); at != std::string::npos;
       at = log.find("cannot resolve", at + 1)) {
    ++warnings;
  }
  EXPECT_EQ(warnings, 1u) << Tail(log);
}

TEST_F(BackendsTest, NameThatNeverResolvedStartsOnTheTargetItself) {
  dns_->SetFailure(DnsResponder::Failure::kServerFailure);
  ASSERT_NO_FATAL_FAILURE(StartPoolside(DnsEnvironment(2)));
  // Then the name resolves: the pool moves onto its addresses.
  dns_->SetFailure(DnsResponder::Failure::kNone);
  dns_->SetAddresses({kHosts[1]});
  EXPECT_EQ(Describe(AwaitSpread({{Address(1), 2}})), Describe({{Address(1), 2}}));
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "hi");
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(upstreams_[1]->Calls(kUnaryMethod).size(), 1u);
}

// GRPC_FORWARDER=frames follows DNS as the grpc++ pool does (the same
// AddressTracker): each change moves as few connections as it can, a moved
// connection finishes its calls before it closes, and no call fails.
TEST_F(BackendsTest, FrameForwarderFollowsScaleOutAndScaleInUnderLoadWithoutFailingCalls) {
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  Environment env = DnsEnvironment(6);
  env["GRPC_FORWARDER"] = "frames";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  Load load(poolside_->listen_target(), 16);
  EXPECT_EQ(AwaitConnectionsPerUpstream(load, {3, 3, 0}), (std::vector<size_t>{3, 3, 0}));

  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  EXPECT_EQ(AwaitConnectionsPerUpstream(load, {2, 2, 2}), (std::vector<size_t>{2, 2, 2}));
  EXPECT_EQ(load.Failed(), 0) << "scale out failed calls: " << load.FirstFailures();

  dns_->SetAddresses({kHosts[0], kHosts[1]});
  EXPECT_EQ(AwaitConnectionsPerUpstream(load, {3, 3, 0}), (std::vector<size_t>{3, 3, 0}));
  upstreams_[2]->Shutdown(absl::Seconds(5));
  EXPECT_EQ(ConnectionsPerUpstream(load), (std::vector<size_t>{3, 3, 0}));
  load.Stop();
  EXPECT_EQ(load.Failed(), 0) << load.FirstFailures();
  const absl::StatusOr<std::string> metrics = HttpGet(poolside_->admin_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(MetricValue(*metrics, "poolside_pool_address_set_changes_total"), 2);
}

// With the frame forwarder, a name that does not resolve at start leaves
// poolside up and unready; once it resolves, calls go to its addresses.
TEST_F(BackendsTest, FrameForwarderWaitsForANameThatResolvesLate) {
  dns_->SetFailure(DnsResponder::Failure::kServerFailure);
  Environment env = DnsEnvironment(2);
  env["GRPC_FORWARDER"] = "frames";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  EXPECT_FALSE(HttpGet(poolside_->admin_port(), "/readyz").ok());
  dns_->SetFailure(DnsResponder::Failure::kNone);
  dns_->SetAddresses({kHosts[1]});
  CallOptions options;
  options.timeout = absl::Seconds(15);
  const CallResult result =
      UnaryCall(CreateTestChannel(poolside_->listen_target()), kUnaryMethod, "hi", options);
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_EQ(upstreams_[1]->Calls(kUnaryMethod).size(), 1u);
}

// The frame forwarder under rolling restarts: a stream the restarting
// upstream refused (past its GOAWAY) is replayed on another connection, and
// a call that finds no connection up waits for one, so none fails
// UNAVAILABLE but the write race's (which hits the relay's writes into the
// closing socket as it hits grpc's).
TEST_F(BackendsTest, FrameForwarderRollingRestartsOfOneUpstreamFailNoCallWithUnavailable) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  Environment env = DnsEnvironment(6);
  env["GRPC_FORWARDER"] = "frames";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  RestartUpstreamThriceUnderLoad(poolside_->listen_target(), *upstreams_[0],
                                 /*successes_after=*/200);
}

TEST_F(BackendsTest, FrameForwarderRollingRestartsOfTheOnlyUpstreamFailNoCallWithUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", Address(0)},
                                         {"GRPC_CONNECTION_POOL_SIZE", "4"},
                                         {"GRPC_FORWARDER", "frames"},
                                         {"GRPC_SHUTDOWN_GRACE_SECS", "5"}}));
  RestartUpstreamThriceUnderLoad(poolside_->listen_target(), *upstreams_[0],
                                 /*successes_after=*/2000);
}

// With an hour between refreshes, only a lost connection can make the frame
// forwarder look the name up again.
TEST_F(BackendsTest, FrameForwarderLostConnectionResolvesTheNameAgainAtOnce) {
  dns_->SetAddresses({kHosts[0], kHosts[1], kHosts[2]});
  Environment env = DnsEnvironment(6);
  env["GRPC_DNS_REFRESH_SECS"] = "3600";
  env["GRPC_FORWARDER"] = "frames";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  {
    Load before(poolside_->listen_target(), 16);
    EXPECT_EQ(AwaitConnectionsPerUpstream(before, {2, 2, 2}), (std::vector<size_t>{2, 2, 2}));
  }
  const int64_t queries_before = dns_->queries();
  dns_->SetAddresses({kHosts[0], kHosts[1]});
  // Not under load: a grpc server shutting down cancels the calls that reach
  // it in the meantime (CANCELLED), through any hop.
  upstreams_[2]->Shutdown(absl::Seconds(1));
  Load after(poolside_->listen_target(), 16);
  EXPECT_EQ(AwaitConnectionsPerUpstream(after, {3, 3, 0}), (std::vector<size_t>{3, 3, 0}));
  EXPECT_GT(dns_->queries(), queries_before);
  after.Stop();
  EXPECT_EQ(after.Failed(), 0) << after.FirstFailures();
}

}  // namespace
}  // namespace poolside::test
