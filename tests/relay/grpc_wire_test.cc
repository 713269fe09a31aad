// relay/grpc_wire.h: the gRPC message prefix as the relay reads it from DATA
// bytes split anywhere, grpc-status values, and grpc.health.v1's messages,
// checked against protobuf's own encoding of them.
#include "relay/grpc_wire.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "grpc/health/v1/health.pb.h"

namespace poolside::relay {
namespace {

using ::testing::ElementsAre;

// One gRPC message: the 5-byte prefix, then `body`.
std::string Framed(const std::string& body, bool compressed = false) {
  const auto length = static_cast<uint32_t>(body.size());
  std::string message = {static_cast<char>(compressed ? 1 : 0), static_cast<char>(length >> 24),
                         static_cast<char>(length >> 16), static_cast<char>(length >> 8),
                         static_cast<char>(length)};
  return message + body;
}

// Feeds `bytes` to a cursor in pieces of `piece` bytes; the lengths it
// reported, and whether it stayed within `max_length`.
std::vector<uint32_t> Lengths(const std::string& bytes, size_t piece, uint32_t max_length = 0,
                              bool* within = nullptr) {
  MessageCursor cursor;
  std::vector<uint32_t> lengths;
  bool ok = true;
  for (size_t at = 0; at < bytes.size() && ok; at += piece) {
    const std::string chunk = bytes.substr(at, piece);
    ok = cursor.Advance(reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size(), max_length,
                        [&lengths](uint32_t length) { lengths.push_back(length); });
  }
  if (within != nullptr) *within = ok;
  return lengths;
}

TEST(MessageCursorTest, FindsEveryMessageHoweverTheBytesAreSplit) {
  const std::string stream =
      Framed("abc") + Framed("") + Framed(std::string(70000, 'x')) + Framed("z");
  for (size_t piece : {size_t{1}, size_t{2}, size_t{5}, size_t{7}, size_t{16384}, stream.size()}) {
    SCOPED_TRACE(piece);
    EXPECT_THAT(Lengths(stream, piece), ElementsAre(3, 0, 70000, 1));
  }
}

TEST(MessageCursorTest, StopsAtTheFirstMessageOverTheLimitAndNotBefore) {
  bool within = false;
  EXPECT_THAT(
      Lengths(Framed(std::string(100, 'a')) + Framed(std::string(100, 'b')), 3, 100, &within),
      ElementsAre(100, 100));
  EXPECT_TRUE(within);
  EXPECT_THAT(
      Lengths(Framed("ok") + Framed(std::string(101, 'c')) + Framed("never"), 4, 100, &within),
      ElementsAre(2));
  EXPECT_FALSE(within);
}

TEST(MessageCursorTest, ReadsTheLengthOfACompressedMessageToo) {
  EXPECT_THAT(Lengths(Framed("gzipped?", /*compressed=*/true), 3), ElementsAre(8));
}

TEST(GrpcStatusTest, ParsesOneOrTwoDigitsAndCallsTheRestUnknown) {
  EXPECT_EQ(ParseGrpcStatus("0"), 0);
  EXPECT_EQ(ParseGrpcStatus("14"), 14);
  EXPECT_EQ(ParseGrpcStatus(""), 2);
  EXPECT_EQ(ParseGrpcStatus("123"), 2);
  EXPECT_EQ(ParseGrpcStatus("1a"), 2);
  EXPECT_EQ(ParseGrpcStatus("-1"), 2);
}

TEST(HealthWireTest, TheRequestIsWhatProtobufWouldSend) {
  for (const std::string& service :
       std::vector<std::string>{"", "poolside.test.Echo", std::string(300, 's')}) {
    const std::string message = HealthCheckRequestMessage(service);
    grpc::health::v1::HealthCheckRequest expected;
    expected.set_service(service);
    EXPECT_EQ(message, Framed(expected.SerializeAsString())) << service.size();
  }
}

TEST(HealthWireTest, OnlyAnUncompressedServingAnswerIsServing) {
  grpc::health::v1::HealthCheckResponse response;
  response.set_status(grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(IsServing(Framed(response.SerializeAsString())));
  EXPECT_FALSE(IsServing(Framed(response.SerializeAsString(), /*compressed=*/true)));
  response.set_status(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(IsServing(Framed(response.SerializeAsString())));
  response.set_status(grpc::health::v1::HealthCheckResponse::UNKNOWN);
  EXPECT_FALSE(IsServing(Framed(response.SerializeAsString())));  // An empty body.
  EXPECT_FALSE(IsServing(""));
  EXPECT_FALSE(IsServing(std::string("\0\0\0", 3)));  // A short prefix.
}

TEST(HealthWireTest, UnknownFieldsAreSkippedAndBrokenOnesRefused) {
  // Field 2 (length-delimited, "hi"), then status SERVING: still serving.
  EXPECT_TRUE(IsServing(Framed(std::string("\x12\x02hi\x08\x01", 6))));
  // A length that runs past the end, or a varint that never ends.
  EXPECT_FALSE(IsServing(Framed(std::string("\x12\x7f\x08\x01", 4))));
  EXPECT_FALSE(IsServing(Framed(std::string("\x08\xff\xff", 3))));
  // A huge length must not wrap around to the start.
  EXPECT_FALSE(
      IsServing(Framed(std::string("\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x08\x01", 13))));
}

}  // namespace
}  // namespace poolside::relay
