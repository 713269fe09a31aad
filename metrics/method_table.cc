#include "metrics/method_table.h"

#include <utility>

namespace poolside {

std::optional<MethodLabels> ParseMethodPath(absl::string_view path) {
  if (path.size() > kMaxMethodPathLength || path.size() < 4 || path[0] != '/') {
    return std::nullopt;
  }
  for (char c : path) {
    if (c < 0x21 || c > 0x7e) return std::nullopt;
  }
  const size_t slash = path.find('/', 1);
  if (slash == absl::string_view::npos || slash == 1 || slash + 1 == path.size() ||
      path.find('/', slash + 1) != absl::string_view::npos) {
    return std::nullopt;
  }
  return MethodLabels{std::string(path.substr(1, slash - 1)), std::string(path.substr(slash + 1))};
}

MethodTable::MethodTable(int max_methods) : max_methods_(max_methods < 0 ? 0 : max_methods) {
  labels_.push_back(MethodLabels{"other", "other"});
  ids_.reserve(max_methods_);
  if (max_methods_ == 0) full_.store(true, std::memory_order_release);
}

MethodId MethodTable::Find(absl::string_view path) {
  // Once full the table is immutable: no lock, so that a client inventing
  // names cannot make every forwarding thread queue on mutex_.
  if (full_.load(std::memory_order_acquire)) return FindInFullTable(path);
  std::optional<MethodLabels> labels = ParseMethodPath(path);
  if (!labels) return kOtherMethod;
  absl::MutexLock lock(&mutex_);
  auto it = ids_.find(path);
  if (it != ids_.end()) return it->second;
  if (static_cast<int>(ids_.size()) >= max_methods_) return kOtherMethod;
  const MethodId id = static_cast<MethodId>(labels_.size());
  ids_.emplace(std::string(path), id);
  labels_.push_back(*std::move(labels));
  if (static_cast<int>(ids_.size()) == max_methods_) full_.store(true, std::memory_order_release);
  return id;
}

MethodId MethodTable::FindInFullTable(absl::string_view path) const {
  auto it = ids_.find(path);
  return it == ids_.end() ? kOtherMethod : it->second;
}

std::vector<MethodLabels> MethodTable::Labels() const {
  absl::MutexLock lock(&mutex_);
  return labels_;
}

}  // namespace poolside
