#include "admin/admin_service.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace poolside {

admin::v1::HealthCheckResponse DescribeHealth(const PoolSnapshot& snapshot, absl::Time now) {
  admin::v1::HealthCheckResponse response;
  const PoolHealth health = PoolHealthOf(snapshot);
  response.set_status(PoolHealthName(health));
  std::string message = absl::StrCat(snapshot.HealthyCount(), " of ", snapshot.ActiveCount(),
                                     " upstream connections healthy");
  for (const ChannelSnapshot& channel : snapshot.channels) {
    if (channel.phase == SlotPhase::kActive && !channel.healthy) {
      absl::StrAppend(&message, "; channel ", channel.index, " ",
                      ConnectivityStateName(channel.state),
                      channel.backend.empty() ? "" : " (" + channel.backend + ")");
    }
  }
  response.set_message(message);
  response.set_timestamp(absl::ToUnixSeconds(now));
  return response;
}

namespace {

void DescribeChannels(const PoolSnapshot& snapshot,
                      google::protobuf::RepeatedPtrField<admin::v1::ChannelMetrics>* channels) {
  for (const ChannelSnapshot& channel : snapshot.channels) {
    admin::v1::ChannelMetrics* detail = channels->Add();
    detail->set_index(channel.index);
    detail->set_state(ConnectivityStateName(channel.state));
    detail->set_healthy(channel.healthy);
    detail->set_outstanding_calls(channel.outstanding_calls);
    detail->set_calls_started(channel.calls_started);
    detail->set_errors(channel.errors);
    detail->set_age_seconds(absl::ToDoubleSeconds(channel.age));
    detail->set_backend(channel.backend);
    detail->set_phase(SlotPhaseName(channel.phase));
  }
}

void DescribeBackends(const PoolSnapshot& snapshot,
                      google::protobuf::RepeatedPtrField<admin::v1::BackendMetrics>* backends) {
  for (const BackendSnapshot& backend : snapshot.backends) {
    admin::v1::BackendMetrics* detail = backends->Add();
    detail->set_address(backend.address);
    detail->set_active_connections(backend.active_connections);
    detail->set_connecting_connections(backend.connecting);
    detail->set_draining_connections(backend.draining);
    detail->set_calls_started(backend.calls_started);
  }
}

}  // namespace

admin::v1::GetConnectionPoolMetricsResponse DescribeMetrics(const PoolSnapshot& snapshot) {
  admin::v1::GetConnectionPoolMetricsResponse response;
  response.set_total_connections(snapshot.ActiveCount());
  response.set_active_connections(snapshot.HealthyCount());
  response.set_available_connections(snapshot.AvailableCount());
  response.set_connection_errors(snapshot.connection_errors);
  response.set_health_check_failures(snapshot.health_check_failures);
  response.set_last_health_check_timestamp(snapshot.last_health_check == absl::InfinitePast()
                                               ? 0
                                               : absl::ToUnixSeconds(snapshot.last_health_check));
  DescribeChannels(snapshot, response.mutable_channels());
  DescribeBackends(snapshot, response.mutable_backends());
  response.set_address_set_changes(snapshot.address_set_changes);
  response.set_resolution_failures(snapshot.resolution_failures);
  response.set_resolution_failing(snapshot.resolution_failing);
  return response;
}

grpc::ServerUnaryReactor* AdminService::HealthCheck(grpc::CallbackServerContext* context,
                                                    const admin::v1::HealthCheckRequest*,
                                                    admin::v1::HealthCheckResponse* response) {
  *response = DescribeHealth(pool_.Snapshot(), absl::Now());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetConnectionPoolMetrics(
    grpc::CallbackServerContext* context, const admin::v1::GetConnectionPoolMetricsRequest*,
    admin::v1::GetConnectionPoolMetricsResponse* response) {
  *response = DescribeMetrics(pool_.Snapshot());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::ForceHealthCheck(
    grpc::CallbackServerContext* context, const admin::v1::ForceHealthCheckRequest*,
    admin::v1::ForceHealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  monitor_.RequestRound([reactor, response](const PoolSnapshot& snapshot) {
    const admin::v1::HealthCheckResponse health = DescribeHealth(snapshot, absl::Now());
    response->set_status(health.status());
    response->set_message(health.message());
    response->set_timestamp(health.timestamp());
    DescribeChannels(snapshot, response->mutable_channels());
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace poolside
