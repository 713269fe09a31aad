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

struct ChannelSnapshot {
  int index = 0;
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

struct PoolSnapshot {
  std::vector<ChannelSnapshot> channels;
  int max_streams_per_connection = 100;
  uint64_t connection_errors = 0;
  // Channels created since start, replacements included.
  uint64_t connections_created = 0;
  uint64_t outlier_ejections = 0;
  uint64_t health_check_failures = 0;
  // absl::InfinitePast() before the first check.
  absl::Time last_health_check = absl::InfinitePast();

  int HealthyCount() const;
  // Healthy channels with room for more calls.
  int AvailableCount() const;
};

enum class PoolHealth { kHealthy, kDegraded, kUnhealthy };

// healthy: every channel healthy; degraded: some unhealthy, at least one
// healthy; unhealthy: none healthy.
PoolHealth PoolHealthOf(const PoolSnapshot& snapshot);
const char* PoolHealthName(PoolHealth health);
const char* ConnectivityStateName(grpc_connectivity_state state);

}  // namespace poolside

#endif  // POOLSIDE_POOL_POOL_SNAPSHOT_H_
