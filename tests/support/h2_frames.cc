#include "tests/support/h2_frames.h"

#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace poolside::test::h2 {
namespace {

void AppendUint32(std::string& out, uint32_t value) {
  out.push_back(static_cast<char>((value >> 24) & 0xff));
  out.push_back(static_cast<char>((value >> 16) & 0xff));
  out.push_back(static_cast<char>((value >> 8) & 0xff));
  out.push_back(static_cast<char>(value & 0xff));
}

uint32_t ReadUint32(absl::string_view bytes) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(bytes[0])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(bytes[1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(bytes[2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(bytes[3]));
}

// HPACK integer with a `prefix_bits`-bit prefix; `first` holds the bits above
// the prefix (RFC 7541 §5.1).
std::string HpackInteger(uint64_t value, int prefix_bits, uint8_t first) {
  std::string out;
  const uint64_t limit = (uint64_t{1} << prefix_bits) - 1;
  if (value < limit) {
    out.push_back(static_cast<char>(first | value));
    return out;
  }
  out.push_back(static_cast<char>(first | limit));
  value -= limit;
  while (value >= 128) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
  return out;
}

std::string HpackString(absl::string_view text) {
  return HpackInteger(text.size(), 7, 0x00) + std::string(text);
}

const char* FrameTypeName(uint8_t type) {
  switch (type) {
    case kData:
      return "DATA";
    case kHeaders:
      return "HEADERS";
    case kRstStream:
      return "RST_STREAM";
    case kSettings:
      return "SETTINGS";
    case kPing:
      return "PING";
    case kGoaway:
      return "GOAWAY";
    case kWindowUpdate:
      return "WINDOW_UPDATE";
    case kContinuation:
      return "CONTINUATION";
    default:
      return "FRAME";
  }
}

// RFC 7541 Appendix A; index 1 is the first entry.
constexpr std::array<std::pair<absl::string_view, absl::string_view>, 61> kStaticTable = {{
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""},
}};

// Reads an HPACK integer with a `prefix_bits`-bit prefix from the front of
// `in` (RFC 7541 section 5.1).
absl::StatusOr<uint64_t> TakeHpackInteger(absl::string_view& in, int prefix_bits) {
  if (in.empty()) return absl::InvalidArgumentError("HPACK: integer past the end");
  const uint64_t limit = (uint64_t{1} << prefix_bits) - 1;
  uint64_t value = static_cast<uint8_t>(in[0]) & limit;
  in.remove_prefix(1);
  if (value < limit) return value;
  for (int shift = 0; shift <= 56; shift += 7) {
    if (in.empty()) return absl::InvalidArgumentError("HPACK: integer past the end");
    const uint8_t byte = static_cast<uint8_t>(in[0]);
    in.remove_prefix(1);
    value += uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80) == 0) return value;
  }
  return absl::InvalidArgumentError("HPACK: integer too long");
}

absl::StatusOr<std::string> TakeHpackString(absl::string_view& in) {
  if (in.empty()) return absl::InvalidArgumentError("HPACK: string past the end");
  const bool huffman = (static_cast<uint8_t>(in[0]) & 0x80) != 0;
  absl::StatusOr<uint64_t> length = TakeHpackInteger(in, 7);
  if (!length.ok()) return length.status();
  if (*length > in.size()) return absl::InvalidArgumentError("HPACK: string past the end");
  if (huffman) return absl::UnimplementedError("HPACK: Huffman-coded string");
  std::string text(in.substr(0, *length));
  in.remove_prefix(*length);
  return text;
}

}  // namespace

std::string SerializeFrame(uint8_t type, uint8_t flags, uint32_t stream,
                           absl::string_view payload) {
  std::string frame;
  const uint32_t length = static_cast<uint32_t>(payload.size());
  frame.push_back(static_cast<char>((length >> 16) & 0xff));
  frame.push_back(static_cast<char>((length >> 8) & 0xff));
  frame.push_back(static_cast<char>(length & 0xff));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  AppendUint32(frame, stream & 0x7fffffff);
  frame.append(payload.data(), payload.size());
  return frame;
}

std::string Settings(bool ack) { return SerializeFrame(kSettings, ack ? kAck : 0, 0, ""); }

std::string AckFor(const Frame& frame) {
  if ((frame.flags & kAck) != 0) return "";
  if (frame.type == kSettings) return Settings(/*ack=*/true);
  if (frame.type == kPing) return SerializeFrame(kPing, kAck, 0, frame.payload);
  return "";
}

std::string RstStream(uint32_t stream, uint32_t error_code) {
  std::string payload;
  AppendUint32(payload, error_code);
  return SerializeFrame(kRstStream, 0, stream, payload);
}

std::string LiteralHeader(absl::string_view name, absl::string_view value) {
  return std::string(1, '\0') + HpackString(name) + HpackString(value);
}

std::string HeaderFrames(uint32_t stream, absl::string_view block, bool end_stream,
                         size_t max_frame) {
  std::string frames;
  bool first = true;
  do {
    const absl::string_view piece = block.substr(0, max_frame);
    block.remove_prefix(piece.size());
    uint8_t flags = block.empty() ? kEndHeaders : 0;
    if (first && end_stream) flags |= kEndStream;
    frames += SerializeFrame(first ? kHeaders : kContinuation, flags, stream, piece);
    first = false;
  } while (!block.empty());
  return frames;
}

std::string GrpcMessage(absl::string_view payload) {
  std::string message(1, '\0');
  AppendUint32(message, static_cast<uint32_t>(payload.size()));
  message.append(payload.data(), payload.size());
  return message;
}

