// poolside.admin.v1.PoolAdmin: the pool's health and counters over gRPC, on
// the listen port beside the forwarder. Reads the pool's snapshot only.
//
// Thread-safety: thread-safe (grpc calls it from its callback threads).
#ifndef POOLSIDE_ADMIN_ADMIN_SERVICE_H_
#define POOLSIDE_ADMIN_ADMIN_SERVICE_H_

#include "pool/channel_pool.h"
#include "pool/health_monitor.h"
#include "poolside/admin/v1/admin.grpc.pb.h"

namespace poolside {

class AdminService final : public admin::v1::PoolAdmin::CallbackService {
 public:
  // `pool` and `monitor` must outlive the service.
  AdminService(const ChannelPool& pool, HealthMonitor& monitor) : pool_(pool), monitor_(monitor) {}

  grpc::ServerUnaryReactor* HealthCheck(grpc::CallbackServerContext* context,
                                        const admin::v1::HealthCheckRequest* request,
                                        admin::v1::HealthCheckResponse* response) override;

  grpc::ServerUnaryReactor* GetConnectionPoolMetrics(
      grpc::CallbackServerContext* context,
      const admin::v1::GetConnectionPoolMetricsRequest* request,
      admin::v1::GetConnectionPoolMetricsResponse* response) override;

  // Answers when the health monitor has run a round (rate-limited there).
  grpc::ServerUnaryReactor* ForceHealthCheck(
      grpc::CallbackServerContext* context, const admin::v1::ForceHealthCheckRequest* request,
      admin::v1::ForceHealthCheckResponse* response) override;

 private:
  const ChannelPool& pool_;
  HealthMonitor& monitor_;
};

// The HealthCheck answer for a snapshot, taken at `now`.
admin::v1::HealthCheckResponse DescribeHealth(const PoolSnapshot& snapshot, absl::Time now);

// The GetConnectionPoolMetrics answer for a snapshot.
admin::v1::GetConnectionPoolMetricsResponse DescribeMetrics(const PoolSnapshot& snapshot);

}  // namespace poolside

#endif  // POOLSIDE_ADMIN_ADMIN_SERVICE_H_
