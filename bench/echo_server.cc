#include "bench/echo_server.h"

#include <grpcpp/alarm.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace poolside::bench {
namespace {

// Accepts kept waiting on each queue, so that a burst of new calls does not
// wait for one accept to be re-armed after another.
constexpr int kAcceptsPerQueue = 8;
constexpr int kMaxMessageBytes = 64 << 20;
// How long Shutdown() waits for calls to end before giving up on a clean exit.
constexpr auto kDrainLimit = std::chrono::seconds(5);

constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";
// A serialized grpc.health.v1.HealthCheckResponse{status: SERVING}.
constexpr char kServingResponse[] = {0x08, 0x01};

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// One echoed call. Owns itself; confined to the thread of the queue that
// accepted it. Exactly one operation is pending at any time, so the tag is
// the call itself and `step_` says which operation completed.
class EchoCall {
 public:
  static void AcceptNext(EchoServer::Queue& queue) {
    auto* call = new EchoCall(queue);
    queue.service->RequestCall(&call->context_, &call->stream_, queue.queue, queue.queue, call);
  }

  // Handles the completion of the pending operation; may delete the call.
  void Proceed(bool ok) {
    switch (step_) {
      case Step::kAccepting:
        if (!ok) return delete this;  // The server is shutting down.
        AcceptNext(queue_);
        health_check_ = queue_.health_service && context_.method() == kHealthCheckMethod;
        unary_ = health_check_ || EndsWith(context_.method(), "Unary");
        return Read();
      case Step::kReading:
        // Not ok: the client half-closed (or the call ended).
        if (!ok) return Finish(grpc::Status::OK);
        if (health_check_) {
          grpc::Slice serving(kServingResponse, sizeof(kServingResponse));
          message_ = grpc::ByteBuffer(&serving, 1);
          return Reply();
        }
        if (queue_.delay.count() > 0) {
          step_ = Step::kDelaying;
          alarm_.Set(queue_.queue, std::chrono::system_clock::now() + queue_.delay, this);
          return;
        }
        return Reply();
      case Step::kDelaying:
        return Reply();
      case Step::kWriting:
        if (!ok) return Finish(grpc::Status(grpc::StatusCode::UNKNOWN, "write failed"));
        return Read();
      case Step::kFinishing:
        return delete this;
    }
  }

 private:
  enum class Step { kAccepting, kReading, kDelaying, kWriting, kFinishing };

  explicit EchoCall(EchoServer::Queue& queue) : queue_(queue), stream_(&context_) {
    queue_.live_calls.fetch_add(1, std::memory_order_relaxed);
  }
  ~EchoCall() { queue_.live_calls.fetch_sub(1, std::memory_order_relaxed); }

  void Read() {
    step_ = Step::kReading;
    stream_.Read(&message_, this);
  }

  void Reply() {
    if (unary_) {
      step_ = Step::kFinishing;
      stream_.WriteAndFinish(message_, grpc::WriteOptions(), grpc::Status::OK, this);
      return;
    }
    step_ = Step::kWriting;
    stream_.Write(message_, this);
  }

  void Finish(const grpc::Status& status) {
    step_ = Step::kFinishing;
    stream_.Finish(status, this);
  }

  EchoServer::Queue& queue_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer message_;
  grpc::Alarm alarm_;
  Step step_ = Step::kAccepting;
  bool unary_ = false;
  bool health_check_ = false;
};

}  // namespace

std::unique_ptr<EchoServer> EchoServer::Start(const EchoServerOptions& options) {
  std::unique_ptr<EchoServer> server(new EchoServer());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  if (options.max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  }
  builder.RegisterAsyncGenericService(&server->service_);
  const int threads = options.threads > 0 ? options.threads : 1;
  for (int i = 0; i < threads; ++i) {
    server->completion_queues_.push_back(builder.AddCompletionQueue());
  }
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) return nullptr;

  for (auto& completion_queue : server->completion_queues_) {
    auto queue = std::make_unique<Queue>();
    queue->service = &server->service_;
    queue->queue = completion_queue.get();
    queue->delay = options.delay;
    queue->health_service = options.health_service;
    for (int i = 0; i < kAcceptsPerQueue; ++i) EchoCall::AcceptNext(*queue);
    server->queues_.push_back(std::move(queue));
  }
  for (auto& queue : server->queues_) {
    server->threads_.emplace_back([queue = queue.get()] {
      void* tag = nullptr;
      bool ok = false;
      while (queue->queue->Next(&tag, &ok)) static_cast<EchoCall*>(tag)->Proceed(ok);
    });
  }
  return server;
}

EchoServer::~EchoServer() { Shutdown(); }

void EchoServer::Shutdown() {
  if (server_ == nullptr) return;
  server_->Shutdown(std::chrono::system_clock::now());
  // Calls waiting on an alarm still issue their reply; a queue must not be
  // shut down while they can.
  const auto drain_deadline = std::chrono::steady_clock::now() + kDrainLimit;
  auto live_calls = [this] {
    int64_t live = 0;
    for (const auto& queue : queues_) live += queue->live_calls.load(std::memory_order_relaxed);
    return live;
  };
  while (live_calls() > 0 && std::chrono::steady_clock::now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (live_calls() > 0) {
    // Shutting the queues down now would abort in grpc; a benchmark process
    // that is exiting anyway may just leave.
    std::fprintf(stderr, "echo_server: calls still open after shutdown; exiting\n");
    std::fflush(stderr);
    std::_Exit(0);
  }
  for (auto& completion_queue : completion_queues_) completion_queue->Shutdown();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  server_.reset();
}

}  // namespace poolside::bench
