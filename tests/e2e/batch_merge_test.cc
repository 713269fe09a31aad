// poolside's batch merges (proxy/ARCHITECTURE.md step 4, "Holding for what is
// already there"), seen on the wire. A unary request that the app sends in one
// write reaches the upstream as HEADERS, DATA and END_STREAM in one write (the
// corked upstream call), and an answer the upstream sends in one write reaches
// the app as HEADERS, DATA and trailers in one write (the held response
// headers and WriteAndFinish). Every other test passes with either merge off;
// these fail.
//
// Both peers are raw HTTP/2 on loopback that recv() as soon as their socket is
// readable and look at each recv()'s bytes on their own: what poolside writes
// at once (one sendmsg of a few hundred bytes) arrives in one recv(); what it
// writes as separate batches mostly does not. Measured on a loaded 2-CPU
// machine: 20 of 20 calls merged on each side with the merges on; with the
// upstream call uncorked, 0-4 of 20 requests; with the response headers and
// message written as they come, 0-15 of 20 answers (most runs under 10; the
// relay thread the frame screen then had between grpc and the app sometimes
// joined two writes).
//
// The same upstream also serves ping-pong streams (kPingPongMethod): there a
// window update poolside owes the upstream after each answer must ride with
// poolside's next message on that stream instead of going alone in a write of
// its own (ProxyCall::HoldsReadsFor).
//
// Every wait is bounded; the upstream's thread is joined by its destructor.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/generic_client.h"
#include "tests/support/h2_frames.h"
#include "tests/support/loopback_socket.h"

namespace poolside::test {
namespace {

constexpr char kMethod[] = "/poolside.test.Merge/Unary";
// A stream the upstream answers message by message: "re:" + each message,
// and both "re:" + it and "more:" + it, in one write, for a message that
// starts with "twice:".
constexpr char kPingPongMethod[] = "/poolside.test.Merge/PingPong";
// Calls measured, one at a time on one app connection, after one warm-up call
// (it opens the pooled connection and fills both HPACK tables).
constexpr int kCalls = 20;
// With the merges on every call should arrive whole; a little slack for a
// peer that happens to read between two writes of something else.
constexpr int kMinMerged = 18;
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
// HEADERS flags that put more than the header block in the payload.
constexpr uint8_t kPadded = 0x8;
constexpr uint8_t kPriority = 0x20;

// A frame, with the recv() calls (numbered from 1 per connection) that its
// first and last bytes came in.
struct ReceivedFrame {
  h2::Frame frame;
  int first_recv = 0;
  int last_recv = 0;
};

// Splits one direction of a connection into frames, recv() by recv().
// Confined to one thread.
class FrameReader {
 public:
  // `skip_preface`: the bytes begin with the client preface (a server reads).
  explicit FrameReader(bool skip_preface) : preface_left_(skip_preface) {}

