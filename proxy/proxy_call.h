// One forwarded call: the app's call accepted by the generic service (the
// "app side") joined to a call on a pooled upstream channel (the "upstream
// side"). Messages are pumped one at a time in each direction, so a slow
// reader on either end slows the writer on the other and memory stays at one
// message per direction, or two while a call looks ahead for what ends it
// (the app's half-close while it gathers its request; the upstream's status
// once the app has half-closed: see ResumeHeld).
//
// Ownership and threading: a ProxyCall owns itself. It is created waiting for
// a call on one completion queue, every operation of both sides completes on
// that same queue, and that queue is drained by exactly one thread — so a
// ProxyCall is confined to its queue's thread and needs no locks. It deletes
// itself when its last pending operation has completed.
#ifndef POOLSIDE_PROXY_PROXY_CALL_H_
#define POOLSIDE_PROXY_PROXY_CALL_H_

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "base/intrusive_list.h"
#include "metrics/call_recorder.h"
#include "metrics/hostile_peer.h"
#include "pool/channel_pool.h"
#include "prometheus/counter.h"
#include "proxy/fair_share.h"
#include "proxy/local_service.h"

namespace poolside {

// One circuit-breaking limit, shared by every queue. Thread-safe (atomics).
class CallLimit {
 public:
  // `max` <= 0 means no limit. `overflows` (may be null) counts refusals.
  void Configure(int max, prometheus::Counter* overflows) {
    max_ = max;
    overflows_ = overflows;
  }
  // Takes a place, or returns false (and counts the overflow) when full.
  bool TryAcquire() {
    if (max_ <= 0) return true;
    if (count_.fetch_add(1, std::memory_order_relaxed) < max_) return true;
    count_.fetch_sub(1, std::memory_order_relaxed);
    if (overflows_ != nullptr) overflows_->Increment();
    return false;
  }
  // REQUIRES: a place taken with TryAcquire().
  void Release() {
    if (max_ > 0) count_.fetch_sub(1, std::memory_order_relaxed);
  }
  int max() const { return max_; }

 private:
  int max_ = 0;
  prometheus::Counter* overflows_ = nullptr;
  std::atomic<int64_t> count_{0};
};

struct CallLimits {
  // Calls being forwarded (GRPC_MAX_CONCURRENT_REQUESTS).
  CallLimit concurrent;
  // Calls waiting for a ready connection (GRPC_MAX_PENDING_REQUESTS).
  CallLimit pending;
};

class ProxyCall;

// What every call on one completion queue shares. Constant after
// construction, except for live_calls and the lists and counts below it.
struct QueueContext {
  grpc::AsyncGenericService* service = nullptr;
  grpc::ServerCompletionQueue* queue = nullptr;
  ChannelPool* pool = nullptr;
  absl::Duration connection_timeout;
  // Upstream calls wait for ready (ProxyCall::CheckUpstreamCalls bounds it).
  bool wait_for_ready = true;
  // Ping-pong streams hold their next reads (ProxyCall::HoldsReadsFor).
  bool hold_pingpong_reads = true;
  CallLimits* limits = nullptr;
  // Methods answered here instead of forwarded; null when there are none.
  LocalService* local = nullptr;
  // Confined to this queue's thread; null when metrics are off.
  CallRecorder* recorder = nullptr;
  // Bounds the upstream calls of one app connection; null when unbounded.
  FairShare* fair_share = nullptr;
  // Counts upstreams that broke grpc's codec rules (UpstreamAbuseReason);
  // thread-safe, null when metrics are off.
  HostilePeerCounter* hostile_peers = nullptr;
  // ProxyCalls that exist on this queue, accepting ones included. Written only
  // by the queue's thread; read by the shutdown sequence.
  std::atomic<int64_t> live_calls{0};
  // Calls whose upstream call has started, in two lists: not yet answered
  // with headers, and answered (ProxyCall::CheckUpstreamCalls). Confined to
  // this queue's thread, as is cuts_seen (the pool's cuts() last looked at).
  ProxyCall* awaiting_answer = nullptr;
  ProxyCall* answered = nullptr;
  uint64_t cuts_seen = 0;
  // Calls holding a step back until the events already queued are handled
  // (ProxyCall::ResumeHeld), and the events this queue has handled. Confined
  // to this queue's thread.
  IntrusiveList<ProxyCall> holding;
  uint64_t events_handled = 0;
  // Calls holding a read back until that side's next write
  // (ProxyCall::ResumeExpiredReadHolds). Confined to this queue's thread.
  IntrusiveList<ProxyCall> read_holding;
};

// One forwarded call. Where it is, is two small machines instead of a dozen
// flags (chart in proxy/ARCHITECTURE.md): the call as a whole (Stage) and the
// app -> upstream direction (Upward), which must remember what it holds while
// the upstream call starts. The upstream -> app direction keeps what it holds
// back (the response headers for the first message, and once the app has
// half-closed a message until the next read shows whether the status
// follows) and which of its operations are in flight.
class alignas(16) ProxyCall {
 public:
  // Waits for the next app call on `queue`. When one arrives, the ProxyCall
  // forwards it and starts another so that the queue keeps accepting.
  static void AcceptNext(QueueContext& queue);

