// Why poolside cut a peer off, and on which side: the labels of
// poolside_hostile_peer_total{side,reason}. Both sets are closed, so the
// series count is bounded (sides x reasons).
#ifndef POOLSIDE_METRICS_HOSTILE_PEER_H_
#define POOLSIDE_METRICS_HOSTILE_PEER_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace poolside {

enum class HostileReason {
  kNone,
  kHeaderBlockTooLarge,
  kRapidReset,
  kPingFlood,
  kSettingsFlood,
  kMalformed,
  // Too many streams opened before acknowledging poolside's SETTINGS.
  kSettingsNotAcked,
  // More app connections at once than GRPC_MAX_APP_CONNECTIONS.
  kTooManyConnections,
};
inline constexpr size_t kHostileReasonCount = 8;

enum class PeerSide { kApp, kUpstream };
inline constexpr size_t kPeerSideCount = 2;

// The label value; "none" for kNone (never counted).
absl::string_view HostileReasonName(HostileReason reason);
absl::string_view PeerSideName(PeerSide side);

// Counts hostile peers. Thread-safe. Implemented by PoolsideMetrics; tests may count
// for themselves.
class HostilePeerCounter {
 public:
  virtual ~HostilePeerCounter() = default;
  virtual void Count(PeerSide side, HostileReason reason) = 0;
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_HOSTILE_PEER_H_
