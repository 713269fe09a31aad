#include "pool/channel_pool.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <climits>
#include <utility>

namespace poolside {
namespace {

// Connectivity watches wake at least this often, so Shutdown() never waits
// longer for a watch to come back.
constexpr auto kWatchSlice = std::chrono::milliseconds(500);

}  // namespace

// One pool position. The channel in it may be replaced; the counters belong to
// the position, so calls still running on a replaced channel count here.
struct alignas(64) ChannelPool::Slot {
  int index = 0;
  std::atomic<int64_t> outstanding{0};
  std::atomic<grpc_connectivity_state> state{GRPC_CHANNEL_IDLE};
  // Set by the health monitor; connectivity is tracked separately in state.
  std::atomic<bool> probe_healthy{true};
  std::atomic<uint64_t> calls_started{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> consecutive_unavailable{0};
  // Out of rotation until ejected_until (unix ns), then on probation until a
  // health check passes.
  std::atomic<bool> ejected{false};
  std::atomic<int64_t> ejected_until_unix_nanos{0};
  // Accessed only through std::atomic_load / std::atomic_store.
  std::shared_ptr<PooledChannel> channel;
};

// A pending connectivity watch on one slot's channel. Confined to the thread
// that drains its queue.
struct ChannelPool::Watch final : QueueEvent {
  void OnQueueEvent(bool /*state_changed*/) override { pool->OnWatchEvent(*this); }

  ChannelPool* pool = nullptr;
  grpc::CompletionQueue* queue = nullptr;
  Slot* slot = nullptr;
  std::shared_ptr<PooledChannel> watched;
  grpc_connectivity_state last_state = GRPC_CHANNEL_IDLE;
};

ChannelPool::Lease::Lease(ChannelPool* pool, Slot* slot, std::shared_ptr<PooledChannel> channel)
    : pool_(pool), slot_(slot), channel_(std::move(channel)) {}

ChannelPool::Lease::Lease(Lease&& other) noexcept
    : pool_(other.pool_),
      slot_(std::exchange(other.slot_, nullptr)),
      channel_(std::move(other.channel_)) {}

ChannelPool::Lease& ChannelPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    slot_ = std::exchange(other.slot_, nullptr);
    channel_ = std::move(other.channel_);
  }
  return *this;
}

ChannelPool::Lease::~Lease() { Release(); }

void ChannelPool::Lease::Release() {
  if (slot_ != nullptr) slot_->outstanding.fetch_sub(1, std::memory_order_relaxed);
  slot_ = nullptr;
}

int ChannelPool::Lease::slot_index() const { return slot_->index; }

void ChannelPool::Lease::RecordOutcome(bool unavailable) {
  if (!unavailable) {
    if (slot_->consecutive_unavailable.load(std::memory_order_relaxed) != 0) {
      slot_->consecutive_unavailable.store(0, std::memory_order_relaxed);
    }
    return;
  }
  slot_->errors.fetch_add(1, std::memory_order_relaxed);
  const int failures = slot_->consecutive_unavailable.fetch_add(1, std::memory_order_relaxed) + 1;
  const int threshold = pool_->options_.outlier_consecutive_failures;
  if (threshold > 0 && failures >= threshold) pool_->MaybeEject(*slot_);
}

void ChannelPool::MaybeEject(Slot& slot) {
  // Never take out the last channel that could serve.
  int others_serving = 0;
  for (int i = 0; i < options_.size; ++i) {
    const Slot& other = slots_[i];
    if (&other != &slot && other.state.load(std::memory_order_relaxed) == GRPC_CHANNEL_READY &&
        other.probe_healthy.load(std::memory_order_relaxed) &&
        !other.ejected.load(std::memory_order_relaxed)) {
      ++others_serving;
    }
  }
  if (others_serving == 0 || slot.ejected.load()) return;
  const absl::Time probe_at = absl::Now() + options_.outlier_ejection;
  slot.ejected_until_unix_nanos.store(absl::ToUnixNanos(probe_at), std::memory_order_relaxed);
  if (slot.ejected.exchange(true)) return;  // Another call ejected it meanwhile.
  slot.consecutive_unavailable.store(0, std::memory_order_relaxed);
  outlier_ejections_.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("pool: channel {} ejected for {} after {} consecutive UNAVAILABLE calls", slot.index,
               absl::FormatDuration(options_.outlier_ejection),
               options_.outlier_consecutive_failures);
  if (ejection_listener_) ejection_listener_(probe_at);
}

void ChannelPool::EndEjection(int slot) {
  Slot& target = slots_[slot];
  if (!target.ejected.load() ||
      absl::ToUnixNanos(absl::Now()) < target.ejected_until_unix_nanos.load()) {
    return;  // Not ejected, or still serving its ejection.
  }
  if (target.ejected.exchange(false)) {
    spdlog::info("pool: channel {} back in rotation after a passing health check", slot);
  }
}

void ChannelPool::SetEjectionListener(std::function<void(absl::Time)> listener) {
  ejection_listener_ = std::move(listener);
}

