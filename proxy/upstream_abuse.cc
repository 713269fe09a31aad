#include "proxy/upstream_abuse.h"

#include "absl/strings/match.h"

namespace poolside {

HostileReason UpstreamAbuseReason(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      // "received initial metadata size exceeds limit", or trailing.
      if (absl::StartsWith(status.error_message(), "received ") &&
          absl::EndsWith(status.error_message(), "metadata size exceeds limit")) {
        return HostileReason::kHeaderBlockTooLarge;
      }
      return HostileReason::kNone;
    case grpc::StatusCode::UNKNOWN:
      // A connection error with no status of its own: the codec refused a
      // frame. An upstream that merely goes away ends calls UNAVAILABLE.
      return status.error_message() == "Stream removed" ? HostileReason::kMalformed
                                                        : HostileReason::kNone;
    default:
      return HostileReason::kNone;
  }
}

}  // namespace poolside
