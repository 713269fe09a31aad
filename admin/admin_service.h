// poolside.admin.v1.PoolAdmin: the pool's health and counters over gRPC, on
// the listen port beside the forwarder. Reads the pool's snapshot only.
//
// Thread-safety: thread-safe (grpc calls it from its callback threads).
#ifndef POOLSIDE_ADMIN_ADMIN_SERVICE_H_
#define POOLSIDE_ADMIN_ADMIN_SERVICE_H_

#include "pool/channel_pool.h"
#include "poolside/admin/v1/admin.grpc.pb.h"

namespace poolside {

class AdminService final : public admin::v1::PoolAdmin::CallbackService {
 public:
  // `pool` must outlive the service.
  explicit AdminService(const ChannelPool& pool) : pool_(pool) {}

  grpc::ServerUnaryReactor* HealthCheck(grpc::CallbackServerContext* context,
                                        const admin::v1::HealthCheckRequest* request,
                                        admin::v1::HealthCheckResponse* response) override;

  grpc::ServerUnaryReactor* GetConnectionPoolMetrics(
      grpc::CallbackServerContext* context,
      const admin::v1::GetConnectionPoolMetricsRequest* request,
      admin::v1::GetConnectionPoolMetricsResponse* response) override;

 private:
  const ChannelPool& pool_;
};

// The HealthCheck answer for a snapshot, taken at `now`.
admin::v1::HealthCheckResponse DescribeHealth(const PoolSnapshot& snapshot, absl::Time now);

// The GetConnectionPoolMetrics answer for a snapshot.
admin::v1::GetConnectionPoolMetricsResponse DescribeMetrics(const PoolSnapshot& snapshot);

}  // namespace poolside

#endif  // POOLSIDE_ADMIN_ADMIN_SERVICE_H_
