#include "screen/frame_screen.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace poolside {
namespace {

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  std::string frame;
  const uint32_t length = static_cast<uint32_t>(payload.size());
  frame.push_back(static_cast<char>(length >> 16));
  frame.push_back(static_cast<char>(length >> 8));
  frame.push_back(static_cast<char>(length));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8) frame.push_back(static_cast<char>(stream >> shift));
  return frame + payload;
}

std::string Headers(uint32_t stream, size_t size, bool end_headers = true) {
  return Frame(0x1, end_headers ? 0x4 : 0x0, stream, std::string(size, 'h'));
}
std::string Continuation(uint32_t stream, size_t size, bool end_headers) {
  return Frame(0x9, end_headers ? 0x4 : 0x0, stream, std::string(size, 'c'));
}
std::string Reset(uint32_t stream, uint32_t code) {
  return Frame(0x3, 0, stream,
               std::string{static_cast<char>(code >> 24), static_cast<char>(code >> 16),
                           static_cast<char>(code >> 8), static_cast<char>(code)});
}
std::string Ping(bool ack = false) { return Frame(0x6, ack ? 0x1 : 0x0, 0, std::string(8, 'p')); }
std::string SettingsAck() { return Frame(0x4, 0x1, 0, ""); }

// The preface and the acknowledgement of poolside's SETTINGS, as any client sends.
const std::string kPreface = std::string(http2::kClientPreface) + SettingsAck();

class FrameScreenTest : public ::testing::Test {
 protected:
  // Feeds `bytes` in one piece, or one byte at a time: a verdict must not
  // depend on how reads split the stream.
  HostileReason Feed(const std::string& bytes, bool bytewise = false) {
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    if (!bytewise) return screen_.Feed(data, bytes.size(), now_);
    for (size_t i = 0; i < bytes.size(); ++i) {
      if (HostileReason reason = screen_.Feed(data + i, 1, now_); reason != HostileReason::kNone) {
        return reason;
      }
    }
    return HostileReason::kNone;
  }

  FrameScreenLimits limits_;
  FrameScreen screen_{limits_};
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(FrameScreenTest, WellBehavedTrafficPasses) {
  std::string bytes = kPreface;
  for (uint32_t stream = 1; stream < 4000; stream += 2) {
    bytes += Headers(stream, 100) + Frame(0x0, 0x1, stream, std::string(1000, 'd'));
  }
  bytes += Ping() + Ping(/*ack=*/true);
  EXPECT_EQ(Feed(bytes), HostileReason::kNone);
  EXPECT_EQ(screen_.last_stream_id(), 3999u);
}

TEST_F(FrameScreenTest, HeaderBlockOverTheLimitIsCut) {
  // Four frames of 16,384 bytes each, frame headers included: 64 KiB exactly.
  std::string bytes = std::string(kPreface) + Headers(1, 16375, /*end_headers=*/false);
  for (int i = 0; i < 3; ++i) bytes += Continuation(1, 16375, /*end_headers=*/false);
  EXPECT_EQ(Feed(bytes), HostileReason::kNone);
  EXPECT_EQ(Feed(Continuation(1, 0, /*end_headers=*/false)), HostileReason::kHeaderBlockTooLarge);
}

TEST_F(FrameScreenTest, HeaderBlockLimitCountsOneBlockAtATime) {
  std::string bytes = kPreface;
  for (uint32_t stream = 1; stream < 40; stream += 2) {
    bytes += Headers(stream, 16000, /*end_headers=*/false) + Continuation(stream, 16000, true);
  }
  EXPECT_EQ(Feed(bytes, /*bytewise=*/true), HostileReason::kNone);
}

TEST_F(FrameScreenTest, OtherFrameInsideAHeaderBlockIsMalformed) {
  EXPECT_EQ(Feed(std::string(kPreface) + Headers(1, 10, /*end_headers=*/false) + Ping()),
            HostileReason::kMalformed);
}

TEST_F(FrameScreenTest, RapidResetIsCutWhenMoreThanHalfOfEnoughStreamsAreReset) {
  std::string bytes = kPreface;
  for (uint32_t stream = 1; stream < 2 * 499; stream += 2) {
    bytes += Headers(stream, 50) + Reset(stream, 0x8);
  }
  EXPECT_EQ(Feed(bytes, /*bytewise=*/true), HostileReason::kNone);  // 499 streams: too few.
  EXPECT_EQ(Feed(Headers(999, 50) + Reset(999, 0x8)), HostileReason::kRapidReset);
}

TEST_F(FrameScreenTest, ResetsWithNoErrorAndResetsOfAMinorityPass) {
  std::string bytes = kPreface;
  for (uint32_t stream = 1; stream < 4000; stream += 2) {
    bytes += Headers(stream, 50);
    // NO_ERROR ends an answered stream; every third stream is cancelled.
    bytes += Reset(stream, stream % 3 == 0 ? 0x8 : 0x0);
  }
  EXPECT_EQ(Feed(bytes), HostileReason::kNone);
}

TEST_F(FrameScreenTest, RapidResetCountsRestartEachWindow) {
  std::string half;
  for (uint32_t stream = 1; stream < 2 * 400; stream += 2) {
    half += Headers(stream, 50) + Reset(stream, 0x8);
  }
  EXPECT_EQ(Feed(std::string(kPreface) + half), HostileReason::kNone);
  now_ += limits_.window;
  std::string more;
  for (uint32_t stream = 801; stream < 801 + 2 * 400; stream += 2) {
    more += Headers(stream, 50) + Reset(stream, 0x8);
  }
  EXPECT_EQ(Feed(more), HostileReason::kNone);
}

TEST_F(FrameScreenTest, RapidResetRuleCanBeTurnedOff) {
  limits_.rapid_reset_min_streams = 0;
  FrameScreen screen(limits_);
  std::string bytes = kPreface;
  for (uint32_t stream = 1; stream < 4000; stream += 2) {
    bytes += Headers(stream, 50) + Reset(stream, 0x8);
  }
  EXPECT_EQ(screen.Feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), now_),
            HostileReason::kNone);
}

