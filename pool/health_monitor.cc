#include "pool/health_monitor.h"

#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.pb.h"

namespace poolside {
namespace {

constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// Before the first round the channels are still connecting: give them this
// long (or the interval, if shorter) before judging them.
constexpr absl::Duration kFirstRoundDelay = absl::Seconds(1);

// When a refreshed channel cannot connect, the old one is kept and the
// refresh retried after this long.
constexpr absl::Duration kRefreshRetryDelay = absl::Seconds(10);

// grpc re-reads TLS files every second; rolling starts after it has.
constexpr absl::Duration kCredentialRollDelay = absl::Seconds(2);

// Identifies the files' current contents well enough to notice a rotation
// (Kubernetes swaps a symlink; stat follows it).
std::string FingerprintFiles(const std::vector<std::string>& files) {
  std::string fingerprint;
  for (const std::string& file : files) {
    struct stat info {};
    if (stat(file.c_str(), &info) != 0) {
      absl::StrAppend(&fingerprint, file, ":missing;");
      continue;
    }
    absl::StrAppend(&fingerprint, file, ":", info.st_ino, ":", info.st_size, ":",
                    info.st_mtim.tv_sec, ".", info.st_mtim.tv_nsec, ";");
  }
  return fingerprint;
}

grpc::ByteBuffer SerializeProto(const google::protobuf::MessageLite& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

bool ParseServing(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  if (!buffer.DumpToSingleSlice(&slice).ok()) return false;
  grpc::health::v1::HealthCheckResponse response;
  return response.ParseFromArray(slice.begin(), static_cast<int>(slice.size())) &&
         response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace

HealthMonitor::HealthMonitor(ChannelPool& pool, HealthCheckOptions options, RoundCallback on_round)
    : pool_(pool),
      options_(std::move(options)),
      on_round_(std::move(on_round)),
      channels_(pool.capacity()) {}

HealthMonitor::~HealthMonitor() { Shutdown(); }

void HealthMonitor::Start() {
  credential_fingerprint_ = FingerprintFiles(options_.credential_files);
  SyncSlots();
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ps-health");
    Loop();
  });
}

void HealthMonitor::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void HealthMonitor::RequestRound(RoundCallback done) {
  PoolSnapshot recent;
  {
    absl::MutexLock lock(&mutex_);
    const bool rate_limited = absl::Now() - last_round_at_ < options_.min_forced_round_spacing;
    if (!stopping_ && !rate_limited) {
      waiting_.push_back(std::move(done));
      return;
    }
    recent = last_round_;
  }
  done(recent);
}

void HealthMonitor::ProbeAt(absl::Time when) {
  absl::MutexLock lock(&mutex_);
  probe_at_ = std::min(probe_at_, when);
}

void HealthMonitor::Loop() {
  absl::Time next_round = absl::Now() + std::min(options_.interval, kFirstRoundDelay);
  absl::Time next_refresh = NextRefresh();
  absl::Time next_credential_check = options_.credential_files.empty()
                                         ? absl::InfiniteFuture()
                                         : absl::Now() + options_.credential_poll_interval;
  while (true) {
    std::vector<RoundCallback> waiters;
    bool stopping = false;
    {
      absl::MutexLock lock(&mutex_);
      sleeping_until_ = std::min({next_round, next_refresh, next_credential_check});
      auto should_wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || !waiting_.empty() || probe_at_ < sleeping_until_;
      };
      mutex_.AwaitWithDeadline(absl::Condition(&should_wake), sleeping_until_);
      stopping = stopping_;
      waiters.swap(waiting_);
      // An ejection probe is a round like any other, only earlier.
      next_round = std::min(next_round, probe_at_);
      if (probe_at_ <= absl::Now()) probe_at_ = absl::InfiniteFuture();
    }
    SyncSlots();
    next_refresh = std::min(next_refresh, NextRefresh());
    if (stopping) {
      PoolSnapshot last;
      {
        absl::MutexLock lock(&mutex_);
        last = last_round_;
      }
      for (RoundCallback& waiter : waiters) waiter(last);
      return;
    }
    const absl::Time now = absl::Now();
    if (!waiters.empty() || now >= next_round) {
      const PoolSnapshot snapshot = RunRound();
      next_round = absl::Now() + options_.interval;
      for (RoundCallback& waiter : waiters) waiter(snapshot);
    }
    if (now >= next_credential_check) {
      CheckCredentialFiles(now);
      next_credential_check = now + options_.credential_poll_interval;
      next_refresh = NextRefresh();
    }
    if (now >= next_refresh) next_refresh = RefreshOldestChannel(now);
  }
}

void HealthMonitor::CheckCredentialFiles(absl::Time now) {
  std::string fingerprint = FingerprintFiles(options_.credential_files);
  if (fingerprint == credential_fingerprint_) return;
  credential_fingerprint_ = std::move(fingerprint);
  spdlog::info("health: upstream TLS files changed; rolling {} connections over", pool_.size());
  for (ChannelHealth& channel : channels_) {
    if (channel.channel_id != 0) channel.refresh_at = now + kCredentialRollDelay;
  }
}

void HealthMonitor::SyncSlots() {
  for (int i = 0; i < pool_.capacity(); ++i) {
    const std::shared_ptr<PooledChannel> channel = pool_.CurrentChannel(i);
    const uint64_t id = channel != nullptr ? channel->id() : 0;
    ChannelHealth& health = channels_[i];
    if (health.channel_id == id) continue;
    health = ChannelHealth();
    health.channel_id = id;
    if (channel != nullptr) ScheduleRefresh(i, channel->created_at());
  }
}

absl::Time HealthMonitor::NextRefresh() const {
  absl::Time next = absl::InfiniteFuture();
  for (const ChannelHealth& channel : channels_) next = std::min(next, channel.refresh_at);
  return next;
}

std::vector<std::optional<std::string>> HealthMonitor::CheckChannels() {
  const std::vector<std::shared_ptr<PooledChannel>> channels = ChannelsInRotation();
  std::vector<std::optional<std::string>> connectivity = JudgeConnectivity(channels);
  if (!options_.probe_with_grpc_health || upstream_lacks_health_service_) return connectivity;
  const std::vector<std::optional<ProbeAnswer>> answers = ProbeAll(channels);
  if (UpstreamLacksHealthService(answers)) return connectivity;
  return JudgeProbes(answers);
}

std::vector<std::shared_ptr<PooledChannel>> HealthMonitor::ChannelsInRotation() const {
  std::vector<std::shared_ptr<PooledChannel>> channels(pool_.capacity());
  for (int i = 0; i < pool_.capacity(); ++i) {
    if (pool_.IsActive(i)) channels[i] = pool_.CurrentChannel(i);
  }
  return channels;
}

std::vector<std::optional<std::string>> HealthMonitor::JudgeConnectivity(
    const std::vector<std::shared_ptr<PooledChannel>>& channels) {
  std::vector<std::optional<std::string>> verdicts(channels.size());
  for (size_t i = 0; i < channels.size(); ++i) {
    if (channels[i] == nullptr) continue;
    const grpc_connectivity_state state = channels[i]->channel().GetState(/*try_to_connect=*/true);
    verdicts[i] = state == GRPC_CHANNEL_READY
                      ? std::string()
                      : absl::StrCat("connection ", ConnectivityStateName(state));
  }
  return verdicts;
}

std::vector<std::optional<HealthMonitor::ProbeAnswer>> HealthMonitor::ProbeAll(
    const std::vector<std::shared_ptr<PooledChannel>>& channels) const {
  // One probe per channel, all in flight at once, each bounded by its
  // deadline, so a round takes at most one probe timeout.
  struct Probe {
    grpc::ClientContext context;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call;
    grpc::ByteBuffer response;
    grpc::Status status;
  };
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options_.service);
  const grpc::ByteBuffer request_bytes = SerializeProto(request);
  grpc::CompletionQueue queue;
  const size_t size = channels.size();
  auto probes = std::make_unique<Probe[]>(size);
  const auto deadline = absl::ToChronoTime(absl::Now() + options_.probe_timeout);
  int started = 0;
  for (size_t i = 0; i < size; ++i) {
    if (channels[i] == nullptr) continue;
    ++started;
    Probe& probe = probes[i];
    probe.context.set_deadline(deadline);
    probe.call = channels[i]->stub().PrepareUnaryCall(&probe.context, kHealthCheckMethod,
                                                      request_bytes, &queue);
    probe.call->StartCall();
    probe.call->Finish(&probe.response, &probe.status, &probe);
  }
  void* tag = nullptr;
  bool ok = false;
  for (int finished = 0; finished < started && queue.Next(&tag, &ok); ++finished) {
  }
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }

  std::vector<std::optional<ProbeAnswer>> answers(size);
  for (size_t i = 0; i < size; ++i) {
    if (channels[i] == nullptr) continue;
    const grpc::Status& status = probes[i].status;
    answers[i] = ProbeAnswer{status, status.ok() && ParseServing(probes[i].response)};
  }
  return answers;
}

