#include "tests/support/generic_client.h"

#include <grpcpp/support/client_callback.h>

#include <cstdio>
#include <cstdlib>

#include "absl/base/internal/sysinfo.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace poolside::test {
namespace {

// After cancelling a call that overran its wait, how long to wait for gRPC to
// report its end before declaring the process wedged.
constexpr absl::Duration kCancelGrace = absl::Seconds(10);

[[noreturn]] void DieWedged(const char* what) {
  std::fprintf(stderr, "%s did not end %s after being cancelled; aborting\n", what,
               absl::FormatDuration(kCancelGrace).c_str());
  std::abort();
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  // One slice, possibly empty: a valid buffer even for a zero-length message.
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

Metadata CopyMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  Metadata copy;
  for (const auto& [key, value] : metadata) {
    copy.emplace(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  return copy;
}

void Configure(const CallOptions& options, grpc::ClientContext& context) {
  for (const auto& [key, value] : options.metadata) context.AddMetadata(key, value);
  if (options.timeout.has_value()) {
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMicroseconds(*options.timeout));
  }
  context.set_wait_for_ready(options.wait_for_ready);
}

void CollectMetadata(const grpc::ClientContext& context, CallResult& result) {
  result.initial_metadata = CopyMetadata(context.GetServerInitialMetadata());
  result.trailing_metadata = CopyMetadata(context.GetServerTrailingMetadata());
}

// Why the waiting thread, never a callback, must own everything that holds a
// grpc::Channel reference (a ClientContext does): gRPC 1.51 runs callbacks on
// the threads of a shared "callback alternative" completion queue, and if one
// of those threads drops the last reference to a channel (or server) using
// it, the queue tears itself down from its own thread and the process aborts
// in grpc_cq_internal_unref (grpc/grpc#32584).

// What a StreamingReactor shares with the thread waiting for it, which owns
// the call's context. Shared so that either may be the last to let go.
struct StreamingOutcome {
  absl::Mutex mutex;
  absl::CondVar done_cv;
  bool done ABSL_GUARDED_BY(mutex) = false;
  CallResult result ABSL_GUARDED_BY(mutex);
};

// Writes every request, then half-closes, while reading every response.
// Owned by itself: deleted in OnDone.
class StreamingReactor final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamingReactor(grpc::ClientContext* context, std::shared_ptr<StreamingOutcome> outcome,
                   const std::vector<std::string>& requests)
      : context_(context), outcome_(std::move(outcome)) {
    for (const std::string& request : requests) requests_.push_back(ToByteBuffer(request));
  }

  void Start(grpc::GenericStub& stub, const std::string& method) {
    stub.PrepareBidiStreamingCall(context_, method, grpc::StubOptions(), this);
    WriteNextOrHalfClose();
    StartRead(&response_);
    StartCall();
  }

  void OnWriteDone(bool ok) override {
    // A failed write means the call is over; OnDone reports why.
    if (ok) WriteNextOrHalfClose();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    responses_.push_back(ToString(response_));
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&outcome_->mutex);
      outcome_->result.status = status;
      outcome_->result.responses = std::move(responses_);
      // The last use of the context: the waiter may destroy it once `done`.
      CollectMetadata(*context_, outcome_->result);
      outcome_->done = true;
      outcome_->done_cv.SignalAll();
    }
    delete this;
  }

 private:
  void WriteNextOrHalfClose() {
    if (next_ < requests_.size()) {
      StartWrite(&requests_[next_++]);
    } else {
      StartWritesDone();
    }
  }

  grpc::ClientContext* const context_;
  const std::shared_ptr<StreamingOutcome> outcome_;
  std::vector<grpc::ByteBuffer> requests_;
  size_t next_ = 0;
  grpc::ByteBuffer response_;
  std::vector<std::string> responses_;
};

// One call of a ConcurrentUnaryCalls batch, owned by the waiting thread.
struct PendingUnaryCall {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

// Shared by the callbacks of a ConcurrentUnaryCalls batch and the waiting
// thread.
struct UnaryBatch {
  absl::Mutex mutex;
  absl::CondVar done_cv;
  size_t done ABSL_GUARDED_BY(mutex) = 0;
  std::vector<bool> finished ABSL_GUARDED_BY(mutex);
  std::vector<CallResult> results ABSL_GUARDED_BY(mutex);
};

}  // namespace

std::ostream& operator<<(std::ostream& os, const CallResult& result) {
  os << "{status " << result.status.error_code() << " '" << result.status.error_message() << "'";
  if (!result.status.error_details().empty()) {
    os << " details " << result.status.error_details().size() << " bytes";
  }
  if (result.timed_out) os << " TIMED OUT (client cancelled)";
  os << ", initial metadata [";
  for (const auto& [key, value] : result.initial_metadata) os << key << " ";
  os << "], trailing metadata [";
  for (const auto& [key, value] : result.trailing_metadata) os << key << " ";
  os << "], " << result.responses.size() << " responses}";
  return os;
}

std::shared_ptr<grpc::Channel> CreateTestChannel(const std::string& target) {
  // As poolside does at start (proxy/grpc_runtime.h): absl's lazy reading of
  // the CPU frequency, if it first happens inside grpc 1.51's connect, fails
  // that connect with a stale ENOENT.
  static const double kCpuFrequency = absl::base_internal::NominalCPUFrequency();
  static_cast<void>(kCpuFrequency);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

CallResult UnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& request, const CallOptions& options) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  Configure(options, context);
  grpc::CompletionQueue cq;
  const grpc::ByteBuffer request_buffer = ToByteBuffer(request);
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&context, method, request_buffer, &cq);
  call->StartCall();
  call->Finish(&response, &status, &status);

  CallResult result;
  void* tag = nullptr;
  bool ok = false;
  auto outcome = cq.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + options.wait));
  if (outcome == grpc::CompletionQueue::TIMEOUT) {
    result.timed_out = true;
    context.TryCancel();
    outcome = cq.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + kCancelGrace));
    if (outcome == grpc::CompletionQueue::TIMEOUT) DieWedged("a unary call");
  }
  result.status = status;
  if (status.ok()) result.responses.push_back(ToString(response));
  CollectMetadata(context, result);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

