#include "pool/channel_pool.h"

#include <grpcpp/alarm.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"

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
  std::atomic<SlotPhase> phase{SlotPhase::kFree};
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
  // Accessed only through std::atomic_load / std::atomic_store; null when free.
  std::shared_ptr<PooledChannel> channel;
  // Protected by the pool's structure_mutex_.
  BackendAddress backend;
  absl::Time phase_since;
  // A connecting slot past the connect timeout has been logged.
  bool slow_connect_logged = false;
};

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
    watches_.push_back(std::move(watch));
  }
  spdlog::info("pool: {} channels to {} over {} backend address{}{}", size(), options_.target,
               backends.size(), backends.size() == 1 ? "" : "es",
               min_size() < max_size()
                   ? absl::StrCat(", sizing itself between ", min_size(), " and ", max_size())
                   : "");
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

PoolSnapshot ChannelPool::Snapshot() const {
  PoolSnapshot snapshot;
  snapshot.max_streams_per_connection = options_.max_streams_per_connection;
  snapshot.size = size();
  snapshot.min_size = min_size();
  snapshot.max_size = max_size();
  snapshot.recommended_size = recommended_size_.load();
  snapshot.grow_events = grow_events_.load();
  snapshot.shrink_events = shrink_events_.load();
  snapshot.calls_over_stream_limit = calls_over_stream_limit_.load();
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&structure_mutex_);
  std::map<std::string, BackendSnapshot> backends;
  for (const BackendAddress& backend : backends_) {
    BackendSnapshot& entry = backends[backend.label];
    entry.address = backend.label;
    auto retired = retired_calls_.find(backend.label);
    if (retired != retired_calls_.end()) entry.calls_started = retired->second;
  }
  for (int i = 0; i < capacity_; ++i) {
    const Slot& slot = slots_[i];
    const SlotPhase phase = slot.phase.load();
    if (phase == SlotPhase::kFree) continue;
    ChannelSnapshot channel;
    channel.index = i;
    channel.phase = phase;
    channel.backend = slot.backend.label;
    channel.state = slot.state.load(std::memory_order_relaxed);
    channel.ejected = slot.ejected.load(std::memory_order_relaxed);
    channel.healthy = channel.state == GRPC_CHANNEL_READY &&
                      slot.probe_healthy.load(std::memory_order_relaxed) && !channel.ejected;
    channel.outstanding_calls = slot.outstanding.load(std::memory_order_relaxed);
    snapshot.calls_waiting_for_stream_quota +=
        std::max<int64_t>(channel.outstanding_calls - options_.max_streams_per_connection, 0);
    channel.calls_started = slot.calls_started.load(std::memory_order_relaxed);
    channel.errors = slot.errors.load(std::memory_order_relaxed);
    const std::shared_ptr<PooledChannel> current = std::atomic_load(&slot.channel);
    channel.age = current ? now - current->created_at() : absl::ZeroDuration();
    snapshot.connection_errors += channel.errors;
    auto backend = backends.find(channel.backend);
    if (backend != backends.end()) {
      BackendSnapshot& entry = backend->second;
      entry.calls_started += channel.calls_started;
      entry.active_connections += phase == SlotPhase::kActive ? 1 : 0;
      entry.connecting += phase == SlotPhase::kConnecting ? 1 : 0;
      entry.draining += phase == SlotPhase::kDraining ? 1 : 0;
    }
    snapshot.channels.push_back(std::move(channel));
  }
  for (auto& [label, backend] : backends) snapshot.backends.push_back(std::move(backend));
  snapshot.connection_errors += retired_errors_;
  snapshot.address_set_changes = address_set_changes_;
  snapshot.calls_ended_connection_lost = ended_connection_lost_.load();
  snapshot.calls_ended_drain_grace = ended_drain_grace_.load();
  snapshot.resolution_failures = resolution_failures_;
  snapshot.resolution_failing = resolution_failing_;
  snapshot.connections_created = connections_created_.load(std::memory_order_relaxed);
  snapshot.outlier_ejections = outlier_ejections_.load(std::memory_order_relaxed);
  snapshot.health_check_failures = health_check_failures_.load(std::memory_order_relaxed);
  const int64_t last_check = last_health_check_unix_nanos_.load(std::memory_order_relaxed);
  if (last_check != 0) snapshot.last_health_check = absl::FromUnixNanos(last_check);
  return snapshot;
}

