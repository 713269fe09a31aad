// TestUpstream: a real grpc++ server on loopback (127.0.0.1 unless told) that stands in for the
// upstream behind poolside in end-to-end tests. It serves every method name
// through grpc::CallbackGenericService, so it sees the raw bytes poolside
// forwards, and records every call it receives.
//
// Methods (any other method name finishes with UNIMPLEMENTED, as a real server
// would, with the message "test upstream: unknown method <name>" so a test can
// tell the upstream's answer from poolside's):
//   /poolside.test.Echo/Unary         replies with the request bytes.
//   /poolside.test.Echo/ServerStream  replies with the request bytes
//                                     `x-response-count` times (default 1).
//   /poolside.test.Echo/ClientStream  replies with one message: the
//                                     concatenation of all request messages.
//   /poolside.test.Echo/Bidi          echoes each message as it arrives and
//                                     finishes after the client half-closes.
// Unary, ServerStream and ClientStream read until the client half-closes and
// then reply, so they accept any number of request messages.
//
// Request metadata controls the answer:
//   x-echo-<name>[-bin]     returned as initial metadata, unchanged.
//   x-trailer-<name>[-bin]  returned as trailing metadata, unchanged.
//   x-status-code           finish with this numeric status code (after the
//   x-status-message        replies above) and this message (or
//   x-status-message-bin    this one, which may hold any bytes) and
//   x-status-details-bin    these details (grpc-status-details-bin).
//   x-sleep-ms              wait this long before answering anything (headers
//                           included); a cancel ends the wait early.
//   x-response-count        ServerStream: how many copies to send.
//   x-response-interval-ms  ServerStream: wait this long between two copies;
//                           a cancel ends the wait early.
//   x-trailers-only: 1      finish with the status at once: no initial
//                           metadata, no messages (a "trailers-only" answer).
//
// Thread-safe. Start() and Shutdown() must not race each other.
#ifndef POOLSIDE_TESTS_SUPPORT_TEST_UPSTREAM_H_
#define POOLSIDE_TESTS_SUPPORT_TEST_UPSTREAM_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace poolside::test {

// Method names served by TestUpstream.
inline constexpr char kUnaryMethod[] = "/poolside.test.Echo/Unary";
inline constexpr char kServerStreamMethod[] = "/poolside.test.Echo/ServerStream";
inline constexpr char kClientStreamMethod[] = "/poolside.test.Echo/ClientStream";
inline constexpr char kBidiMethod[] = "/poolside.test.Echo/Bidi";

// Metadata as both sides of a call see it: key -> value, keys repeated in the
// order they were sent. Values of -bin keys are the raw (decoded) bytes.
using Metadata = std::multimap<std::string, std::string>;

// What the upstream saw of one call.
struct ObservedCall {
  std::string method;
  // Every header the client sent, copied.
  Metadata client_metadata;
  // The call's deadline as the upstream saw it; time_point::max() if none.
  std::chrono::system_clock::time_point deadline;
  // The :authority of the call (ctx->host()).
  std::string authority;
  // The client's address, e.g. "ipv4:127.0.0.1:54321": distinct peers are
  // distinct TCP connections.
  std::string peer;
  // The call ended by cancellation (client cancel, deadline, disconnect)
  // before the upstream finished it.
  bool cancelled = false;
  // The call is over (the reactor's OnDone ran).
  bool done = false;
  // The status the upstream finished with (meaningful when done).
  grpc::StatusCode status_code = grpc::StatusCode::OK;
};

// For gtest failure messages: method, peer, and how the call ended.
std::ostream& operator<<(std::ostream& os, const ObservedCall& call);

class TestUpstream {
 public:
  struct Options {
    // 0 picks a free port; after the first Start() the port is kept, so the
    // server can be shut down and started again on the same port.
    int port = 0;
    // The loopback address to listen on (any of 127.0.0.0/8 works on Linux),
    // so that several upstreams can share one port as pods behind one
    // Service do.
    std::string host = "127.0.0.1";
    // Largest message the server accepts; -1 keeps gRPC's default (4 MiB).
    int max_receive_message_size = -1;
    // HTTP/2 MAX_CONCURRENT_STREAMS the server announces; 0 keeps gRPC's
    // default (no limit).
    int max_concurrent_streams = 0;
    // grpc's own grpc.health.v1 service (SERVING until SetHealthServing),
    // instead of answering health checks UNIMPLEMENTED like any other
    // unknown method.
    bool health_service = false;
  };

  TestUpstream() : TestUpstream(Options()) {}
  explicit TestUpstream(Options options);
  // Shuts down (cancelling calls still running) if still serving.
  ~TestUpstream();

  TestUpstream(const TestUpstream&) = delete;
  TestUpstream& operator=(const TestUpstream&) = delete;

  // Starts serving. REQUIRES: not serving.
  absl::Status Start();

  // Stops accepting calls, waits for calls in flight until `grace` has passed,
  // cancels the rest and returns when every call is over. No-op if not
  // serving.
  void Shutdown(absl::Duration grace = absl::ZeroDuration());

  // What the health service answers (Options::health_service); no-op
  // without it or while not serving.
  void SetHealthServing(bool serving);

  // The port served (or last served); 0 before the first Start().
  int port() const;
  // "<host>:<port>".
  std::string target() const;
  const std::string& host() const { return host_; }

  // Every accessor below takes an optional method name: when not empty, only
  // calls to that method count (poolside's own health probes reach the
  // upstream too, as /grpc.health.v1.Health/Check calls).

  // A copy of the calls seen so far, in the order they arrived.
  std::vector<ObservedCall> Calls(const std::string& method = "") const;
  // The distinct peers (TCP connections) calls arrived on.
  std::set<std::string> DistinctPeers(const std::string& method = "") const;
  // Forgets the calls seen so far.
  void ClearCalls();

  // Waits until at least `n` calls have arrived; false on timeout.
  bool WaitForCalls(size_t n, absl::Duration timeout, const std::string& method = "") const;
  // Waits until at least `n` calls are over; false on timeout.
  bool WaitForDone(size_t n, absl::Duration timeout, const std::string& method = "") const;
  // Waits until at least `n` calls have been cancelled; false on timeout.
  bool WaitForCancelled(size_t n, absl::Duration timeout, const std::string& method = "") const;

 private:
  class Reactor;
  class Recorder;
  class Service;

  // Constant after construction.
  const std::string host_;
  const int max_receive_message_size_;
  const int max_concurrent_streams_;
  const bool health_service_;
  // Thread-safe; outlives every call (Shutdown() waits for them).
  const std::unique_ptr<Recorder> recorder_;

  // State below is protected by mutex_ (the server itself is thread-safe).
  mutable absl::Mutex mutex_;
  int port_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<Service> service_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_TEST_UPSTREAM_H_
