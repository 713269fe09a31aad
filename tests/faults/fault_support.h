// What only the fault tests need: an HTTP/2 upstream that misbehaves on
// purpose (RawUpstream), and the helper processes the fault tests start
// (fault_client, goaway_upstream.py). The generic helpers they share with
// other tests (raw connections, HTTP/2 frames, loads, /proc readings, the side
// port) are in tests/support/.
//
// Everything here is bounded in time: every wait takes a timeout.
#ifndef POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_
#define POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tests/support/h2_frames.h"

namespace poolside::test {

// An HTTP/2 "upstream" on 127.0.0.1 that misbehaves on purpose. Owns its
// listening socket, an accept thread and one thread per connection, which
// alone serves it; Stop() (or the destructor) closes everything and joins.
class RawUpstream {
 public:
  enum class Behavior {
    // Accepts TCP and reads forever, never sending a byte.
    kSilent,
    // Speaks HTTP/2 (SETTINGS, PING acks) and answers every request stream
    // with RST_STREAM(error_code) at once.
    kResetStreams,
    // Answers every request stream with response headers and one gRPC
    // message (an empty one), then RST_STREAM(error_code) — in the same TCP
    // segment, or `reset_delay` later.
    kMessageThenReset,
  };

  RawUpstream(Behavior behavior, uint32_t error_code = h2::kCancel,
              absl::Duration reset_delay = absl::ZeroDuration());
  ~RawUpstream();
  RawUpstream(const RawUpstream&) = delete;
  RawUpstream& operator=(const RawUpstream&) = delete;

  absl::Status Start();
  void Stop();

  int port() const { return port_; }
  std::string target() const;
  int connections_accepted() const { return connections_.load(); }
  int streams_reset() const { return streams_reset_.load(); }

 private:
  void AcceptLoop();
  void Serve(int fd);

  const Behavior behavior_;
  const uint32_t error_code_;
  const absl::Duration reset_delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> streams_reset_{0};
  std::thread accept_thread_;
  absl::Mutex mutex_;
  std::vector<int> connection_fds_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::thread> connection_threads_ ABSL_GUARDED_BY(mutex_);
};

// The fault_client binary this build made.
std::string FaultClientBinary();
// goaway_upstream.py: refuses its first call with GOAWAY, then goes away.
std::string GoawayUpstreamScript();
// first_mutex_wait_shim.so, for LD_PRELOAD: absl's first CPU frequency
// reading happens inside each TCP connect grpc starts.
std::string FirstMutexWaitShim();

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_
