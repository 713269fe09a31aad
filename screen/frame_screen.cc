#include "screen/frame_screen.h"

#include <algorithm>

namespace poolside {
namespace {

using http2::kAck;
using http2::kContinuation;
using http2::kEndHeaders;
using http2::kGoaway;
using http2::kHeaders;
using http2::kPing;
using http2::kRstStream;
using http2::kSettings;

uint32_t Read32(const uint8_t* bytes) {
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         bytes[3];
}

void Append32(std::string& out, uint32_t value) {
  out.push_back(static_cast<char>(value >> 24));
  out.push_back(static_cast<char>(value >> 16));
  out.push_back(static_cast<char>(value >> 8));
  out.push_back(static_cast<char>(value));
}

}  // namespace

FrameScreen::FrameScreen(const FrameScreenLimits& limits)
    : limits_(limits), preface_left_(http2::kClientPreface.size()) {}

HostileReason FrameScreen::Feed(const uint8_t* data, size_t size, absl::Time now) {
  const uint8_t* const begin = data;
  const uint8_t* const end = data + size;
  const uint64_t fed_before = fed_;
  fed_ += size;
  if (preface_left_ > 0) {
    const size_t skipped = std::min(preface_left_, size);
    preface_left_ -= skipped;
    data += skipped;
  }
  while (data < end) {
    if (cursor_.InPayload()) {
      // Skip the payload, except the error code of a RST_STREAM.
      if (reading_rst_code_) {
        while (data < end && rst_code_filled_ < 4) {
          rst_code_[rst_code_filled_++] = *data++;
          cursor_.TookPayloadByte();
        }
        if (rst_code_filled_ == 4) {
          reading_rst_code_ = false;
          if (HostileReason broken = OnRstStreamCode(Read32(rst_code_));
              broken != HostileReason::kNone) {
            return broken;
          }
        }
        continue;
      }
      data += cursor_.SkipPayload(data, end);
      if (!cursor_.InPayload() && block_closing_) block_open_ = block_closing_ = false;
      continue;
    }
    if (cursor_.AtBoundary()) frame_begin_ = fed_before + static_cast<uint64_t>(data - begin);
    if (!cursor_.TakeHeader(data, end)) break;
    if (HostileReason broken = OnFrameHeader(now); broken != HostileReason::kNone) return broken;
  }
  return HostileReason::kNone;
}

HostileReason FrameScreen::OnFrameHeader(absl::Time now) {
  const uint8_t* const header = cursor_.header();
  const uint32_t length = cursor_.payload_left();
  const uint8_t type = header[3];
  const uint8_t flags = header[4];
  const uint32_t stream = Read32(header + 5) & 0x7fffffffu;
  if (now - window_start_ >= limits_.window) StartWindow(now);

  if (in_header_block_ && type != kContinuation) return HostileReason::kMalformed;
  switch (type) {
    case kHeaders:
      // A HEADERS frame on a stream above every earlier one opens it; one on
      // an open stream carries its trailers.
      if (stream > last_stream_id_) {
        last_stream_id_ = stream;
        ++opened_;
        if (!settings_acked_ && ++opened_before_ack_ > limits_.max_streams_before_settings_ack) {
          return HostileReason::kSettingsNotAcked;
        }
      }
      header_block_bytes_ = 0;
      block_open_ = true;
      block_begin_ = frame_begin_;
      [[fallthrough]];
    case kContinuation:
      // Frame headers count too: empty CONTINUATION frames are not free.
      header_block_bytes_ += length + FrameCursor::kHeaderSize;
      if (header_block_bytes_ > limits_.max_header_block_bytes) {
        return HostileReason::kHeaderBlockTooLarge;
      }
      in_header_block_ = (flags & kEndHeaders) == 0;
      if (!in_header_block_) {
        block_closing_ = length > 0;
        block_open_ = block_closing_;
      }
      break;
    case kRstStream:
      // The error code decides; RFC 9113 fixes the payload at four bytes.
      if (length >= 4) {
        reading_rst_code_ = true;
        rst_code_filled_ = 0;
      }
      break;
    case kPing:
      if ((flags & kAck) == 0 && ++pings_ > limits_.max_pings) {
        return HostileReason::kPingFlood;
      }
      break;
    case kSettings:
      if ((flags & kAck) != 0) settings_acked_ = true;
      if ((flags & kAck) == 0 && ++settings_ > limits_.max_settings) {
        return HostileReason::kSettingsFlood;
      }
      break;
    case http2::kData:
    case kGoaway:
    default:
      break;
  }
  return HostileReason::kNone;
}

HostileReason FrameScreen::OnRstStreamCode(uint32_t code) {
  // NO_ERROR is how a client ends a stream the server already answered; any
  // other code abandons a request.
  if (code == http2::kNoError || limits_.rapid_reset_min_streams <= 0) return HostileReason::kNone;
  ++resets_;
  if (opened_ >= limits_.rapid_reset_min_streams && 2 * resets_ > opened_) {
    return HostileReason::kRapidReset;
  }
  return HostileReason::kNone;
}

void FrameScreen::StartWindow(absl::Time now) {
  window_start_ = now;
  opened_ = 0;
  resets_ = 0;
  pings_ = 0;
  settings_ = 0;
}

void DownstreamFrames::Feed(const uint8_t* data, size_t size) {
  const uint8_t* const end = data + size;
  while (data < end) {
    if (cursor_.InPayload()) {
      data += cursor_.SkipPayload(data, end);
    } else if (!cursor_.TakeHeader(data, end)) {
      break;
    }
  }
}

std::string GoawayFrame(uint32_t last_stream_id, uint32_t code) {
  std::string frame;
  frame.reserve(17);
  // Length 8, type GOAWAY, no flags, stream 0.
  frame.append({'\0', '\0', '\x08', static_cast<char>(kGoaway), '\0', '\0', '\0', '\0', '\0'});
  Append32(frame, last_stream_id & 0x7fffffffu);
  Append32(frame, code);
  return frame;
}

}  // namespace poolside
