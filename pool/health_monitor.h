// Keeps the pool healthy: every interval it checks each channel — its
// connectivity and, unless told not to, a grpc.health.v1.Health/Check sent
// over that very channel — marks channels unhealthy after consecutive
// failures and healthy again after one success, replaces channels that stay
// broken, and refreshes channels older than the maximum connection age one at
// a time so that long-lived pools re-spread over the backends.
//
// Ownership and threading: owned by main beside the pool it watches; owns its
// thread and each slot's health history. Rounds run on that thread only;
// ProbeAt() and RequestRound() are thread-safe.
#ifndef POOLSIDE_POOL_HEALTH_MONITOR_H_
#define POOLSIDE_POOL_HEALTH_MONITOR_H_

#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pool/channel_pool.h"
#include "pool/pool_snapshot.h"

namespace poolside {

struct HealthCheckOptions {
  absl::Duration interval = absl::Seconds(60);
  // false: connectivity state only (GRPC_HEALTH_CHECK_MODE=connectivity).
  bool probe_with_grpc_health = true;
  // grpc.health.v1 service name; empty means the server as a whole.
  std::string service;
  absl::Duration probe_timeout = absl::Seconds(1);
  // Consecutive failed checks that make a channel unhealthy.
  int unhealthy_threshold = 2;
  // A channel failing this many consecutive checks is replaced.
  int replace_threshold = 4;
  // 0: connections live forever.
  absl::Duration max_connection_age = absl::ZeroDuration();
  // How long a refreshed channel may take to connect before the old one is
  // dropped for it.
  absl::Duration connect_timeout = absl::Seconds(30);
  // Files (TLS roots, certificate, key) whose change rolls every connection
  // over, one at a time, once grpc has re-read them.
  std::vector<std::string> credential_files;
  absl::Duration credential_poll_interval = absl::Seconds(2);
  // Forced rounds closer together than this reuse the last round's result.
  absl::Duration min_forced_round_spacing = absl::Seconds(1);
};

class HealthMonitor {
 public:
  using RoundCallback = std::function<void(const PoolSnapshot&)>;

  // `pool` must outlive the monitor. `on_round` runs on the monitor's thread
  // after every round (to refresh metrics); it must not block.
  HealthMonitor(ChannelPool& pool, HealthCheckOptions options, RoundCallback on_round);
  ~HealthMonitor();
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  void Start();
  void Shutdown();

  // Runs a round at `when` (or earlier): an ejected channel is probed then.
  void ProbeAt(absl::Time when);

  // Runs a round soon (now, unless one ran within min_forced_round_spacing)
  // and calls `done` with its outcome, on the monitor's thread.
  void RequestRound(RoundCallback done);

 private:
  // Per-slot state, confined to the monitor thread.
  struct ChannelHealth {
    // PooledChannel::id() of the channel judged; 0 for none.
    uint64_t channel_id = 0;
    int consecutive_failures = 0;
    bool healthy = true;
    absl::Time refresh_at = absl::InfiniteFuture();
  };

  void Loop();
  // Starts afresh on slots whose channel the pool changed (a new backend, a
  // freed slot): their history belongs to the old channel.
  void SyncSlots();
  PoolSnapshot RunRound();
  // What one grpc.health.v1 probe came back with.
  struct ProbeAnswer {
    grpc::Status status;
    // The status is OK and the reply says SERVING.
    bool serving = false;
  };

  // One entry per slot: nullopt if not checked (not in rotation), empty if
  // its check passed, else why it failed.
  std::vector<std::optional<std::string>> CheckChannels();
  // The channel of every slot in rotation; null for the others.
  std::vector<std::shared_ptr<PooledChannel>> ChannelsInRotation() const;
  // CheckChannels' verdicts from the connectivity state alone.
  static std::vector<std::optional<std::string>> JudgeConnectivity(
      const std::vector<std::shared_ptr<PooledChannel>>& channels);
  // Sends a health probe over every non-null channel at once and waits for
  // all of them (at most one probe timeout); nullopt where no channel.
  std::vector<std::optional<ProbeAnswer>> ProbeAll(
      const std::vector<std::shared_ptr<PooledChannel>>& channels) const;
  // Whether a probe says the upstream has no health service; from then on
  // channels are judged by connectivity only (logged once).
  bool UpstreamLacksHealthService(const std::vector<std::optional<ProbeAnswer>>& answers);
  // CheckChannels' verdicts from the probes' answers.
  static std::vector<std::optional<std::string>> JudgeProbes(
      const std::vector<std::optional<ProbeAnswer>>& answers);
  void ScheduleRefresh(int slot, absl::Time created_at);
  // Refreshes the channel most overdue for its maximum age, if any; returns
  // when the next one falls due.
  absl::Time RefreshOldestChannel(absl::Time now);
  // Schedules every channel for refresh when the credential files changed.
  void CheckCredentialFiles(absl::Time now);
  absl::Time NextRefresh() const;

  // Constant after construction.
  ChannelPool& pool_;
  const HealthCheckOptions options_;
  const RoundCallback on_round_;

  // Confined to the monitor thread.
  std::vector<ChannelHealth> channels_;
  bool upstream_lacks_health_service_ = false;
  PoolHealth last_pool_health_ = PoolHealth::kHealthy;
  bool logged_first_round_ = false;
  std::string credential_fingerprint_;
  absl::BitGen random_;

  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<RoundCallback> waiting_ ABSL_GUARDED_BY(mutex_);
  absl::Time last_round_at_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
  absl::Time probe_at_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  // When the monitor thread next wakes by itself.
  absl::Time sleeping_until_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  PoolSnapshot last_round_ ABSL_GUARDED_BY(mutex_);

  std::thread thread_;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_HEALTH_MONITOR_H_