ChannelPool::ChannelPool(PoolOptions options, std::unique_ptr<ChannelFactory> factory)
    : options_(std::move(options)),
      factory_(std::move(factory)),
      slots_(std::make_unique<Slot[]>(options_.size)) {
  for (int i = 0; i < options_.size; ++i) slots_[i].index = i;
}

ChannelPool::~ChannelPool() { Shutdown(); }

void ChannelPool::Start() {
  for (int i = 0; i < options_.size; ++i) {
    Slot& slot = slots_[i];
    std::shared_ptr<PooledChannel> channel = NewChannel(i);
    slot.state.store(channel->channel().GetState(/*try_to_connect=*/false));
    std::atomic_store(&slot.channel, channel);
    auto watch = std::make_unique<Watch>();
    watch->pool = this;
    watch->slot = &slot;
    watch->watched = std::move(channel);
    watch->last_state = slot.state.load();
    watches_.push_back(std::move(watch));
  }
  spdlog::info("pool: {} channels to {}", options_.size, options_.target);
  if (options_.watch_on_caller_queues) return;
  WatchOn({&watch_queue_});
  watcher_ = std::thread([this] { WatchLoop(); });
}

void ChannelPool::WatchOn(const std::vector<grpc::CompletionQueue*>& queues) {
  for (size_t i = 0; i < watches_.size(); ++i) {
    Watch& watch = *watches_[i];
    watch.queue = queues[i % queues.size()];
    armed_watches_.fetch_add(1, std::memory_order_relaxed);
    ArmWatch(watch);
  }
}

void ChannelPool::Shutdown() {
  stopping_.store(true);
  if (watcher_.joinable()) watcher_.join();
}

void ChannelPool::ArmWatch(Watch& watch) {
  watch.watched->channel().NotifyOnStateChange(
      watch.last_state, std::chrono::system_clock::now() + kWatchSlice, watch.queue, watch.tag());
}

void ChannelPool::OnWatchEvent(Watch& watch) {
  if (stopping_.load()) {
    armed_watches_.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  OnStateChange(watch);
  ArmWatch(watch);
}

void ChannelPool::WatchLoop() {
  void* tag = nullptr;
  bool state_changed = false;
  while (armed_watches_.load(std::memory_order_relaxed) > 0 &&
         watch_queue_.Next(&tag, &state_changed)) {
    QueueEvent::Dispatch(tag, state_changed);
  }
  watch_queue_.Shutdown();
  while (watch_queue_.Next(&tag, &state_changed)) {
  }
}

void ChannelPool::OnStateChange(Watch& watch) {
  Slot& slot = *watch.slot;
  std::shared_ptr<PooledChannel> current = std::atomic_load(&slot.channel);
  if (current != watch.watched) {
    watch.watched = std::move(current);
    watch.last_state = GRPC_CHANNEL_IDLE;
  }
  // Asking to connect brings an IDLE channel (after the upstream closed the
  // connection or sent GOAWAY) back at once instead of on the next call.
  const grpc_connectivity_state state = watch.watched->channel().GetState(/*try_to_connect=*/true);
  if (state == watch.last_state) return;
  if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) slot.errors.fetch_add(1, std::memory_order_relaxed);
  const auto level = state == GRPC_CHANNEL_CONNECTING ? spdlog::level::debug : spdlog::level::info;
  spdlog::log(level, "pool: channel {} {} -> {}", slot.index,
              ConnectivityStateName(watch.last_state), ConnectivityStateName(state));
  watch.last_state = state;
  slot.state.store(state, std::memory_order_relaxed);
}

ChannelPool::Lease ChannelPool::LeaseSlot(Slot& slot) {
  slot.outstanding.fetch_add(1, std::memory_order_relaxed);
  slot.calls_started.fetch_add(1, std::memory_order_relaxed);
  return Lease(this, &slot, std::atomic_load(&slot.channel));
}