TEST_F(FrameScreenTest, PingFloodIsCutButAcksAreFree) {
  std::string acks = kPreface;
  for (int i = 0; i < 5000; ++i) acks += Ping(/*ack=*/true);
  EXPECT_EQ(Feed(acks), HostileReason::kNone);
  std::string pings;
  for (int i = 0; i < limits_.max_pings; ++i) pings += Ping();
  EXPECT_EQ(Feed(pings), HostileReason::kNone);
  EXPECT_EQ(Feed(Ping()), HostileReason::kPingFlood);
}

TEST_F(FrameScreenTest, SettingsFloodIsCut) {
  std::string bytes = kPreface;
  for (int i = 0; i <= limits_.max_settings; ++i) bytes += Frame(0x4, 0, 0, std::string(6, 's'));
  EXPECT_EQ(Feed(bytes, /*bytewise=*/true), HostileReason::kSettingsFlood);
}

TEST_F(FrameScreenTest, StreamsBeyondTheLimitBeforeSettingsAckAreCut) {
  std::string bytes(http2::kClientPreface);
  for (uint32_t stream = 1; stream < 2 * 1000; stream += 2) bytes += Headers(stream, 50);
  EXPECT_EQ(Feed(bytes), HostileReason::kNone);  // 1000 streams: the limit.
  EXPECT_EQ(Feed(Headers(2001, 50)), HostileReason::kSettingsNotAcked);
}

TEST_F(FrameScreenTest, StreamsAfterSettingsAckAreLeftToGrpc) {
  std::string bytes = std::string(http2::kClientPreface) + Headers(1, 50) + SettingsAck();
  for (uint32_t stream = 3; stream < 6000; stream += 2) bytes += Headers(stream, 50);
  EXPECT_EQ(Feed(bytes), HostileReason::kNone);
}

TEST_F(FrameScreenTest, EmptyContinuationFramesCountAgainstTheLimit) {
  std::string bytes = std::string(kPreface) + Headers(1, 10, /*end_headers=*/false);
  for (int i = 0; i < 8000; ++i) bytes += Continuation(1, 0, /*end_headers=*/false);
  EXPECT_EQ(Feed(bytes), HostileReason::kHeaderBlockTooLarge);
}

TEST_F(FrameScreenTest, SaysWhereAnUnfinishedHeaderBlockBegins) {
  const std::string start = std::string(kPreface) + Headers(1, 20) + Frame(0x0, 0x1, 1, "data");
  EXPECT_EQ(Feed(start), HostileReason::kNone);
  EXPECT_FALSE(screen_.unfinished_block_begin().has_value());
  const std::string headers = Headers(3, 100, /*end_headers=*/false);
  EXPECT_EQ(Feed(headers.substr(0, 50)), HostileReason::kNone);
  EXPECT_EQ(screen_.unfinished_block_begin(), start.size());
  EXPECT_EQ(Feed(headers.substr(50) + Continuation(3, 30, /*end_headers=*/true).substr(0, 20)),
            HostileReason::kNone);
  EXPECT_EQ(screen_.unfinished_block_begin(), start.size());  // Its last frame is unread.
  EXPECT_EQ(Feed(Continuation(3, 30, /*end_headers=*/true).substr(20)), HostileReason::kNone);
  EXPECT_FALSE(screen_.unfinished_block_begin().has_value());
  EXPECT_EQ(screen_.fed_bytes(), start.size() + headers.size() + 39);
}

TEST(DownstreamFramesTest, KnowsFrameBoundaries) {
  DownstreamFrames frames;
  const std::string frame = Frame(0x0, 0, 1, std::string(100, 'x'));
  const auto* data = reinterpret_cast<const uint8_t*>(frame.data());
  EXPECT_TRUE(frames.AtBoundary());
  frames.Feed(data, 5);
  EXPECT_FALSE(frames.AtBoundary());
  frames.Feed(data + 5, 50);
  EXPECT_FALSE(frames.AtBoundary());
  frames.Feed(data + 55, frame.size() - 55);
  EXPECT_TRUE(frames.AtBoundary());
}

TEST(GoawayFrameTest, IsAWellFormedGoaway) {
  const std::string frame = GoawayFrame(7, http2::kEnhanceYourCalm);
  EXPECT_EQ(frame, std::string("\0\0\x08\x07\0\0\0\0\0\0\0\0\x07\0\0\0\x0b", 17));
}

}  // namespace
}  // namespace poolside
