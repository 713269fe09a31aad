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
  // Accessed only through std::atomic_load / std::atomic_store.
  std::shared_ptr<PooledChannel> channel;
};

// A pending connectivity watch on one slot's channel. Confined to the watcher.
struct ChannelPool::Watch {
  Slot* slot = nullptr;
  std::shared_ptr<PooledChannel> watched;
  grpc_connectivity_state last_state = GRPC_CHANNEL_IDLE;
};

ChannelPool::Lease::Lease(Slot* slot, std::shared_ptr<PooledChannel> channel)
    : slot_(slot), channel_(std::move(channel)) {}

ChannelPool::Lease::Lease(Lease&& other) noexcept
    : slot_(std::exchange(other.slot_, nullptr)), channel_(std::move(other.channel_)) {}

ChannelPool::Lease& ChannelPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
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

void ChannelPool::Lease::RecordUnavailable() {
  slot_->errors.fetch_add(1, std::memory_order_relaxed);
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
    watch->slot = &slot;
    watch->watched = std::move(channel);
    watch->last_state = slot.state.load();
    ArmWatch(*watch);
    watches_.push_back(std::move(watch));
  }
  spdlog::info("pool: {} channels to {}", options_.size, options_.target);
  watcher_ = std::thread([this] { WatchLoop(); });
}

void ChannelPool::Shutdown() {
  stopping_.store(true);
  if (watcher_.joinable()) watcher_.join();
}

void ChannelPool::ArmWatch(Watch& watch) {
  watch.watched->channel().NotifyOnStateChange(
      watch.last_state, std::chrono::system_clock::now() + kWatchSlice, &watch_queue_, &watch);
}

void ChannelPool::WatchLoop() {
  size_t armed = watches_.size();
  void* tag = nullptr;
  bool state_changed = false;
  while (armed > 0 && watch_queue_.Next(&tag, &state_changed)) {
    --armed;
    if (stopping_.load()) continue;
    Watch& watch = *static_cast<Watch*>(tag);
    OnStateChange(watch);
    ArmWatch(watch);
    ++armed;
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
  return Lease(&slot, std::atomic_load(&slot.channel));
}

std::optional<ChannelPool::Lease> ChannelPool::PickReady() {
  const int size = options_.size;
  // Rotating the starting point spreads calls over equally loaded channels.
  const int start = static_cast<int>(next_pick_.fetch_add(1, std::memory_order_relaxed) % size);
  // Channels failing health checks are used only while no healthy one is
  // ready: a degraded upstream still beats failing the call here.
  Slot* best[2] = {nullptr, nullptr};  // [0]: healthy, [1]: failing checks.
  int64_t best_outstanding[2] = {INT64_MAX, INT64_MAX};
  for (int i = 0; i < size; ++i) {
    Slot& slot = slots_[(start + i) % size];
    if (slot.state.load(std::memory_order_relaxed) != GRPC_CHANNEL_READY) continue;
    const int tier = slot.probe_healthy.load(std::memory_order_relaxed) ? 0 : 1;
    const int64_t outstanding = slot.outstanding.load(std::memory_order_relaxed);
    if (outstanding < best_outstanding[tier]) {
      best[tier] = &slot;
      best_outstanding[tier] = outstanding;
    }
  }
  Slot* chosen = best[0] != nullptr ? best[0] : best[1];
  if (chosen == nullptr) return std::nullopt;
  return LeaseSlot(*chosen);
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
    channel.healthy =
        channel.state == GRPC_CHANNEL_READY && slot.probe_healthy.load(std::memory_order_relaxed);
    channel.outstanding_calls = slot.outstanding.load(std::memory_order_relaxed);
    channel.calls_started = slot.calls_started.load(std::memory_order_relaxed);
    channel.errors = slot.errors.load(std::memory_order_relaxed);
    const std::shared_ptr<PooledChannel> current = std::atomic_load(&slot.channel);
    channel.age = current ? now - current->created_at() : absl::ZeroDuration();
    snapshot.connection_errors += channel.errors;
    snapshot.channels.push_back(channel);
  }
  snapshot.connections_created = connections_created_.load(std::memory_order_relaxed);
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
