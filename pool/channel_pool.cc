#include "pool/channel_pool.h"

#include <grpcpp/alarm.h>
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pool/channel_pool_slot.h"

namespace poolside {
namespace {

// Connectivity watches wake at least this often, so Shutdown() never waits
// longer for a watch to come back.
constexpr auto kWatchSlice = std::chrono::milliseconds(500);

}  // namespace

// A pending connectivity watch on one slot's channel, or, while the slot is
// free, an alarm that looks again later. Confined to the thread that drains
// its queue.
struct ChannelPool::Watch final : QueueEvent {
  void OnQueueEvent(bool /*state_changed*/) override { pool->OnWatchEvent(*this); }

  ChannelPool* pool = nullptr;
  grpc::CompletionQueue* queue = nullptr;
  Slot* slot = nullptr;
  std::shared_ptr<PooledChannel> watched;
  grpc_connectivity_state last_state = GRPC_CHANNEL_IDLE;
  grpc::Alarm alarm;
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
  const int limit = slot_limit_.load();
  for (int i = 0; i < limit; ++i) {
    const Slot& other = slots_[i];
    if (&other != &slot && other.phase.load() == SlotPhase::kActive &&
        other.state.load(std::memory_order_relaxed) == GRPC_CHANNEL_READY &&
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
      // Room for every active slot to be replaced at once: a whole new
      // address set connects while the old one still serves.
      capacity_(2 * options_.size),
      factory_(std::move(factory)),
      slots_(std::make_unique<Slot[]>(capacity_)) {
  for (int i = 0; i < capacity_; ++i) slots_[i].index = i;
  target_size_.store(min_size());
  recommended_size_.store(min_size());
}

ChannelPool::~ChannelPool() { Shutdown(); }

void ChannelPool::Start() {
  absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget(options_.target);
  if (target.ok() && target->kind == UpstreamTarget::Kind::kFixed) {
    Start(target->addresses);
  } else {
    // Until the address tracker resolves the name, grpc resolves it.
    Start({BackendAddress{options_.target, options_.target}});
  }
}

void ChannelPool::Start(const std::vector<BackendAddress>& backends) {
  {
    absl::MutexLock lock(&structure_mutex_);
    backends_ = backends;
    // Slot i on backend i mod n: connections per backend differ by at most one.
    for (int i = 0; i < size(); ++i) OpenSlot(backends[i % backends.size()], SlotPhase::kActive);
  }
  for (int i = 0; i < capacity_; ++i) {
    auto watch = std::make_unique<Watch>();
    watch->pool = this;
    watch->slot = &slots_[i];
    watch->watched = std::atomic_load(&slots_[i].channel);
    watch->last_state = slots_[i].state.load();
    // The watcher counts moves into TRANSIENT_FAILURE; a connect that failed
    // before it began watching made that move unseen.
    if (watch->last_state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      slots_[i].errors.fetch_add(1, std::memory_order_relaxed);
    }
    watches_.push_back(std::move(watch));
  }
  spdlog::info("pool: {} channels to {} over {} backend address{}{}", size(), options_.target,
               backends.size(), backends.size() == 1 ? "" : "es",
               min_size() < max_size()
                   ? absl::StrCat(", sizing itself between ", min_size(), " and ", max_size())
                   : "");
  if (options_.watch_on_caller_queues) return;
  WatchOn({&watch_queue_});
  watcher_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ps-pool-watch");
    WatchLoop();
  });
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
  // Watches on the caller's queues: a watch being handled right now may arm
  // once more, so the caller may shut its queues down only once every watch
  // has come back (within a slice while the queues are drained).
  const auto give_up = std::chrono::steady_clock::now() + 2 * kWatchSlice;
  while (armed_watches_.load() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void ChannelPool::SetConnectionLostListener(std::function<void()> listener) {
  connection_lost_listener_ = std::move(listener);
}

void ChannelPool::ArmWatch(Watch& watch) {
  const auto deadline = std::chrono::system_clock::now() + kWatchSlice;
  if (watch.watched == nullptr) {
    watch.alarm.Set(watch.queue, deadline, watch.tag());
    return;
  }
  watch.watched->channel().NotifyOnStateChange(watch.last_state, deadline, watch.queue,
                                               watch.tag());
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
  if (watch.watched == nullptr) return;  // A free slot.
  const SlotPhase phase = slot.phase.load();
  // Asking to connect brings an IDLE channel (after the upstream closed the
  // connection or sent GOAWAY) back at once instead of on the next call. A
  // draining channel is left to close.
  const grpc_connectivity_state state =
      watch.watched->channel().GetState(/*try_to_connect=*/phase != SlotPhase::kDraining);
  if (state == watch.last_state) return;
  if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) slot.errors.fetch_add(1, std::memory_order_relaxed);
  const auto level = state == GRPC_CHANNEL_CONNECTING || phase != SlotPhase::kActive
                         ? spdlog::level::debug
                         : spdlog::level::info;
  if (spdlog::should_log(level)) {
    std::string backend;
    {
      absl::MutexLock lock(&structure_mutex_);
      backend = slot.backend.label;
    }
    spdlog::log(level, "pool: channel {} ({}) {} -> {}", slot.index, backend,
                ConnectivityStateName(watch.last_state), ConnectivityStateName(state));
  }
  const bool lost = watch.last_state == GRPC_CHANNEL_READY &&
                    (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_IDLE);
  watch.last_state = state;
  slot.state.store(state, std::memory_order_relaxed);
  // The backend may be gone: the address tracker looks at once.
  if (lost && phase == SlotPhase::kActive && connection_lost_listener_) {
    connection_lost_listener_();
  }
}

std::optional<ChannelPool::Lease> ChannelPool::LeaseSlot(Slot& slot) {
  if (slot.outstanding.fetch_add(1, std::memory_order_relaxed) >=
      options_.max_streams_per_connection) {
    calls_over_stream_limit_.fetch_add(1, std::memory_order_relaxed);
  }
  std::shared_ptr<PooledChannel> channel = std::atomic_load(&slot.channel);
  // The address tracker may have taken the slot out of rotation since the
  // caller looked; counting the call first means it frees no slot that a
  // call is about to use.
  if (channel == nullptr || slot.phase.load() != SlotPhase::kActive) {
    slot.outstanding.fetch_sub(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  slot.calls_started.fetch_add(1, std::memory_order_relaxed);
  return Lease(this, &slot, std::move(channel));
}

std::optional<ChannelPool::Lease> ChannelPool::PickReady() {
  const int limit = slot_limit_.load(std::memory_order_acquire);
  if (limit == 0) return std::nullopt;
  // Rotating the starting point spreads calls over equally loaded channels.
  const int start = static_cast<int>(next_pick_.fetch_add(1, std::memory_order_relaxed) %
                                     static_cast<uint32_t>(limit));
  // Channels failing health checks are used only while no healthy one is
  // ready: a degraded upstream still beats failing the call here.
  // Ejected channels wait out their ejection, then rank with those failing
  // checks until a check passes on them.
  Slot* best[2] = {nullptr, nullptr};  // [0]: healthy, [1]: failing checks.
  int64_t best_outstanding[2] = {INT64_MAX, INT64_MAX};
  int64_t now_unix_nanos = 0;  // Read only if some channel is ejected.
  for (int i = 0; i < limit; ++i) {
    Slot& slot = slots_[(start + i) % limit];
    if (slot.state.load(std::memory_order_relaxed) != GRPC_CHANNEL_READY) continue;
    if (slot.phase.load(std::memory_order_relaxed) != SlotPhase::kActive) continue;
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
  std::optional<Lease> lease = LeaseSlot(*chosen);
  if (!lease) return PickReady();  // Terminates: the slot left rotation.
  // The watcher learns of a dropped connection (GOAWAY, upstream restart) a
  // moment after the channel does; a call started in that moment fails at
  // once. Asking the channel itself closes the window (a cheap atomic read).
  const grpc_connectivity_state actual = lease->channel().channel().GetState(false);
  if (actual == GRPC_CHANNEL_READY) return lease;
  chosen->state.store(actual, std::memory_order_relaxed);
  lease.reset();
  return PickReady();  // Terminates: this slot no longer counts as READY.
}

std::shared_ptr<grpc::Channel> ChannelPool::ChannelToWaitOn() {
  const int limit = std::max(slot_limit_.load(), 1);
  const int start = static_cast<int>(next_pick_.fetch_add(1, std::memory_order_relaxed) %
                                     static_cast<uint32_t>(limit));
  std::shared_ptr<PooledChannel> fallback;
  for (int i = 0; i < capacity_; ++i) {
    Slot& slot = slots_[(start + i) % capacity_];
    std::shared_ptr<PooledChannel> channel = std::atomic_load(&slot.channel);
    if (channel == nullptr) continue;
    if (slot.phase.load() == SlotPhase::kActive) return channel->shared_channel();
    if (fallback == nullptr) fallback = std::move(channel);
  }
  // After Start() there are always `size` active slots; this is for safety.
  return fallback != nullptr ? fallback->shared_channel() : nullptr;
}

std::optional<ChannelPool::Lease> ChannelPool::LeaseIfCurrent(
    const std::shared_ptr<grpc::Channel>& channel) {
  const int limit = slot_limit_.load();
  for (int i = 0; i < limit; ++i) {
    std::shared_ptr<PooledChannel> current = std::atomic_load(&slots_[i].channel);
    if (current != nullptr && current->shared_channel() == channel) return LeaseSlot(slots_[i]);
  }
  return std::nullopt;
}

void ChannelPool::SetProbeHealthy(int slot, bool healthy) {
  slots_[slot].probe_healthy.store(healthy, std::memory_order_relaxed);
}

void ChannelPool::RecordHealthCheckRound(absl::Time at, int failures) {
  health_check_failures_.fetch_add(failures, std::memory_order_relaxed);
  last_health_check_unix_nanos_.store(absl::ToUnixNanos(at), std::memory_order_relaxed);
}

}  // namespace poolside