  // One recv() on `fd`, and the frames its bytes complete; an error once the
  // peer has closed.
  absl::StatusOr<std::vector<ReceivedFrame>> Receive(int fd) {
    char bytes[65536];
    ssize_t n = -1;
    do {
      n = recv(fd, bytes, sizeof(bytes), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return absl::UnavailableError("the peer closed the connection");
    return Add(absl::string_view(bytes, static_cast<size_t>(n)));
  }

 private:
  // The frames completed by the bytes of one more recv().
  absl::StatusOr<std::vector<ReceivedFrame>> Add(absl::string_view bytes) {
    ++recvs_;
    if (buffer_.empty()) buffer_first_recv_ = recvs_;
    buffer_.append(bytes.data(), bytes.size());
    if (preface_left_) {
      if (buffer_.size() < h2::kClientPreface.size()) return std::vector<ReceivedFrame>();
      if (!absl::StartsWith(buffer_, h2::kClientPreface)) {
        return absl::DataLossError("no HTTP/2 client preface");
      }
      buffer_.erase(0, h2::kClientPreface.size());
      preface_left_ = false;
      buffer_first_recv_ = recvs_;
    }
    std::vector<ReceivedFrame> received;
    for (h2::Frame& frame : h2::TakeFrames(buffer_)) {
      // Only the first frame can have begun in an earlier recv(): what was
      // left over before this one was less than a frame.
      received.push_back(
          {std::move(frame), received.empty() ? buffer_first_recv_ : recvs_, recvs_});
    }
    if (!received.empty()) buffer_first_recv_ = recvs_;
    return received;
  }

  bool preface_left_;
  std::string buffer_;
  int recvs_ = 0;
  int buffer_first_recv_ = 0;
};

// The header block fragment in a HEADERS or CONTINUATION frame's payload.
absl::string_view HeaderFragment(const h2::Frame& frame) {
  absl::string_view payload = frame.payload;
  if (frame.type != h2::kHeaders) return payload;
  size_t padding = 0;
  if ((frame.flags & kPadded) != 0 && !payload.empty()) {
    padding = static_cast<uint8_t>(payload[0]);
    payload.remove_prefix(1);
  }
  if ((frame.flags & kPriority) != 0) payload.remove_prefix(std::min<size_t>(5, payload.size()));
  payload.remove_suffix(std::min(padding, payload.size()));
  return payload;
}

std::string HeaderValue(const h2::HeaderList& headers, absl::string_view name) {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return "";
}

// One request stream or one response as it came in.
struct StreamTrace {
  // Every recv() that carried a byte of its HEADERS, CONTINUATION or DATA
  // frames: one when they all came in one.
  std::set<int> recvs;
  std::string header_block;
  // Decoded header blocks, in order: request headers, or response headers
  // and trailers.
  std::vector<h2::HeaderList> header_lists;
  std::string data;
  bool ended = false;

  void Note(const ReceivedFrame& received) {
    recvs.insert(received.first_recv);
    recvs.insert(received.last_recv);
  }
};

// The gRPC message in `data` (one length-prefixed message), or why not.
absl::StatusOr<std::string> OneGrpcMessage(const std::string& data) {
  if (data.size() < 5 || data[0] != '\0' ||
      data.size() - 5 != ((static_cast<size_t>(static_cast<uint8_t>(data[1])) << 24) |
                          (static_cast<size_t>(static_cast<uint8_t>(data[2])) << 16) |
                          (static_cast<size_t>(static_cast<uint8_t>(data[3])) << 8) |
                          static_cast<size_t>(static_cast<uint8_t>(data[4])))) {
    return absl::DataLossError(
        absl::StrCat("not one uncompressed gRPC message: ", data.size(), " bytes of DATA"));
  }
  return data.substr(5);
}

// Feeds a HEADERS or CONTINUATION frame of `trace` through `decoder` once its
// block is complete.
absl::Status AddHeaderFrame(const ReceivedFrame& received, h2::HpackDecoder& decoder,
                            StreamTrace& trace) {
  trace.Note(received);
  const absl::string_view fragment = HeaderFragment(received.frame);
  trace.header_block.append(fragment.data(), fragment.size());
  if ((received.frame.flags & h2::kEndHeaders) == 0) return absl::OkStatus();
  absl::StatusOr<h2::HeaderList> headers = decoder.Decode(trace.header_block);
  trace.header_block.clear();
  if (!headers.ok()) return headers.status();
  trace.header_lists.push_back(*std::move(headers));
  return absl::OkStatus();
}

// Takes one frame as a peer must: acknowledges SETTINGS and PING (into
// `out`) and adds HEADERS, CONTINUATION and DATA to their stream's trace.
absl::Status TakeFrame(const ReceivedFrame& received, h2::HpackDecoder& decoder,
                       absl::FunctionRef<StreamTrace&(uint32_t stream)> trace_of,
                       std::string& out) {
  const h2::Frame& frame = received.frame;
  out += h2::AckFor(frame);
  if (frame.type != h2::kHeaders && frame.type != h2::kContinuation && frame.type != h2::kData) {
    return absl::OkStatus();
  }
  StreamTrace& trace = trace_of(frame.stream);
  if (frame.type == h2::kData) {
    trace.Note(received);
    trace.data += frame.payload;
  } else if (absl::Status added = AddHeaderFrame(received, decoder, trace); !added.ok()) {
    return added;
  }
  if ((frame.flags & h2::kEndStream) != 0) trace.ended = true;
  return absl::OkStatus();
}

// What the upstream saw of one request stream.
struct UpstreamRequest {
  std::string path;
  std::string message;
  // HEADERS, DATA and END_STREAM came in one recv().
  bool one_recv = false;
};

// A raw HTTP/2 upstream on 127.0.0.1 that answers every request stream with
// HEADERS, one DATA ("re:" + the request's message) and trailers
// (grpc-status 0), all in one send(), and records how each request came in.
// One thread serves the listening socket and every connection (poll, then
// recv() at once). requests() and errors() are thread-safe; Start() and
// Stop() belong to the owner's thread. Stop() or the destructor joins.
class MergeProbeUpstream {
 public:
  ~MergeProbeUpstream() { Stop(); }

  absl::Status Start() {
    listen_fd_ = BindLoopback(0);
    if (listen_fd_ < 0 || listen(listen_fd_, 16) != 0) {
      return absl::InternalError(absl::StrCat("bind/listen: ", strerror(errno)));
    }
    port_ = LocalPort(listen_fd_);
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  void Stop() {
    stopping_.store(true);
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
  }

  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }

  std::vector<UpstreamRequest> requests() const {
    absl::MutexLock lock(&mutex_);
    return requests_;
  }
  std::vector<std::string> errors() const {
    absl::MutexLock lock(&mutex_);
    return errors_;
  }
  // recv()s that brought nothing but WINDOW_UPDATE frames.
  int lone_window_updates() const {
    absl::MutexLock lock(&mutex_);
    return lone_window_updates_;
  }

 private:
  // Confined to thread_.
  struct Connection {
    explicit Connection(int fd) : fd(fd) {}
    ~Connection() { close(fd); }
    const int fd;
    FrameReader reader{/*skip_preface=*/true};
    h2::HpackDecoder decoder;
    std::map<uint32_t, StreamTrace> streams;
  };

  void Run() {
    std::vector<std::unique_ptr<Connection>> connections;
    while (!stopping_.load()) {
      std::vector<pollfd> waiters{{listen_fd_, POLLIN, 0}};
      for (const auto& connection : connections) waiters.push_back({connection->fd, POLLIN, 0});
      if (poll(waiters.data(), waiters.size(), 50) <= 0) continue;
      std::vector<std::unique_ptr<Connection>> open;
      for (size_t i = 0; i < connections.size(); ++i) {
        if (waiters[i + 1].revents == 0 || Serve(*connections[i])) {
          open.push_back(std::move(connections[i]));
        }
      }
      connections = std::move(open);
      if ((waiters[0].revents & POLLIN) != 0) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          connections.push_back(std::make_unique<Connection>(fd));
          WriteAll(fd, h2::Settings(), absl::Now() + absl::Seconds(5));
        }
      }
    }
  }

