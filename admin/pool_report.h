// One description of the pool, built once per admin request from one
// snapshot: `/pool`, `/readyz`, PoolAdmin's HealthCheck and
// GetConnectionPoolMetrics all render this, so they never disagree about what
// the pool looked like at that moment.
#ifndef POOLSIDE_ADMIN_POOL_REPORT_H_
#define POOLSIDE_ADMIN_POOL_REPORT_H_

#include <string>

#include "pool/pool_snapshot.h"

namespace poolside {

struct PoolReport {
  PoolSnapshot snapshot;
  PoolHealth health = PoolHealth::kUnhealthy;
  // "2 of 3 upstream connections healthy".
  std::string counts;
  // "; channel 1 TRANSIENT_FAILURE (10.0.0.2:50051)" for each connection in
  // rotation that is not healthy; empty when all are.
  std::string unhealthy_channels;
};

PoolReport BuildPoolReport(PoolSnapshot snapshot);

}  // namespace poolside

#endif  // POOLSIDE_ADMIN_POOL_REPORT_H_
