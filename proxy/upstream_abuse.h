// Recognises, from the status grpc 1.51 gives an upstream call, that the
// upstream broke an HTTP/2 rule grpc's client codec enforces itself, so that
// poolside_hostile_peer_total{side="upstream"} counts it.
//
// grpc already defends the upstream side: a header block over
// GRPC_ARG_MAX_METADATA_SIZE (an endless CONTINUATION flood included) fails
// the call with RESOURCE_EXHAUSTED and the connection is closed soon after; a
// frame the codec rejects closes the connection, failing its calls with
// UNKNOWN "Stream removed". The pool's slot then reconnects like any broken
// connection. grpc reports neither in a structured way, so its wording is
// matched (tests/hostile/hostile_upstream_test.cc pins it).
#ifndef POOLSIDE_PROXY_UPSTREAM_ABUSE_H_
#define POOLSIDE_PROXY_UPSTREAM_ABUSE_H_

#include <grpcpp/support/status.h>

#include "metrics/hostile_peer.h"

namespace poolside {

// The rule an upstream call's `status` says its upstream broke, or kNone.
// REQUIRES: `status` came from grpc's client side, not an app's cancel.
HostileReason UpstreamAbuseReason(const grpc::Status& status);

}  // namespace poolside

#endif  // POOLSIDE_PROXY_UPSTREAM_ABUSE_H_
