// ProxyCall's way to its upstream and the watch over it: admission (the
// concurrent and pending limits), the app connection's fair share, picking a
// ready channel or waiting for one, starting the upstream call, and the
// per-queue lists through which CheckUpstreamCalls ends calls whose
// connection was lost or cut. Each step runs once or a few times per call;
// the per-message relay is in proxy_call.cc.
#include <grpc/grpc.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proxy/proxy_call.h"

namespace poolside {
namespace {

// A call waiting for a ready channel re-picks at least this often, so it also
// notices channels other than the one it watches, and its own cancellation.
constexpr absl::Duration kWaitSlice = absl::Milliseconds(500);

}  // namespace

bool ProxyCall::AdmitConcurrent() {
  CallLimit& limit = queue_.limits->concurrent;
  counted_concurrent_ = limit.TryAcquire();
  if (!counted_concurrent_) {
    FinishApp(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                           absl::StrCat("poolside: GRPC_MAX_CONCURRENT_REQUESTS (", limit.max(),
                                        ") calls already in flight")));
  }
  return counted_concurrent_;
}

bool ProxyCall::AdmitPending() {
  if (counted_pending_) return true;
  CallLimit& limit = queue_.limits->pending;
  counted_pending_ = limit.TryAcquire();
  if (!counted_pending_) {
    FinishApp(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                           absl::StrCat("poolside: GRPC_MAX_PENDING_REQUESTS (", limit.max(),
                                        ") calls already waiting for a connection to ",
                                        queue_.pool->options().target)));
  }
  return counted_pending_;
}

void ProxyCall::LeavePending() {
  if (!counted_pending_) return;
  counted_pending_ = false;
  queue_.limits->pending.Release();
}

bool ProxyCall::AcquireShare() {
  if (share_held_ || queue_.fair_share == nullptr) return true;
  share_connection_ = app_context_.peer();
  if (queue_.fair_share->TryAcquire(share_connection_)) {
    share_held_ = true;
    return true;
  }
  // A place may have come free since: AcquireOrWait looks again.
  share_alarm_ = std::make_unique<grpc::Alarm>();
  void* const granted_tag = Tag(Op::kShareGranted);
  if (queue_.fair_share->AcquireOrWait(share_connection_,
                                       {share_alarm_.get(), queue_.queue, granted_tag})) {
    // Taken at once: the tag is never delivered. (Safe: the operation being
    // handled keeps pending_ops_ above zero.)
    --pending_ops_;
    share_held_ = true;
    return true;
  }
  stage_ = Stage::kAwaitingShare;
  return false;
}

void ProxyCall::OnShareGranted() {
  share_held_ = true;
  stage_ = Stage::kAwaitingChannel;
  TryStartUpstream();
}

void ProxyCall::TryStartUpstream() {
  if (cancelled_ || stage_ == Stage::kFinished) return LeavePending();
  if (!AcquireShare()) return;
  stage_ = Stage::kAwaitingChannel;
  ChannelPool& pool = *queue_.pool;
  std::optional<ChannelPool::Lease> lease = pool.PickReady();
  if (!lease) {
    std::shared_ptr<grpc::Channel> channel = pool.ChannelToWaitOn();
    const grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
    // The pool's watcher may not have seen this channel become ready yet.
    if (state == GRPC_CHANNEL_READY) lease = pool.LeaseIfCurrent(channel);
    if (!lease) {
      const absl::Time now = absl::Now();
      if (now >= wait_until_) {
        LeavePending();
        return FinishApp(
            grpc::Status(grpc::StatusCode::UNAVAILABLE,
                         absl::StrCat("poolside: no connection to upstream ", pool.options().target,
                                      " became ready within ",
                                      absl::FormatDuration(queue_.connection_timeout))));
      }
      if (!AdmitPending()) return;
      awaited_channel_ = std::move(channel);
      awaited_channel_->NotifyOnStateChange(
          state, absl::ToChronoTime(std::min(wait_until_, now + kWaitSlice)), queue_.queue,
          Tag(Op::kWaitForReady));
      return;
    }
  }
  LeavePending();
  StartUpstream(std::move(*lease));
}

void ProxyCall::StartUpstream(ChannelPool::Lease lease) {
  lease_.emplace(std::move(lease));
  // With the first message or the half-close in hand, the headers go with
  // it: one batch and one write to the upstream instead of two. Corked,
  // StartCall performs nothing and its tag never comes.
  const bool corked = upward_held_messages_ > 0 || half_close_held_;
  upstream_context_.set_initial_metadata_corked(corked);
  upstream_stream_ =
      lease_->channel().stub().PrepareCall(&upstream_context_, app_context_.method(), queue_.queue);
  if (corked) {
    upstream_stream_->StartCall(nullptr);
    stage_ = Stage::kForwarding;
  } else {
    stage_ = Stage::kStartingUpstream;
    upstream_stream_->StartCall(Tag(Op::kUpstreamStarted));
  }
  upstream_stream_->ReadInitialMetadata(Tag(Op::kUpstreamHeaders));
  MoveToList(Listed::kAwaitingAnswer);
  if (corked) PumpUpward();
}

void ProxyCall::ResumeHeld(QueueContext& queue) {
  while (ProxyCall* call = queue.holding.newest()) call->Resume();
}