bool ChannelPool::IsActive(int slot) const {
  return slots_[slot].phase.load() == SlotPhase::kActive;
}

std::shared_ptr<PooledChannel> ChannelPool::CurrentChannel(int slot) const {
  return std::atomic_load(&slots_[slot].channel);
}

std::shared_ptr<PooledChannel> ChannelPool::CreateChannel(const BackendAddress& backend, int slot) {
  connections_created_.fetch_add(1, std::memory_order_relaxed);
  auto channel = std::make_shared<PooledChannel>(factory_->Create(backend, slot), absl::Now(),
                                                 next_channel_id_.fetch_add(1));
  // Connect now rather than on the first call: start-up must not wait for
  // the upstream, but the first call should not pay for the handshake.
  channel->channel().GetState(/*try_to_connect=*/true);
  return channel;
}

std::shared_ptr<PooledChannel> ChannelPool::NewChannel(int slot) {
  BackendAddress backend;
  {
    absl::MutexLock lock(&structure_mutex_);
    if (slots_[slot].phase.load() == SlotPhase::kFree) return nullptr;
    backend = slots_[slot].backend;
  }
  return CreateChannel(backend, slot);
}

bool ChannelPool::ReplaceChannel(int slot, std::shared_ptr<PooledChannel> channel) {
  absl::MutexLock lock(&structure_mutex_);
  Slot& target = slots_[slot];
  if (target.phase.load() != SlotPhase::kActive) return false;
  // Until the watcher moves to the new channel, its state stands for the slot.
  target.state.store(channel->channel().GetState(/*try_to_connect=*/true),
                     std::memory_order_relaxed);
  std::atomic_store(&target.channel, std::move(channel));
  return true;
}

int ChannelPool::OpenSlot(const BackendAddress& backend, SlotPhase phase) {
  for (int i = 0; i < capacity_; ++i) {
    Slot& slot = slots_[i];
    // A freed slot whose last calls are still running stays unused, so that
    // their counts never mix with a new connection's.
    if (slot.phase.load() != SlotPhase::kFree || slot.outstanding.load() != 0) continue;
    std::shared_ptr<PooledChannel> channel = CreateChannel(backend, i);
    slot.backend = backend;
    slot.phase_since = absl::Now();
    slot.slow_connect_logged = false;
    slot.calls_started.store(0);
    slot.errors.store(0);
    slot.consecutive_unavailable.store(0);
    slot.ejected.store(false);
    slot.probe_healthy.store(true);
    slot.state.store(channel->channel().GetState(/*try_to_connect=*/false));
    std::atomic_store(&slot.channel, std::move(channel));
    slot.phase.store(phase);
    UpdateSlotLimit();
    return i;
  }
  return -1;
}

void ChannelPool::FreeSlot(Slot& slot) {
  for (const BackendAddress& backend : backends_) {
    if (backend == slot.backend) retired_calls_[backend.label] += slot.calls_started.load();
  }
  retired_errors_ += slot.errors.load();
  slot.phase.store(SlotPhase::kFree);
  std::atomic_store(&slot.channel, std::shared_ptr<PooledChannel>());
  slot.state.store(GRPC_CHANNEL_IDLE);
  slot.backend = BackendAddress();
  UpdateSlotLimit();
}

void ChannelPool::UpdateSlotLimit() {
  int limit = 0;
  for (int i = 0; i < capacity_; ++i) {
    if (slots_[i].phase.load() != SlotPhase::kFree) limit = i + 1;
  }
  slot_limit_.store(limit, std::memory_order_release);
}

void ChannelPool::RecordResolution(bool failed, bool set_changed) {
  absl::MutexLock lock(&structure_mutex_);
  resolution_failures_ += failed ? 1 : 0;
  address_set_changes_ += set_changed ? 1 : 0;
  resolution_failing_ = failed;
}