  // One recv() on a readable connection, and the answers it calls for; false
  // once the connection is done.
  bool Serve(Connection& connection) {
    absl::StatusOr<std::vector<ReceivedFrame>> frames = connection.reader.Receive(connection.fd);
    if (absl::IsUnavailable(frames.status())) return false;
    if (!frames.ok()) return Fail(frames.status());
    std::string out;
    bool only_window_updates = !frames->empty();
    for (const ReceivedFrame& received : *frames) {
      const h2::Frame& frame = received.frame;
      if (frame.type == h2::kGoaway) return false;
      if (frame.type != h2::kWindowUpdate) only_window_updates = false;
      absl::Status taken = TakeFrame(
          received, connection.decoder,
          [&](uint32_t id) -> StreamTrace& { return connection.streams[id]; }, out);
      if (!taken.ok()) return Fail(taken);
      const auto stream = connection.streams.find(frame.stream);
      if (stream == connection.streams.end() || !stream->second.header_block.empty()) continue;
      StreamTrace& trace = stream->second;
      if (!trace.header_lists.empty() &&
          HeaderValue(trace.header_lists[0], ":path") == kPingPongMethod) {
        out += AnswerPingPong(frame.stream, trace);
      } else if (trace.ended) {
        out += Answer(frame.stream, trace);
      }
      if (trace.ended) connection.streams.erase(stream);
    }
    if (only_window_updates) {
      absl::MutexLock lock(&mutex_);
      ++lone_window_updates_;
    }
    return out.empty() || WriteAll(connection.fd, out, absl::Now() + absl::Seconds(5));
  }

