#include "tests/support/test_upstream.h"

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace poolside::test {
namespace {

enum class Shape { kUnary, kServerStream, kClientStream, kBidi, kUnknown };

Shape ShapeOf(const std::string& method) {
  if (method == kUnaryMethod) return Shape::kUnary;
  if (method == kServerStreamMethod) return Shape::kServerStream;
  if (method == kClientStreamMethod) return Shape::kClientStream;
  if (method == kBidiMethod) return Shape::kBidi;
  return Shape::kUnknown;
}

Metadata CopyMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  Metadata copy;
  for (const auto& [key, value] : metadata) {
    copy.emplace(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  return copy;
}

// The first value of `key`, or nullptr.
const std::string* Find(const Metadata& metadata, const std::string& key) {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

int64_t IntHeader(const Metadata& metadata, const std::string& key, int64_t fallback) {
  const std::string* value = Find(metadata, key);
  int64_t parsed = 0;
  if (value == nullptr || !absl::SimpleAtoi(*value, &parsed)) return fallback;
  return parsed;
}

grpc::Status RequestedStatus(const Metadata& metadata) {
  const int64_t code = IntHeader(metadata, "x-status-code", 0);
  const std::string* message = Find(metadata, "x-status-message");
  if (message == nullptr) message = Find(metadata, "x-status-message-bin");
  const std::string* details = Find(metadata, "x-status-details-bin");
  if (code < 0 || code > 16) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("test upstream: bad x-status-code ", code));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), message ? *message : "",
                      details ? *details : "");
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const ObservedCall& call) {
  os << "{" << call.method << " from " << call.peer;
  if (call.cancelled) os << ", cancelled";
  if (call.done) {
    os << ", finished with status " << call.status_code;
  } else {
    os << ", still running";
  }
  return os << "}";
}

// Records calls for TestUpstream. Thread-safe.
class TestUpstream::Recorder {
 public:
  enum class Counter { kStarted, kDone, kCancelled };

  // Returns the call's index, used to report on it later.
  size_t RecordStart(ObservedCall call) {
    absl::MutexLock lock(&mutex_);
    calls_.push_back(std::move(call));
    changed_.SignalAll();
    return first_index_ + calls_.size() - 1;
  }

  void RecordCancelled(size_t index) {
    absl::MutexLock lock(&mutex_);
    if (ObservedCall* call = Get(index); call != nullptr) call->cancelled = true;
    changed_.SignalAll();
  }

  void RecordDone(size_t index, grpc::StatusCode code) {
    absl::MutexLock lock(&mutex_);
    if (ObservedCall* call = Get(index); call != nullptr) {
      call->done = true;
      call->status_code = code;
    }
    changed_.SignalAll();
  }

  std::vector<ObservedCall> Calls(const std::string& method) const {
    absl::MutexLock lock(&mutex_);
    std::vector<ObservedCall> calls;
    for (const ObservedCall& call : calls_) {
      if (method.empty() || call.method == method) calls.push_back(call);
    }
    return calls;
  }

  void Clear() {
    absl::MutexLock lock(&mutex_);
    first_index_ += calls_.size();
    calls_.clear();
  }

  bool Await(Counter counter, size_t n, absl::Duration timeout, const std::string& method) const {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mutex_);
    while (Count(counter, method) < n) {
      if (changed_.WaitWithDeadline(&mutex_, deadline) && Count(counter, method) < n) return false;
    }
    return true;
  }

 private:
  ObservedCall* Get(size_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    // Reports about calls forgotten by Clear() are dropped.
    if (index < first_index_) return nullptr;
    return &calls_[index - first_index_];
  }

  size_t Count(Counter counter, const std::string& method) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    size_t count = 0;
    for (const ObservedCall& call : calls_) {
      if (!method.empty() && call.method != method) continue;
      switch (counter) {
        case Counter::kStarted:
          ++count;
          break;
        case Counter::kDone:
          count += call.done ? 1 : 0;
          break;
        case Counter::kCancelled:
          count += call.cancelled ? 1 : 0;
          break;
      }
    }
    return count;
  }

  mutable absl::Mutex mutex_;
  mutable absl::CondVar changed_;
  std::vector<ObservedCall> calls_ ABSL_GUARDED_BY(mutex_);
  // Index of calls_[0] among every call recorded since construction.
  size_t first_index_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Serves one call. Owned by itself: deleted in OnDone.
