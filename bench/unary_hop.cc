// unary_hop: the cheapest hop grpc++ 1.51 allows, as a yardstick for
// poolside in bench/compare ("grpc-hop" target). Each call is taken as
// unary: one request message is read, sent upstream as one unary call (one
// client batch), and its reply and status go back in one WriteAndFinish: 4
// grpc batches per call where poolside issues 13 to stay transparent.
//
// With --mode=pingpong (bench/compare's scenario 4) every call is taken as a
// bidi stream doing strict ping-pong instead: read one message from the app,
// write it upstream, read the upstream's reply, write that to the app, and
// again; when the app half-closes, WritesDone upstream, Finish upstream, and
// Finish to the app with the upstream's status. One operation is pending per
// stream at a time, so each message costs 4 completion-queue round trips (app
// read, upstream write, upstream read, app write) and nothing else. It is
// only correct for strict ping-pong: a stream where either side sends two
// messages in a row, or the upstream talks first, stalls.
//
// With --channels=N the hop opens N distinct upstream connections and puts
// each call on the next one in turn, as a pool that spreads streams does; one
// connection (the default) is the cheapest.
//
// It is NOT a proxy anyone should run: no metadata is copied either way, no
// trailers or status details come back, client streams break (and bidi streams
// in the default mode), there is no pool, health, drain or limit. It answers
// one question: how much CPU and latency a hop costs on this library before
// any of that.
//
//   unary_hop --upstream=127.0.0.1:PORT [--port=0] [--threads=2]
//             [--mode=unary|pingpong] [--channels=1]
//
// Prints PORT=<n> once listening; serves until SIGTERM or SIGINT.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/internal/sysinfo.h"
#include "absl/synchronization/mutex.h"
#include "bench/hop_main.h"

namespace {

using ::poolside::bench::FlagValue;

constexpr char kUsage[] =
    "usage: unary_hop --upstream=HOST:PORT [--port=0] [--threads=2] [--mode=unary|pingpong]\n"
    "                 [--channels=1]\n"
    "A minimal grpc++ forwarder of unary calls or ping-pong streams (a benchmark\n"
    "yardstick, not a proxy).\n";

// The upstream connections; each call takes the next one in turn.
class StubRing {
 public:
  explicit StubRing(std::vector<std::unique_ptr<grpc::GenericStub>> stubs)
      : stubs_(std::move(stubs)) {}
  grpc::GenericStub* Next() {
    return stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()].get();
  }

 private:
  const std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  std::atomic<size_t> next_{0};
};

// What both kinds of hop share: the app's call, waited for on one queue,
// and the stub its upstream call goes through.
class AcceptedCall {
 public:
  AcceptedCall(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* queue,
               StubRing* stubs)
      : service_(service),
        queue_(queue),
        stubs_(stubs),
        stub_(stubs->Next()),
        app_stream_(&app_context_) {}
  virtual ~AcceptedCall() = default;

  // Every tag is the call. Once accepted, another call waits for the next
  // app call; the answer's completion deletes the call.
  static void OnEvent(void* tag, bool ok) {
    auto* call = static_cast<AcceptedCall*>(tag);
    if (call->answered_ || (!call->accepted_ && !ok)) {  // Done, or shutting down.
      delete call;
    } else if (!call->accepted_) {
      call->accepted_ = true;
      call->AcceptAnother();
      call->Proceed(ok);
    } else {
      call->Proceed(ok);
    }
  }

  // A new `Call` waiting for the next app call; it owns itself from here on.
  // Asked for once whole, since the tag may fire at once.
  template <typename Call>
  static void AcceptNext(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* queue,
                         StubRing* stubs) {
    auto* call = new Call(service, queue, stubs);
    service->RequestCall(&call->app_context_, &call->app_stream_, queue, queue, call->tag());
  }