void ProxyCall::ResumeOverdue(QueueContext& queue) {
  while (ProxyCall* call = queue.holding.oldest()) {
    if (queue.events_handled < call->hold_until_event_) return;
    call->Resume();
  }
}

void ProxyCall::Hold() {
  if (hold_link_.linked) return;  // Resumes by the first hold's bound.
  hold_until_event_ = queue_.events_handled + kMaxEventsHeld;
  queue_.holding.Add(this, &ProxyCall::hold_link_);
}

void ProxyCall::Release() { queue_.holding.Remove(this, &ProxyCall::hold_link_); }

void ProxyCall::Resume() {
  Release();
  if (stage_ == Stage::kGatheringRequest) return TryStartUpstream();
  if (downward_message_held_ && !app_write_in_flight_) {
    WriteHeldDownward();
  } else if (app_headers_held_) {
    SendHeldHeaders();
  }
}

void ProxyCall::ResumeExpiredReadHolds(QueueContext& queue, absl::Time now) {
  while (ProxyCall* call = queue.read_holding.oldest()) {
    if (now < call->read_hold_until_) return;
    call->ResumeReads();
  }
}

absl::Time ProxyCall::ReadHoldDeadline(const QueueContext& queue) {
  return queue.read_holding.oldest()->read_hold_until_;
}

void ProxyCall::HoldRead() {
  if (read_hold_link_.linked) return;  // Both sides held: resumes by the first hold's time.
  // Every hold lasts as long, so the list stays in deadline order.
  read_hold_until_ = absl::Now() + kMaxReadHold;
  queue_.read_holding.Add(this, &ProxyCall::read_hold_link_);
}

void ProxyCall::ReleaseReadHold() { queue_.read_holding.Remove(this, &ProxyCall::read_hold_link_); }

void ProxyCall::ResumeReads() {
  ReleaseReadHold();
  PostHeldAppRead();
  PostHeldUpstreamRead();
}

void ProxyCall::MoveToList(Listed list) {
  if (listed_ == list) return;
  if (listed_ != Listed::kNone) {
    ProxyCall*& head =
        listed_ == Listed::kAwaitingAnswer ? queue_.awaiting_answer : queue_.answered;
    if (previous_listed_ != nullptr) {
      previous_listed_->next_listed_ = next_listed_;
    } else {
      head = next_listed_;
    }
    if (next_listed_ != nullptr) next_listed_->previous_listed_ = previous_listed_;
    previous_listed_ = nullptr;
    next_listed_ = nullptr;
  }
  listed_ = list;
  if (list == Listed::kNone) return;
  ProxyCall*& head = list == Listed::kAwaitingAnswer ? queue_.awaiting_answer : queue_.answered;
  next_listed_ = head;
  if (next_listed_ != nullptr) next_listed_->previous_listed_ = this;
  head = this;
}

void ProxyCall::CheckUpstreamCalls(QueueContext& queue, absl::Time now) {
  const uint64_t cuts = queue.pool->cuts();
  const bool new_cuts = cuts != queue.cuts_seen;
  queue.cuts_seen = cuts;
  // Each step may take its call out of the list: read the next one first.
  for (ProxyCall* call = queue.awaiting_answer; call != nullptr;) {
    ProxyCall* const next = call->next_listed_;
    if (new_cuts) call->EndIfCut();
    if (call->listed_ == Listed::kAwaitingAnswer) call->CheckConnection(now);
    call = next;
  }
  if (!new_cuts) return;
  for (ProxyCall* call = queue.answered; call != nullptr;) {
    ProxyCall* const next = call->next_listed_;
    call->EndIfCut();
    call = next;
  }
}

void ProxyCall::CheckConnection(absl::Time now) {
  // A cheap read of the channel's state; it never starts a connection.
  if (lease_->channel().channel().GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
    connection_down_since_ = absl::InfiniteFuture();
    return;
  }
  if (connection_down_since_ == absl::InfiniteFuture()) connection_down_since_ = now;
  if (now - connection_down_since_ < queue_.connection_timeout) return;
  queue_.pool->CountCallEndedForLostConnection();
  EndUpstreamWith(grpc::Status(
      grpc::StatusCode::UNAVAILABLE,
      absl::StrCat("poolside: the connection to upstream ", queue_.pool->options().target,
                   " was lost before the call was answered and did not come back within ",
                   absl::FormatDuration(queue_.connection_timeout))));
}

void ProxyCall::EndIfCut() {
  if (!lease_->channel().cut()) return;
  queue_.pool->CountCallEndedAtDrainGrace();
  EndUpstreamWith(grpc::Status(
      grpc::StatusCode::UNAVAILABLE,
      absl::StrCat("poolside: the connection this call used was drained (its backend left ",
                   queue_.pool->options().target,
                   " or the pool was rebalanced) and the call outlived GRPC_SHUTDOWN_GRACE_SECS")));
}

void ProxyCall::EndUpstreamWith(grpc::Status status) {
  MoveToList(Listed::kNone);
  relay_error_ = std::move(status);
  // The pending upstream operations then fail, and the call ends with
  // relay_error_ (OnUpstreamFinish).
  CancelUpstreamCall();
}

}  // namespace poolside
