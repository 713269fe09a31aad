#include "config/memory_limit.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace poolside {
namespace {

// cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this big
// is no limit.
constexpr int64_t kUnlimitedAbove = int64_t{1} << 60;

std::optional<int64_t> ReadLimit(const std::string& path) {
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::stringstream text;
  text << file.rdbuf();
  const std::string value(absl::StripAsciiWhitespace(text.str()));
  int64_t bytes = 0;
  if (value == "max" || !absl::SimpleAtoi(value, &bytes) || bytes <= 0 ||
      bytes >= kUnlimitedAbove) {
    return std::nullopt;
  }
  return bytes;
}

}  // namespace

std::optional<int64_t> ContainerMemoryLimitBytes(const std::string& cgroup_root) {
  if (std::ifstream(cgroup_root + "/memory.max")) return ReadLimit(cgroup_root + "/memory.max");
  return ReadLimit(cgroup_root + "/memory/memory.limit_in_bytes");
}

int64_t DefaultMemoryLimitBytes(std::optional<int64_t> container_limit) {
  return container_limit ? *container_limit / 4 * 3 : 0;
}

}  // namespace poolside
