// FrameScreen reads the HTTP/2 frame headers an app sends poolside, before
// grpc sees the bytes, and says when a connection has to be cut off: grpc++
// 1.51 (Debian 12) does not bound a header block that never ends
// (CONTINUATION flood), keeps a connection open through any number of reset
// streams (rapid reset, CVE-2023-44487) and answers PINGs without limit.
//
// Only the nine-byte frame headers are read, plus the four-byte error code of
// RST_STREAM; payloads are skipped by length, so the cost is a few compares
// per frame, whatever the frame size.
//
// The rules, each within a window of `window` (counters restart each window):
//   header_block_too_large  one header block (HEADERS + CONTINUATION frames
//                           up to END_HEADERS, frame headers included) longer
//                           than max_header_block_bytes
//   rapid_reset             at least rapid_reset_min_streams streams opened and
//                           more than half of them reset by the app (RST_STREAM
//                           with an error code other than NO_ERROR)
//   ping_flood              more than max_pings PINGs (not ACKs)
//   settings_flood          more than max_settings SETTINGS frames (not ACKs)
//   malformed               a frame HTTP/2 forbids where it stands (a frame
//                           other than CONTINUATION inside a header block)
//   settings_not_acked      more than max_streams_before_settings_ack streams
//                           opened before the app acknowledged poolside's
//                           SETTINGS: grpc 1.51 enforces MAX_CONCURRENT_STREAMS
//                           only once it is acknowledged, so a client that
//                           never acknowledges could open streams without end
//
// DownstreamFrames tracks frame boundaries in the other direction, so that a
// GOAWAY can be slipped in between grpc's frames.
//
// Threading: not thread-safe. Each app connection's ScreenedSocket owns one
// of each: the FrameScreen is fed by grpc's reads of the socket, the
// DownstreamFrames by its writes (each one thread at a time).
#ifndef POOLSIDE_SCREEN_FRAME_SCREEN_H_
#define POOLSIDE_SCREEN_FRAME_SCREEN_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "metrics/hostile_peer.h"
#include "screen/http2_wire.h"

namespace poolside {

struct FrameScreenLimits {
  int64_t max_header_block_bytes = 64 << 10;
  // 0 turns the rapid-reset rule off.
  int64_t rapid_reset_min_streams = 500;
  int64_t max_pings = 1000;
  int64_t max_settings = 1000;
  int64_t max_streams_before_settings_ack = 1000;
  absl::Duration window = absl::Seconds(10);
};

// Where a reader stands in a stream of HTTP/2 frames: the 9-byte header of
// the next frame as its bytes arrive (a read may split it anywhere), then
// what is left of that frame's payload. Both directions of an app
// connection are read this way: the app's bytes as grpc reads them, grpc's
// as it writes them.
class FrameCursor {
 public:
  static constexpr size_t kHeaderSize = 9;

  // True when the bytes so far end exactly at a frame boundary.
  bool AtBoundary() const { return header_filled_ == 0 && payload_left_ == 0; }
  bool InPayload() const { return payload_left_ > 0; }
  // How many more bytes reach the next boundary, or at least the end of the
  // frame header being read (its length is not known before).
  size_t BytesToBoundary() const {
    return header_filled_ > 0 ? kHeaderSize - header_filled_ : payload_left_;
  }
  // Payload bytes of the current frame not yet seen.
  uint32_t payload_left() const { return payload_left_; }

  // Passes over what [data, end) holds of the current payload; returns how
  // many bytes that was.
  size_t SkipPayload(const uint8_t* data, const uint8_t* end) {
    const size_t skipped = std::min<size_t>(payload_left_, end - data);
    payload_left_ -= static_cast<uint32_t>(skipped);
    return skipped;
  }
  // One payload byte the caller read itself.
  void TookPayloadByte() { --payload_left_; }
  // Copies what [data, end) holds of the frame header, advancing `data`.
  // True once the header is whole: header() then holds it, and the payload
  // that follows is its length.
  bool TakeHeader(const uint8_t*& data, const uint8_t* end) {
    // Most frame headers arrive whole; copy only what this read holds.
    const size_t taken = std::min<size_t>(kHeaderSize - header_filled_, end - data);
    std::copy(data, data + taken, header_ + header_filled_);
    header_filled_ += taken;
    data += taken;
    if (header_filled_ < kHeaderSize) return false;
    header_filled_ = 0;
    payload_left_ = (uint32_t{header_[0]} << 16) | (uint32_t{header_[1]} << 8) | header_[2];
    return true;
  }
  const uint8_t* header() const { return header_; }