CallResult StreamingCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                         const std::vector<std::string>& requests, const CallOptions& options) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  Configure(options, context);
  auto outcome = std::make_shared<StreamingOutcome>();
  (new StreamingReactor(&context, outcome, requests))->Start(stub, method);

  const absl::Time deadline = absl::Now() + options.wait;
  absl::MutexLock lock(&outcome->mutex);
  while (!outcome->done && !outcome->done_cv.WaitWithDeadline(&outcome->mutex, deadline)) {
  }
  if (!outcome->done) {
    outcome->result.timed_out = true;
    // Not under the lock: cancelling may run the reactions inline.
    outcome->mutex.Unlock();
    context.TryCancel();
    outcome->mutex.Lock();
    const absl::Time grace_deadline = absl::Now() + kCancelGrace;
    while (!outcome->done && !outcome->done_cv.WaitWithDeadline(&outcome->mutex, grace_deadline)) {
    }
    if (!outcome->done) DieWedged("a streaming call");
  }
  return outcome->result;
}

std::vector<CallResult> ConcurrentUnaryCalls(const std::shared_ptr<grpc::Channel>& channel,
                                             const std::string& method,
                                             const std::vector<std::string>& requests,
                                             const CallOptions& options) {
  grpc::GenericStub stub(channel);
  auto batch = std::make_shared<UnaryBatch>();
  {
    absl::MutexLock lock(&batch->mutex);
    batch->results.resize(requests.size());
    batch->finished.resize(requests.size());
  }
  std::vector<std::unique_ptr<PendingUnaryCall>> calls;
  for (const std::string& request : requests) {
    auto call = std::make_unique<PendingUnaryCall>();
    Configure(options, call->context);
    call->request = ToByteBuffer(request);
    calls.push_back(std::move(call));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    PendingUnaryCall& call = *calls[i];
    // `call` outlives the callback: this thread waits for every callback
    // to have reported before `calls` goes away.
    stub.UnaryCall(&call.context, method, grpc::StubOptions(), &call.request, &call.response,
                   [batch, &call, i](grpc::Status status) {
                     absl::MutexLock lock(&batch->mutex);
                     CallResult& result = batch->results[i];
                     if (status.ok()) result.responses.push_back(ToString(call.response));
                     result.status = std::move(status);
                     CollectMetadata(call.context, result);
                     batch->finished[i] = true;
                     ++batch->done;
                     batch->done_cv.SignalAll();
                   });
  }

  const size_t n = requests.size();
  const absl::Time deadline = absl::Now() + options.wait;
  absl::MutexLock lock(&batch->mutex);
  while (batch->done < n && !batch->done_cv.WaitWithDeadline(&batch->mutex, deadline)) {
  }
  if (batch->done < n) {
    std::vector<size_t> pending;
    for (size_t i = 0; i < n; ++i) {
      if (!batch->finished[i]) {
        batch->results[i].timed_out = true;
        pending.push_back(i);
      }
    }
    batch->mutex.Unlock();
    for (size_t i : pending) calls[i]->context.TryCancel();
    batch->mutex.Lock();
    const absl::Time grace_deadline = absl::Now() + kCancelGrace;
    while (batch->done < n && !batch->done_cv.WaitWithDeadline(&batch->mutex, grace_deadline)) {
    }
    if (batch->done < n) DieWedged("a concurrent unary call");
  }
  return batch->results;
}

InteractiveCall::InteractiveCall(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& method, const CallOptions& options)
    : wait_(options.wait) {
  Configure(options, context_);
  grpc::GenericStub stub(channel);
  stream_ = stub.PrepareCall(&context_, method, &cq_);
  stream_->StartCall(this);
  Await();
}

InteractiveCall::~InteractiveCall() {
  if (!finished_) {
    context_.TryCancel();
    grpc::Status status;
    stream_->Finish(&status, this);
    Await();
  }
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool InteractiveCall::Await() {
  void* tag = nullptr;
  bool ok = false;
  auto outcome = cq_.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + wait_));
  if (outcome == grpc::CompletionQueue::TIMEOUT) {
    timed_out_ = true;
    context_.TryCancel();
    outcome = cq_.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + kCancelGrace));
    if (outcome == grpc::CompletionQueue::TIMEOUT) DieWedged("a step of an interactive call");
  }
  return outcome == grpc::CompletionQueue::GOT_EVENT && ok;
}

bool InteractiveCall::Write(const std::string& message) {
  const grpc::ByteBuffer buffer = ToByteBuffer(message);
  stream_->Write(buffer, this);
  return Await();
}

std::optional<std::string> InteractiveCall::Read() {
  grpc::ByteBuffer buffer;
  stream_->Read(&buffer, this);
  if (!Await()) return std::nullopt;
  return ToString(buffer);
}

bool InteractiveCall::WritesDone() {
  stream_->WritesDone(this);
  return Await();
}

void InteractiveCall::Cancel() { context_.TryCancel(); }

CallResult InteractiveCall::Finish() {
  CallResult result;
  stream_->Finish(&result.status, this);
  Await();
  finished_ = true;
  result.timed_out = timed_out_;
  CollectMetadata(context_, result);
  return result;
}

}  // namespace poolside::test
