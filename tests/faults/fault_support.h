// Support for the fault, load and hostile-input tests: looking into the
// poolside process (RSS, file descriptors, /metrics), raw TCP and HTTP/2
// frames for clients and upstreams that misbehave on purpose, helper child
// processes, and a background unary load that records every call.
//
// Everything here is bounded in time: every wait takes a timeout.
#ifndef POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_
#define POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tests/support/child_process.h"
#include "tests/support/generic_client.h"
#include "tests/support/sanitizer.h"

namespace poolside::test {

// ---- The poolside process, seen from outside ----

// VmRSS of `pid` in KiB, from /proc/<pid>/status; nullopt if unreadable.
std::optional<int64_t> ResidentKib(pid_t pid);

// Open file descriptors of `pid` (entries of /proc/<pid>/fd); -1 if unreadable.
int OpenFileDescriptors(pid_t pid);

// The pid of this process's child that runs `binary` (compared by
// /proc/<pid>/exe), or -1. Used to find the poolside child, whose pid
// PoolsideProcess keeps to itself.
pid_t FindChildRunning(const std::string& binary);

// The body of `GET <path>` from 127.0.0.1:`port` (HTTP/1.0, one request per
// connection), or an error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5));

// The value of the sample `series` (a metric name with its labels exactly as
// printed, e.g. `poolside_forwarded_messages_total{direction="downstream"}`)
// in Prometheus text, or nullopt.
std::optional<double> MetricValue(const std::string& text, const std::string& series);

// Polls poolside's /metrics until `series` equals `value` or `timeout`
// passes; the last value seen (nullopt: never read).
std::optional<double> AwaitMetric(int admin_port, const std::string& series, double value,
                                  absl::Duration timeout);

// ---- Raw TCP ----

// A blocking TCP client connection to 127.0.0.1. Confined to one thread.
class RawConnection {
 public:
  struct ReadResult {
    std::string bytes;
    // The peer closed (EOF) or reset the connection.
    bool closed = false;
  };

  static absl::StatusOr<std::unique_ptr<RawConnection>> Connect(int port);
  ~RawConnection();
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  // Sends all of `bytes`; false if the peer is gone (or `timeout` passed).
  bool Send(absl::string_view bytes, absl::Duration timeout = absl::Seconds(5));
  // Reads until `done(bytes so far)` holds, the peer closes, or `timeout`.
  ReadResult ReadUntil(const std::function<bool(const std::string&)>& done, absl::Duration timeout);
  // Reads until the peer closes or `timeout` passes.
  ReadResult ReadUntilClosed(absl::Duration timeout);
  // Half-closes (FIN).
  void ShutdownWrite();
  // Closes with a TCP reset (SO_LINGER 0): an abrupt disconnect.
  void Reset();

 private:
  explicit RawConnection(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// ---- HTTP/2 frames (RFC 9113), built and parsed by hand ----
namespace h2 {

inline constexpr absl::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum FrameType : uint8_t {
  kData = 0x0,
  kHeaders = 0x1,
  kRstStream = 0x3,
  kSettings = 0x4,
  kPing = 0x6,
  kGoaway = 0x7,
  kWindowUpdate = 0x8,
  kContinuation = 0x9,
};

enum Flag : uint8_t {
  kEndStream = 0x1,
  kAck = 0x1,
  kEndHeaders = 0x4,
};

enum ErrorCode : uint32_t {
  kNoError = 0x0,
  kProtocolError = 0x1,
  kInternalError = 0x2,
  kRefusedStream = 0x7,
  kCancel = 0x8,
  kEnhanceYourCalm = 0xb,
};

struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

std::string SerializeFrame(uint8_t type, uint8_t flags, uint32_t stream, absl::string_view payload);
// An empty SETTINGS frame, or its ACK.
std::string Settings(bool ack = false);
std::string RstStream(uint32_t stream, uint32_t error_code);
// HPACK "literal header field without indexing, new name", no Huffman coding.
std::string LiteralHeader(absl::string_view name, absl::string_view value);
// A header block as HEADERS plus CONTINUATION frames of at most `max_frame`
// bytes each.
std::string HeaderFrames(uint32_t stream, absl::string_view block, bool end_stream,
                         size_t max_frame = 16384);
// A gRPC length-prefixed message.
std::string GrpcMessage(absl::string_view payload);
// The header block of a gRPC request for `path` (content-type
// application/grpc unless `content_type` says otherwise; empty leaves it out),
// plus `extra` headers.
std::string GrpcRequestBlock(absl::string_view path,
                             std::optional<std::string> content_type = "application/grpc",
                             const std::vector<std::pair<std::string, std::string>>& extra = {});
// Removes every complete frame from the front of `bytes` and returns them.
std::vector<Frame> TakeFrames(std::string& bytes);
// Every complete frame in `bytes` (left unchanged).
std::vector<Frame> ParseFrames(std::string bytes);
// The error code of a RST_STREAM or GOAWAY frame; 0 otherwise.
uint32_t ErrorCodeOf(const Frame& frame);
// "RST_STREAM(stream 1, 0x8)" and the like, for failure messages.
std::string Describe(const std::vector<Frame>& frames);

}  // namespace h2

// An HTTP/2 "upstream" on 127.0.0.1 that misbehaves on purpose. One thread
// per connection; Stop() (or the destructor) closes everything and joins.
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

// ---- Helper processes ----

// The fault_client binary this build made.
std::string FaultClientBinary();
// goaway_upstream.py: refuses its first call with GOAWAY, then goes away.
std::string GoawayUpstreamScript();

// ---- Load ----

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

// ---- Many streams at once ----

struct SwarmOutcome {
  // Streams that echoed their first message (were open end to end).
  int opened = 0;
  // How each stream ended, by status code.
  std::map<grpc::StatusCode, int> codes;
  // Streams that had not ended when the swarm's time ran out.
  int unfinished = 0;
  absl::Duration open_time;
  absl::Duration total_time;
};

// Opens `streams` bidi streams to /poolside.test.Echo/Bidi spread over
// `channels`, each writing one `message_size`-byte message and reading its
// echo; once all are open (or `timeout` passes) half-closes them all (every
// `cancel_every`-th is cancelled instead, 0: none) and waits for each status.
// One completion queue, driven by the calling thread.
SwarmOutcome RunStreamSwarm(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            int streams, size_t message_size, int cancel_every,
                            absl::Duration timeout);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_FAULTS_FAULT_SUPPORT_H_