//
// The call advances one step at a time: the optional sleep (an alarm), then
// reads, then writes, then Finish. At most one of those is outstanding, so the
// step state needs no lock; OnCancel runs concurrently and only touches the
// atomic flag and the alarm.
class TestUpstream::Reactor final : public grpc::ServerGenericBidiReactor {
 public:
  Reactor(grpc::GenericCallbackServerContext* ctx, Recorder* recorder)
      : ctx_(ctx),
        recorder_(recorder),
        shape_(ShapeOf(ctx->method())),
        metadata_(CopyMetadata(ctx->client_metadata())) {
    ObservedCall call;
    call.method = ctx->method();
    call.client_metadata = metadata_;
    call.deadline = ctx->deadline();
    call.authority = ctx->host();
    call.peer = ctx->peer();
    index_ = recorder_->RecordStart(std::move(call));

    if (shape_ == Shape::kUnknown) {
      FinishWith(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                              absl::StrCat("test upstream: unknown method ", ctx->method())));
      return;
    }
    const int64_t sleep_ms = IntHeader(metadata_, "x-sleep-ms", 0);
    if (sleep_ms <= 0) {
      Begin();
      return;
    }
    sleeping_.store(true);
    // The alarm's callback runs on a gRPC executor thread, never blocking a
    // callback thread; Cancel() from OnCancel runs it early with ok=false.
    alarm_.Set(
        std::chrono::system_clock::now() + std::chrono::milliseconds(sleep_ms), [this](bool ok) {
          sleeping_.store(false);
          if (!ok || cancelled_.load()) {
            FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while sleeping"));
            return;
          }
          Begin();
        });
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (cancelled_.load()) {
        FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
        return;
      }
      // The client half-closed (or the call is being cancelled and OnCancel
      // has not run yet: the replies below then fail and end the call).
      Reply();
      return;
    }
    if (shape_ == Shape::kBidi) {
      to_write_.push_back(std::move(request_));
      request_.Clear();
      WriteNext();
      return;
    }
    received_.push_back(std::move(request_));
    request_.Clear();
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    to_write_.pop_front();
    if (!ok) {
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    if (!to_write_.empty()) {
      const int64_t interval_ms = IntHeader(metadata_, "x-response-interval-ms", 0);
      if (interval_ms <= 0) return WriteNext();
      sleeping_.store(true);
      alarm_.Set(
          std::chrono::system_clock::now() + std::chrono::milliseconds(interval_ms),
          [this](bool alarm_ok) {
            sleeping_.store(false);
            if (!alarm_ok || cancelled_.load()) {
              FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting"));
              return;
            }
            WriteNext();
          });
    } else if (shape_ == Shape::kBidi) {
      StartRead(&request_);
    } else {
      FinishWithRequestedStatus();
    }
  }

  void OnCancel() override {
    cancelled_.store(true);
    recorder_->RecordCancelled(index_);
    if (sleeping_.load()) alarm_.Cancel();
  }

  void OnDone() override {
    recorder_->RecordDone(index_, final_code_);
    delete this;
  }

 private:
  // Starts answering, after the optional sleep.
  void Begin() {
    if (const std::string* trailers_only = Find(metadata_, "x-trailers-only");
        trailers_only != nullptr && *trailers_only == "1") {
      // Without initial metadata or messages, gRPC sends the status as a
      // trailers-only response.
      FinishWithRequestedStatus();
      return;
    }
    for (const auto& [key, value] : metadata_) {
      if (absl::StartsWith(key, "x-echo-")) ctx_->AddInitialMetadata(key, value);
    }
    // Headers go first even when the status is an error, so that an error
    // here is a headers + trailers answer (x-trailers-only asks for the other).
    StartSendInitialMetadata();
    StartRead(&request_);
  }

  // Sends the replies of the non-bidi shapes once the client has half-closed.
  void Reply() {
    switch (shape_) {
      case Shape::kUnary:
      case Shape::kServerStream: {
        if (received_.size() != 1) {
          FinishWith(grpc::Status(
              grpc::StatusCode::INTERNAL,
              absl::StrCat("test upstream: expected 1 request message, got ", received_.size())));
          return;
        }
        const int64_t count =
            shape_ == Shape::kUnary ? 1 : IntHeader(metadata_, "x-response-count", 1);
        for (int64_t i = 0; i < count; ++i) to_write_.push_back(received_.front());
        break;
      }
      case Shape::kClientStream: {
        std::string all;
        for (const grpc::ByteBuffer& message : received_) all += Flatten(message);
        grpc::Slice slice(all);
        to_write_.emplace_back(&slice, 1);
        break;
      }
      case Shape::kBidi:
      case Shape::kUnknown:
        break;
    }
    received_.clear();
    if (to_write_.empty()) {
      FinishWithRequestedStatus();
    } else {
      WriteNext();
    }
  }

  void WriteNext() { StartWrite(&to_write_.front()); }

  void FinishWithRequestedStatus() {
    for (const auto& [key, value] : metadata_) {
      if (absl::StartsWith(key, "x-trailer-")) ctx_->AddTrailingMetadata(key, value);
    }
    FinishWith(RequestedStatus(metadata_));
  }

  void FinishWith(grpc::Status status) {
    final_code_ = status.error_code();
    Finish(std::move(status));
  }

  grpc::GenericCallbackServerContext* const ctx_;
  Recorder* const recorder_;
  const Shape shape_;
  const Metadata metadata_;
  size_t index_ = 0;

  std::atomic<bool> cancelled_{false};
  std::atomic<bool> sleeping_{false};
  grpc::Alarm alarm_;

  // Step state: touched by one reaction at a time (see the class comment).
  grpc::ByteBuffer request_;
  std::vector<grpc::ByteBuffer> received_;
  // Replies not yet written; the front is being written.
  std::deque<grpc::ByteBuffer> to_write_;
  grpc::StatusCode final_code_ = grpc::StatusCode::OK;
};

