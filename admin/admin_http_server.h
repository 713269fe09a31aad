// poolside's HTTP side port (GRPC_ADMIN_ADDR), for Prometheus and Kubernetes:
//   GET /metrics  Prometheus text format 0.0.4
//   GET /healthz  200 "ok" while the process serves
//   GET /readyz   200 unless the pool is unhealthy or poolside is draining;
//                 503 with the reason otherwise
//   GET /pool     the pool's state as JSON, for people with curl
// HEAD works on every route; other methods get 405, other paths 404, requests
// that do not parse 400 (431 for oversized headers, 413 for a body) and the
// connection is closed.
//
// A slow or hostile client cannot stall it or the proxy: it runs on its own
// Asio threads (never gRPC's), each request must arrive within
// request_timeout, headers and body are bounded, and connections beyond
// max_connections are closed as soon as they are accepted.
//
// Ownership and threading: owned by main. Start, Shutdown and the destructor
// must be called from one thread; SetDraining and port from any. The handlers
// are called on the server's threads, concurrently when threads > 1.
#ifndef POOLSIDE_ADMIN_ADMIN_HTTP_SERVER_H_
#define POOLSIDE_ADMIN_ADMIN_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "pool/pool_snapshot.h"

namespace poolside {

struct AdminHttpOptions {
  // host:port or [v6]:port; port 0 picks a free port (see port()).
  std::string address = "0.0.0.0:15090";
  // Time a connection has to deliver one complete request, including waiting
  // for the next request on a kept-alive connection, and to accept a response.
  absl::Duration request_timeout = absl::Seconds(10);
  size_t header_limit = 8 * 1024;
  size_t body_limit = 1024;
  // Connections beyond this are closed at once.
  int max_connections = 64;
  int threads = 1;
};

// What the routes serve. Both must be set, thread-safe, and must not block
// for long: they run on the server's threads.
struct AdminHttpHandlers {
  // The /metrics body, e.g. refresh PoolsideMetrics from the pool, then Serialize().
  std::function<std::string()> metrics_text;
  // The pool's current state, for /readyz and /pool.
  std::function<PoolSnapshot()> pool_snapshot;
};

class AdminHttpServer {
 public:
  AdminHttpServer(AdminHttpOptions options, AdminHttpHandlers handlers);
  // Shuts down if still running.
  ~AdminHttpServer();
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  // Binds, listens and starts the threads. On failure (bad address, address
  // in use, missing handler) returns a one-line error and serves nothing.
  // REQUIRES: called at most once.
  absl::Status Start();

  // From now on /readyz answers 503 "draining" (SIGTERM received).
  void SetDraining();

  // Closes the listener and every connection, and joins the threads. Returns
  // once no handler is running any more (at most one in-progress handler call
  // per thread is waited for). Idempotent.
  void Shutdown();

  // The bound port, once Start() succeeded.
  int port() const;

 private:
  class Impl;
  const std::unique_ptr<Impl> impl_;
};

}  // namespace poolside

#endif  // POOLSIDE_ADMIN_ADMIN_HTTP_SERVER_H_
