#include "pool/pool_snapshot.h"

namespace poolside {

int PoolSnapshot::ActiveCount() const {
  int active = 0;
  for (const ChannelSnapshot& channel : channels) {
    active += channel.phase == SlotPhase::kActive ? 1 : 0;
  }
  return active;
}

int PoolSnapshot::HealthyCount() const {
  int healthy = 0;
  for (const ChannelSnapshot& channel : channels) {
    healthy += channel.phase == SlotPhase::kActive && channel.healthy ? 1 : 0;
  }
  return healthy;
}

int PoolSnapshot::AvailableCount() const {
  int available = 0;
  for (const ChannelSnapshot& channel : channels) {
    if (channel.phase == SlotPhase::kActive && channel.healthy &&
        channel.outstanding_calls < max_streams_per_connection) {
      ++available;
    }
  }
  return available;
}

PoolHealth PoolHealthOf(const PoolSnapshot& snapshot) {
  const int healthy = snapshot.HealthyCount();
  if (healthy == 0) return PoolHealth::kUnhealthy;
  if (healthy < snapshot.ActiveCount()) return PoolHealth::kDegraded;
  return PoolHealth::kHealthy;
}

const char* SlotPhaseName(SlotPhase phase) {
  switch (phase) {
    case SlotPhase::kFree:
      return "free";
    case SlotPhase::kConnecting:
      return "connecting";
    case SlotPhase::kActive:
      return "active";
    case SlotPhase::kDraining:
      return "draining";
  }
  return "free";
}

const char* PoolHealthName(PoolHealth health) {
  switch (health) {
    case PoolHealth::kHealthy:
      return "healthy";
    case PoolHealth::kDegraded:
      return "degraded";
    case PoolHealth::kUnhealthy:
      return "unhealthy";
  }
  return "unhealthy";
}

const char* ConnectivityStateName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE:
      return "IDLE";
    case GRPC_CHANNEL_CONNECTING:
      return "CONNECTING";
    case GRPC_CHANNEL_READY:
      return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN:
      return "SHUTDOWN";
  }
  return "UNKNOWN";
}

}  // namespace poolside
