#include "bench/load_report.h"

#include <algorithm>
#include <cstdio>

namespace poolside::bench {

uint32_t Percentile(const std::vector<uint32_t>& sorted, double quantile) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<size_t>(quantile * static_cast<double>(sorted.size()) + 0.999999);
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::string JsonString(const std::string& text) {
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    quoted += c;
  }
  return quoted + "\"";
}

std::string JsonNumber(double value) {
  if (value < 0) return "null";
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.4f", value);
  return buffer;
}

}  // namespace poolside::bench
