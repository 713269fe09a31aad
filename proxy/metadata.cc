#include "proxy/metadata.h"

#include <grpc/grpc.h>
#include <grpc/slice.h>

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace poolside {
namespace {

// Pseudo-headers, HTTP/1 hop-by-hop headers and gRPC's reserved keys: grpc
// core sets, consumes or rewrites them on each hop (status and details travel
// in grpc::Status), so copying them would duplicate or contradict what core
// sends.
bool IsWrittenByGrpcCore(absl::string_view key) {
  static constexpr absl::string_view kWrittenByCore[] = {"user-agent",
                                                         "host",
                                                         "connection",
                                                         "te",
                                                         "content-type",
                                                         "content-length",
                                                         "keep-alive",
                                                         "proxy-connection",
                                                         "transfer-encoding",
                                                         "upgrade",
                                                         "grpc-timeout",
                                                         "grpc-encoding",
                                                         "grpc-accept-encoding",
                                                         "accept-encoding",
                                                         "grpc-status",
                                                         "grpc-message",
                                                         "grpc-status-details-bin"};
  if (!key.empty() && key.front() == ':') return true;
  for (absl::string_view written : kWrittenByCore) {
    if (key == written) return true;
  }
  return false;
}

grpc_slice BorrowSlice(grpc::string_ref bytes) {
  return grpc_slice_from_static_buffer(bytes.data(), bytes.size());
}

// Empty when the pair may be forwarded, else what is wrong with it.
std::string IllegalReason(grpc::string_ref key, grpc::string_ref value) {
  const grpc_slice key_slice = BorrowSlice(key);
  if (!grpc_header_key_is_legal(key_slice)) {
    return absl::StrCat("metadata key '", absl::CEscape(absl::string_view(key.data(), key.size())),
                        "' is not a legal gRPC metadata key");
  }
  if (!grpc_is_binary_header(key_slice) && !grpc_header_nonbin_value_is_legal(BorrowSlice(value))) {
    return absl::StrCat("metadata value for key '", absl::string_view(key.data(), key.size()),
                        "' is not printable ASCII (binary values need a -bin key)");
  }
  return "";
}

template <typename AddFn>
std::string CopyLegal(const MetadataMap& from, AddFn add) {
  for (const auto& [key, value] : from) {
    const absl::string_view key_view(key.data(), key.size());
    if (IsWrittenByGrpcCore(key_view)) continue;
    std::string reason = IllegalReason(key, value);
    if (!reason.empty()) return reason;
    add(std::string(key_view), std::string(value.data(), value.size()));
  }
  return "";
}

// What an upstream with grpc's default limits accepts (8 KiB of header
// list, counted as HPACK does: name + value + 32 per entry), less room for
// the headers grpc adds itself (:path, :authority, te, user-agent, ...).
// Forwarding more would make the upstream refuse the headers and close the
// whole pooled connection, failing every other app's calls on it.
constexpr size_t kMaxForwardedMetadataBytes = 7 * 1024;

size_t MetadataBytes(const MetadataMap& metadata) {
  size_t bytes = 0;
  for (const auto& [key, value] : metadata) bytes += key.size() + value.size() + 32;
  return bytes;
}

}  // namespace

absl::Status CopyRequestMetadata(const MetadataMap& from, grpc::ClientContext& to) {
  if (const size_t bytes = MetadataBytes(from); bytes > kMaxForwardedMetadataBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("poolside: request metadata of ", bytes, " bytes exceeds the ",
                     kMaxForwardedMetadataBytes, " bytes an upstream accepts"));
  }
  std::string reason =
      CopyLegal(from, [&to](std::string key, std::string value) { to.AddMetadata(key, value); });
  if (reason.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("poolside: request ", reason));
}

absl::Status CopyInitialResponseMetadata(const MetadataMap& from, grpc::ServerContextBase& to) {
  std::string reason = CopyLegal(
      from, [&to](std::string key, std::string value) { to.AddInitialMetadata(key, value); });
  if (reason.empty()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("poolside: upstream response ", reason));
}

absl::Status CopyTrailingResponseMetadata(const MetadataMap& from, grpc::ServerContextBase& to) {
  std::string reason = CopyLegal(
      from, [&to](std::string key, std::string value) { to.AddTrailingMetadata(key, value); });
  if (reason.empty()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("poolside: upstream trailer ", reason));
}

}  // namespace poolside
