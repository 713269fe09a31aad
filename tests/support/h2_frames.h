// HTTP/2 frames (RFC 9113) built and parsed by hand, for raw clients and
// upstreams that speak HTTP/2 wrongly on purpose. HPACK is only what the
// tests need: literal headers out, and in, a decoder for what grpc sends (no
// Huffman coding). The functions are stateless and thread-safe; HpackDecoder
// is not.
#ifndef POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_
#define POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "screen/http2_wire.h"

namespace poolside::test::h2 {

// The wire constants (kSettings, kEndHeaders, kCancel, kClientPreface, ...)
// are poolside's own list, so that tests write what the screen reads.
using namespace ::poolside::http2;  // NOLINT(google-build-using-namespace)

struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

std::string SerializeFrame(uint8_t type, uint8_t flags, uint32_t stream, absl::string_view payload);
// An empty SETTINGS frame, or its ACK.
std::string Settings(bool ack = false);
// The ACK every peer owes for a SETTINGS or PING frame; empty for any other
// frame, ACKs included.
std::string AckFor(const Frame& frame);
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

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// The HPACK decoder (RFC 7541) of one direction of one connection: its
// dynamic table lives from block to block, so every header block the peer
// sends must pass through Decode, in order. Huffman-coded strings are refused
// (grpc 1.51 codes only binary "-bin" values). Confined to one thread.
class HpackDecoder {
 public:
  absl::StatusOr<HeaderList> Decode(absl::string_view block);

 private:
  absl::StatusOr<std::pair<std::string, std::string>> Entry(uint64_t index) const;
  void Insert(std::pair<std::string, std::string> entry);
  void Evict();

  // Newest first, as HPACK indexes them.
  std::deque<std::pair<std::string, std::string>> dynamic_;
  size_t size_ = 0;
  size_t max_size_ = 4096;
};

}  // namespace poolside::test::h2

#endif  // POOLSIDE_TESTS_SUPPORT_H2_FRAMES_H_