std::string GrpcRequestBlock(absl::string_view path, std::optional<std::string> content_type,
                             const std::vector<std::pair<std::string, std::string>>& extra) {
  std::string block = LiteralHeader(":method", "POST") + LiteralHeader(":scheme", "http") +
                      LiteralHeader(":path", path) + LiteralHeader(":authority", "localhost");
  if (content_type.has_value() && !content_type->empty()) {
    block += LiteralHeader("content-type", *content_type);
  }
  block += LiteralHeader("te", "trailers");
  for (const auto& [name, value] : extra) block += LiteralHeader(name, value);
  return block;
}

std::vector<Frame> TakeFrames(std::string& bytes) {
  std::vector<Frame> frames;
  size_t offset = 0;
  while (bytes.size() - offset >= 9) {
    const uint8_t* head = reinterpret_cast<const uint8_t*>(bytes.data() + offset);
    const size_t length = (size_t{head[0]} << 16) | (size_t{head[1]} << 8) | head[2];
    if (bytes.size() - offset < 9 + length) break;
    Frame frame;
    frame.type = head[3];
    frame.flags = head[4];
    frame.stream = ReadUint32(absl::string_view(bytes).substr(offset + 5, 4)) & 0x7fffffff;
    frame.payload = bytes.substr(offset + 9, length);
    frames.push_back(std::move(frame));
    offset += 9 + length;
  }
  bytes.erase(0, offset);
  return frames;
}

std::vector<Frame> ParseFrames(std::string bytes) { return TakeFrames(bytes); }

uint32_t ErrorCodeOf(const Frame& frame) {
  if (frame.type == kRstStream && frame.payload.size() >= 4) return ReadUint32(frame.payload);
  if (frame.type == kGoaway && frame.payload.size() >= 8) {
    return ReadUint32(absl::string_view(frame.payload).substr(4));
  }
  return 0;
}

std::string Describe(const std::vector<Frame>& frames) {
  std::vector<std::string> parts;
  for (const Frame& frame : frames) {
    std::string part =
        absl::StrCat(FrameTypeName(frame.type), "(stream ", frame.stream, ", flags 0x",
                     absl::Hex(frame.flags), ", ", frame.payload.size(), " bytes");
    if (frame.type == kRstStream || frame.type == kGoaway) {
      absl::StrAppend(&part, ", error 0x", absl::Hex(ErrorCodeOf(frame)));
    }
    parts.push_back(part + ")");
  }
  return parts.empty() ? "no frames" : absl::StrJoin(parts, " ");
}

absl::StatusOr<HeaderList> HpackDecoder::Decode(absl::string_view block) {
  HeaderList headers;
  while (!block.empty()) {
    const uint8_t first = static_cast<uint8_t>(block[0]);
    if ((first & 0x80) != 0) {  // Indexed field.
      absl::StatusOr<uint64_t> index = TakeHpackInteger(block, 7);
      if (!index.ok()) return index.status();
      absl::StatusOr<std::pair<std::string, std::string>> entry = Entry(*index);
      if (!entry.ok()) return entry.status();
      headers.push_back(*std::move(entry));
      continue;
    }
    if ((first & 0xe0) == 0x20) {  // Dynamic table size update.
      absl::StatusOr<uint64_t> size = TakeHpackInteger(block, 5);
      if (!size.ok()) return size.status();
      max_size_ = *size;
      Evict();
      continue;
    }
    // A literal: with incremental indexing (6-bit name index), or without
    // indexing / never indexed (4-bit).
    const bool indexed = (first & 0xc0) == 0x40;
    absl::StatusOr<uint64_t> name_index = TakeHpackInteger(block, indexed ? 6 : 4);
    if (!name_index.ok()) return name_index.status();
    std::pair<std::string, std::string> field;
    if (*name_index == 0) {
      absl::StatusOr<std::string> name = TakeHpackString(block);
      if (!name.ok()) return name.status();
      field.first = *std::move(name);
    } else {
      absl::StatusOr<std::pair<std::string, std::string>> entry = Entry(*name_index);
      if (!entry.ok()) return entry.status();
      field.first = std::move(entry->first);
    }
    absl::StatusOr<std::string> value = TakeHpackString(block);
    if (!value.ok()) return value.status();
    field.second = *std::move(value);
    if (indexed) Insert(field);
    headers.push_back(std::move(field));
  }
  return headers;
}

absl::StatusOr<std::pair<std::string, std::string>> HpackDecoder::Entry(uint64_t index) const {
  if (index >= 1 && index <= kStaticTable.size()) {
    const auto& [name, value] = kStaticTable[index - 1];
    return std::make_pair(std::string(name), std::string(value));
  }
  const uint64_t dynamic_index = index - kStaticTable.size() - 1;
  if (index == 0 || dynamic_index >= dynamic_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("HPACK: no entry ", index));
  }
  return dynamic_[dynamic_index];
}

void HpackDecoder::Insert(std::pair<std::string, std::string> entry) {
  // RFC 7541 section 4.1: each entry counts 32 bytes beyond its strings.
  size_ += entry.first.size() + entry.second.size() + 32;
  dynamic_.push_front(std::move(entry));
  Evict();
}

void HpackDecoder::Evict() {
  while (size_ > max_size_ && !dynamic_.empty()) {
    size_ -= dynamic_.back().first.size() + dynamic_.back().second.size() + 32;
    dynamic_.pop_back();
  }
}

}  // namespace poolside::test::h2