 private:
  uint8_t header_[kHeaderSize];
  size_t header_filled_ = 0;
  uint32_t payload_left_ = 0;
};

class FrameScreen {
 public:
  explicit FrameScreen(const FrameScreenLimits& limits);

  // Reads the next `size` bytes the app sent. Returns kNone while the
  // connection keeps to the rules, else the rule it broke; once broken, the
  // connection is to be closed and Feed not called again. `now` is any
  // monotonic clock.
  HostileReason Feed(const uint8_t* data, size_t size, absl::Time now);

  // The highest stream the app opened: the last-stream-id of a GOAWAY.
  uint32_t last_stream_id() const { return last_stream_id_; }

  // Bytes fed so far, the preface included.
  uint64_t fed_bytes() const { return fed_; }
  // Where (in fed bytes) the header block still unfinished after the last
  // Feed begins, or nullopt if every header block fed so far has ended.
  // grpc 1.51 hands a call its headers parsed so far when the connection
  // closes mid-block, so ScreenedSocket withholds an unfinished block from
  // grpc until it ends: cutting a connection then never leaves grpc a partial one.
  std::optional<uint64_t> unfinished_block_begin() const {
    return block_open_ ? std::optional<uint64_t>(block_begin_) : std::nullopt;
  }

 private:
  HostileReason OnFrameHeader(absl::Time now);
  HostileReason OnRstStreamCode(uint32_t code);
  void StartWindow(absl::Time now);

  // Constant after construction.
  const FrameScreenLimits limits_;

  // Where the parser stands in the byte stream.
  size_t preface_left_;
  FrameCursor cursor_;
  // RST_STREAM error code being collected (its first four payload bytes).
  bool reading_rst_code_ = false;
  uint8_t rst_code_[4];
  size_t rst_code_filled_ = 0;

  // Bytes fed so far, and where the frame being read began.
  uint64_t fed_ = 0;
  uint64_t frame_begin_ = 0;
  // Header block state. The block is open from the first byte of its HEADERS
  // frame to the last byte of the frame with END_HEADERS.
  bool block_open_ = false;
  bool block_closing_ = false;
  uint64_t block_begin_ = 0;
  bool in_header_block_ = false;
  int64_t header_block_bytes_ = 0;
  uint32_t last_stream_id_ = 0;
  bool settings_acked_ = false;
  int64_t opened_before_ack_ = 0;

  // Counters of the current window.
  absl::Time window_start_ = absl::InfinitePast();
  int64_t opened_ = 0;
  int64_t resets_ = 0;
  int64_t pings_ = 0;
  int64_t settings_ = 0;
};

// Frame boundaries of the bytes grpc sends the app. Confined like FrameScreen.
class DownstreamFrames {
 public:
  // Accounts for `size` more bytes of grpc's output.
  void Feed(const uint8_t* data, size_t size);
  // True when the bytes fed so far end exactly at a frame boundary.
  bool AtBoundary() const { return cursor_.AtBoundary(); }
  // How many more bytes reach the next boundary, or at least the end of the
  // frame header being read (its length is not known before).
  size_t BytesToBoundary() const { return cursor_.BytesToBoundary(); }

 private:
  FrameCursor cursor_;
};

// A GOAWAY frame (stream 0, no debug data) with `last_stream_id` and `code`.
std::string GoawayFrame(uint32_t last_stream_id, uint32_t code);

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_FRAME_SCREEN_H_