  // Handles a completion-queue event whose tag a ProxyCall issued.
  static void Dispatch(void* tag, bool ok);

  // Ends, with UNAVAILABLE, the upstream calls of `queue` that are not to go
  // on: those not yet answered whose connection has been down for the
  // connection timeout (upstream calls wait for their connection, so that
  // grpc's transparent retry of a call the upstream never saw can outlast a
  // reconnect; this bounds that wait), and those on a channel the pool has
  // cut. Runs on the queue's thread, every few hundred milliseconds.
  static void CheckUpstreamCalls(QueueContext& queue, absl::Time now);

  // A call holds a step back while what that step could carry may already be
  // in grpc's buffers: its upstream call's start until the app's first
  // message and half-close are read (the upstream then gets headers, message
  // and half-close in one batch and one write), the app's response headers
  // until the upstream's first message is read (the app's write carries
  // them), and, once the app has half-closed, each upstream message until the
  // next read shows whether the status follows (WriteAndFinish carries both).
  // While both sides may still send, a side's next read also waits for that
  // side's next write (HoldRead), unless that side has shown it streams.
  // It waits only for what is already there: the queue's thread calls
  // ResumeHeld when no event is ready, and ResumeOverdue after each event,
  // which resumes the calls that have held through kMaxEventsHeld of the
  // queue's events (under load the queue never runs dry, and an app or
  // upstream that sends nothing yet must not wait for other calls' work).
  static void ResumeHeld(QueueContext& queue);
  static void ResumeOverdue(QueueContext& queue);
  // What a call holds for arrives one lap of the queue later: tens of events
  // under load.
  static constexpr uint64_t kMaxEventsHeld = 256;

  // A held read (HoldsReadsFor) waits for its side's next write, which in
  // ping-pong comes one round trip of the other side later, across idle
  // moments of the queue; so it is bounded by time instead: the queue's
  // thread calls this after each event and when the oldest hold's time is up
  // (ReadHoldDeadline).
  static void ResumeExpiredReadHolds(QueueContext& queue, absl::Time now);
  // REQUIRES: !queue.read_holding.empty().
  static absl::Time ReadHoldDeadline(const QueueContext& queue);
  // Long enough for a loaded app's round trip; the most an upstream message
  // that breaks a ping-pong (or an app message that does) waits, once per
  // call and direction (about 2 ms in practice: grpc waits in whole
  // milliseconds).
  static constexpr absl::Duration kMaxReadHold = absl::Milliseconds(1);

  ProxyCall(const ProxyCall&) = delete;
  ProxyCall& operator=(const ProxyCall&) = delete;

 private:
  // Each pending operation's tag is the call's address with the operation in
  // the low bits (hence alignas(16)).
  enum class Op : uintptr_t {
    kAccepted,
    kAppDone,
    kWaitForReady,
    kUpstreamStarted,
    kUpstreamHeaders,
    kUpstreamRead,
    kUpstreamWrite,
    kUpstreamWritesDone,
    kUpstreamFinish,
    kAppRead,
    kAppHeaders,
    kAppWrite,
    kAppFinish,
    kLocalReply,
    kShareGranted,
  };