bool HealthMonitor::UpstreamLacksHealthService(
    const std::vector<std::optional<ProbeAnswer>>& answers) {
  for (const std::optional<ProbeAnswer>& answer : answers) {
    if (answer && answer->status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      spdlog::warn(
          "health: upstream {} does not implement grpc.health.v1.Health; checking "
          "connectivity only",
          pool_.options().target);
      upstream_lacks_health_service_ = true;
      return true;
    }
  }
  return false;
}

std::vector<std::optional<std::string>> HealthMonitor::JudgeProbes(
    const std::vector<std::optional<ProbeAnswer>>& answers) {
  std::vector<std::optional<std::string>> verdicts(answers.size());
  for (size_t i = 0; i < answers.size(); ++i) {
    if (!answers[i]) continue;
    verdicts[i].emplace();
    const grpc::Status& status = answers[i]->status;
    if (!status.ok()) {
      verdicts[i] = absl::StrCat("health check failed with status ", status.error_code(), ": ",
                                 status.error_message());
    } else if (!answers[i]->serving) {
      verdicts[i] = "upstream reports NOT_SERVING";
    }
    if (!verdicts[i]->empty()) spdlog::debug("health: channel {}: {}", i, *verdicts[i]);
  }
  return verdicts;
}

PoolSnapshot HealthMonitor::RunRound() {
  SyncSlots();
  const std::vector<std::optional<std::string>> checked = CheckChannels();
  int failures = 0;
  for (int i = 0; i < pool_.capacity(); ++i) {
    if (!checked[i]) continue;
    const std::string& failed_because = *checked[i];
    ChannelHealth& channel = channels_[i];
    if (failed_because.empty()) {
      channel.consecutive_failures = 0;
      pool_.EndEjection(i);
      if (!channel.healthy) {
        channel.healthy = true;
        pool_.SetProbeHealthy(i, true);
        spdlog::info("health: channel {} healthy again", i);
      }
      continue;
    }
    ++failures;
    ++channel.consecutive_failures;
    if (channel.healthy && channel.consecutive_failures >= options_.unhealthy_threshold) {
      channel.healthy = false;
      pool_.SetProbeHealthy(i, false);
      spdlog::warn("health: channel {} unhealthy after {} failed checks: {}", i,
                   channel.consecutive_failures, failed_because);
    }
    if (channel.consecutive_failures >= options_.replace_threshold) {
      std::shared_ptr<PooledChannel> fresh = pool_.NewChannel(i);
      const uint64_t fresh_id = fresh != nullptr ? fresh->id() : 0;
      const absl::Time created_at = fresh != nullptr ? fresh->created_at() : absl::Now();
      if (fresh != nullptr && pool_.ReplaceChannel(i, std::move(fresh))) {
        spdlog::warn("health: replaced channel {} after {} failed checks", i,
                     channel.consecutive_failures);
        channel.channel_id = fresh_id;
        ScheduleRefresh(i, created_at);
        // Stays unhealthy until the new channel passes a check.
        channel.consecutive_failures = options_.unhealthy_threshold;
      }
    }
  }
  const absl::Time now = absl::Now();
  pool_.RecordHealthCheckRound(now, failures);
  PoolSnapshot snapshot = pool_.Snapshot();
  const PoolHealth health = PoolHealthOf(snapshot);
  if (health != last_pool_health_ || !logged_first_round_) {
    const auto level = health == PoolHealth::kHealthy ? spdlog::level::info : spdlog::level::warn;
    spdlog::log(level, "health: pool {} ({} of {} channels healthy)", PoolHealthName(health),
                snapshot.HealthyCount(), snapshot.ActiveCount());
    last_pool_health_ = health;
    logged_first_round_ = true;
  }
  if (on_round_) on_round_(snapshot);
  absl::MutexLock lock(&mutex_);
  last_round_at_ = now;
  last_round_ = snapshot;
  return snapshot;
}

