#include "pool/address_tracker.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_join.h"

namespace poolside {
namespace {

std::string Describe(const std::vector<BackendAddress>& addresses) {
  return absl::StrJoin(addresses, ",", [](std::string* out, const BackendAddress& address) {
    out->append(address.label);
  });
}

}  // namespace

AddressTracker::AddressTracker(AddressFollower& pool, std::unique_ptr<Resolver> resolver,
                               AddressTrackerOptions options)
    : pool_(pool), resolver_(std::move(resolver)), options_(options) {}

AddressTracker::~AddressTracker() { Shutdown(); }

std::vector<BackendAddress> AddressTracker::ResolveInitial() {
  ResolveOnce();
  return current_;
}

void AddressTracker::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ps-dns");
    Loop();
  });
}

void AddressTracker::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void AddressTracker::RequestResolve() {
  absl::MutexLock lock(&mutex_);
  resolve_requested_ = true;
}

void AddressTracker::ResolveOnce() {
  absl::StatusOr<std::vector<BackendAddress>> resolved = resolver_->Resolve();
  if (!resolved.ok()) {
    pool_.RecordResolution(/*failed=*/true, /*set_changed=*/false);
    if (!failing_) {
      spdlog::warn("pool: cannot resolve {}: {}; keeping the last good {} address{} ({})",
                   options_.target, std::string(resolved.status().message()), current_.size(),
                   current_.size() == 1 ? "" : "es",
                   current_.empty() ? "the target itself" : Describe(current_));
    }
    failing_ = true;
    return;
  }
  const bool changed = *resolved != current_;
  pool_.RecordResolution(/*failed=*/false, /*set_changed=*/changed && !current_.empty());
  if (failing_) spdlog::info("pool: {} resolves again", options_.target);
  failing_ = false;
  if (!changed) return;
  spdlog::info("pool: {} has {} address{}: {}{}", options_.target, resolved->size(),
               resolved->size() == 1 ? "" : "es", Describe(*resolved),
               current_.empty() ? "" : " (was " + Describe(current_) + ")");
  current_ = std::move(*resolved);
}

void AddressTracker::Loop() {
  absl::Time last_resolve = absl::Now();
  absl::Time next_resolve = last_resolve + options_.refresh_interval;
  while (true) {
    if (!current_.empty()) {
      const bool unsettled = pool_.Rebalance(current_, options_.rebalance);
      if (settling_ && !unsettled) {
        spdlog::info("pool: spread over {} address{} again", current_.size(),
                     current_.size() == 1 ? "" : "es");
      }
      settling_ = unsettled;
    }
    bool resolve_now = false;
    {
      absl::MutexLock lock(&mutex_);
      const absl::Time earliest_requested = last_resolve + options_.min_resolve_spacing;
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || resolve_requested_;
      };
      absl::Time until = next_resolve;
      if (settling_) until = std::min(until, absl::Now() + options_.rebalance_poll);
      if (resolve_requested_) until = std::min(until, earliest_requested);
      // A request wakes the loop at once; it resolves no earlier than the
      // spacing allows.
      if (!resolve_requested_) mutex_.AwaitWithDeadline(absl::Condition(&wake), until);
      if (resolve_requested_ && absl::Now() < earliest_requested) {
        mutex_.AwaitWithDeadline(absl::Condition(&stopping_), std::min(until, earliest_requested));
      }
      if (stopping_) return;
      const absl::Time now = absl::Now();
      resolve_now = now >= next_resolve || (resolve_requested_ && now >= earliest_requested);
      if (resolve_now) resolve_requested_ = false;
    }
    if (resolve_now) {
      ResolveOnce();
      last_resolve = absl::Now();
      next_resolve = last_resolve + options_.refresh_interval;
    }
  }
}

}  // namespace poolside
