// The hot-path half of poolside's request metrics. Every forwarded call and
// message is counted through a CallRecorder, which only bumps plain relaxed
// atomics that its own thread alone writes: no mutex, no shared map, no
// prometheus-cpp metric object. RequestMetrics sums all recorders at scrape
// time.
//
// Ownership and threading: a CallRecorder is created by
// PoolsideMetrics::NewCallRecorder() (or RequestMetrics::NewRecorder()), owned by the
// caller and confined to one thread — normally one forwarding
// completion-queue thread for its whole life. What it recorded stays counted
// after it is destroyed. REQUIRES: the PoolsideMetrics that made it outlives it.
#ifndef POOLSIDE_METRICS_CALL_RECORDER_H_
#define POOLSIDE_METRICS_CALL_RECORDER_H_

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "metrics/method_table.h"

namespace poolside {

// Which way a forwarded message went.
enum class Direction {
  kUpstream,    // app -> upstream (requests)
  kDownstream,  // upstream -> app (responses)
};

class RequestMetrics;
struct RecorderShard;

class CallRecorder {
 public:
  ~CallRecorder();
  CallRecorder(const CallRecorder&) = delete;
  CallRecorder& operator=(const CallRecorder&) = delete;

  // The id to record `full_method` ("/pkg.Service/Method") under. Served from
  // this recorder's own cache; only a name this thread has not seen before
  // consults the shared, bounded MethodTable. Malformed paths, and new names
  // once GRPC_METRICS_MAX_METHODS are taken, map to kOtherMethod.
  MethodId Method(absl::string_view full_method);

  // Counts one finished call: poolside_requests_total and
  // poolside_request_duration_seconds. A code outside grpc's canonical range
  // counts as UNKNOWN.
  void RecordCall(MethodId method, grpc::StatusCode code, absl::Duration elapsed);

  // Counts one forwarded message of `bytes` payload bytes.
  void RecordMessage(Direction direction, size_t bytes);

  // poolside_inflight_requests: call CallStarted() when a call is accepted and
  // CallEnded() exactly once when it is done (on any thread's recorder).
  void CallStarted();
  void CallEnded();

 private:
  friend class RequestMetrics;
  CallRecorder(RequestMetrics& owner, RecorderShard& shard);

  // Constant after construction.
  RequestMetrics& owner_;
  RecorderShard& shard_;
  const MethodId max_method_id_;

  // Method path -> id, bounded: max_method_id_ names plus a fixed allowance
  // for names that map to kOtherMethod (call_recorder.cc).
  absl::flat_hash_map<std::string, MethodId> cache_;
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_CALL_RECORDER_H_
