// A set of upstream gRPC channels, each its own TCP connection to one
// backend address, that forwarded calls share. HTTP/2 multiplexes, so
// channels are never checked out: a call leases a channel (which only counts
// it as outstanding) and many calls ride one channel at once.
//
// The pool has `size` active slots, spread over the backend addresses so that
// connections per address differ by at most one, and room for as many more
// that are connecting (to addresses the pool moves towards) or draining
// (surplus, finishing their calls). Rebalance() moves the pool towards a new
// address set; see ARCHITECTURE.md for the slot life cycle.
//
// Thread-safety: thread-safe. PickReady() and Lease are lock-free (atomics
// only) because they run for every forwarded call; changes to which slots
// exist take structure_mutex_ (never held across a gRPC call); the
// connectivity watcher runs on its own thread.
#ifndef POOLSIDE_POOL_CHANNEL_POOL_H_
#define POOLSIDE_POOL_CHANNEL_POOL_H_

#include <grpc/grpc.h>
#include <grpcpp/channel.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pool/address_follower.h"
#include "pool/channel_factory.h"
#include "pool/pool_snapshot.h"
#include "pool/queue_event.h"
#include "pool/upstream_target.h"

namespace poolside {

struct PoolOptions {
  // gRPC target URI of the upstream, used in logs and error messages.
  std::string target;
  // Active slots (connections in rotation) once the pool has settled: the
  // maximum, when min_size is lower and the pool sizes itself.
  int size = 10;
  // The fewest active slots a pool sizing itself keeps (and starts with);
  // 0 means `size`, a fixed pool.
  int min_size = 0;
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
  PooledChannel(std::shared_ptr<grpc::Channel> channel, absl::Time created_at, uint64_t id)
      : channel_(std::move(channel)), stub_(channel_), created_at_(created_at), id_(id) {}

  grpc::Channel& channel() const { return *channel_; }
  const std::shared_ptr<grpc::Channel>& shared_channel() const { return channel_; }
  grpc::GenericStub& stub() { return stub_; }
  absl::Time created_at() const { return created_at_; }
  // Unique within the pool: tells a slot's new channel from its old one.
  uint64_t id() const { return id_; }
  // The pool gave up on this channel (a drain outlived its grace): calls
  // still on it are to end. Any thread.
  void Cut() { cut_.store(true, std::memory_order_relaxed); }
  bool cut() const { return cut_.load(std::memory_order_relaxed); }

 private:
  const std::shared_ptr<grpc::Channel> channel_;
  grpc::GenericStub stub_;
  const absl::Time created_at_;
  const uint64_t id_;
  std::atomic<bool> cut_{false};
};

class ChannelPool : public AddressFollower {
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

  // Creates `size` channels spread over `backends` (not empty), asks each to
  // connect, and (unless watch_on_caller_queues) starts watching their
  // connectivity. Never waits for the upstream.
  void Start(const std::vector<BackendAddress>& backends);
  // Start() over the target's literal addresses, or, for a name, one backend
  // that is the target itself (grpc resolves it) until Rebalance() is given
  // the name's addresses.
  void Start();
  // With watch_on_caller_queues, after Start(): arms the connectivity
  // watches on `queues`, spread over them. Whoever drains a queue passes
  // every tag that QueueEvent::IsQueueEventTag() claims to
  // QueueEvent::Dispatch(), and keeps draining until the watches have ended:
  // within a watch slice (500 ms) of Shutdown().
  void WatchOn(const std::vector<grpc::CompletionQueue*>& queues);
  // Stops the watches and waits (up to two watch slices) until the last has
  // come back. Leases still held stay valid until released.
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

  // How many times the pool has cut channels (PooledChannel::Cut) that still
  // had calls: a caller holding leases looks at them again only when this
  // has changed. Lock-free.
  uint64_t cuts() const { return cuts_.load(std::memory_order_acquire); }
  // Counts a call ended by the caller for one of those reasons (see
  // PoolSnapshot). Any thread.
  void CountCallEndedForLostConnection() { ended_connection_lost_.fetch_add(1); }
  void CountCallEndedAtDrainGrace() { ended_drain_grace_.fetch_add(1); }

  PoolSnapshot Snapshot() const;
  const PoolOptions& options() const { return options_; }
  // Active slots once settled: the current target.
  int size() const { return target_size_.load(std::memory_order_relaxed); }
  int min_size() const { return options_.min_size > 0 ? options_.min_size : options_.size; }
  int max_size() const { return options_.size; }

  // --- For the pool sizer. Thread-safe; none blocks on the network. ---

