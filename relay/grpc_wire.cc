#include "relay/grpc_wire.h"

namespace poolside::relay {
namespace {

void AppendVarint(uint64_t value, std::string& out) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

// Reads a varint at `at`, moving it past; false at the end of `bytes`.
bool ReadVarint(absl::string_view bytes, size_t& at, uint64_t& value) {
  value = 0;
  for (int shift = 0; at < bytes.size() && shift < 64; shift += 7) {
    const auto byte = static_cast<uint8_t>(bytes[at++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

std::string HealthCheckRequestMessage(const std::string& service) {
  std::string body;
  if (!service.empty()) {
    body.push_back(0x0a);  // Field 1, length-delimited.
    AppendVarint(service.size(), body);
    body += service;
  }
  const auto length = static_cast<uint32_t>(body.size());
  std::string message = {0, static_cast<char>(length >> 24), static_cast<char>(length >> 16),
                         static_cast<char>(length >> 8), static_cast<char>(length)};
  return message + body;
}

bool IsServing(absl::string_view message) {
  if (message.size() < 5 || message[0] != 0) return false;  // Short, or compressed.
  const absl::string_view body = message.substr(5);
  uint64_t status = 0;
  for (size_t at = 0; at < body.size();) {
    uint64_t tag = 0;
    uint64_t value = 0;
    if (!ReadVarint(body, at, tag)) return false;
    switch (tag & 7) {
      case 0:  // Varint.
        if (!ReadVarint(body, at, value)) return false;
        if (tag >> 3 == 1) status = value;
        break;
      case 1:  // 64-bit.
        at += 8;
        break;
      case 2:  // Length-delimited.
        if (!ReadVarint(body, at, value) || value > body.size() - at) return false;
        at += value;
        break;
      case 5:  // 32-bit.
        at += 4;
        break;
      default:
        return false;
    }
  }
  return status == 1;
}

int ParseGrpcStatus(absl::string_view text) {
  int code = 0;
  if (text.empty() || text.size() > 2) return 2;  // UNKNOWN
  for (char c : text) {
    if (c < '0' || c > '9') return 2;
    code = code * 10 + (c - '0');
  }
  return code;
}

}  // namespace poolside::relay
