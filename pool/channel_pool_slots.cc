// The slot table of a ChannelPool: opening and freeing slots, creating and
// replacing their channels, Rebalance (the slot life cycle of
// ARCHITECTURE.md), sizing, and the snapshot that reports it all. Leasing,
// picking, watching and ejection are in channel_pool.cc.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pool/channel_pool.h"
#include "pool/channel_pool_slot.h"

namespace poolside {

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

bool ChannelPool::Rebalance(const std::vector<BackendAddress>& backends, RebalanceTiming timing) {
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
    if (outstanding == 0 || now - slot.phase_since >= timing.drain_grace) {
      if (outstanding > 0) {
        spdlog::warn("pool: channel {} ({}) drained after {}; ending the {} calls still on it",
                     slot.index, slot.backend.label, absl::FormatDuration(timing.drain_grace),
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
        if (now - slot->phase_since > timing.connect_timeout && !slot->slow_connect_logged) {
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

bool ChannelPool::RebalanceCurrent(RebalanceTiming timing) {
  std::vector<BackendAddress> backends;
  {
    absl::MutexLock lock(&structure_mutex_);
    backends = backends_;
  }
  return Rebalance(backends, timing);
}

}  // namespace poolside
