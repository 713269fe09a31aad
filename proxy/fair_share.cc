#include "proxy/fair_share.h"

#include <grpc/support/time.h>

namespace poolside {

bool FairShare::TryAcquire(const std::string& connection) {
  absl::MutexLock lock(&mutex_);
  Connection& entry = connections_[connection];
  if (entry.held < max_ && entry.waiting.empty()) {
    ++entry.held;
    return true;
  }
  return false;
}

bool FairShare::AcquireOrWait(const std::string& connection, const Waiter& waiter) {
  absl::MutexLock lock(&mutex_);
  Connection& entry = connections_[connection];
  // Behind earlier waiters too: a place freed for them is theirs.
  if (entry.held < max_ && entry.waiting.empty()) {
    ++entry.held;
    return true;
  }
  entry.waiting.push_back(waiter);
  return false;
}

void FairShare::Release(const std::string& connection) {
  absl::MutexLock lock(&mutex_);
  auto it = connections_.find(connection);
  if (it == connections_.end()) return;  // Not held: a caller's bug, but harmless.
  Connection& entry = it->second;
  if (!entry.waiting.empty()) {
    // The place passes to the first waiter; `held` stays as it is. The alarm
    // brings the waiter back on its own queue's thread.
    const Waiter next = entry.waiting.front();
    entry.waiting.pop_front();
    next.alarm->Set(next.queue, gpr_time_0(GPR_CLOCK_MONOTONIC), next.tag);
    return;
  }
  if (--entry.held <= 0) connections_.erase(it);
}

bool FairShare::Cancel(const std::string& connection, const Waiter& waiter) {
  absl::MutexLock lock(&mutex_);
  auto it = connections_.find(connection);
  if (it == connections_.end()) return false;
  Connection& entry = it->second;
  for (auto waiting = entry.waiting.begin(); waiting != entry.waiting.end(); ++waiting) {
    if (waiting->alarm == waiter.alarm) {
      entry.waiting.erase(waiting);
      if (entry.held <= 0 && entry.waiting.empty()) connections_.erase(it);
      return true;
    }
  }
  return false;
}

int64_t FairShare::held() const {
  absl::MutexLock lock(&mutex_);
  int64_t held = 0;
  for (const auto& [name, entry] : connections_) held += entry.held;
  return held;
}

int64_t FairShare::waiting() const {
  absl::MutexLock lock(&mutex_);
  int64_t waiting = 0;
  for (const auto& [name, entry] : connections_)
    waiting += static_cast<int64_t>(entry.waiting.size());
  return waiting;
}

}  // namespace poolside
