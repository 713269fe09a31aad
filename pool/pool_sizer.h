// Sizes the pool from measured demand, and says what size the demand needs.
//
// Demand is the calls outstanding on the pool's connections. A connection
// carries at most max_streams_per_connection of them at once (the upstream's
// MAX_CONCURRENT_STREAMS, GRPC_MAX_STREAMS_PER_CONNECTION); calls beyond that
// wait in the transport for stream quota. So the demand needs
// ceil(outstanding / streams per connection) connections.
//
// The recommendation follows that need as a sizing pool would: up at once
// to the peak of the last second, down one connection at a time once the
// need has stayed below it for the scale-down period. It is computed for
// fixed pools too (poolside_pool_recommended_connections), so an operator
// sees when a fixed size is wrong. A pool whose minimum is below its maximum
// takes the recommendation, clamped to [min, max], as its target: new
// connections are ready before they take calls, and surplus ones drain one
// at a time (ChannelPool::Rebalance).
//
// Ownership and threading: the pool must outlive the sizer. Start() runs it
// on its own thread, which wakes every tick while calls are outstanding or
// the pool is above its minimum, and every idle_tick otherwise. Step() is
// for tests, from one thread, without Start().
#ifndef POOLSIDE_POOL_POOL_SIZER_H_
#define POOLSIDE_POOL_POOL_SIZER_H_

#include <cstdint>
#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pool/channel_pool.h"

namespace poolside {

struct PoolSizerOptions {
  // GRPC_POOL_SCALE_DOWN_SECS.
  absl::Duration scale_down = absl::Seconds(120);
  // The need is the peak of the samples over this window, so that calls
  // ending and starting between two samples do not read as less demand.
  absl::Duration demand_window = absl::Seconds(1);
  absl::Duration tick = absl::Milliseconds(100);
  absl::Duration idle_tick = absl::Milliseconds(500);
  RebalanceTiming rebalance;
};

class PoolSizer {
 public:
  // The largest recommendation (GRPC_CONNECTION_POOL_SIZE's own maximum).
  static constexpr int kMaxRecommended = 1000;

  PoolSizer(ChannelPool& pool, PoolSizerOptions options);
  ~PoolSizer();
  PoolSizer(const PoolSizer&) = delete;
  PoolSizer& operator=(const PoolSizer&) = delete;

  void Start();
  void Shutdown();

  // One sample and decision at `now`; returns the recommendation.
  int Step(absl::Time now);

  // Connections `outstanding` calls need at `streams_per_connection` each;
  // at least 1.
  static int Needed(int64_t outstanding, int streams_per_connection);

 private:
  void Loop();

  ChannelPool& pool_;
  const PoolSizerOptions options_;

  // Confined to the sizing thread (or the caller of Step()).
  std::deque<std::pair<absl::Time, int>> samples_;
  int recommended_;
  // Since when the need has stayed below the recommendation.
  absl::Time below_since_ = absl::InfiniteFuture();
  bool settling_ = false;

  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_POOL_SIZER_H_
