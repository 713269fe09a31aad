#include "admin/admin_service.h"

#include <grpcpp/impl/codegen/proto_buffer_writer.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace poolside {

admin::v1::HealthCheckResponse DescribeHealth(const PoolReport& report, absl::Time now) {
  admin::v1::HealthCheckResponse response;
  response.set_status(PoolHealthName(report.health));
  response.set_message(report.counts + report.unhealthy_channels);
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

admin::v1::GetConnectionPoolMetricsResponse DescribeMetrics(const PoolReport& report) {
  const PoolSnapshot& snapshot = report.snapshot;
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
  response.set_calls_ended_connection_lost(snapshot.calls_ended_connection_lost);
  response.set_calls_ended_drain_grace(snapshot.calls_ended_drain_grace);
  response.set_target_connections(snapshot.size);
  response.set_min_connections(snapshot.min_size);
  response.set_max_connections(snapshot.max_size);
  response.set_recommended_connections(snapshot.recommended_size);
  response.set_grow_events(snapshot.grow_events);
  response.set_shrink_events(snapshot.shrink_events);
  response.set_calls_over_stream_limit(snapshot.calls_over_stream_limit);
  response.set_calls_waiting_for_stream_quota(
      static_cast<uint64_t>(snapshot.calls_waiting_for_stream_quota));
  return response;
}

namespace {

constexpr absl::string_view kServicePrefix = "/poolside.admin.v1.PoolAdmin/";

// Parses `request` as a `Request`; a reply with INTERNAL if it is not one, as
// a generated grpc++ service answers.
template <typename Request>
bool ParseRequest(const grpc::ByteBuffer& request, LocalService::Reply& reply) {
  Request parsed;
  grpc::ByteBuffer copy(request);
  const grpc::Status status = grpc::SerializationTraits<Request>::Deserialize(&copy, &parsed);
  if (status.ok()) return true;
  reply(grpc::Status(grpc::StatusCode::INTERNAL,
                     absl::StrCat("poolside: cannot parse the ", Request::descriptor()->full_name(),
                                  ": ", status.error_message())),
        grpc::ByteBuffer());
  return false;
}

void ReplyWith(const google::protobuf::Message& response, LocalService::Reply& reply) {
  grpc::ByteBuffer bytes;
  bool own_buffer = false;
  grpc::Status status = grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(
      response, &bytes, &own_buffer);
  reply(std::move(status), std::move(bytes));
}

}  // namespace

bool AdminService::Serves(absl::string_view method) const {
  return absl::StartsWith(method, kServicePrefix);
}

void AdminService::Answer(absl::string_view method, const grpc::ByteBuffer& request, Reply reply) {
  const absl::string_view name = method.substr(kServicePrefix.size());
  if (name == "HealthCheck") {
    if (!ParseRequest<admin::v1::HealthCheckRequest>(request, reply)) return;
    return ReplyWith(DescribeHealth(BuildPoolReport(pool_.Snapshot()), absl::Now()), reply);
  }
  if (name == "GetConnectionPoolMetrics") {
    if (!ParseRequest<admin::v1::GetConnectionPoolMetricsRequest>(request, reply)) return;
    return ReplyWith(DescribeMetrics(BuildPoolReport(pool_.Snapshot())), reply);
  }
  if (name == "ForceHealthCheck") {
    if (!ParseRequest<admin::v1::ForceHealthCheckRequest>(request, reply)) return;
    monitor_.RequestRound([reply = std::move(reply)](const PoolSnapshot& snapshot) mutable {
      const admin::v1::HealthCheckResponse health =
          DescribeHealth(BuildPoolReport(snapshot), absl::Now());
      admin::v1::ForceHealthCheckResponse response;
      response.set_status(health.status());
      response.set_message(health.message());
      response.set_timestamp(health.timestamp());
      DescribeChannels(snapshot, response.mutable_channels());
      ReplyWith(response, reply);
    });
    return;
  }
  reply(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, absl::StrCat("poolside: no method ", method)),
        grpc::ByteBuffer());
}

}  // namespace poolside
