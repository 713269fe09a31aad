// The HTTP/2 wire constants (RFC 9113) that poolside's frame readers and the
// tests' hand-built frames name: one list, so that both read and write the
// same codes.
#ifndef POOLSIDE_SCREEN_HTTP2_WIRE_H_
#define POOLSIDE_SCREEN_HTTP2_WIRE_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace poolside::http2 {

// Every client connection begins with it (section 3.4), before any frame.
inline constexpr absl::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Section 6. Unscoped: frame readers switch on the raw type byte.
enum FrameType : uint8_t {
  kData = 0x0,
  kHeaders = 0x1,
  kRstStream = 0x3,
  kSettings = 0x4,
  kPing = 0x6,
  kGoaway = 0x7,
  kWindowUpdate = 0x8,
  kContinuation = 0x9,
};

// Flags are per frame type; these are the ones poolside and its tests use.
enum Flag : uint8_t {
  kEndStream = 0x1,   // DATA, HEADERS.
  kAck = 0x1,         // SETTINGS, PING.
  kEndHeaders = 0x4,  // HEADERS, CONTINUATION.
};

// Section 7.
enum ErrorCode : uint32_t {
  kNoError = 0x0,
  kProtocolError = 0x1,
  kInternalError = 0x2,
  kRefusedStream = 0x7,
  kCancel = 0x8,
  kEnhanceYourCalm = 0xb,
};

}  // namespace poolside::http2

#endif  // POOLSIDE_SCREEN_HTTP2_WIRE_H_
