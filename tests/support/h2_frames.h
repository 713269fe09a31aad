// HTTP/2 frames (RFC 9113) built and parsed by hand, for raw clients and
// upstreams that speak HTTP/2 wrongly on purpose. HPACK is only what the
// tests need: literal headers, no Huffman coding. Stateless; thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_
#define POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace poolside::test::h2 {

inline constexpr absl::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

enum Flag : uint8_t {
  kEndStream = 0x1,
  kAck = 0x1,
  kEndHeaders = 0x4,
};

enum ErrorCode : uint32_t {
  kNoError = 0x0,
  kProtocolError = 0x1,
  kInternalError = 0x2,
  kRefusedStream = 0x7,
  kCancel = 0x8,
  kEnhanceYourCalm = 0xb,
};

struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

std::string SerializeFrame(uint8_t type, uint8_t flags, uint32_t stream, absl::string_view payload);
// An empty SETTINGS frame, or its ACK.
std::string Settings(bool ack = false);
std::string RstStream(uint32_t stream, uint32_t error_code);
// HPACK "literal header field without indexing, new name", no Huffman coding.
std::string LiteralHeader(absl::string_view name, absl::string_view value);
// A header block as HEADERS plus CONTINUATION frames of at most `max_frame`
// bytes each.
std::string HeaderFrames(uint32_t stream, absl::string_view block, bool end_stream,
                         size_t max_frame = 16384);
// A gRPC length-prefixed message.
std::string GrpcMessage(absl::string_view payload);
// The header block of a gRPC request for `path` (content-type
// application/grpc unless `content_type` says otherwise; empty leaves it out),
// plus `extra` headers.
std::string GrpcRequestBlock(absl::string_view path,
                             std::optional<std::string> content_type = "application/grpc",
                             const std::vector<std::pair<std::string, std::string>>& extra = {});
// Removes every complete frame from the front of `bytes` and returns them.
std::vector<Frame> TakeFrames(std::string& bytes);
// Every complete frame in `bytes` (left unchanged).
std::vector<Frame> ParseFrames(std::string bytes);
// The error code of a RST_STREAM or GOAWAY frame; 0 otherwise.
uint32_t ErrorCodeOf(const Frame& frame);
// "RST_STREAM(stream 1, 0x8)" and the like, for failure messages.
std::string Describe(const std::vector<Frame>& frames);

}  // namespace poolside::test::h2

#endif  // POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_
