// Turns the upstream target into the set of backend addresses the pool
// spreads its slots over. Injected into the pool's AddressTracker so that
// tests can substitute their own answers.
#ifndef POOLSIDE_POOL_RESOLVER_H_
#define POOLSIDE_POOL_RESOLVER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pool/upstream_target.h"

namespace poolside {

class Resolver {
 public:
  virtual ~Resolver() = default;
  // The target's addresses now, sorted and without duplicates; an error (or
  // an empty answer, reported as NotFound) when there are none. Blocks for at
  // most the resolver's timeout. Not thread-safe: one caller at a time.
  virtual absl::StatusOr<std::vector<BackendAddress>> Resolve() = 0;
};

// Asks DNS (c-ares: the DNS server the target names, or resolv.conf's and
// /etc/hosts) for the A and AAAA records of `target.host`; or, for a target
// whose addresses are literal, returns them. Each lookup gives up after
// `timeout`.
absl::StatusOr<std::unique_ptr<Resolver>> NewResolver(const UpstreamTarget& target,
                                                      absl::Duration timeout);

}  // namespace poolside

#endif  // POOLSIDE_POOL_RESOLVER_H_
