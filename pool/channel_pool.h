// A fixed set of upstream gRPC channels, each its own TCP connection, that
// forwarded calls share. HTTP/2 multiplexes, so channels are never checked
// out: a call leases a channel (which only counts it as outstanding) and many
// calls ride one channel at once.
//
// Thread-safety: thread-safe. PickReady() and Lease are lock-free (atomics
// only) because they run for every forwarded call; the connectivity watcher
// runs on its own thread.
#ifndef POOLSIDE_POOL_CHANNEL_POOL_H_
#define POOLSIDE_POOL_CHANNEL_POOL_H_

#include <grpc/grpc.h>
#include <grpcpp/channel.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "pool/channel_factory.h"
#include "pool/pool_snapshot.h"
#include "pool/queue_event.h"

namespace poolside {

struct PoolOptions {
  // gRPC target URI of the upstream, used in logs and error messages.
  std::string target;
  int size = 10;
  // A channel with this many outstanding calls no longer counts as available.
  int max_streams_per_connection = 100;
  // Consecutive UNAVAILABLE calls that take a channel out of rotation until a
  // health check passes on it again (at the earliest after outlier_ejection);
  // 0 turns ejection off. The last healthy channel is never ejected.
  int outlier_consecutive_failures = 5;
  absl::Duration outlier_ejection = absl::Seconds(10);
  // false: Start() watches connectivity on a thread of the pool's own.
  // true: the watches wait on queues handed to WatchOn(), drained by their
  // owner's threads (see queue_event.h for why that is cheaper).
  bool watch_on_caller_queues = false;
};

// One upstream channel and the stub that starts generic calls on it.
// Immutable after construction.
class PooledChannel {
 public:
  PooledChannel(std::shared_ptr<grpc::Channel> channel, absl::Time created_at)
      : channel_(std::move(channel)), stub_(channel_), created_at_(created_at) {}

  grpc::Channel& channel() const { return *channel_; }
  const std::shared_ptr<grpc::Channel>& shared_channel() const { return channel_; }
  grpc::GenericStub& stub() { return stub_; }
  absl::Time created_at() const { return created_at_; }

 private:
  const std::shared_ptr<grpc::Channel> channel_;
  grpc::GenericStub stub_;
  const absl::Time created_at_;
};

class ChannelPool {
 private:
  struct Slot;

 public:
  // A forwarded call's claim on one channel: while it lives, the channel's
  // outstanding count includes the call and the channel stays alive.
  // Movable, not copyable; confined to the call that owns it.
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();

    PooledChannel& channel() const { return *channel_; }
    int slot_index() const;
    // Reports how the leased call ended: `unavailable` for a transport-level
    // failure (UNAVAILABLE). Feeds the error count and outlier ejection.
    void RecordOutcome(bool unavailable);

   private:
    friend class ChannelPool;
    Lease(ChannelPool* pool, Slot* slot, std::shared_ptr<PooledChannel> channel);
    void Release();

    ChannelPool* pool_;
    Slot* slot_;
    std::shared_ptr<PooledChannel> channel_;
  };

  ChannelPool(PoolOptions options, std::unique_ptr<ChannelFactory> factory);
  ~ChannelPool();
  ChannelPool(const ChannelPool&) = delete;
  ChannelPool& operator=(const ChannelPool&) = delete;

  // Creates every channel, asks each to connect, and (unless
  // watch_on_caller_queues) starts watching their connectivity. Never waits
  // for the upstream.
  void Start();
  // With watch_on_caller_queues, after Start(): arms the connectivity
  // watches on `queues`, spread over them. Whoever drains a queue passes
  // every tag that QueueEvent::IsQueueEventTag() claims to
  // QueueEvent::Dispatch(), and keeps draining until the watches have ended:
  // within a watch slice (500 ms) of Shutdown().
  void WatchOn(const std::vector<grpc::CompletionQueue*>& queues);
  // Stops the watches. Leases still held stay valid until released.
  void Shutdown();

  // The ready channel with the fewest outstanding calls, or nullopt when no
  // channel is ready. Hot path: lock-free.
  std::optional<Lease> PickReady();

  // For a call that found nothing ready: the channel it should wait on,
  // rotating so that waiters spread over the pool.
  std::shared_ptr<grpc::Channel> ChannelToWaitOn();

  // Leases the slot whose channel is `channel`, if it is still in the pool
  // (the watcher may not have seen the channel become ready yet).
  std::optional<Lease> LeaseIfCurrent(const std::shared_ptr<grpc::Channel>& channel);

  PoolSnapshot Snapshot() const;
  const PoolOptions& options() const { return options_; }
  int size() const { return options_.size; }

  // --- For the health monitor. Thread-safe. ---

  // The channel now in `slot`.
  std::shared_ptr<PooledChannel> CurrentChannel(int slot) const;
  // A new channel for `slot`, not yet in the pool; it starts connecting.
  std::shared_ptr<PooledChannel> NewChannel(int slot);
  // Puts `channel` in `slot`. Calls running on the old channel finish on it;
  // it is released when the last of them ends.
  void ReplaceChannel(int slot, std::shared_ptr<PooledChannel> channel);
  // Whether the health checks pass on `slot` (connectivity aside). Channels
  // that fail them get no new calls while a healthy channel exists.
  void SetProbeHealthy(int slot, bool healthy);
  // Records a finished health-check round with `failures` failed checks.
  void RecordHealthCheckRound(absl::Time at, int failures);
  // Returns an ejected slot to rotation once its ejection time is over (a
  // health check passed on it); no-op otherwise.
  void EndEjection(int slot);
  // Called (on the thread of the call that caused it) when a slot is ejected,
  // with the time from which it may be probed again. Set before Start().
  void SetEjectionListener(std::function<void(absl::Time probe_at)> listener);

 private:
  struct Watch;

  Lease LeaseSlot(Slot& slot);
  void MaybeEject(Slot& slot);
  void WatchLoop();
  void ArmWatch(Watch& watch);
  void OnWatchEvent(Watch& watch);
  void OnStateChange(Watch& watch);

  // Constant after construction.
  const PoolOptions options_;
  const std::unique_ptr<ChannelFactory> factory_;
  const std::unique_ptr<Slot[]> slots_;

  std::atomic<uint32_t> next_pick_{0};
  std::atomic<uint64_t> connections_created_{0};
  std::atomic<uint64_t> outlier_ejections_{0};
  std::function<void(absl::Time)> ejection_listener_;
  std::atomic<uint64_t> health_check_failures_{0};
  // Unix nanoseconds of the last health-check round; 0 before the first.
  std::atomic<int64_t> last_health_check_unix_nanos_{0};
  std::atomic<bool> stopping_{false};

  // Each watch is confined to the thread draining its queue once armed.
  std::vector<std::unique_ptr<Watch>> watches_;
  // Watches armed and not yet ended by Shutdown().
  std::atomic<int> armed_watches_{0};
  // The pool's own watcher, unless watch_on_caller_queues.
  grpc::CompletionQueue watch_queue_;
  std::thread watcher_;
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_CHANNEL_POOL_H_