  // Answers each whole message a ping-pong stream has brought so far, and its
  // end with trailers.
  static std::string AnswerPingPong(uint32_t stream, StreamTrace& trace) {
    std::string out;
    if (!trace.data.empty() && trace.header_lists.size() == 1) {
      // The response headers, once: header_lists[1] marks them sent.
      trace.header_lists.emplace_back();
      out += h2::HeaderFrames(
          stream, std::string(1, '\x88') + h2::LiteralHeader("content-type", "application/grpc"),
          /*end_stream=*/false);
    }
    while (trace.data.size() >= 5) {
      const size_t length = (static_cast<size_t>(static_cast<uint8_t>(trace.data[1])) << 24) |
                            (static_cast<size_t>(static_cast<uint8_t>(trace.data[2])) << 16) |
                            (static_cast<size_t>(static_cast<uint8_t>(trace.data[3])) << 8) |
                            static_cast<size_t>(static_cast<uint8_t>(trace.data[4]));
      if (trace.data.size() < 5 + length) break;
      const std::string message = trace.data.substr(5, length);
      trace.data.erase(0, 5 + length);
      out += h2::SerializeFrame(h2::kData, 0, stream, h2::GrpcMessage("re:" + message));
      if (absl::StartsWith(message, "twice:")) {
        out += h2::SerializeFrame(h2::kData, 0, stream, h2::GrpcMessage("more:" + message));
      }
    }
    if (trace.ended) {
      out += h2::HeaderFrames(stream, h2::LiteralHeader("grpc-status", "0"), /*end_stream=*/true);
    }
    return out;
  }

  // Records the request and returns its answer.
  std::string Answer(uint32_t stream, const StreamTrace& trace) {
    UpstreamRequest request;
    if (!trace.header_lists.empty()) request.path = HeaderValue(trace.header_lists[0], ":path");
    absl::StatusOr<std::string> message = OneGrpcMessage(trace.data);
    request.message = message.ok() ? *message : message.status().ToString();
    request.one_recv = trace.recvs.size() == 1;
    {
      absl::MutexLock lock(&mutex_);
      requests_.push_back(request);
    }
    const std::string headers =
        std::string(1, '\x88') + h2::LiteralHeader("content-type", "application/grpc");
    return h2::HeaderFrames(stream, headers, /*end_stream=*/false) +
           h2::SerializeFrame(h2::kData, 0, stream, h2::GrpcMessage("re:" + request.message)) +
           h2::HeaderFrames(stream, h2::LiteralHeader("grpc-status", "0"), /*end_stream=*/true);
  }

  bool Fail(const absl::Status& status) {
    absl::MutexLock lock(&mutex_);
    errors_.push_back(status.ToString());
    return false;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  mutable absl::Mutex mutex_;
  std::vector<UpstreamRequest> requests_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mutex_);
  int lone_window_updates_ ABSL_GUARDED_BY(mutex_) = 0;
};

// What the app got for one call.
struct AppAnswer {
  std::string status;
  std::string message;
  // Response HEADERS, DATA and trailers came in one recv().
  bool one_recv = false;
  // The frames read, recv() by recv().
  std::string frames;
};

// The app: one raw HTTP/2 connection to poolside, one call at a time, each
// request (HEADERS, DATA, END_STREAM) in one send(). Owns its socket.
// Confined to one thread.
class RawApp {
 public:
  ~RawApp() {
    if (fd_ >= 0) close(fd_);
  }

  absl::Status Connect(int port) {
    fd_ = ConnectLoopback(port);
    if (fd_ < 0) return absl::UnavailableError(absl::StrCat("connect: ", strerror(errno)));
    // A connection window that 20 small answers never exhaust.
    const std::string window_update("\x00\x10\x00\x00", 4);
    return Send(std::string(h2::kClientPreface) + h2::Settings() +
                h2::SerializeFrame(h2::kWindowUpdate, 0, 0, window_update));
  }

