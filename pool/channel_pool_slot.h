// One position of a ChannelPool, shared by the pool's two halves:
// channel_pool.cc (leasing, picking, watching, ejection) and
// channel_pool_slots.cc (opening, freeing and rebalancing slots, sizing, the
// snapshot). Private to pool/.
#ifndef POOLSIDE_POOL_CHANNEL_POOL_SLOT_H_
#define POOLSIDE_POOL_CHANNEL_POOL_SLOT_H_

#include <grpc/grpc.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "pool/channel_pool.h"

namespace poolside {

// One pool position. The channel in it may be replaced; the counters belong to
// the position, so calls still running on a replaced channel count here.
struct alignas(64) ChannelPool::Slot {
  int index = 0;
  std::atomic<SlotPhase> phase{SlotPhase::kFree};
  std::atomic<int64_t> outstanding{0};
  std::atomic<grpc_connectivity_state> state{GRPC_CHANNEL_IDLE};
  // Set by the health monitor; connectivity is tracked separately in state.
  std::atomic<bool> probe_healthy{true};
  std::atomic<uint64_t> calls_started{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> consecutive_unavailable{0};
  // Out of rotation until ejected_until (unix ns), then on probation until a
  // health check passes.
  std::atomic<bool> ejected{false};
  std::atomic<int64_t> ejected_until_unix_nanos{0};
  // Accessed only through std::atomic_load / std::atomic_store; null when free.
  std::shared_ptr<PooledChannel> channel;
  // Protected by the pool's structure_mutex_.
  BackendAddress backend;
  absl::Time phase_since;
  // A connecting slot past the connect timeout has been logged.
  bool slow_connect_logged = false;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_CHANNEL_POOL_SLOT_H_