  enum class Stage {
    kAccepting,         // RequestCall issued; no app call yet.
    kGatheringRequest,  // Accepted; reading what the app already sent (ResumeHeld).
    kAwaitingShare,     // The app connection holds its fair share: waiting for a place.
    kAwaitingChannel,   // No channel READY: watching one until one is.
    kStartingUpstream,  // StartCall issued on a leased channel.
    kForwarding,        // Upstream call started: both directions run.
    kAnsweringLocally,  // A LocalService method: read, answer, finish.
    kFinished,          // app Finish issued; only completions remain.
  };
  // The app -> upstream direction as a whole; while kOpen, what it holds
  // and has in flight is in upward_held_ and the two *_in_flight_ bits.
  enum class Upward {
    kOpen,     // Messages (and the half-close) still to come or to be written.
    kClosing,  // The half-close is on its way upstream (WritesDone or a last Write).
    kClosed,   // Half-close forwarded: nothing more goes up.
    kStopped,  // Cancelled, failed, or the upstream call ended.
  };
  // A call holds at most this many app messages that the upstream has not
  // been sent: one, except that a call gathering its request may read one
  // more to learn whether the half-close follows (a unary call's does).
  static constexpr int kMaxHeldMessages = 2;

  explicit ProxyCall(QueueContext& queue);
  ~ProxyCall();

  void* Tag(Op op);
  void Handle(Op op, bool ok);

  void OnAccepted(bool ok);
  void OnAppDone();
  void CancelUpstream();
  // Stage: waiting for and starting the upstream call.
  void TryStartUpstream();
  void StartUpstream(ChannelPool::Lease lease);
  void OnUpstreamStarted(bool ok);
  // Which of the queue's lists of upstream calls this call is in.
  enum class Listed { kNone, kAwaitingAnswer, kAnswered };
  void MoveToList(Listed list);
  // The queue's list of calls holding a step back (ResumeHeld). Hold on a
  // call already holding keeps its place and its bound.
  void Hold();
  void Release();
  void Resume();
  // The queue's list of calls holding a read (ResumeExpiredReadHolds).
  void HoldRead();
  void ReleaseReadHold();
  void ResumeReads();
  void CheckConnection(absl::Time now);
  void EndIfCut();
  void EndUpstreamWith(grpc::Status status);
  // Upward direction: app -> upstream.
  void ReadApp();
  // The next app read, or holds it until the app's next write (HoldRead).
  void ReadAppSoon();
  void PostHeldAppRead();
  void OnAppRead(bool ok);
  void PumpUpward();
  void OnUpstreamWrite(bool ok);
  // Which side's read to hold (ReadAppSoon, ReadUpstreamSoon): a read posted
  // after a message has used some of the stream's window makes grpc 1.51
  // send a WINDOW_UPDATE at once, alone in its own write, unless the
  // transport writes on that stream anyway. In ping-pong the side's next
  // write is the answer to what the other side just sent, so the update
  // rides with it. Held only while the call has been ping-pong: the upstream
  // has answered every app message so far, and the app has sent each one
  // after the upstream's answer; a side that sends twice in a row (or the
  // upstream first) streams, and its reads are never held again.
  bool HoldsReadsFor(bool app_side) const;
  // Downward direction: upstream -> app.
  void OnUpstreamHeaders(bool ok);
  void SendHeldHeaders();
  // Leaves the holding list; the held response headers, if any, go with
  // whatever is sent to the app next.
  void StopHoldingDownward();
  void OnAppHeaders(bool ok);
  void OnAppWrite(bool ok);
  // The upstream call is being cancelled: its pending operations fail, and a
  // held read must be pending to carry it to its status.
  void CancelUpstreamCall();
  void ReadUpstream();
  // The next upstream read, or holds it until the next upstream write
  // (HoldRead).
  void ReadUpstreamSoon();
  void PostHeldUpstreamRead();
  void OnUpstreamRead(bool ok);
  // True once the app has half-closed: a message from the upstream is then
  // held while the next read shows whether the upstream's status follows.
  bool LooksAhead() const;
  void WriteHeldDownward();
  void FinishUpstream();
  void OnUpstreamFinish();
  // The end, for every path.
  void FinishApp(const grpc::Status& status);
  // With the held message, if any, in the same batch.
  void SendAppStatus(const grpc::Status& status);
  void RecordOutcome(grpc::StatusCode code);
  // Locally answered methods.
  void OnLocalRequestRead(bool ok);
  void OnLocalReply();
  // True with a place of the app connection's fair share held; false when
  // waiting for one (OnShareGranted resumes).
  bool AcquireShare();
  void OnShareGranted();
  // False (and the call already failing) when a circuit-breaking limit is hit.
  bool AdmitConcurrent();
  bool AdmitPending();
  void LeavePending();