  absl::StatusOr<AppAnswer> Call(absl::string_view payload) {
    const uint32_t stream = next_stream_;
    next_stream_ += 2;
    if (absl::Status sent =
            Send(h2::HeaderFrames(stream, h2::GrpcRequestBlock(kMethod), false) +
                 h2::SerializeFrame(h2::kData, h2::kEndStream, stream, h2::GrpcMessage(payload)));
        !sent.ok()) {
      return sent;
    }
    StreamTrace trace;
    // Every frame so far, recv() by recv(), for failure messages.
    std::string seen;
    const absl::Time deadline = absl::Now() + kCallTimeout;
    while (!trace.ended) {
      pollfd waiter{fd_, POLLIN, 0};
      const int ready = poll(&waiter, 1, MillisUntil(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) {
        return absl::DeadlineExceededError(
            absl::StrCat("no answer on stream ", stream, "; saw ", seen));
      }
      absl::StatusOr<std::vector<ReceivedFrame>> frames = reader_.Receive(fd_);
      if (!frames.ok()) return frames.status();
      std::vector<h2::Frame> completed;
      for (const ReceivedFrame& received : *frames) completed.push_back(received.frame);
      absl::StrAppend(&seen, "[recv: ", h2::Describe(completed), "] ");
      std::string out;
      for (const ReceivedFrame& received : *frames) {
        const h2::Frame& frame = received.frame;
        if (frame.type == h2::kGoaway || (frame.type == h2::kRstStream && frame.stream == stream)) {
          return absl::AbortedError(absl::StrCat("poolside ended the call: ", seen));
        }
        // Every header block goes through the decoder, this stream's or not.
        StreamTrace other;
        absl::Status taken = TakeFrame(
            received, decoder_,
            [&](uint32_t id) -> StreamTrace& { return id == stream ? trace : other; }, out);
        if (!taken.ok()) return taken;
      }
      if (!out.empty()) {
        if (absl::Status sent = Send(out); !sent.ok()) return sent;
      }
    }
    if (!trace.header_block.empty()) return absl::DataLossError("header block left unfinished");
    AppAnswer answer;
    answer.frames = std::move(seen);
    if (!trace.header_lists.empty()) {
      answer.status = HeaderValue(trace.header_lists.back(), "grpc-status");
    }
    absl::StatusOr<std::string> message = OneGrpcMessage(trace.data);
    answer.message = message.ok() ? *message : message.status().ToString();
    // Response headers, then trailers; a trailers-only answer is not merged.
    answer.one_recv =
        trace.header_lists.size() == 2 && !trace.data.empty() && trace.recvs.size() == 1;
    return answer;
  }

 private:
  absl::Status Send(absl::string_view bytes) {
    if (WriteAll(fd_, bytes, absl::Now() + absl::Seconds(5))) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
  }

  int fd_ = -1;
  uint32_t next_stream_ = 1;
  FrameReader reader_{/*skip_preface=*/false};
  h2::HpackDecoder decoder_;
};

// How many of the measured calls came in one recv() on each side.
struct MergeCounts {
  int upstream = 0;
  int app = 0;
};

class BatchMergeTest : public E2eTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(upstream_.Start().ok());
    // One pooled connection, and no health probes on it: every request the
    // upstream sees is one of the test's.
    ASSERT_NO_FATAL_FAILURE(StartPoolside({{"GRPC_UPSTREAM_TARGET", upstream_.target()},
                                           {"GRPC_CONNECTION_POOL_SIZE", "1"},
                                           {"GRPC_HEALTH_CHECK_MODE", "connectivity"}}));
  }

  // The warm-up call and kCalls more, one at a time on one app connection;
  // checks that each is forwarded intact both ways.
  MergeCounts CallAndCount() {
    MergeCounts counts;
    RawApp app;
    const absl::Status connected = app.Connect(poolside_->listen_port());
    EXPECT_TRUE(connected.ok()) << connected;
    if (!connected.ok()) return counts;
    std::mt19937 rng(20240611);
    std::vector<std::string> payloads;
    for (int i = 0; i <= kCalls; ++i) {
      payloads.push_back(RandomBytes(32 + 8 * i, rng));
      absl::StatusOr<AppAnswer> answer = app.Call(payloads.back());
      if (!answer.ok()) {
        ADD_FAILURE() << "call " << i << ": " << answer.status();
        return counts;
      }
      EXPECT_EQ(answer->status, "0") << "call " << i << ": " << answer->frames;
      EXPECT_EQ(answer->message, "re:" + payloads.back()) << "call " << i;
      if (i == 0) continue;
      if (answer->one_recv) {
        ++counts.app;
      } else {
        std::cout << "app, call " << i << " in pieces: " << answer->frames << "\n";
      }
    }
    // The upstream records each request before it answers.
    const std::vector<UpstreamRequest> requests = upstream_.requests();
    EXPECT_TRUE(upstream_.errors().empty()) << upstream_.errors().front();
    EXPECT_EQ(requests.size(), payloads.size());
    for (size_t i = 0; i < requests.size() && i < payloads.size(); ++i) {
      EXPECT_EQ(requests[i].path, kMethod) << "request " << i;
      EXPECT_EQ(requests[i].message, payloads[i]) << "request " << i;
      if (i > 0 && requests[i].one_recv) ++counts.upstream;
    }
    // The figures this file's first comment quotes.
    std::cout << "in one recv(): upstream " << counts.upstream << "/" << kCalls << " requests, app "
              << counts.app << "/" << kCalls << " answers\n";
    return counts;
  }