bool ChannelPool::Rebalance(const std::vector<BackendAddress>& backends,
                            absl::Duration connect_timeout, absl::Duration drain_grace) {
  if (backends.empty()) return false;
  absl::MutexLock lock(&structure_mutex_);
  const absl::Time now = absl::Now();
  if (backends != backends_) {
    backends_ = backends;
    // Per-backend totals are kept only for the current set: the series stay
    // bounded by the pool's size.
    for (auto it = retired_calls_.begin(); it != retired_calls_.end();) {
      const bool kept = std::any_of(backends_.begin(), backends_.end(),
                                    [&](const BackendAddress& b) { return b.label == it->first; });
      it = kept ? std::next(it) : retired_calls_.erase(it);
    }
  }

  // Draining slots leave when their calls are over or their grace is up; the
  // calls still running then are cut (their forwarding threads end them
  // within a check interval) and keep the channel alive until they end.
  for (int i = 0; i < capacity_; ++i) {
    Slot& slot = slots_[i];
    if (slot.phase.load() != SlotPhase::kDraining) continue;
    const int64_t outstanding = slot.outstanding.load();
    if (outstanding == 0 || now - slot.phase_since >= drain_grace) {
      if (outstanding > 0) {
        spdlog::warn("pool: channel {} ({}) drained after {}; ending the {} calls still on it",
                     slot.index, slot.backend.label, absl::FormatDuration(drain_grace),
                     outstanding);
        std::atomic_load(&slot.channel)->Cut();
        cuts_.fetch_add(1, std::memory_order_release);
      } else {
        spdlog::debug("pool: channel {} ({}) drained", slot.index, slot.backend.label);
      }
      FreeSlot(slot);
    }
  }

  // Each backend's share: target / n, and one more for the first target % n
  // of them, those holding the most active slots first (the fewest moves).
  const int target = size();
  std::map<std::string, int> active;
  std::map<std::string, std::vector<Slot*>> connecting;
  int total_active = 0;
  for (int i = 0; i < capacity_; ++i) {
    Slot& slot = slots_[i];
    const SlotPhase phase = slot.phase.load();
    if (phase == SlotPhase::kActive) {
      ++active[slot.backend.label];
      ++total_active;
    } else if (phase == SlotPhase::kConnecting) {
      connecting[slot.backend.label].push_back(&slot);
    }
  }
  std::vector<const BackendAddress*> order;
  for (const BackendAddress& backend : backends_) order.push_back(&backend);
  std::stable_sort(order.begin(), order.end(),
                   [&](const BackendAddress* a, const BackendAddress* b) {
                     return active[a->label] > active[b->label];
                   });
  const int n = static_cast<int>(order.size());
  std::map<std::string, int> share;
  for (int i = 0; i < n; ++i) {
    share[order[i]->label] = target / n + (i < target % n ? 1 : 0);
  }
  const auto share_of = [&share](const std::string& label) {
    auto it = share.find(label);
    return it == share.end() ? 0 : it->second;
  };

  // Connections to backends that no longer need them go at once (they carry
  // no calls); backends short of their share get new ones.
  for (auto& [label, slots] : connecting) {
    const int wanted = std::max(share_of(label) - active[label], 0);
    while (static_cast<int>(slots.size()) > wanted) {
      FreeSlot(*slots.back());
      slots.pop_back();
    }
  }
  for (const BackendAddress* backend : order) {
    const int missing = share_of(backend->label) - active[backend->label] -
                        static_cast<int>(connecting[backend->label].size());
    for (int i = 0; i < missing; ++i) {
      const int opened = OpenSlot(*backend, SlotPhase::kConnecting);
      if (opened < 0) break;  // Every position taken: again once drains end.
      connecting[backend->label].push_back(&slots_[opened]);
      spdlog::debug("pool: channel {} connecting to {}", opened, backend->label);
    }
  }

  // The active slot to drain when one must go: of the backend furthest over
  // its share, preferring one that is not READY, then the least busy.
  const auto pick_surplus = [&]() -> Slot* {
    Slot* surplus = nullptr;
    int surplus_over = 0;
    for (int i = 0; i < capacity_; ++i) {
      Slot& candidate = slots_[i];
      if (candidate.phase.load() != SlotPhase::kActive) continue;
      const int over = active[candidate.backend.label] - share_of(candidate.backend.label);
      if (over <= 0) continue;
      const auto rank = [](const Slot& s) {
        return std::make_pair(s.state.load() == GRPC_CHANNEL_READY, s.outstanding.load());
      };
      if (surplus == nullptr || over > surplus_over ||
          (over == surplus_over && rank(candidate) < rank(*surplus))) {
        surplus = &candidate;
        surplus_over = over;
      }
    }
    return surplus;
  };
  const auto drain = [&](Slot& surplus) {
    surplus.phase.store(SlotPhase::kDraining);
    surplus.phase_since = now;
    --active[surplus.backend.label];
    --total_active;
  };

  // Connect new first: a new connection joins rotation only once READY, and
  // only then does one surplus slot start draining.
  bool connecting_left = false;
  for (auto& [label, slots] : connecting) {
    for (Slot* slot : slots) {
      if (slot->phase.load() != SlotPhase::kConnecting) continue;
      std::shared_ptr<PooledChannel> channel = std::atomic_load(&slot->channel);
      const grpc_connectivity_state state = channel->channel().GetState(/*try_to_connect=*/true);
      slot->state.store(state, std::memory_order_relaxed);
      if (state != GRPC_CHANNEL_READY) {
        connecting_left = true;
        if (now - slot->phase_since > connect_timeout && !slot->slow_connect_logged) {
          // It keeps trying (grpc's backoff); the slots it would replace
          // keep serving meanwhile.
          spdlog::warn("pool: new connection {} to {} not ready after {}; still trying",
                       slot->index, label, absl::FormatDuration(now - slot->phase_since));
          slot->slow_connect_logged = true;
        }
        continue;
      }
      Slot* surplus = pick_surplus();
      if (surplus == nullptr && total_active >= target) continue;
      slot->phase_since = now;
      slot->phase.store(SlotPhase::kActive);
      ++active[label];
      ++total_active;
      if (surplus != nullptr) {
        drain(*surplus);
        spdlog::debug("pool: channel {} ({}) in rotation; channel {} ({}) draining", slot->index,
                      label, surplus->index, surplus->backend.label);
      }
    }
  }

  // A smaller target (the pool sizing itself down) and nothing to swap in:
  // the surplus drains one slot at a time.
  if (total_active > target && !connecting_left) {
    bool draining = false;
    for (int i = 0; i < capacity_; ++i) {
      draining = draining || slots_[i].phase.load() == SlotPhase::kDraining;
    }
    if (Slot* surplus = draining ? nullptr : pick_surplus(); surplus != nullptr) {
      drain(*surplus);
      spdlog::debug("pool: channel {} ({}) draining: the pool is shrinking to {}", surplus->index,
                    surplus->backend.label, target);
    }
  }

  bool settled = true;
  for (int i = 0; i < capacity_; ++i) {
    const SlotPhase phase = slots_[i].phase.load();
    settled = settled && (phase == SlotPhase::kFree || phase == SlotPhase::kActive);
  }
  for (const auto& [label, count] : active) settled = settled && count == share_of(label);
  return !settled;
}