  QueueContext& queue_;
  Stage stage_ = Stage::kAccepting;
  Upward upward_ = Upward::kOpen;
  // The app cancelled, went away or passed its deadline.
  bool cancelled_ = false;

  // App side.
  grpc::GenericServerContext app_context_;
  grpc::GenericServerAsyncReaderWriter app_stream_;
  // Every app Read lands here, then moves (a pointer swap) to upward_held_.
  grpc::ByteBuffer app_read_message_;
  grpc::ByteBuffer upward_held_[kMaxHeldMessages];
  int upward_held_messages_ = 0;
  bool half_close_held_ = false;
  bool app_read_in_flight_ = false;
  bool app_read_held_ = false;
  bool upstream_write_in_flight_ = false;

  // Upstream side.
  grpc::ClientContext upstream_context_;
  std::optional<ChannelPool::Lease> lease_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> upstream_stream_;
  // Every upstream Read lands here, then moves (a pointer swap) to
  // downward_held_ until it is written to the app.
  grpc::ByteBuffer downward_message_;
  grpc::ByteBuffer downward_held_;
  bool downward_message_held_ = false;
  bool app_write_in_flight_ = false;
  bool upstream_read_in_flight_ = false;
  bool upstream_read_held_ = false;
  bool upstream_messages_ended_ = false;
  // TryCancel issued: only the upstream's status is still to come.
  bool upstream_cancelled_ = false;
  // Who sent the last message forwarded; whether the upstream has answered
  // an app message; whether either side has sent a message that answered
  // nothing (HoldsReadsFor).
  enum class Speaker : uint8_t { kNone, kApp, kUpstream };
  Speaker last_speaker_ = Speaker::kNone;
  bool upstream_answered_ = false;
  bool app_streams_ = false;
  bool upstream_streams_ = false;
  // The app's status, waiting for the app write in flight.
  std::optional<grpc::Status> app_status_after_write_;
  grpc::Status upstream_status_;
  // Set when an upstream response cannot be relayed; replaces its status.
  std::optional<grpc::Status> relay_error_;
  absl::Time wait_until_;
  std::shared_ptr<grpc::Channel> awaited_channel_;
  bool counted_concurrent_ = false;
  bool counted_pending_ = false;
  // Fair share (only when bounded): the app connection's name, whether a
  // place is held, and the alarm a granted place arrives by while waiting.
  std::string share_connection_;
  bool share_held_ = false;
  std::unique_ptr<grpc::Alarm> share_alarm_;

  Listed listed_ = Listed::kNone;
  // In the queue's holding list, and the queue's event count at which the
  // call resumes anyway.
  IntrusiveLink<ProxyCall> hold_link_;
  uint64_t hold_until_event_ = 0;
  // In the queue's read-holding list, and when it resumes anyway.
  IntrusiveLink<ProxyCall> read_hold_link_;
  absl::Time read_hold_until_;
  // The upstream's response headers are copied to the app's call but not
  // sent: the first message's write will carry them.
  bool app_headers_held_ = false;
  ProxyCall* previous_listed_ = nullptr;
  ProxyCall* next_listed_ = nullptr;
  // When the leased connection was first seen down while the call waited.
  absl::Time connection_down_since_ = absl::InfiniteFuture();

  // Locally answered calls only (kept out of line: forwarded calls, the
  // many, do not pay for it).
  struct LocalAnswer {
    bool request_read = false;
    // Set by the reply (on any thread) before the alarm posts kLocalReply to
    // this call's queue.
    grpc::Status status;
    grpc::Alarm alarm;
  };
  std::unique_ptr<LocalAnswer> local_;

  // PoolsideMetrics.
  absl::Time accepted_at_;
  MethodId method_ = kOtherMethod;
  bool recorded_start_ = false;
  bool outcome_recorded_ = false;

  int pending_ops_ = 0;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_PROXY_CALL_H_
