#include "proxy/proxy_call.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proxy/metadata.h"

namespace poolside {
namespace {

constexpr uintptr_t kOpMask = 15;

// A call waiting for a ready channel re-picks at least this often, so it also
// notices channels other than the one it watches, and its own cancellation.
constexpr absl::Duration kWaitSlice = absl::Milliseconds(500);

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

void ProxyCall::AcceptNext(CallQueue& queue) {
  // Owns itself from here on: see Dispatch().
  auto* call = new ProxyCall(queue);
  // Counted as pending only once a call is accepted: a request that fails at
  // shutdown never delivers this tag.
  call->app_context_.AsyncNotifyWhenDone(reinterpret_cast<void*>(
      reinterpret_cast<uintptr_t>(call) | static_cast<uintptr_t>(Op::kAppDone)));
  queue.service->RequestCall(&call->app_context_, &call->app_stream_, queue.queue, queue.queue,
                             call->Tag(Op::kAccepted));
}

void ProxyCall::Dispatch(void* tag, bool ok) {
  const auto bits = reinterpret_cast<uintptr_t>(tag);
  auto* call = reinterpret_cast<ProxyCall*>(bits & ~kOpMask);
  call->Handle(static_cast<Op>(bits & kOpMask), ok);
  if (--call->pending_ops_ == 0) delete call;
}

ProxyCall::ProxyCall(CallQueue& queue) : queue_(queue), app_stream_(&app_context_) {
  queue_.live_calls.fetch_add(1, std::memory_order_relaxed);
}

ProxyCall::~ProxyCall() {
  LeavePending();
  if (counted_concurrent_) queue_.limits->concurrent.Release();
  if (accepted_ && queue_.recorder != nullptr) {
    // Ended without a status of ours: the app cancelled or went away.
    RecordOutcome(grpc::StatusCode::CANCELLED);
    queue_.recorder->CallEnded();
  }
  queue_.live_calls.fetch_sub(1, std::memory_order_relaxed);
}

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

void ProxyCall::RecordOutcome(grpc::StatusCode code) {
  if (outcome_recorded_ || queue_.recorder == nullptr) return;
  outcome_recorded_ = true;
  queue_.recorder->RecordCall(method_, code, absl::Now() - accepted_at_);
}

void* ProxyCall::Tag(Op op) {
  ++pending_ops_;
  return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) | static_cast<uintptr_t>(op));
}

void ProxyCall::Handle(Op op, bool ok) {
  switch (op) {
    case Op::kAccepted:
      return OnAccepted(ok);
    case Op::kAppDone:
      return OnAppDone();
    case Op::kWaitForReady:
      awaited_channel_.reset();
      return TryStartUpstream();
    case Op::kUpstreamStarted:
      upstream_started_ = true;
      upstream_writable_ = ok;
      return PumpUpward();
    case Op::kUpstreamHeaders:
      return OnUpstreamHeaders(ok);
    case Op::kUpstreamRead:
      return OnUpstreamRead(ok);
    case Op::kUpstreamWrite:
      return OnUpstreamWrite(ok);
    case Op::kUpstreamWritesDone:
      return;
    case Op::kUpstreamFinish:
      return OnUpstreamFinish();
    case Op::kAppRead:
      return OnAppRead(ok);
    case Op::kAppHeaders:
      if (!ok) upstream_context_.TryCancel();
      return ReadUpstream();
    case Op::kAppWrite:
      // The app is gone: stop the upstream call, then drain it to its status.
      if (!ok) upstream_context_.TryCancel();
      return ReadUpstream();
    case Op::kAppFinish:
      return;
  }
}

void ProxyCall::OnAccepted(bool ok) {
  if (!ok) return;  // The server is shutting down.
  AcceptNext(queue_);
  ++pending_ops_;  // kAppDone, registered before the call was accepted.
  accepted_ = true;
  accepted_at_ = absl::Now();
  if (queue_.recorder != nullptr) {
    method_ = queue_.recorder->Method(app_context_.method());
    queue_.recorder->CallStarted();
  }

  if (!AdmitConcurrent()) return;
  const absl::Status copied =
      CopyRequestMetadata(app_context_.client_metadata(), upstream_context_);
  if (!copied.ok()) return FinishApp(ToGrpcStatus(copied));
  upstream_context_.set_deadline(app_context_.raw_deadline());
  app_stream_.Read(&upward_message_, Tag(Op::kAppRead));
  wait_until_ = accepted_at_ + queue_.connection_timeout;
  TryStartUpstream();
}

