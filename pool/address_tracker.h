// Follows the upstream's backend addresses: resolves the target every refresh
// interval, and at once (at most once a second) when a pooled connection is
// lost, and moves the pool onto each new address set (AddressFollower's
// Rebalance, the grpc++ pool's or the frame forwarder's: connect new first,
// then drain the surplus). When a lookup fails or finds
// nothing, the pool keeps the last good set; that is logged once per outage
// and counted.
//
// Ownership and threading: owns its Resolver; the pool (the follower) must
// outlive it. Runs
// on its own thread; RequestResolve() is thread-safe.
#ifndef POOLSIDE_POOL_ADDRESS_TRACKER_H_
#define POOLSIDE_POOL_ADDRESS_TRACKER_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pool/address_follower.h"
#include "pool/resolver.h"
#include "pool/upstream_target.h"

namespace poolside {

struct AddressTrackerOptions {
  // GRPC_UPSTREAM_TARGET, for the logs.
  std::string target;
  // GRPC_DNS_REFRESH_SECS.
  absl::Duration refresh_interval = absl::Seconds(10);
  // Lookups a lost connection triggers are at least this far apart.
  absl::Duration min_resolve_spacing = absl::Seconds(1);
  // While the pool rebalances, how often it looks at its new connections.
  absl::Duration rebalance_poll = absl::Milliseconds(50);
  // How long a new connection may take to become READY before it is logged
  // (once), and a surplus one to finish its calls.
  RebalanceTiming rebalance;
};

class AddressTracker {
 public:
  AddressTracker(AddressFollower& pool, std::unique_ptr<Resolver> resolver,
                 AddressTrackerOptions options);
  ~AddressTracker();
  AddressTracker(const AddressTracker&) = delete;
  AddressTracker& operator=(const AddressTracker&) = delete;

  // Resolves once (waiting at most the resolver's timeout) and returns the
  // addresses the pool should start with: the target's addresses, or, if
  // that lookup failed, nothing (the pool then starts on the target itself).
  // Call before ChannelPool::Start().
  std::vector<BackendAddress> ResolveInitial();
  // Starts following. REQUIRES: the pool has started.
  void Start();
  void Shutdown();

  // Resolves soon (now, unless a lookup ran within min_resolve_spacing).
  void RequestResolve();

 private:
  void Loop();
  // One lookup; updates current_ and the pool's counters, logs changes.
  void ResolveOnce();

  // Constant after construction.
  AddressFollower& pool_;
  const std::unique_ptr<Resolver> resolver_;
  const AddressTrackerOptions options_;

  // Confined to the tracker thread once Start() returns.
  std::vector<BackendAddress> current_;
  bool failing_ = false;
  bool settling_ = false;

  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool resolve_requested_ ABSL_GUARDED_BY(mutex_) = false;

  std::thread thread_;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_ADDRESS_TRACKER_H_
