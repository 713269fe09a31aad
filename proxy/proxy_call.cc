#include "proxy/proxy_call.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <string>
#include <utility>

#include "proxy/metadata.h"
#include "proxy/upstream_abuse.h"

namespace poolside {
namespace {

constexpr uintptr_t kOpMask = 15;

// Where grpc carries google.rpc.Status details in trailers.
constexpr char kStatusDetailsKey[] = "grpc-status-details-bin";

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

void ProxyCall::AcceptNext(QueueContext& queue) {
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

ProxyCall::ProxyCall(QueueContext& queue) : queue_(queue), app_stream_(&app_context_) {
  queue_.live_calls.fetch_add(1, std::memory_order_relaxed);
}

ProxyCall::~ProxyCall() {
  MoveToList(Listed::kNone);
  Release();
  ReleaseReadHold();
  LeavePending();
  if (counted_concurrent_) queue_.limits->concurrent.Release();
  if (share_held_) queue_.fair_share->Release(share_connection_);
  if (recorded_start_) {
    // Ended without a status of ours: the app cancelled or went away.
    RecordOutcome(grpc::StatusCode::CANCELLED);
    queue_.recorder->CallEnded();
  }
  queue_.live_calls.fetch_sub(1, std::memory_order_relaxed);
}

void ProxyCall::RecordOutcome(grpc::StatusCode code) {
  if (outcome_recorded_ || !recorded_start_) return;
  outcome_recorded_ = true;
  queue_.recorder->RecordCall(method_, code, absl::Now() - accepted_at_);
}

void* ProxyCall::Tag(Op op) {
  // The pool's connectivity watches share these queues, tagged with every
  // low bit set: no Op may look like one.
  static_assert(kOpMask == QueueEvent::kTagBits);
  static_assert(static_cast<uintptr_t>(Op::kShareGranted) < kOpMask);
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
      return OnUpstreamStarted(ok);
    case Op::kUpstreamHeaders:
      return OnUpstreamHeaders(ok);
    case Op::kUpstreamRead:
      return OnUpstreamRead(ok);
    case Op::kUpstreamWrite:
      return OnUpstreamWrite(ok);
    case Op::kUpstreamWritesDone:
      if (upward_ == Upward::kClosing) upward_ = Upward::kClosed;
      return;
    case Op::kUpstreamFinish:
      return OnUpstreamFinish();
    case Op::kAppRead:
      return stage_ == Stage::kAnsweringLocally ? OnLocalRequestRead(ok) : OnAppRead(ok);
    case Op::kAppHeaders:
      return OnAppHeaders(ok);
    case Op::kAppWrite:
      return OnAppWrite(ok);
    case Op::kAppFinish:
      return;
    case Op::kLocalReply:
      return OnLocalReply();
    case Op::kShareGranted:
      return OnShareGranted();
  }
}

void ProxyCall::OnAccepted(bool ok) {
  if (!ok) return;  // The server is shutting down.
  AcceptNext(queue_);
  ++pending_ops_;  // kAppDone, registered before the call was accepted.
  accepted_at_ = absl::Now();

  if (queue_.local != nullptr && queue_.local->Serves(app_context_.method())) {
    stage_ = Stage::kAnsweringLocally;
    local_ = std::make_unique<LocalAnswer>();
    app_stream_.Read(&app_read_message_, Tag(Op::kAppRead));
    return;
  }
  if (queue_.recorder != nullptr) {
    method_ = queue_.recorder->Method(app_context_.method());
    queue_.recorder->CallStarted();
    recorded_start_ = true;
  }
  if (!AdmitConcurrent()) return;
  const absl::Status copied =
      CopyRequestMetadata(app_context_.client_metadata(), upstream_context_);
  if (!copied.ok()) return FinishApp(ToGrpcStatus(copied));
  upstream_context_.set_deadline(app_context_.raw_deadline());
  // Only a call that raced a disconnect ever waits (it starts on a channel
  // just seen READY); CheckUpstreamCalls bounds that wait.
  upstream_context_.set_wait_for_ready(queue_.wait_for_ready);
  // The first message is read while a channel is picked; it waits in
  // upward_held_ if it arrives before the upstream call has started.
  ReadApp();
  wait_until_ = accepted_at_ + queue_.connection_timeout;
  stage_ = Stage::kGatheringRequest;
  Hold();
}

void ProxyCall::OnAppDone() {
  // Valid only now that the done tag has arrived (async API rule).
  if (app_context_.IsCancelled()) CancelUpstream();
}

void ProxyCall::CancelUpstream() {
  cancelled_ = true;
  if (stage_ == Stage::kAwaitingShare && !share_held_ &&
      queue_.fair_share->Cancel(share_connection_, {share_alarm_.get(), queue_.queue, nullptr})) {
    // Withdrawn before a place was handed over: its tag never comes.
    --pending_ops_;
    stage_ = Stage::kAwaitingChannel;
  }
  upward_ = Upward::kStopped;
  // Harmless before the upstream call exists: a waiting call then stops
  // waiting, and one never started never starts.
  CancelUpstreamCall();
}

void ProxyCall::CancelUpstreamCall() {
  upstream_cancelled_ = true;
  upstream_context_.TryCancel();
  PostHeldUpstreamRead();
}

void ProxyCall::OnUpstreamStarted(bool ok) {
  if (stage_ == Stage::kStartingUpstream) stage_ = Stage::kForwarding;
  // Not ok: the call failed before it started; its status comes through the
  // downward direction (headers fail, then Finish).
  if (!ok) upward_ = Upward::kStopped;
  PumpUpward();
}

void ProxyCall::ReadApp() {
  app_read_in_flight_ = true;
  app_stream_.Read(&app_read_message_, Tag(Op::kAppRead));
}

bool ProxyCall::HoldsReadsFor(bool app_side) const {
  // Only while both sides may still send: a side that has stopped sends
  // nothing the held read could wait for.
  if (!queue_.hold_pingpong_reads || stage_ != Stage::kForwarding || upward_ != Upward::kOpen ||
      upstream_messages_ended_ || upstream_cancelled_) {
    return false;
  }
  // The app's next message waits on the upstream's answer only once the
  // upstream has answered one.
  return app_side ? !app_streams_ && upstream_answered_ : !upstream_streams_;
}

void ProxyCall::ReadAppSoon() {
  if (!HoldsReadsFor(/*app_side=*/true)) return ReadApp();
  app_read_held_ = true;
  HoldRead();
}

void ProxyCall::PostHeldAppRead() {
  if (!app_read_held_) return;
  app_read_held_ = false;
  if (!upstream_read_held_) ReleaseReadHold();
  if (stage_ == Stage::kForwarding && upward_ == Upward::kOpen && !app_read_in_flight_) ReadApp();
}

void ProxyCall::OnAppRead(bool ok) {
  app_read_in_flight_ = false;
  if (upward_ != Upward::kOpen) return;  // Nothing more goes up.
  if (ok) {
    if (queue_.recorder != nullptr) {
      queue_.recorder->RecordMessage(Direction::kUpstream, app_read_message_.Length());
    }
    if (last_speaker_ == Speaker::kApp) app_streams_ = true;
    last_speaker_ = Speaker::kApp;
    upward_held_[upward_held_messages_++].Swap(&app_read_message_);
  } else {
    // Half-close, or the app's call failed (cancel, disconnect, deadline).
    // The upstream must see the same: a clean end of the stream, or a cancel.
    if (grpc_call_failed_before_recv_message(app_context_.c_call())) return CancelUpstream();
    half_close_held_ = true;
  }
  if (stage_ == Stage::kGatheringRequest) {
    // Read on while what the app sent with its headers is here: when the
    // half-close follows the message, both go upstream in one write.
    if (!half_close_held_ && upward_held_messages_ < kMaxHeldMessages) return ReadApp();
    Release();
    return TryStartUpstream();
  }
  PumpUpward();
}

void ProxyCall::PumpUpward() {
  // Writes may be issued only once the upstream call has started, and never
  // after the app's call has been finished.
  if (stage_ != Stage::kForwarding || upward_ != Upward::kOpen) return;
  if (!upstream_write_in_flight_ && upward_held_messages_ > 0) {
    upstream_write_in_flight_ = true;
    if (half_close_held_ && upward_held_messages_ == 1) {
      upward_ = Upward::kClosing;
      upstream_stream_->Write(upward_held_[0], grpc::WriteOptions().set_last_message(),
                              Tag(Op::kUpstreamWrite));
    } else {
      upstream_stream_->Write(upward_held_[0], Tag(Op::kUpstreamWrite));
    }
    // The write carries the window update a held read would have sent alone.
    PostHeldUpstreamRead();
    // Write took its own reference to the slices, and the transport frees
    // them as they are sent; ours would keep the whole message until the next
    // one replaces it, which for a unary call is never (4 MiB requests, 8 in
    // flight: 32 MiB held for nothing).
    upward_held_[0].Clear();
    upward_held_[0].Swap(&upward_held_[1]);
    --upward_held_messages_;
  } else if (!upstream_write_in_flight_ && half_close_held_) {
    upward_ = Upward::kClosing;
    upstream_stream_->WritesDone(Tag(Op::kUpstreamWritesDone));
    PostHeldUpstreamRead();
    return;
  }
  // The next message is read once the upstream has taken the last one: one
  // message per direction, so a slow upstream slows the app.
  if (upward_ == Upward::kOpen && !app_read_in_flight_ && !half_close_held_ &&
      !upstream_write_in_flight_ && upward_held_messages_ == 0) {
    ReadAppSoon();
  }
}

void ProxyCall::OnUpstreamWrite(bool ok) {
  upstream_write_in_flight_ = false;
  if (!ok) {
    // The upstream call has ended; its status arrives through Finish.
    upward_ = Upward::kStopped;
    PostHeldUpstreamRead();
    return;
  }
  if (upward_ == Upward::kClosing) {
    upward_ = Upward::kClosed;  // That was the last message, with the half-close.
    return;
  }
  PumpUpward();
}

void ProxyCall::OnUpstreamHeaders(bool ok) {
  if (listed_ == Listed::kAwaitingAnswer) MoveToList(Listed::kAnswered);
  // Not ok: the upstream answered with trailers only, or the call failed.
  if (!ok) return FinishUpstream();
  const absl::Status copied =
      CopyInitialResponseMetadata(upstream_context_.GetServerInitialMetadata(), app_context_);
  if (!copied.ok()) {
    relay_error_ = ToGrpcStatus(copied);
    CancelUpstreamCall();
    return FinishUpstream();
  }
  // The first message is read before the headers go: when it is already
  // here, the app's write carries them (one batch and one write); when it is
  // not, ResumeHeld sends them as they are.
  app_headers_held_ = true;
  Hold();
  ReadUpstream();
}

void ProxyCall::SendHeldHeaders() {
  StopHoldingDownward();
  app_stream_.SendInitialMetadata(Tag(Op::kAppHeaders));
  PostHeldAppRead();
}

void ProxyCall::StopHoldingDownward() {
  Release();
  // Whatever goes to the app now carries them: grpc++ sends the initial
  // metadata with the first SendInitialMetadata, Write or Finish.
  app_headers_held_ = false;
}

void ProxyCall::OnAppHeaders(bool ok) {
  // Not ok: the app is gone. Stop the upstream call; the pending read then
  // drains it to its status.
  if (!ok) CancelUpstreamCall();
}

void ProxyCall::OnAppWrite(bool ok) {
  app_write_in_flight_ = false;
  // Not ok: the app is gone. Stop the upstream call, then drain it to its
  // status.
  if (!ok) CancelUpstreamCall();
  if (app_status_after_write_) return SendAppStatus(*app_status_after_write_);
  if (downward_message_held_) {
    // It came while the write was in flight.
    if (!LooksAhead()) return WriteHeldDownward();
    Hold();
  }
  // A held message written on Resume left its read ahead in flight, which
  // may have met the end of the upstream's messages already.
  if (!upstream_read_in_flight_ && !upstream_messages_ended_) ReadUpstreamSoon();
}

void ProxyCall::ReadUpstream() {
  upstream_read_in_flight_ = true;
  upstream_stream_->Read(&downward_message_, Tag(Op::kUpstreamRead));
}

void ProxyCall::ReadUpstreamSoon() {
  if (!HoldsReadsFor(/*app_side=*/false)) return ReadUpstream();
  upstream_read_held_ = true;
  HoldRead();
}

void ProxyCall::PostHeldUpstreamRead() {
  if (!upstream_read_held_) return;
  upstream_read_held_ = false;
  if (!app_read_held_) ReleaseReadHold();
  if (!upstream_read_in_flight_ && !upstream_messages_ended_) ReadUpstream();
}

bool ProxyCall::LooksAhead() const {
  // While the app may still send, the upstream's next message may wait on
  // the app's next one (ping-pong): holding would only add latency.
  return upward_ == Upward::kClosing || upward_ == Upward::kClosed;
}

void ProxyCall::OnUpstreamRead(bool ok) {
  upstream_read_in_flight_ = false;
  if (!ok) {
    upstream_messages_ended_ = true;
    // Headers and then trailers, as the upstream sent them; a held message
    // carries the headers with it.
    if (app_headers_held_ && !downward_message_held_) SendHeldHeaders();
    return FinishUpstream();
  }
  if (queue_.recorder != nullptr) {
    queue_.recorder->RecordMessage(Direction::kDownstream, downward_message_.Length());
  }
  if (last_speaker_ == Speaker::kApp) {
    upstream_answered_ = true;
  } else {
    upstream_streams_ = true;
  }
  last_speaker_ = Speaker::kUpstream;
  // The held message was not the last one: it goes now.
  if (downward_message_held_ && !app_write_in_flight_) WriteHeldDownward();
  downward_held_.Swap(&downward_message_);
  downward_message_held_ = true;
  // One write in flight; this message waits for it.
  if (app_write_in_flight_) return;
  if (!LooksAhead()) return WriteHeldDownward();
  // It may be the last: read on, so that when the upstream's status is
  // already here one batch carries message and status (SendAppStatus).
  Hold();
  ReadUpstream();
}

void ProxyCall::WriteHeldDownward() {
  StopHoldingDownward();
  app_write_in_flight_ = true;
  downward_message_held_ = false;
  app_stream_.Write(downward_held_, Tag(Op::kAppWrite));
  // As in PumpUpward: the write holds what it still needs.
  downward_held_.Clear();
  PostHeldAppRead();
}

void ProxyCall::FinishUpstream() {
  upstream_stream_->Finish(&upstream_status_, Tag(Op::kUpstreamFinish));
}

void ProxyCall::OnUpstreamFinish() {
  MoveToList(Listed::kNone);
  if (upward_ != Upward::kClosing) upward_ = Upward::kStopped;
  // A cancelled app call says nothing about the upstream connection, nor does
  // one the pool cut (its slot may hold another channel by now).
  if (!cancelled_ && !lease_->channel().cut()) {
    const grpc::StatusCode code =
        relay_error_ ? relay_error_->error_code() : upstream_status_.error_code();
    lease_->RecordOutcome(code == grpc::StatusCode::UNAVAILABLE);
    if (!relay_error_ && queue_.hostile_peers != nullptr) {
      const HostileReason abuse = UpstreamAbuseReason(upstream_status_);
      if (abuse != HostileReason::kNone) queue_.hostile_peers->Count(PeerSide::kUpstream, abuse);
    }
  }
  if (relay_error_) return FinishApp(*relay_error_);
  const MetadataMap& trailers = upstream_context_.GetServerTrailingMetadata();
  const absl::Status copied = CopyTrailingResponseMetadata(trailers, app_context_);
  if (!copied.ok()) return FinishApp(ToGrpcStatus(copied));
  if (upstream_status_.ok()) {
    // grpc++ keeps status details only on errors; an OK status may carry
    // them too, and the app must get them as the upstream sent them.
    const auto details = trailers.find(kStatusDetailsKey);
    if (details != trailers.end()) {
      return FinishApp(grpc::Status(grpc::StatusCode::OK, "",
                                    std::string(details->second.data(), details->second.size())));
    }
  }
  FinishApp(upstream_status_);
}

void ProxyCall::FinishApp(const grpc::Status& status) {
  if (stage_ == Stage::kFinished) return;
  stage_ = Stage::kFinished;
  RecordOutcome(status.error_code());
  // Write and Finish may not overlap in grpc++ when they share a batch.
  if (app_write_in_flight_) {
    app_status_after_write_ = status;
    return;
  }
  SendAppStatus(status);
}

void ProxyCall::SendAppStatus(const grpc::Status& status) {
  app_status_after_write_.reset();
  StopHoldingDownward();
  if (!downward_message_held_) return app_stream_.Finish(status, Tag(Op::kAppFinish));
  // The last message, the held headers if any, and the status: one batch.
  downward_message_held_ = false;
  app_stream_.WriteAndFinish(downward_held_, grpc::WriteOptions(), status, Tag(Op::kAppFinish));
  downward_held_.Clear();
}

void ProxyCall::OnLocalRequestRead(bool ok) {
  if (stage_ != Stage::kAnsweringLocally) return;
  if (ok && !local_->request_read) {
    // A unary request: expect the half-close next.
    local_->request_read = true;
    app_stream_.Read(&app_read_message_, Tag(Op::kAppRead));
    return;
  }
  if (!ok && grpc_call_failed_before_recv_message(app_context_.c_call())) {
    cancelled_ = true;
    return;
  }
  if (ok || !local_->request_read) {  // A second message, or none at all.
    return FinishApp(grpc::Status(grpc::StatusCode::INTERNAL,
                                  "poolside: PoolAdmin methods take one request message"));
  }
  // The reply may come on another thread; the alarm brings it back to this
  // call's queue, so every other step stays on the queue's thread.
  void* const reply_tag = Tag(Op::kLocalReply);
  queue_.local->Answer(app_context_.method(), app_read_message_,
                       [this, reply_tag](grpc::Status status, grpc::ByteBuffer response) {
                         local_->status = std::move(status);
                         downward_message_ = std::move(response);
                         local_->alarm.Set(queue_.queue, gpr_time_0(GPR_CLOCK_MONOTONIC),
                                           reply_tag);
                       });
}

void ProxyCall::OnLocalReply() {
  if (stage_ != Stage::kAnsweringLocally) return;  // Cancelled meanwhile.
  if (!local_->status.ok()) return FinishApp(local_->status);
  stage_ = Stage::kFinished;
  app_stream_.WriteAndFinish(downward_message_, grpc::WriteOptions(), local_->status,
                             Tag(Op::kAppFinish));
}

}  // namespace poolside
