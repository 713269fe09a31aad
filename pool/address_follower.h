// What an AddressTracker moves onto the upstream's addresses as DNS changes
// them: the grpc++ forwarder's ChannelPool, or the frame forwarder's
// connections (proxy/frame_forwarder.h).
#ifndef POOLSIDE_POOL_ADDRESS_FOLLOWER_H_
#define POOLSIDE_POOL_ADDRESS_FOLLOWER_H_

#include <vector>

#include "absl/time/time.h"
#include "pool/upstream_target.h"

namespace poolside {

// How Rebalance treats the connections it moves: a new one not READY after
// connect_timeout is logged once (it keeps trying), a draining one still
// running calls after drain_grace is cut.
struct RebalanceTiming {
  // GRPC_CONNECTION_TIMEOUT_SECS.
  absl::Duration connect_timeout = absl::Seconds(30);
  // GRPC_SHUTDOWN_GRACE_SECS.
  absl::Duration drain_grace = absl::Seconds(25);
};

class AddressFollower {
 public:
  virtual ~AddressFollower() = default;
  // Spreads the connections over `backends` (never empty): new ones first,
  // then the ones to addresses no longer listed leave once their calls are
  // done. Returns true while that has not settled (call again soon).
  virtual bool Rebalance(const std::vector<BackendAddress>& backends, RebalanceTiming timing) = 0;
  // A lookup failed (the last good set stays), or found a set that differs
  // from the last: for /pool and the gauges.
  virtual void RecordResolution(bool failed, bool set_changed) = 0;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_ADDRESS_FOLLOWER_H_