  // Sets the number of active slots to aim for, clamped to [min, max]; the
  // next Rebalance moves towards it (new connections ready first; surplus
  // ones drain one at a time). Returns the target set.
  int SetTargetSize(int size);
  // Calls holding a lease right now, over every slot.
  int64_t OutstandingCalls() const;
  // Calls started on a connection that already had max_streams_per_connection
  // calls outstanding: they wait in the transport for stream quota.
  uint64_t CallsOverStreamLimit() const {
    return calls_over_stream_limit_.load(std::memory_order_relaxed);
  }
  // What the sizer reports, for Snapshot().
  void RecordSizing(int recommended, int grew, int shrank);
  // Rebalance over the backends the pool has now.
  bool RebalanceCurrent(RebalanceTiming timing);
  // Slot positions: active, connecting and draining slots together never
  // exceed this. Slot indices run from 0 to capacity() - 1.
  int capacity() const { return capacity_; }

  // --- For the address tracker. Thread-safe; none blocks. ---

  // Moves the pool one step towards spreading `size` active slots evenly over
  // `backends` (not empty): opens connections to backends short of their
  // share, puts each into rotation once READY while taking a surplus slot
  // out (the surplus drains: no new calls, its calls finish), and frees
  // draining slots whose calls are over or whose drain grace has passed.
  // A new connection not READY within the connect timeout is logged once and
  // keeps trying; it never displaces a working slot until READY.
  // Returns true while the pool has not settled (call again soon).
  bool Rebalance(const std::vector<BackendAddress>& backends, RebalanceTiming timing) override;
  // Called on the watcher thread when an active connection leaves READY for
  // TRANSIENT_FAILURE or IDLE (a backend may have gone). Set before Start().
  void SetConnectionLostListener(std::function<void()> listener);
  // What the address tracker reports about resolution, for Snapshot().
  void RecordResolution(bool failed, bool set_changed) override;

  // --- For the health monitor. Thread-safe. ---

  // Whether `slot` is in rotation.
  bool IsActive(int slot) const;
  // The channel now in `slot`; null if the slot has none.
  std::shared_ptr<PooledChannel> CurrentChannel(int slot) const;
  // A new channel for `slot`, to the slot's backend, not yet in the pool; it
  // starts connecting. Null if the slot has no backend any more.
  std::shared_ptr<PooledChannel> NewChannel(int slot);
  // Puts `channel` in `slot` if the slot is still active (false if not).
  // Calls running on the old channel finish on it; it is released when the
  // last of them ends.
  bool ReplaceChannel(int slot, std::shared_ptr<PooledChannel> channel);
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

  // A lease on `slot`, or nullopt if the slot left rotation meanwhile.
  std::optional<Lease> LeaseSlot(Slot& slot);
  void MaybeEject(Slot& slot);
  void WatchLoop();
  void ArmWatch(Watch& watch);
  void OnWatchEvent(Watch& watch);
  void OnStateChange(Watch& watch);
  std::shared_ptr<PooledChannel> CreateChannel(const BackendAddress& backend, int slot);
  // Gives a free slot a new channel to `backend`; -1 if every slot is taken.
  int OpenSlot(const BackendAddress& backend, SlotPhase phase)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mutex_);
  void FreeSlot(Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mutex_);
  void UpdateSlotLimit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mutex_);

  // Constant after construction.
  const PoolOptions options_;
  const int capacity_;
  const std::unique_ptr<ChannelFactory> factory_;
  const std::unique_ptr<Slot[]> slots_;

  // Slots at this index and above are free: picks scan below it only.
  std::atomic<int> slot_limit_{0};
  std::atomic<uint32_t> next_pick_{0};
  std::atomic<uint64_t> next_channel_id_{1};
  std::atomic<uint64_t> connections_created_{0};
  std::atomic<uint64_t> cuts_{0};
  std::atomic<int> target_size_{0};
  std::atomic<uint64_t> calls_over_stream_limit_{0};
  std::atomic<int> recommended_size_{0};
  std::atomic<uint64_t> grow_events_{0};
  std::atomic<uint64_t> shrink_events_{0};
  std::atomic<uint64_t> ended_connection_lost_{0};
  std::atomic<uint64_t> ended_drain_grace_{0};
  std::atomic<uint64_t> outlier_ejections_{0};
  std::function<void(absl::Time)> ejection_listener_;
  std::atomic<uint64_t> health_check_failures_{0};
  // Unix nanoseconds of the last health-check round; 0 before the first.
  std::atomic<int64_t> last_health_check_unix_nanos_{0};
  std::atomic<bool> stopping_{false};
  std::function<void()> connection_lost_listener_;

  // Serializes changes to which slots exist and what they connect to.
  mutable absl::Mutex structure_mutex_;
  // Calls started on each backend of the current set by slots since freed.
  std::map<std::string, uint64_t> retired_calls_ ABSL_GUARDED_BY(structure_mutex_);
  std::vector<BackendAddress> backends_ ABSL_GUARDED_BY(structure_mutex_);
  uint64_t address_set_changes_ ABSL_GUARDED_BY(structure_mutex_) = 0;
  uint64_t resolution_failures_ ABSL_GUARDED_BY(structure_mutex_) = 0;
  // Errors counted by slots since freed.
  uint64_t retired_errors_ ABSL_GUARDED_BY(structure_mutex_) = 0;
  bool resolution_failing_ ABSL_GUARDED_BY(structure_mutex_) = false;

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
