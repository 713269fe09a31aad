// A point-in-time copy of the pool's state, for the admin service, logs and
// metrics. Plain data; compute health from it with PoolHealthOf().
#ifndef POOLSIDE_POOL_POOL_SNAPSHOT_H_
#define POOLSIDE_POOL_POOL_SNAPSHOT_H_

#include <grpc/grpc.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside {

// Where a pool slot is in its life. Only kActive slots take new calls and
// count towards the pool's size and health.
enum class SlotPhase : uint8_t {
  // No channel.
  kFree,
  // A new connection to a backend the pool moves towards; joins rotation
  // once READY (connect new first, drain the surplus after).
  kConnecting,
  // In rotation.
  kActive,
  // Out of rotation; its calls in flight finish, then it is freed.
  kDraining,
};

struct ChannelSnapshot {
  int index = 0;
  SlotPhase phase = SlotPhase::kActive;
  // The backend this slot connects to ("10.0.0.7:50051"; the whole target
  // while poolside has not resolved it).
  std::string backend;
  grpc_connectivity_state state = GRPC_CHANNEL_IDLE;
  // Connectivity READY, passing health checks and not ejected.
  bool healthy = false;
  // Out of rotation after consecutive UNAVAILABLE calls, until probed.
  bool ejected = false;
  int64_t outstanding_calls = 0;
  uint64_t calls_started = 0;
  // Failed connection attempts plus calls that failed with UNAVAILABLE.
  uint64_t errors = 0;
  absl::Duration age;
};

// One backend address of the current set, and the pool's slots on it.
struct BackendSnapshot {
  std::string address;
  int active_connections = 0;
  int connecting = 0;
  int draining = 0;
  // Calls started on this backend since it joined the set.
  uint64_t calls_started = 0;
};

struct PoolSnapshot {
  // Every slot that has a channel (active, connecting or draining).
  std::vector<ChannelSnapshot> channels;
  // The backend addresses the pool spreads over, sorted.
  std::vector<BackendSnapshot> backends;
  // How many slots are active once settled: the pool's current target,
  // between min_size and max_size (equal for a fixed pool).
  int size = 0;
  int min_size = 0;
  int max_size = 0;
  // The size the measured demand needs (pool/pool_sizer.h), whether or not
  // the pool may take it; and the times a sizing pool grew or shrank.
  int recommended_size = 0;
  uint64_t grow_events = 0;
  uint64_t shrink_events = 0;
  // Calls started on a connection already at max_streams_per_connection
  // (they waited in the transport for stream quota), and calls over that
  // limit right now, summed over connections.
  uint64_t calls_over_stream_limit = 0;
  int64_t calls_waiting_for_stream_quota = 0;
  // Times the resolved address set changed, and lookups that failed (the
  // last good set was kept).
  uint64_t address_set_changes = 0;
  uint64_t resolution_failures = 0;
  // Whether the last lookup failed (the pool runs on the last good set).
  bool resolution_failing = false;
  // Calls poolside ended with UNAVAILABLE: never answered while their
  // connection stayed down for the connection timeout, and still running on
  // a drained connection when its grace was up.
  uint64_t calls_ended_connection_lost = 0;
  uint64_t calls_ended_drain_grace = 0;
  int max_streams_per_connection = 100;
  uint64_t connection_errors = 0;
  // Channels created since start, replacements included.
  uint64_t connections_created = 0;
  uint64_t outlier_ejections = 0;
  uint64_t health_check_failures = 0;
  // absl::InfinitePast() before the first check.
  absl::Time last_health_check = absl::InfinitePast();

  // Channels in rotation (phase kActive).
  int ActiveCount() const;
  // Active channels that are healthy.
  int HealthyCount() const;
  // Healthy channels with room for more calls.
  int AvailableCount() const;
};

enum class PoolHealth { kHealthy, kDegraded, kUnhealthy };

// healthy: every active channel healthy; degraded: some unhealthy, at least
// one healthy; unhealthy: none healthy.
PoolHealth PoolHealthOf(const PoolSnapshot& snapshot);
const char* SlotPhaseName(SlotPhase phase);
const char* PoolHealthName(PoolHealth health);
const char* ConnectivityStateName(grpc_connectivity_state state);

}  // namespace poolside

#endif  // POOLSIDE_POOL_POOL_SNAPSHOT_H_