  MergeProbeUpstream upstream_;
};

TEST_F(BatchMergeTest, UnaryRequestReachesUpstreamInOneWrite) {
  const MergeCounts counts = CallAndCount();
  EXPECT_GE(counts.upstream, kMinMerged)
      << "the upstream got a request's HEADERS, DATA and END_STREAM in separate reads: "
         "headers, message and half-close no longer go upstream as one batch "
         "(ProxyCall::StartUpstream corks them)";
}

TEST_F(BatchMergeTest, UnaryAnswerReachesAppInOneWrite) {
  const MergeCounts counts = CallAndCount();
  EXPECT_GE(counts.app, kMinMerged)
      << "the app got an answer's HEADERS, DATA and trailers in separate reads: response "
         "headers, message and status no longer go to the app as one batch "
         "(ProxyCall holds the headers for the message, and the message for the status)";
}

// The app's side is a grpc++ client: what is checked is the upstream's.
class PingPongWindowTest : public BatchMergeTest {
 protected:
  std::unique_ptr<InteractiveCall> PingPongCall() {
    CallOptions options;
    options.wait = kCallTimeout;
    return std::make_unique<InteractiveCall>(
        CreateTestChannel(absl::StrCat("127.0.0.1:", poolside_->listen_port())), kPingPongMethod,
        options);
  }

  // The warm-up exchange and kCalls more on one stream, then the half-close;
  // the lone WINDOW_UPDATEs the upstream read during the kCalls.
  int LoneWindowUpdatesInAPingPong() {
    std::unique_ptr<InteractiveCall> call = PingPongCall();
    // The first exchange opens the pooled connection and fills the HPACK
    // tables.
    EXPECT_TRUE(call->Write("warm-up"));
    EXPECT_EQ(call->Read(), "re:warm-up");
    const int lone_before = upstream_.lone_window_updates();
    for (int i = 0; i < kCalls; ++i) {
      const std::string message = absl::StrCat("ping ", i);
      EXPECT_TRUE(call->Write(message)) << i;
      EXPECT_EQ(call->Read(), "re:" + message) << i;
    }
    const int lone = upstream_.lone_window_updates() - lone_before;
    EXPECT_TRUE(call->WritesDone());
    EXPECT_EQ(call->Read(), std::nullopt);
    const CallResult result = call->Finish();
    EXPECT_TRUE(result.status.ok()) << result;
    EXPECT_TRUE(upstream_.errors().empty()) << upstream_.errors().front();
    std::cout << "lone WINDOW_UPDATE writes: " << lone << " in " << kCalls << " exchanges\n";
    return lone;
  }
};

// Without the held reads the upstream sees 14-20 of the 20 updates alone
// here (GRPC_HOLD_PINGPONG_READS=false; fewer only when its reads fall
// behind and join them to the next request), with them 0. A held read that
// outlasts its 1 ms bound (an app slower than that to answer, on a loaded
// machine) sends its update alone too: hence the slack.
TEST_F(PingPongWindowTest, WindowUpdatesRideWithTheNextMessageOfAPingPong) {
  EXPECT_LE(LoneWindowUpdatesInAPingPong(), kCalls / 4)
      << "poolside sent the upstream a WINDOW_UPDATE on its own after most answers: the "
         "next upstream read no longer waits for the next message to the upstream "
         "(ProxyCall::HoldsReadsFor)";
}

TEST_F(PingPongWindowTest, AnUpstreamThatBreaksThePingPongIsNotKeptWaiting) {
  std::unique_ptr<InteractiveCall> call_owner = PingPongCall();
  InteractiveCall& call = *call_owner;
  for (int i = 0; i < 3; ++i) {
    const std::string message = absl::StrCat("ping ", i);
    ASSERT_TRUE(call.Write(message)) << i;
    ASSERT_EQ(call.Read(), "re:" + message) << i;
  }
  // Two answers to one message, in one write: poolside holds the read that
  // takes the second, and it still reaches the app without the app sending
  // anything more.
  ASSERT_TRUE(call.Write("twice:x"));
  ASSERT_EQ(call.Read(), "re:twice:x");
  const absl::Time asked = absl::Now();
  ASSERT_EQ(call.Read(), "more:twice:x");
  std::cout << "second answer after " << absl::FormatDuration(absl::Now() - asked) << "\n";
  // The stream goes on.
  ASSERT_TRUE(call.Write("ping 3"));
  ASSERT_EQ(call.Read(), "re:ping 3");
  ASSERT_TRUE(call.WritesDone());
  EXPECT_EQ(call.Read(), std::nullopt);
  const CallResult result = call.Finish();
  EXPECT_TRUE(result.status.ok()) << result;
  EXPECT_FALSE(call.timed_out());
}

}  // namespace
}  // namespace poolside::test
