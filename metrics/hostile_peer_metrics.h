// poolside_hostile_peer_total{side,reason}: peers poolside cut off, by side
// (app, upstream) and rule broken. Every series exists from the start (at 0),
// so that alerts on increase() see the first one.
//
// Ownership and threading: PoolsideMetrics owns one. Thread-safe (atomic counters).
#ifndef POOLSIDE_METRICS_HOSTILE_PEER_METRICS_H_
#define POOLSIDE_METRICS_HOSTILE_PEER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <array>

#include "metrics/hostile_peer.h"

namespace poolside {

class HostilePeerMetrics : public HostilePeerCounter {
 public:
  explicit HostilePeerMetrics(prometheus::Registry& registry);
  void Count(PeerSide side, HostileReason reason) override;

 private:
  // Constant after construction; kNone's entries stay null.
  std::array<std::array<prometheus::Counter*, kHostileReasonCount>, kPeerSideCount> counters_{};
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_HOSTILE_PEER_METRICS_H_
