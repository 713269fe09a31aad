#include "metrics/call_recorder.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "metrics/request_metrics.h"

namespace poolside {
namespace {

// Method names each recorder caches beyond the max_methods that get ids: the
// cache must stay bounded when a client invents names.
constexpr size_t kExtraCachedNames = 256;

// kRequestDurationBounds in nanoseconds, so recording needs no floating point.
constexpr std::array<int64_t, kRequestDurationBounds.size()> kBoundNanos = [] {
  std::array<int64_t, kRequestDurationBounds.size()> nanos{};
  for (size_t i = 0; i < nanos.size(); ++i) {
    nanos[i] = static_cast<int64_t>(kRequestDurationBounds[i] * 1e9 + 0.5);
  }
  return nanos;
}();

// Only the owning thread writes a shard, so a plain load and store is a
// correct increment and avoids a locked read-modify-write per counter.
template <typename T>
void AddFromOwner(std::atomic<T>& cell, T delta) {
  cell.store(cell.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

}  // namespace

CallRecorder::CallRecorder(RequestMetrics& owner, RecorderShard& shard)
    : owner_(owner),
      shard_(shard),
      max_method_id_(static_cast<MethodId>(owner.methods().max_methods())) {}

CallRecorder::~CallRecorder() { owner_.Release(shard_); }

MethodId CallRecorder::Method(absl::string_view full_method) {
  auto it = cache_.find(full_method);
  if (it != cache_.end()) return it->second;
  const MethodId id = owner_.methods().Find(full_method);
  if (cache_.size() < max_method_id_ + kExtraCachedNames &&
      full_method.size() <= kMaxMethodPathLength) {
    cache_.emplace(full_method, id);
  }
  return id;
}

void CallRecorder::RecordCall(MethodId method, grpc::StatusCode code, absl::Duration elapsed) {
  if (method > max_method_id_) method = kOtherMethod;
  MethodCells& cells = shard_.methods[method];
  int code_index = static_cast<int>(code);
  if (code_index < 0 || code_index >= kStatusCodeCount) code_index = grpc::StatusCode::UNKNOWN;
  AddFromOwner<uint64_t>(cells.calls_by_code[code_index], 1);
  const int64_t nanos = std::max<int64_t>(0, absl::ToInt64Nanoseconds(elapsed));
  const size_t bucket =
      std::lower_bound(kBoundNanos.begin(), kBoundNanos.end(), nanos) - kBoundNanos.begin();
  AddFromOwner<uint64_t>(cells.duration_buckets[bucket], 1);
  AddFromOwner<uint64_t>(cells.duration_sum_nanos, static_cast<uint64_t>(nanos));
}

void CallRecorder::RecordMessage(Direction direction, size_t bytes) {
  const int index = direction == Direction::kUpstream ? 0 : 1;
  AddFromOwner<uint64_t>(shard_.bytes[index], bytes);
  AddFromOwner<uint64_t>(shard_.messages[index], 1);
}

void CallRecorder::CallStarted() { AddFromOwner<int64_t>(shard_.inflight, 1); }

void CallRecorder::CallEnded() { AddFromOwner<int64_t>(shard_.inflight, -1); }

}  // namespace poolside
