#include "pool/pool_sizer.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace poolside {

PoolSizer::PoolSizer(ChannelPool& pool, PoolSizerOptions options)
    : pool_(pool), options_(options), recommended_(pool.size()) {}

PoolSizer::~PoolSizer() { Shutdown(); }

void PoolSizer::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ps-sizer");
    Loop();
  });
}

void PoolSizer::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int PoolSizer::Needed(int64_t outstanding, int streams_per_connection) {
  const int64_t per_connection = std::max(streams_per_connection, 1);
  const int64_t needed = (outstanding + per_connection - 1) / per_connection;
  return static_cast<int>(std::clamp<int64_t>(needed, 1, kMaxRecommended));
}

int PoolSizer::Step(absl::Time now) {
  const int streams = pool_.options().max_streams_per_connection;
  const int64_t outstanding = pool_.OutstandingCalls();
  samples_.emplace_back(now, Needed(outstanding, streams));
  while (now - samples_.front().first > options_.demand_window) samples_.pop_front();
  int need = 1;
  for (const auto& [at, needed] : samples_) need = std::max(need, needed);

  if (need > recommended_) {
    recommended_ = need;
    below_since_ = absl::InfiniteFuture();
  } else if (need < recommended_) {
    if (below_since_ == absl::InfiniteFuture()) below_since_ = now;
    if (now - below_since_ >= options_.scale_down) --recommended_;
  } else {
    below_since_ = absl::InfiniteFuture();
  }

  int grew = 0;
  int shrank = 0;
  const int before = pool_.size();
  if (pool_.min_size() < pool_.max_size()) {
    const int target = pool_.SetTargetSize(recommended_);
    if (target > before) {
      grew = 1;
      spdlog::info(
          "pool: growing from {} to {} connections: {} calls outstanding, {} streams "
          "per connection",
          before, target, outstanding, streams);
    } else if (target < before) {
      shrank = 1;
      spdlog::info(
          "pool: shrinking from {} to {} connections: demand has needed at most {} "
          "for {}",
          before, target, need, absl::FormatDuration(now - below_since_));
    }
    settling_ = pool_.RebalanceCurrent(options_.rebalance);
  }
  pool_.RecordSizing(recommended_, grew, shrank);
  return recommended_;
}

void PoolSizer::Loop() {
  while (true) {
    const bool busy = settling_ || pool_.OutstandingCalls() > 0 || recommended_ > 1 ||
                      pool_.size() > pool_.min_size();
    {
      absl::MutexLock lock(&mutex_);
      mutex_.AwaitWithTimeout(absl::Condition(&stopping_),
                              busy ? options_.tick : options_.idle_tick);
      if (stopping_) return;
    }
    Step(absl::Now());
  }
}

}  // namespace poolside