void HealthMonitor::ScheduleRefresh(int slot, absl::Time created_at) {
  if (options_.max_connection_age <= absl::ZeroDuration()) {
    channels_[slot].refresh_at = absl::InfiniteFuture();
    return;
  }
  // ±10% jitter keeps channels created together from all refreshing at once.
  channels_[slot].refresh_at =
      created_at + options_.max_connection_age * absl::Uniform(random_, 0.9, 1.1);
}

absl::Time HealthMonitor::RefreshOldestChannel(absl::Time now) {
  int oldest = -1;
  for (int i = 0; i < pool_.capacity(); ++i) {
    if (channels_[i].refresh_at <= now &&
        (oldest < 0 || channels_[i].refresh_at < channels_[oldest].refresh_at)) {
      oldest = i;
    }
  }
  std::shared_ptr<PooledChannel> fresh;
  if (oldest >= 0 && !pool_.IsActive(oldest)) {
    // Leaving the pool anyway (draining) or about to join it: no refresh.
    channels_[oldest].refresh_at = absl::InfiniteFuture();
  } else if (oldest >= 0 && (fresh = pool_.NewChannel(oldest)) != nullptr) {
    // The old channel keeps serving until the new one is connected, so the
    // refresh costs no call.
    if (fresh->channel().WaitForConnected(absl::ToChronoTime(now + options_.connect_timeout))) {
      const std::shared_ptr<PooledChannel> old = pool_.CurrentChannel(oldest);
      const absl::Duration age = old != nullptr ? now - old->created_at() : absl::ZeroDuration();
      const uint64_t fresh_id = fresh->id();
      const absl::Time created_at = fresh->created_at();
      if (pool_.ReplaceChannel(oldest, std::move(fresh))) {
        channels_[oldest].channel_id = fresh_id;
        ScheduleRefresh(oldest, created_at);
        spdlog::info("health: refreshed channel {} after {}", oldest, absl::FormatDuration(age));
      } else {
        channels_[oldest].refresh_at = absl::InfiniteFuture();
      }
    } else {
      spdlog::warn("health: could not refresh channel {}: new connection not ready within {}",
                   oldest, absl::FormatDuration(options_.connect_timeout));
      channels_[oldest].refresh_at = absl::Now() + kRefreshRetryDelay;
    }
  }
  return NextRefresh();
}

}  // namespace poolside