class TestUpstream::Service final : public grpc::CallbackGenericService {
 public:
  explicit Service(Recorder* recorder) : recorder_(recorder) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Reactor(ctx, recorder_);
  }

 private:
  Recorder* const recorder_;
};

TestUpstream::TestUpstream(Options options)
    : host_(options.host),
      max_receive_message_size_(options.max_receive_message_size),
      max_concurrent_streams_(options.max_concurrent_streams),
      health_service_(options.health_service),
      recorder_(std::make_unique<Recorder>()),
      port_(options.port) {}

TestUpstream::~TestUpstream() { Shutdown(); }

absl::Status TestUpstream::Start() {
  absl::MutexLock lock(&mutex_);
  if (server_ != nullptr) return absl::FailedPreconditionError("test upstream already serving");
  auto service = std::make_unique<Service>(recorder_.get());
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(absl::StrCat(host_, ":", port_), grpc::InsecureServerCredentials(),
                           &selected_port);
  builder.RegisterCallbackGenericService(service.get());
  // Two servers must never share a port: a restart test relies on the port
  // being this server's alone.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(max_receive_message_size_);
  builder.SetMaxSendMessageSize(-1);
  if (max_concurrent_streams_ > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_concurrent_streams_);
  }
  // grpc reads this process-wide switch as each server is built: on for
  // this one only.
  if (health_service_) grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (health_service_) grpc::EnableDefaultHealthCheckService(false);
  if (server == nullptr || selected_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("test upstream: cannot listen on ", host_, ":", port_));
  }
  port_ = selected_port;
  service_ = std::move(service);
  server_ = std::move(server);
  return absl::OkStatus();
}

void TestUpstream::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&mutex_);
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  server_->Wait();
  server_.reset();
  service_.reset();
}

void TestUpstream::SetHealthServing(bool serving) {
  absl::MutexLock lock(&mutex_);
  if (server_ == nullptr || server_->GetHealthCheckService() == nullptr) return;
  server_->GetHealthCheckService()->SetServingStatus(serving);
}

int TestUpstream::port() const {
  absl::MutexLock lock(&mutex_);
  return port_;
}

std::string TestUpstream::target() const { return absl::StrCat(host_, ":", port()); }

std::vector<ObservedCall> TestUpstream::Calls(const std::string& method) const {
  return recorder_->Calls(method);
}

std::set<std::string> TestUpstream::DistinctPeers(const std::string& method) const {
  std::set<std::string> peers;
  for (const ObservedCall& call : recorder_->Calls(method)) peers.insert(call.peer);
  return peers;
}

void TestUpstream::ClearCalls() { recorder_->Clear(); }

bool TestUpstream::WaitForCalls(size_t n, absl::Duration timeout, const std::string& method) const {
  return recorder_->Await(Recorder::Counter::kStarted, n, timeout, method);
}

bool TestUpstream::WaitForDone(size_t n, absl::Duration timeout, const std::string& method) const {
  return recorder_->Await(Recorder::Counter::kDone, n, timeout, method);
}

bool TestUpstream::WaitForCancelled(size_t n, absl::Duration timeout,
                                    const std::string& method) const {
  return recorder_->Await(Recorder::Counter::kCancelled, n, timeout, method);
}

}  // namespace poolside::test