int ChannelPool::SetTargetSize(int size) {
  const int clamped = std::clamp(size, min_size(), max_size());
  target_size_.store(clamped);
  return clamped;
}

int64_t ChannelPool::OutstandingCalls() const {
  int64_t outstanding = 0;
  for (int i = 0; i < capacity_; ++i) {
    outstanding += slots_[i].outstanding.load(std::memory_order_relaxed);
  }
  return outstanding;
}

void ChannelPool::RecordSizing(int recommended, int grew, int shrank) {
  recommended_size_.store(recommended);
  grow_events_.fetch_add(grew);
  shrink_events_.fetch_add(shrank);
}

bool ChannelPool::RebalanceCurrent(absl::Duration connect_timeout, absl::Duration drain_grace) {
  std::vector<BackendAddress> backends;
  {
    absl::MutexLock lock(&structure_mutex_);
    backends = backends_;
  }
  return Rebalance(backends, connect_timeout, drain_grace);
}

void ChannelPool::SetProbeHealthy(int slot, bool healthy) {
  slots_[slot].probe_healthy.store(healthy, std::memory_order_relaxed);
}

void ChannelPool::RecordHealthCheckRound(absl::Time at, int failures) {
  health_check_failures_.fetch_add(failures, std::memory_order_relaxed);
  last_health_check_unix_nanos_.store(absl::ToUnixNanos(at), std::memory_order_relaxed);
}

}  // namespace poolside