 protected:
  virtual void AcceptAnother() = 0;
  // The call's next step: the first right after it was accepted.
  virtual void Proceed(bool ok) = 0;
  void* tag() { return this; }
  // The last step: the app's call ends with `status`, after `reply` if any.
  void Answer(const grpc::Status& status, const grpc::ByteBuffer* reply) {
    answered_ = true;
    if (reply != nullptr) {
      app_stream_.WriteAndFinish(*reply, grpc::WriteOptions(), status, tag());
    } else {
      app_stream_.Finish(status, tag());
    }
  }

  template <typename Call>
  void AcceptNext() {
    AcceptNext<Call>(service_, queue_, stubs_);
  }

  grpc::AsyncGenericService* const service_;
  grpc::ServerCompletionQueue* const queue_;
  StubRing* const stubs_;
  grpc::GenericStub* const stub_;
  grpc::GenericServerContext app_context_;
  grpc::GenericServerAsyncReaderWriter app_stream_;
  grpc::ClientContext upstream_context_;
  grpc::ByteBuffer message_;
  grpc::Status status_;
  bool accepted_ = false;
  bool answered_ = false;
};

// One forwarded call; owns itself and deletes itself after its last step.
// Exactly one operation is pending at a time, so the tag needs no step bits.
class HopCall : public AcceptedCall {
 public:
  using AcceptedCall::AcceptedCall;

  void AcceptAnother() override { AcceptNext<HopCall>(); }

  void Proceed(bool ok) override {
    switch (step_) {
      case Step::kAccepted:
        step_ = Step::kReadingRequest;
        app_stream_.Read(&message_, tag());
        return;
      case Step::kReadingRequest:
        if (!ok) return Answer(grpc::Status(grpc::StatusCode::INTERNAL, "no request"), nullptr);
        step_ = Step::kCallingUpstream;
        upstream_context_.set_deadline(app_context_.raw_deadline());
        upstream_call_ =
            stub_->PrepareUnaryCall(&upstream_context_, app_context_.method(), message_, queue_);
        upstream_call_->StartCall();
        upstream_call_->Finish(&message_, &status_, tag());
        return;
      case Step::kCallingUpstream:
        return Answer(status_, status_.ok() ? &message_ : nullptr);
    }
  }

 private:
  enum class Step { kAccepted, kReadingRequest, kCallingUpstream };

  std::unique_ptr<grpc::GenericClientAsyncResponseReader> upstream_call_;
  Step step_ = Step::kAccepted;
};

// One forwarded bidi stream in strict ping-pong (--mode=pingpong); owns
// itself and deletes itself after its last step. As in HopCall, exactly one
// operation is pending at a time.
class PingPongCall : public AcceptedCall {
 public:
  using AcceptedCall::AcceptedCall;

  void AcceptAnother() override { AcceptNext<PingPongCall>(); }

  void Proceed(bool ok) override {
    switch (step_) {
      case Step::kAccepted:
        upstream_context_.set_deadline(app_context_.raw_deadline());
        // Corked: StartCall performs no batch; the initial metadata goes out
        // with the first Write (or WritesDone).
        upstream_context_.set_initial_metadata_corked(true);
        upstream_stream_ = stub_->PrepareCall(&upstream_context_, app_context_.method(), queue_);
        upstream_stream_->StartCall(nullptr);
        return ReadApp();
      case Step::kReadingApp:
        if (!ok) {  // The app half-closed (or went away).
          step_ = Step::kClosingUpstream;
          upstream_stream_->WritesDone(tag());
          return;
        }
        step_ = Step::kWritingUpstream;
        upstream_stream_->Write(message_, tag());
        return;
      case Step::kWritingUpstream:
        if (!ok) return FinishUpstream();
        step_ = Step::kReadingUpstream;
        upstream_stream_->Read(&message_, tag());
        return;
      case Step::kReadingUpstream:
        if (!ok) return FinishUpstream();  // The upstream ended the stream.
        step_ = Step::kWritingApp;
        app_stream_.Write(message_, tag());
        return;
      case Step::kWritingApp:
        if (!ok) {  // The app is gone: so is the upstream stream.
          upstream_context_.TryCancel();
          return FinishUpstream();
        }
        return ReadApp();
      case Step::kClosingUpstream:
        return FinishUpstream();
      case Step::kFinishingUpstream:
        return Answer(status_, nullptr);
    }
  }

