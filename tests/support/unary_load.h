// A background unary load that records every call, for tests that judge
// what a fault did to calls in flight: which failed, when, and how.
#ifndef POOLSIDE_TESTS_SUPPORT_UNARY_LOAD_H_
#define POOLSIDE_TESTS_SUPPORT_UNARY_LOAD_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tests/support/generic_client.h"

namespace poolside::test {

// One call of a load run, as the client saw it.
struct TimedCall {
  int64_t id = 0;
  absl::Time start;
  absl::Time end;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
};

// Unary calls to /poolside.test.Echo/Unary, issued back to back from
// `threads` threads over one channel each, until Stop(). Each call carries
// `x-call-id: <id>` so the upstream's records can be matched to it. After a
// failed call a thread pauses 10 ms, so that a dead target is not hammered.
//
// Owns its threads, each with its own channel. Start and Stop from one
// thread; finished() from any.
class UnaryLoad {
 public:
  UnaryLoad(std::string target, int threads, CallOptions options);
  ~UnaryLoad();
  UnaryLoad(const UnaryLoad&) = delete;
  UnaryLoad& operator=(const UnaryLoad&) = delete;

  void Start();
  // Stops issuing calls, waits for those in flight, returns every call.
  std::vector<TimedCall> Stop();
  // Calls finished so far.
  int64_t finished() const { return finished_.load(); }

 private:
  void Run();

  const std::string target_;
  const int thread_count_;
  const CallOptions options_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_id_{0};
  std::atomic<int64_t> finished_{0};
  std::vector<std::thread> threads_;
  absl::Mutex mutex_;
  std::vector<TimedCall> calls_ ABSL_GUARDED_BY(mutex_);
};

// Counts of each status code in `calls`, e.g. "OK: 120, UNAVAILABLE: 2".
std::string SummarizeCodes(const std::vector<TimedCall>& calls);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_UNARY_LOAD_H_
