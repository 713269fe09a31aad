// The frame screen against arbitrary bytes from an app. Properties: it never
// crashes or reads out of bounds, and its verdict does not depend on how the
// byte stream is split into reads (grpc reads whatever the socket has).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/time/time.h"
#include "screen/frame_screen.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks the read size of the second pass (1..256).
  const size_t step = static_cast<size_t>(data[0]) + 1;
  ++data;
  --size;
  poolside::FrameScreenLimits limits;
  // Small limits, so that short inputs reach every rule.
  limits.max_header_block_bytes = 256;
  limits.rapid_reset_min_streams = 4;
  limits.max_pings = 4;
  limits.max_settings = 4;
  limits.max_streams_before_settings_ack = 8;
  const absl::Time now = absl::UnixEpoch();

  poolside::FrameScreen whole(limits);
  const poolside::HostileReason at_once = whole.Feed(data, size, now);

  poolside::FrameScreen pieces(limits);
  poolside::HostileReason split = poolside::HostileReason::kNone;
  for (size_t offset = 0; offset < size && split == poolside::HostileReason::kNone;
       offset += step) {
    const size_t n = size - offset < step ? size - offset : step;
    split = pieces.Feed(data + offset, n, now);
  }
  if (at_once != split) std::abort();
  if (at_once == poolside::HostileReason::kNone) {
    if (whole.unfinished_block_begin() != pieces.unfinished_block_begin()) std::abort();
    if (whole.fed_bytes() != size) std::abort();
  }

  poolside::DownstreamFrames frames;
  frames.Feed(data, size);
  return 0;
}