void ProxyCall::OnAppDone() {
  // Valid only now that the done tag has arrived (async API rule).
  cancelled_ = app_context_.IsCancelled();
  if (cancelled_) upstream_context_.TryCancel();
}

void ProxyCall::TryStartUpstream() {
  if (cancelled_) return LeavePending();
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
  upstream_stream_ =
      lease_->channel().stub().PrepareCall(&upstream_context_, app_context_.method(), queue_.queue);
  upstream_stream_->StartCall(Tag(Op::kUpstreamStarted));
  upstream_stream_->ReadInitialMetadata(Tag(Op::kUpstreamHeaders));
}

void ProxyCall::OnAppRead(bool ok) {
  if (ok) {
    if (queue_.recorder != nullptr) {
      queue_.recorder->RecordMessage(Direction::kUpstream, upward_message_.Length());
    }
    upward_message_held_ = true;
    return PumpUpward();
  }
  // Half-close, or the app's call failed (cancel, disconnect, deadline). The
  // upstream must see the same: a clean end of the stream, or a cancel.
  app_read_closed_ = true;
  if (grpc_call_failed_before_recv_message(app_context_.c_call())) {
    cancelled_ = true;
    upstream_context_.TryCancel();
    return;
  }
  PumpUpward();
}

void ProxyCall::PumpUpward() {
  if (!upstream_writable_ || upstream_write_busy_ || cancelled_) return;
  if (upward_message_held_) {
    upward_message_held_ = false;
    upstream_write_busy_ = true;
    upstream_stream_->Write(upward_message_, Tag(Op::kUpstreamWrite));
  } else if (app_read_closed_ && !writes_done_sent_) {
    writes_done_sent_ = true;
    upstream_stream_->WritesDone(Tag(Op::kUpstreamWritesDone));
  }
}

void ProxyCall::OnUpstreamWrite(bool ok) {
  upstream_write_busy_ = false;
  if (!ok) {
    // The upstream call has ended; its status arrives through Finish.
    upstream_writable_ = false;
    return;
  }
  if (app_read_closed_) return PumpUpward();
  app_stream_.Read(&upward_message_, Tag(Op::kAppRead));
}

void ProxyCall::OnUpstreamHeaders(bool ok) {
  // Not ok: the upstream answered with trailers only, or the call failed.
  if (!ok) return FinishUpstream();
  const absl::Status copied =
      CopyInitialResponseMetadata(upstream_context_.GetServerInitialMetadata(), app_context_);
  if (!copied.ok()) {
    relay_error_ = ToGrpcStatus(copied);
    upstream_context_.TryCancel();
    return FinishUpstream();
  }
  app_stream_.SendInitialMetadata(Tag(Op::kAppHeaders));
}

void ProxyCall::ReadUpstream() {
  upstream_stream_->Read(&downward_message_, Tag(Op::kUpstreamRead));
}

void ProxyCall::OnUpstreamRead(bool ok) {
  if (!ok) return FinishUpstream();
  if (queue_.recorder != nullptr) {
    queue_.recorder->RecordMessage(Direction::kDownstream, downward_message_.Length());
  }
  app_stream_.Write(downward_message_, Tag(Op::kAppWrite));
}

void ProxyCall::FinishUpstream() {
  upstream_stream_->Finish(&upstream_status_, Tag(Op::kUpstreamFinish));
}

void ProxyCall::OnUpstreamFinish() {
  upstream_writable_ = false;
  // A cancelled app call says nothing about the upstream connection.
  if (!cancelled_) {
    lease_->RecordOutcome(upstream_status_.error_code() == grpc::StatusCode::UNAVAILABLE);
  }
  if (!relay_error_) {
    const absl::Status copied =
        CopyTrailingResponseMetadata(upstream_context_.GetServerTrailingMetadata(), app_context_);
    if (!copied.ok()) relay_error_ = ToGrpcStatus(copied);
  }
  FinishApp(relay_error_ ? *relay_error_ : upstream_status_);
}

void ProxyCall::FinishApp(const grpc::Status& status) {
  if (app_finish_sent_) return;
  app_finish_sent_ = true;
  RecordOutcome(status.error_code());
  app_stream_.Finish(status, Tag(Op::kAppFinish));
}

}  // namespace poolside
