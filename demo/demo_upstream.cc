// A tiny upstream for the demo: echoes every message of any method back to
// the caller (unary and streaming alike), answers grpc.health.v1 health
// checks, and reports which TCP connection
// carried it, so the demo can show the pool's connections arriving.
//
// Usage: demo_upstream [--host=ADDR] [--port=N]
//   --host: the address to listen on (default 127.0.0.1; 0.0.0.0 for all, as
//   in a Kubernetes pod); --port: 0 picks a free port. Prints PORT=<n>.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>

#include "demo/demo_flags.h"

namespace {

// Echoes each message as it arrives; finishes OK when the client half-closes.
// Owns itself; confined to grpc's callback threads (one reaction at a time).
class EchoReactor : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor(grpc::CallbackServerContext* context, std::mutex& peers_mutex,
              std::set<std::string>& peers) {
    {
      std::lock_guard<std::mutex> lock(peers_mutex);
      if (peers.insert(context->peer()).second) {
        std::printf("demo_upstream: new connection from %s (%zu so far)\n", context->peer().c_str(),
                    peers.size());
        std::fflush(stdout);
      }
    }
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&message_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNKNOWN, "write failed"));
      return;
    }
    StartRead(&message_);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class EchoService : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    return new EchoReactor(context, peers_mutex_, peers_);
  }

 private:
  std::mutex peers_mutex_;
  std::set<std::string> peers_;
};

constexpr char kUsage[] =
    "usage: demo_upstream [--host=ADDR] [--port=N]\n"
    "  Echoes every message of any method back and answers grpc.health.v1.\n"
    "  --host=ADDR  address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
    "  --port=N     port to listen on; 0 picks a free one (default 0)\n"
    "  --version    print the version and exit\n"
    "Prints PORT=<n> once listening; serves until SIGTERM or SIGINT.\n";

}  // namespace

int main(int argc, char** argv) {
  const poolside::demo::Flags flags(argc, argv, "demo_upstream", kUsage,
                                    {{"host", "127.0.0.1"}, {"port", "0"}});
  const int port = flags.GetInt("port", 0, 65535);
  const std::string host = flags.Get("host");
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  EchoService service;
  // grpc's built-in grpc.health.v1 service, which poolside's health checks ask.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(host + ":" + std::to_string(port), grpc::InsecureServerCredentials(),
                           &selected_port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    std::fprintf(stderr, "demo_upstream: cannot listen on port %d\n", port);
    return 1;
  }
  std::printf("PORT=%d\n", selected_port);
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
