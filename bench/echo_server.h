// The benchmarks' upstream: an h2c gRPC server that echoes every message of
// every method back to the caller, built on the completion-queue generic API
// so that it spends as little CPU per call as grpc++ allows (it is half of the
// "grpc++ floor" the proxies are compared with).
//
// A method whose name ends in "Unary" is answered like a plain unary handler:
// the reply goes out together with the status, without waiting for the
// client's half-close. Every other method echoes each message as it arrives
// and finishes OK when the client half-closes. An optional delay before each
// reply is served by a grpc::Alarm on the call's queue, so waiting calls hold
// no thread.
//
// Thread-safety: Start() and Shutdown() are called from one thread; calls are
// served by `threads` completion-queue threads, each call confined to one.
#ifndef POOLSIDE_BENCH_ECHO_SERVER_H_
#define POOLSIDE_BENCH_ECHO_SERVER_H_

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace poolside::bench {

struct EchoServerOptions {
  // host:port; port 0 picks a free port (see EchoServer::port()).
  std::string address = "127.0.0.1:0";
  int threads = 1;
  // Every reply waits this long first.
  std::chrono::milliseconds delay{0};
  // Advertised in HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; 0 keeps grpc's default.
  int max_concurrent_streams = 0;
  // Answers grpc.health.v1.Health/Check with SERVING, so that a proxy's
  // health checks pass instead of being echoed. Answered by the generic
  // service itself: grpc's built-in health service is a callback service,
  // and any callback service starts threads that poll the same connections
  // as the completion queues, which costs a CQ-based server much CPU per call.
  bool health_service = true;
};

class EchoServer {
 public:
  // Starts serving, or returns nullptr when the address cannot be bound.
  static std::unique_ptr<EchoServer> Start(const EchoServerOptions& options);

  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  // Shuts down if still serving.
  ~EchoServer();

  int port() const { return port_; }

  // Refuses new calls, cancels the running ones, waits for every call to end
  // and stops the threads.
  void Shutdown();

  // Per completion queue: the calls that exist on it. Written only by the
  // queue's thread; read by Shutdown().
  struct Queue {
    grpc::AsyncGenericService* service = nullptr;
    grpc::ServerCompletionQueue* queue = nullptr;
    std::chrono::milliseconds delay{0};
    bool health_service = false;
    std::atomic<int64_t> live_calls{0};
  };

 private:
  EchoServer() = default;

  grpc::AsyncGenericService service_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> completion_queues_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  int port_ = 0;
};

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_ECHO_SERVER_H_
