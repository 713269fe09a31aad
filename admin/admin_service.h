// poolside.admin.v1.PoolAdmin: the pool's health and counters over gRPC, on
// the listen port beside the forwarder. Reads the pool's snapshot only.
//
// It is a LocalService, not a registered grpc++ service: the forwarder's
// completion-queue threads answer it from raw request bytes, so poolside runs
// no callback-API threads (they would poll the forwarded connections too).
//
// Thread-safety: thread-safe; Answer() runs on the forwarding threads, and
// ForceHealthCheck replies from the health monitor's thread.
#ifndef POOLSIDE_ADMIN_ADMIN_SERVICE_H_
#define POOLSIDE_ADMIN_ADMIN_SERVICE_H_

#include "absl/strings/string_view.h"
#include "admin/pool_report.h"
#include "pool/channel_pool.h"
#include "pool/health_monitor.h"
#include "poolside/admin/v1/admin.pb.h"
#include "proxy/local_service.h"

namespace poolside {

class AdminService final : public LocalService {
 public:
  // `pool` and `monitor` must outlive the service.
  AdminService(const ChannelPool& pool, HealthMonitor& monitor) : pool_(pool), monitor_(monitor) {}

  // Every method of poolside.admin.v1.PoolAdmin, unknown ones included
  // (they fail with UNIMPLEMENTED rather than reach the upstream).
  bool Serves(absl::string_view method) const override;

  // HealthCheck and GetConnectionPoolMetrics reply at once; ForceHealthCheck
  // when the health monitor has run a round (rate-limited there).
  void Answer(absl::string_view method, const grpc::ByteBuffer& request, Reply reply) override;

 private:
  const ChannelPool& pool_;
  HealthMonitor& monitor_;
};

// The HealthCheck answer for a report, taken at `now`.
admin::v1::HealthCheckResponse DescribeHealth(const PoolReport& report, absl::Time now);

// The GetConnectionPoolMetrics answer for a report.
admin::v1::GetConnectionPoolMetricsResponse DescribeMetrics(const PoolReport& report);

}  // namespace poolside

#endif  // POOLSIDE_ADMIN_ADMIN_SERVICE_H_
