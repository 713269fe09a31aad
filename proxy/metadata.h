// Copies gRPC metadata between the app's call and the upstream call, leaving
// out what grpc core writes itself, and refusing what grpc core would abort
// the process on: a key HTTP/2 allows but gRPC forbids, or a non-ASCII value
// in a key that is not -bin.
#ifndef POOLSIDE_PROXY_METADATA_H_
#define POOLSIDE_PROXY_METADATA_H_

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/string_ref.h>

#include <map>

#include "absl/status/status.h"

namespace poolside {

using MetadataMap = std::multimap<grpc::string_ref, grpc::string_ref>;

// App request headers -> upstream call. On an illegal key or value returns
// InvalidArgument naming it; `to` may then hold part of the metadata.
absl::Status CopyRequestMetadata(const MetadataMap& from, grpc::ClientContext& to);

// Upstream response headers -> app call. Returns Internal on an illegal key or
// value (the upstream is at fault).
absl::Status CopyInitialResponseMetadata(const MetadataMap& from, grpc::ServerContextBase& to);

// Upstream trailers -> app call. Leaves out grpc-status, grpc-message and
// grpc-status-details-bin: they travel inside the grpc::Status.
absl::Status CopyTrailingResponseMetadata(const MetadataMap& from, grpc::ServerContextBase& to);

}  // namespace poolside

#endif  // POOLSIDE_PROXY_METADATA_H_
