// Sends grpc core's own log lines through spdlog, so that they share the
// process's format (text or JSON) and level.
#ifndef POOLSIDE_PROXY_GRPC_LOGGING_H_
#define POOLSIDE_PROXY_GRPC_LOGGING_H_

namespace poolside {

// Call once, after spdlog is configured and before grpc is used.
void RouteGrpcLogsToSpdlog();

}  // namespace poolside

#endif  // POOLSIDE_PROXY_GRPC_LOGGING_H_