 private:
  enum class Step {
    kAccepted,
    kReadingApp,
    kWritingUpstream,
    kReadingUpstream,
    kWritingApp,
    kClosingUpstream,
    kFinishingUpstream,
  };

  void ReadApp() {
    step_ = Step::kReadingApp;
    app_stream_.Read(&message_, tag());
  }

  void FinishUpstream() {
    step_ = Step::kFinishingUpstream;
    upstream_stream_->Finish(&status_, tag());
  }

  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> upstream_stream_;
  Step step_ = Step::kAccepted;
};

template <typename Call>
void Serve(grpc::ServerCompletionQueue* queue, grpc::AsyncGenericService* service,
           StubRing* stubs) {
  // Enough accepting calls that a burst never waits for the next RequestCall.
  for (int i = 0; i < 64; ++i) AcceptedCall::AcceptNext<Call>(service, queue, stubs);
  void* tag = nullptr;
  bool ok = false;
  while (queue->Next(&tag, &ok)) AcceptedCall::OnEvent(tag, ok);
}
}  // namespace

int main(int argc, char** argv) {
  const sigset_t stop_signals = poolside::bench::BlockStopSignals();

  std::string upstream;
  int port = 0;
  int threads = 2;
  int channels = 1;
  std::string mode = "unary";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!FlagValue(arg, "--upstream").empty()) {
      upstream = FlagValue(arg, "--upstream");
    } else if (!FlagValue(arg, "--port").empty()) {
      port = std::atoi(FlagValue(arg, "--port").c_str());
    } else if (!FlagValue(arg, "--threads").empty()) {
      threads = std::atoi(FlagValue(arg, "--threads").c_str());
    } else if (!FlagValue(arg, "--channels").empty()) {
      channels = std::atoi(FlagValue(arg, "--channels").c_str());
    } else if (!FlagValue(arg, "--mode").empty()) {
      mode = FlagValue(arg, "--mode");
    } else {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  if (upstream.empty() || threads < 1 || channels < 1 || port < 0 ||
      (mode != "unary" && mode != "pingpong")) {
    std::fputs(kUsage, stderr);
    return 2;
  }

  // As poolside does (proxy/main.cc): absl's debug-only deadlock graph would
  // cost the yardstick instructions a proxy need not pay.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // As poolside does at start (proxy/grpc_runtime.h): absl's lazy reading of
  // the CPU frequency, if it first happens inside grpc 1.51's connect, fails
  // that connect with a stale ENOENT.
  absl::base_internal::NominalCPUFrequency();
  grpc::ChannelArguments channel_args;
  // Like poolside's upstream channels: no retry machinery in the way.
  channel_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  // One connection per channel, as poolside's pool does (channel_factory.cc).
  channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < channels; ++i) {
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(upstream, grpc::InsecureChannelCredentials(), channel_args)));
  }
  StubRing stub_ring(std::move(stubs));

  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(),
                           &selected_port);
  builder.RegisterAsyncGenericService(&service);
  builder.SetMaxReceiveMessageSize(-1);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < threads; ++i) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    std::fprintf(stderr, "unary_hop: cannot listen on 127.0.0.1:%d\n", port);
    return 1;
  }
  std::printf("PORT=%d\n", selected_port);
  std::fflush(stdout);

  std::vector<std::thread> workers;
  for (auto& queue : queues) {
    workers.emplace_back(mode == "unary" ? Serve<HopCall> : Serve<PingPongCall>, queue.get(),
                         &service, &stub_ring);
  }

  int received = 0;
  sigwait(&stop_signals, &received);

  server->Shutdown();
  for (auto& queue : queues) queue->Shutdown();
  for (auto& worker : workers) worker.join();
  return 0;
}