std::optional<ChannelPool::Lease> ChannelPool::PickReady() {
  const int size = options_.size;
  // Rotating the starting point spreads calls over equally loaded channels.
  const int start = static_cast<int>(next_pick_.fetch_add(1, std::memory_order_relaxed) % size);
  // Channels failing health checks are used only while no healthy one is
  // ready: a degraded upstream still beats failing the call here.
  // Ejected channels wait out their ejection, then rank with those failing
  // checks until a check passes on them.
  Slot* best[2] = {nullptr, nullptr};  // [0]: healthy, [1]: failing checks.
  int64_t best_outstanding[2] = {INT64_MAX, INT64_MAX};
  int64_t now_unix_nanos = 0;  // Read only if some channel is ejected.
  for (int i = 0; i < size; ++i) {
    Slot& slot = slots_[(start + i) % size];
    if (slot.state.load(std::memory_order_relaxed) != GRPC_CHANNEL_READY) continue;
    const bool ejected = slot.ejected.load(std::memory_order_relaxed);
    if (ejected) {
      if (now_unix_nanos == 0) now_unix_nanos = absl::ToUnixNanos(absl::Now());
      if (now_unix_nanos < slot.ejected_until_unix_nanos.load(std::memory_order_relaxed)) continue;
    }
    const int tier = slot.probe_healthy.load(std::memory_order_relaxed) && !ejected ? 0 : 1;
    const int64_t outstanding = slot.outstanding.load(std::memory_order_relaxed);
    if (outstanding < best_outstanding[tier]) {
      best[tier] = &slot;
      best_outstanding[tier] = outstanding;
    }
  }
  Slot* chosen = best[0] != nullptr ? best[0] : best[1];
  if (chosen == nullptr) return std::nullopt;
  Lease lease = LeaseSlot(*chosen);
  // The watcher learns of a dropped connection (GOAWAY, upstream restart) a
  // moment after the channel does; a call started in that moment fails at
  // once. Asking the channel itself closes the window (a cheap atomic read).
  const grpc_connectivity_state actual = lease.channel().channel().GetState(false);
  if (actual == GRPC_CHANNEL_READY) return lease;
  chosen->state.store(actual, std::memory_order_relaxed);
  return PickReady();  // Terminates: this slot no longer counts as READY.
}

std::shared_ptr<grpc::Channel> ChannelPool::ChannelToWaitOn() {
  const int index = static_cast<int>(next_pick_.fetch_add(1, std::memory_order_relaxed) %
                                     static_cast<uint32_t>(options_.size));
  return std::atomic_load(&slots_[index].channel)->shared_channel();
}

std::optional<ChannelPool::Lease> ChannelPool::LeaseIfCurrent(
    const std::shared_ptr<grpc::Channel>& channel) {
  for (int i = 0; i < options_.size; ++i) {
    if (std::atomic_load(&slots_[i].channel)->shared_channel() == channel) {
      return LeaseSlot(slots_[i]);
    }
  }
  return std::nullopt;
}

PoolSnapshot ChannelPool::Snapshot() const {
  PoolSnapshot snapshot;
  snapshot.max_streams_per_connection = options_.max_streams_per_connection;
  const absl::Time now = absl::Now();
  for (int i = 0; i < options_.size; ++i) {
    const Slot& slot = slots_[i];
    ChannelSnapshot channel;
    channel.index = i;
    channel.state = slot.state.load(std::memory_order_relaxed);
    channel.ejected = slot.ejected.load(std::memory_order_relaxed);
    channel.healthy = channel.state == GRPC_CHANNEL_READY &&
                      slot.probe_healthy.load(std::memory_order_relaxed) && !channel.ejected;
    channel.outstanding_calls = slot.outstanding.load(std::memory_order_relaxed);
    channel.calls_started = slot.calls_started.load(std::memory_order_relaxed);
    channel.errors = slot.errors.load(std::memory_order_relaxed);
    const std::shared_ptr<PooledChannel> current = std::atomic_load(&slot.channel);
    channel.age = current ? now - current->created_at() : absl::ZeroDuration();
    snapshot.connection_errors += channel.errors;
    snapshot.channels.push_back(channel);
  }
  snapshot.connections_created = connections_created_.load(std::memory_order_relaxed);
  snapshot.outlier_ejections = outlier_ejections_.load(std::memory_order_relaxed);
  snapshot.health_check_failures = health_check_failures_.load(std::memory_order_relaxed);
  const int64_t last_check = last_health_check_unix_nanos_.load(std::memory_order_relaxed);
  if (last_check != 0) snapshot.last_health_check = absl::FromUnixNanos(last_check);
  return snapshot;
}

std::shared_ptr<PooledChannel> ChannelPool::CurrentChannel(int slot) const {
  return std::atomic_load(&slots_[slot].channel);
}

std::shared_ptr<PooledChannel> ChannelPool::NewChannel(int slot) {
  connections_created_.fetch_add(1, std::memory_order_relaxed);
  auto channel = std::make_shared<PooledChannel>(factory_->Create(slot), absl::Now());
  // Connect now rather than on the first call: start-up must not wait for
  // the upstream, but the first call should not pay for the handshake.
  channel->channel().GetState(/*try_to_connect=*/true);
  return channel;
}

void ChannelPool::ReplaceChannel(int slot, std::shared_ptr<PooledChannel> channel) {
  Slot& target = slots_[slot];
  // Until the watcher moves to the new channel, its state stands for the slot.
  target.state.store(channel->channel().GetState(/*try_to_connect=*/true),
                     std::memory_order_relaxed);
  std::atomic_store(&target.channel, std::move(channel));
}

void ChannelPool::SetProbeHealthy(int slot, bool healthy) {
  slots_[slot].probe_healthy.store(healthy, std::memory_order_relaxed);
}

void ChannelPool::RecordHealthCheckRound(absl::Time at, int failures) {
  health_check_failures_.fetch_add(failures, std::memory_order_relaxed);
  last_health_check_unix_nanos_.store(absl::ToUnixNanos(at), std::memory_order_relaxed);
}

}  // namespace poolside
