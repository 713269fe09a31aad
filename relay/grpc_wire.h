// What the frame relay reads and writes of gRPC itself, above HTTP/2 and
// below any message: the 5-byte prefix of each message (for the size limit
// and the message counts), grpc-status, and grpc.health.v1's request and
// answer (the relay probes upstreams itself). Pure functions and one small
// value type; no I/O.
#ifndef POOLSIDE_RELAY_GRPC_WIRE_H_
#define POOLSIDE_RELAY_GRPC_WIRE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace poolside::relay {

// Where one direction of a stream is in its gRPC messages (a 5-byte prefix:
// compressed flag, then the length, big-endian; then the body): read from
// the DATA bytes as they pass, for GRPC_MAX_MESSAGE_BYTES and the message
// counts, without holding any of them.
class MessageCursor {
 public:
  // Walks `length` more bytes, calling on_message(length) at each message's
  // prefix; false (and stops) at a message longer than `max_length` (0: no
  // limit).
  template <typename OnMessage>
  bool Advance(const uint8_t* data, size_t length, uint32_t max_length, OnMessage on_message) {
    while (length > 0) {
      if (body_left_ > 0) {
        const size_t skipped = std::min<size_t>(body_left_, length);
        body_left_ -= skipped;
        data += skipped;
        length -= skipped;
        continue;
      }
      prefix_[prefix_have_++] = *data++;
      --length;
      if (prefix_have_ < sizeof(prefix_)) continue;
      prefix_have_ = 0;
      const uint32_t message_length = (uint32_t{prefix_[1]} << 24) | (uint32_t{prefix_[2]} << 16) |
                                      (uint32_t{prefix_[3]} << 8) | prefix_[4];
      if (max_length > 0 && message_length > max_length) return false;
      on_message(message_length);
      body_left_ = message_length;
    }
    return true;
  }

 private:
  uint32_t body_left_ = 0;
  uint8_t prefix_have_ = 0;
  uint8_t prefix_[5] = {};
};

// The code in a grpc-status header value; UNKNOWN (2) for anything but one
// or two digits.
int ParseGrpcStatus(absl::string_view text);

// grpc.health.v1.HealthCheckRequest{service} as one uncompressed gRPC
// message, its 5-byte prefix included.
std::string HealthCheckRequestMessage(const std::string& service);

// Whether `message` (one gRPC message, prefix included) is a
// HealthCheckResponse whose status (field 1) is SERVING (1).
bool IsServing(absl::string_view message);

}  // namespace poolside::relay

#endif  // POOLSIDE_RELAY_GRPC_WIRE_H_
