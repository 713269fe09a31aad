#include "relay/frame_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/intrusive_list.h"
#include "relay/grpc_wire.h"
#include "relay/upstream_tls.h"

namespace poolside::relay {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes queued for one direction of one stream, or for one socket.
class ByteQueue {
 public:
  bool empty() const { return head_ == bytes_.size(); }
  size_t size() const { return bytes_.size() - head_; }
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(bytes_.data()) + head_; }
  void Append(const uint8_t* data, size_t length) {
    // A queue that is never quite drained must not grow without end.
    if (head_ > 0 && head_ >= bytes_.size() / 2) {
      bytes_.erase(0, head_);
      head_ = 0;
    }
    bytes_.append(reinterpret_cast<const char*>(data), length);
  }
  void Pop(size_t length) {
    head_ += length;
    if (head_ < bytes_.size()) return;
    head_ = 0;
    // A large message's buffer is not kept for a stream that goes idle.
    if (bytes_.capacity() > kKeptCapacity) {
      std::string().swap(bytes_);
    } else {
      bytes_.clear();
    }
  }

 private:
  static constexpr size_t kKeptCapacity = 64 << 10;
  std::string bytes_;
  size_t head_ = 0;
};

// One header block as nghttp2 received it: the name and value buffers are
// referenced, not copied, until the block is submitted on the other side
// (nghttp2 copies it then).
class HeaderBlock {
 public:
  HeaderBlock() = default;
  HeaderBlock(const HeaderBlock&) = delete;
  HeaderBlock& operator=(const HeaderBlock&) = delete;
  ~HeaderBlock() { Clear(); }

  void Add(nghttp2_rcbuf* name, nghttp2_rcbuf* value) {
    // One allocation for a gRPC call's usual header block, not four.
    if (fields_.capacity() == 0) fields_.reserve(16);
    nghttp2_rcbuf_incref(name);
    nghttp2_rcbuf_incref(value);
    fields_.push_back({name, value});
  }
  bool empty() const { return fields_.empty(); }
  std::vector<nghttp2_nv> ToNv() const {
    std::vector<nghttp2_nv> nv;
    nv.reserve(fields_.size());
    for (const auto& [name, value] : fields_) {
      nghttp2_vec n = nghttp2_rcbuf_get_buf(name);
      nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
      nv.push_back({n.base, v.base, n.len, v.len, NGHTTP2_NV_FLAG_NONE});
    }
    return nv;
  }
  void Clear() {
    for (const auto& [name, value] : fields_) {
      nghttp2_rcbuf_decref(name);
      nghttp2_rcbuf_decref(value);
    }
    fields_.clear();
  }
  void Swap(HeaderBlock& other) { fields_.swap(other.fields_); }
  // The first field named `name`, or "" when there is none.
  absl::string_view Find(absl::string_view name) const {
    for (const auto& [field_name, value] : fields_) {
      nghttp2_vec n = nghttp2_rcbuf_get_buf(field_name);
      if (absl::string_view(reinterpret_cast<const char*>(n.base), n.len) != name) continue;
      nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
      return absl::string_view(reinterpret_cast<const char*>(v.base), v.len);
    }
    return "";
  }

 private:
  std::vector<std::pair<nghttp2_rcbuf*, nghttp2_rcbuf*>> fields_;
};

struct RelayStream;

enum class Side { kApp, kUpstream };

// One TCP connection and its HTTP/2 session, either side.
struct Connection {
  FrameRelay::Loop* loop = nullptr;
  Side side;
  int fd = -1;
  nghttp2_session* session = nullptr;
  ByteQueue output;
  bool waiting_writable = false;
  bool dirty = false;
  bool dead = false;
  // App connections: the type of the last PING or SETTINGS frame received,
  // which names a flood nghttp2 reports without saying of what.
  uint8_t last_control_frame = 0;
  // A GOAWAY ending the session is queued: once it is written (or cannot be),
  // the connection is closed.
  bool cut = false;
  // An upstream connection taken out of rotation (its address left the
  // list), closed, waiting to be freed.
  bool retired_closed = false;
  // A cut app connection whose session is over: its GOAWAY written, FIN
  // sent, what the peer still sends read and dropped until linger_until.
  bool lingering = false;
  Clock::time_point linger_until;
  // Streams with a side on this connection; the count is read by Stats()
  // on other threads.
  IntrusiveList<RelayStream> streams;
  std::atomic<int64_t> open_streams{0};
  // Upstream connections only: where to, and what Stats() reports.
  bool connecting = false;
  // TLS (FrameRelayOptions::tls): the connection's SSL, and whether its
  // handshake is under way (the session starts once it is done); whether
  // OpenSSL holds bytes read that nghttp2 has not had yet.
  SSL* ssl = nullptr;
  bool handshaking = false;
  bool tls_read_pending = false;
  // When a connect (and handshake) in progress is given up.
  Clock::time_point connect_deadline = Clock::time_point::max();
  // The last failure logged for this connection: the same one is not
  // logged again until the connection has come up.
  std::string last_error;
  Clock::time_point reconnect_at = Clock::time_point::max();
  std::string address_text;
  sockaddr_storage address{};
  socklen_t address_length = 0;
  std::atomic<bool> connected{false};
  // The health probe in flight (-1: none), its deadline, what it answered;
  // and the verdict so far.
  int32_t probe_id = -1;
  Clock::time_point probe_deadline;
  bool probe_timed_out = false;
  size_t probe_sent = 0;
  std::string probe_answer;
  int probe_grpc_status = -1;
  int failed_probes = 0;
  std::atomic<bool> healthy{true};
  std::atomic<uint64_t> streams_started{0};
  std::atomic<uint64_t> errors{0};
};

// One call: a stream on an app connection joined to one on an upstream
// connection. Freed when both sides are closed.
struct RelayStream {
  Connection* app = nullptr;
  int32_t app_id = 0;
  Connection* upstream = nullptr;
  int32_t upstream_id = -1;
  // App -> upstream bytes: the first upward_sent are written upstream but
  // kept for a replay; the rest are not written yet. The first
  // upward_credited_again were written once before a replay: the app's
  // window has had them back already.
  ByteQueue upward;
  size_t upward_sent = 0;
  size_t upward_credited_again = 0;
  bool upward_ended = false;
  // Upstream -> app bytes not yet written to the app.
  ByteQueue downward;
  bool downward_ended = false;
  // Each direction's place in its gRPC messages; and whether one was too
  // long (the call is over: later bytes are dropped).
  MessageCursor upward_messages;
  MessageCursor downward_messages;
  bool message_too_large = false;
  // The block being received (request headers, response headers, trailers),
  // and the upstream's trailers waiting for the downward bytes to drain.
  HeaderBlock receiving;
  HeaderBlock trailers;
  bool response_started = false;
  // Until the upstream answers: the request headers, for a replay.
  HeaderBlock request;
  bool replayable = true;
  bool request_has_body = true;
  int replays = 0;
  // Linked while waiting for an upstream connection to come up
  // (Loop::Park), until wait_until.
  IntrusiveLink<RelayStream> wait_link;
  Clock::time_point wait_until;
  // Counted in Loop::admitted_calls_ (GRPC_MAX_CONCURRENT_REQUESTS).
  bool admitted = false;
  // For the CallObserver.
  uint32_t observer_token = 0;
  Clock::time_point started_at;
  int grpc_status = -1;
  // In each side's connection's list of streams.
  IntrusiveLink<RelayStream> app_link;
  IntrusiveLink<RelayStream> upstream_link;
};

IntrusiveLink<RelayStream> RelayStream::*LinkOn(const Connection& connection) {
  return connection.side == Side::kApp ? &RelayStream::app_link : &RelayStream::upstream_link;
}

void Link(Connection& connection, RelayStream* stream) {
  connection.streams.Add(stream, LinkOn(connection));
  connection.open_streams.fetch_add(1, std::memory_order_relaxed);
}

void Unlink(Connection& connection, RelayStream* stream) {
  connection.streams.Remove(stream, LinkOn(connection));
  connection.open_streams.fetch_sub(1, std::memory_order_relaxed);
}

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::StatusOr<sockaddr_storage> ParseAddress(const std::string& host, int port,
                                              socklen_t* length) {
  sockaddr_storage address{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("not an IP address: ", host));
  }
  return address;
}

// An upstream address, parsed.
struct ParsedUpstream {
  sockaddr_storage address{};
  socklen_t length = 0;
  // "10.0.0.7:50051", "[::1]:50051": for Stats() and for telling addresses
  // apart.
  std::string text;
};

absl::StatusOr<std::vector<ParsedUpstream>> ParseUpstreams(
    const std::vector<UpstreamAddress>& upstreams) {
  std::vector<ParsedUpstream> parsed;
  for (const UpstreamAddress& upstream : upstreams) {
    ParsedUpstream entry;
    absl::StatusOr<sockaddr_storage> address =
        ParseAddress(upstream.host, upstream.port, &entry.length);
    if (!address.ok()) return address.status();
    entry.address = *address;
    entry.text = upstream.host.find(':') == std::string::npos
                     ? absl::StrCat(upstream.host, ":", upstream.port)
                     : absl::StrCat("[", upstream.host, "]:", upstream.port);
    parsed.push_back(std::move(entry));
  }
  return parsed;
}

constexpr char kHealthCheckPath[] = "/grpc.health.v1.Health/Check";
constexpr int kGrpcUnimplemented = 12;
// Of a probe's answer, what is kept: a HealthCheckResponse is 2 bytes.
constexpr size_t kMaxProbeAnswer = 256;

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// A gRPC answer made here: trailers only, `status` and `message` static
// strings.
std::vector<nghttp2_nv> TrailersOnlyAnswer(const char* status, const char* message) {
  const std::pair<const char*, const char*> fields[] = {{":status", "200"},
                                                        {"content-type", "application/grpc"},
                                                        {"grpc-status", status},
                                                        {"grpc-message", message}};
  std::vector<nghttp2_nv> nv;
  for (const auto& [name, value] : fields) {
    nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                  reinterpret_cast<uint8_t*>(const_cast<char*>(value)), std::strlen(name),
                  std::strlen(value),
                  NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE});
  }
  return nv;
}

// The status a grpc client reports for a stream reset with `code`.
int GrpcStatusOfReset(uint32_t code) {
  switch (code) {
    case NGHTTP2_CANCEL:
      return 1;  // CANCELLED
    case NGHTTP2_REFUSED_STREAM:
      return 14;  // UNAVAILABLE
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return 8;  // RESOURCE_EXHAUSTED
    case NGHTTP2_INADEQUATE_SECURITY:
      return 7;  // PERMISSION_DENIED
    default:
      return 13;  // INTERNAL
  }
}

}  // namespace

class FrameRelay::Loop {
 public:
  explicit Loop(const FrameRelayOptions& options) : options_(options) {}
  ~Loop();

  absl::Status Init();
  int port() const { return port_; }
  void Run();
  void Stop() {
    stop_requested_.store(true);
    Wake();
  }
  void Drain() {
    drain_requested_.store(true);
    Wake();
  }
  FrameRelayStats Stats() const;
  absl::Status SetUpstreams(const std::vector<UpstreamAddress>& upstreams);

 private:
  void Wake() {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  void OnWake();
  void StartDraining();

  // Upstream connections.
  std::unique_ptr<Connection> NewUpstreamConnection();
  // Splits the connections evenly over `upstreams` (not empty), moving as
  // few as it can; one whose address changes while it is open retires
  // (retiring_) and a new one takes its place.
  void ApplyUpstreams(const std::vector<ParsedUpstream>& upstreams);
  // A retired connection whose streams are done (or that broke) is closed,
  // and freed later, when dirty_ is empty.
  void CloseIdleRetired();
  void FreeClosedRetired();
  void CountLostUpstream(Connection& upstream);

  // Health probes: one grpc.health.v1 Check per connection up, every
  // interval.
  void SendProbes(Clock::time_point now);
  void ExpireProbes(Clock::time_point now);
  void FinishProbe(Connection& upstream, uint32_t error_code);

  // Socket events.
  void Accept();
  void Connect(Connection& upstream);
  void OnConnected(Connection& upstream);
  void ContinueHandshake(Connection& upstream);
  // The connection is up (TCP, and TLS when on): its HTTP/2 session starts.
  void StartSession(Connection& upstream);
  // Logs `error` for `upstream` unless it is the one logged last.
  void ReportUpstreamError(Connection& upstream, const std::string& error);
  void Log(bool problem, const std::string& line) const {
    if (options_.log) options_.log(problem, line);
  }
  // TLS files changed: every upstream connection is replaced (each old one
  // finishes its streams).
  void CheckCredentials(Clock::time_point now);
  // Points `slot` at `to` and connects it now; a connection that is open
  // (or still has streams) retires, and a new one takes the slot.
  // REQUIRES: slots_mutex_ held.
  void RepointUpstream(std::unique_ptr<Connection>& slot, const ParsedUpstream& to);
  void OnReadable(Connection& connection);
  // Hands bytes read from `connection` to its session; false once the
  // session refused them (the connection is then cut off).
  bool Feed(Connection& connection, const uint8_t* data, size_t length);
  void OnWritable(Connection& connection);
  void Flush(Connection& connection);
  void MarkDirty(Connection& connection);
  // nghttp2 refused what the peer sent (`error`, one of its negative codes):
  // an app is told why it is cut off, ENHANCE_YOUR_CALM for a flood.
  void CutOff(Connection& connection, int error);
  void Close(Connection& connection);
  // Ends the session: every stream's other side is told, nghttp2's state
  // freed; the socket stays.
  void EndSession(Connection& connection);
  // A cut app connection: its session ends, its socket lingers (below).
  void StartLinger(Connection& app);
  void DiscardLingering(Connection& app);
  void Watch(Connection& connection, uint32_t events, int op);

  // Streams.
  void StartUpstream(RelayStream* stream, bool request_ended);
  // Sends the kept request on the least busy connection, or answers
  // UNAVAILABLE when none is up.
  void SubmitUpstream(RelayStream* stream);
  // The upstream answered: what was kept for a replay goes.
  static void StopKeepingRequest(RelayStream* stream);
  Connection* PickUpstream();
  // Tells the observer, once, as the app's side closes.
  void EndCall(RelayStream* stream, uint32_t error_code);
  // Streams that found no connection up wait for one, for at most
  // options_.connection_wait, first come first served.
  void Park(RelayStream* stream);
  void Unpark(RelayStream* stream);
  void StartWaitingStreams();
  void FailOverdueWaits(Clock::time_point now);
  // Drops the app's bytes not yet written upstream, and gives their share of
  // the app's window back.
  void DropUpward(RelayStream* stream, bool app_stream_open);
  // The app's answer fails: trailers-only UNAVAILABLE with `message` if none
  // has begun, else a reset.
  void FailDownward(RelayStream* stream, const char* message);
  // Answers the app trailers-only (`status_text` is `grpc_status` as text;
  // both strings static or the Loop's).
  void AnswerHere(RelayStream* stream, int grpc_status, const char* status_text,
                  const char* message);
  void CloseAppSide(RelayStream* stream, uint32_t error_code);
  void CloseUpstreamSide(RelayStream* stream, uint32_t error_code);
  // Takes the stream off its upstream connection, giving back the
  // connection window its unsent downward bytes hold.
  void DetachUpstream(RelayStream* stream);
  // A message in either direction is longer than options_.max_message_bytes.
  void FailMessageTooLarge(RelayStream* stream);
  void MaybeFree(RelayStream* stream);
  void ReleaseHeapWhenIdle();

  nghttp2_session* NewSession(Connection& connection);

  // nghttp2 callbacks; user_data is the session's Connection, which knows its
  // side and its Loop.
  static ssize_t OnSend(nghttp2_session*, const uint8_t* data, size_t length, int, void* user_data);
  static int OnSendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* frame_header,
                        size_t length, nghttp2_data_source* source, void* user_data);
  static int OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data);
  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, nghttp2_rcbuf* name,
                      nghttp2_rcbuf* value, uint8_t, void* user_data);
  static int OnFrameReceived(nghttp2_session* session, const nghttp2_frame* frame, void* user_data);
  static int OnFrameSent(nghttp2_session* session, const nghttp2_frame* frame, void* user_data);
  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t length, void* user_data);
  static int OnStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                           void* user_data);
  static ssize_t ReadUpward(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                            nghttp2_data_source* source, void* user_data);
  static ssize_t ReadDownward(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                              nghttp2_data_source* source, void* user_data);
  static ssize_t ReadProbe(nghttp2_session*, int32_t, uint8_t* buffer, size_t length,
                           uint32_t* flags, nghttp2_data_source* source, void*);

  // A socket's unsent bytes past which nghttp2 is told to wait.
  static constexpr size_t kMaxOutput = 256 << 10;
  static constexpr auto kReconnectDelay = std::chrono::milliseconds(200);
  // How long a cut app connection's socket stays open for its GOAWAY to
  // reach the peer.
  static constexpr auto kLingerTime = std::chrono::seconds(1);
  // How long accepting pauses when the process is out of descriptors.
  static constexpr auto kAcceptPause = std::chrono::milliseconds(100);
  // The connection window each side offers: bounds what one connection's
  // streams may buffer here in all.
  static constexpr int32_t kConnectionWindow = 16 << 20;
  // Times one stream is sent again after a refusal.
  static constexpr int kMaxReplays = 3;

  FrameRelayOptions options_;
  int epoll_fd_ = -1;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  int port_ = 0;
  nghttp2_session_callbacks* callbacks_ = nullptr;
  nghttp2_option* session_options_ = nullptr;
  // Which connections are in upstreams_, and their address_text, change
  // only on Run()'s thread and under slots_mutex_, which Stats() takes.
  mutable std::mutex slots_mutex_;
  std::vector<std::unique_ptr<Connection>> upstreams_;
  // Out of rotation since their address left the list; each is closed once
  // its streams end.
  std::list<std::unique_ptr<Connection>> retiring_;
  // The addresses SetUpstreams gave last (all of them, parsed), until Run()
  // applies them.
  std::mutex pending_mutex_;
  std::vector<std::string> given_upstreams_;
  std::optional<std::vector<ParsedUpstream>> pending_upstreams_;
  std::list<std::unique_ptr<Connection>> apps_;
  std::vector<Connection*> dirty_;
  size_t next_upstream_ = 0;
  // Null unless options_.tls.enabled; and when its files are looked at next.
  std::unique_ptr<UpstreamTls> tls_;
  Clock::time_point next_credential_check_ = Clock::time_point::max();
  // Health probes: whether they are sent (not once the upstream has said it
  // has no health service), when next, and the request's one message.
  bool probing_ = false;
  Clock::time_point next_probes_ = Clock::time_point::max();
  std::string probe_message_;
  // Streams waiting for a connection (RelayStream::wait_link), and how many.
  IntrusiveList<RelayStream> waiting_;
  int waiting_count_ = 0;
  // Calls admitted and not over on the app's side; and what a call past
  // either limit is told.
  int admitted_calls_ = 0;
  std::string concurrency_refusal_;
  std::string waiting_refusal_;
  // What a call that found no connection up is told.
  std::string no_connection_refusal_;
  int64_t live_streams_ = 0;
  int64_t freed_since_trim_ = 0;
  static constexpr int64_t kStreamsPerTrim = 1024;
  bool stopping_ = false;
  bool draining_ = false;
  // App connections lingering (StartLinger).
  int lingering_ = 0;
  // While accepting is paused (out of descriptors): when it resumes.
  Clock::time_point accept_resumes_at_ = Clock::time_point::max();
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> drain_requested_{false};
  std::atomic<int64_t> app_connections_{0};
  std::atomic<uint64_t> replayed_streams_{0};
  // Marks the two non-connection fds in epoll's data.
  char listen_tag_ = 0;
  char wake_tag_ = 0;
};

FrameRelay::Loop::~Loop() {
  for (auto& app : apps_) Close(*app);
  for (auto& upstream : upstreams_) Close(*upstream);
  for (auto& upstream : retiring_) Close(*upstream);
  if (callbacks_ != nullptr) nghttp2_session_callbacks_del(callbacks_);
  if (session_options_ != nullptr) nghttp2_option_del(session_options_);
  for (int fd : {epoll_fd_, listen_fd_, wake_fd_}) {
    if (fd >= 0) close(fd);
  }
}

absl::Status FrameRelay::Loop::Init() {
  absl::StatusOr<std::vector<ParsedUpstream>> upstreams = ParseUpstreams(options_.upstreams);
  if (!upstreams.ok()) return upstreams.status();
  if (options_.tls.enabled) {
    absl::StatusOr<std::unique_ptr<UpstreamTls>> tls = UpstreamTls::Create(options_.tls);
    if (!tls.ok()) return tls.status();
    tls_ = *std::move(tls);
    next_credential_check_ = Clock::now() + absl::ToChronoNanoseconds(options_.credential_poll);
  }
  socklen_t listen_length = 0;
  absl::StatusOr<sockaddr_storage> listen =
      ParseAddress(options_.listen_host, options_.listen_port, &listen_length);
  if (!listen.ok()) return listen.status();

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  listen_fd_ = socket(listen->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (epoll_fd_ < 0 || wake_fd_ < 0 || listen_fd_ < 0) return ErrnoStatus("socket");
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(listen_fd_, reinterpret_cast<const sockaddr*>(&*listen), listen_length) != 0) {
    return ErrnoStatus(absl::StrCat("bind ", options_.listen_host, ":", options_.listen_port));
  }
  if (::listen(listen_fd_, 1024) != 0) return ErrnoStatus("listen");
  sockaddr_storage bound{};
  socklen_t bound_length = sizeof(bound);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_length);
  port_ = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = &listen_tag_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event);
  event.data.ptr = &wake_tag_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &event);

  nghttp2_session_callbacks_new(&callbacks_);
  nghttp2_session_callbacks_set_send_callback(callbacks_, OnSend);
  nghttp2_session_callbacks_set_send_data_callback(callbacks_, OnSendData);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks_, OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback2(callbacks_, OnHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks_, OnFrameReceived);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks_, OnFrameSent);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks_, OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks_, OnStreamClose);
  nghttp2_option_new(&session_options_);
  // A stream's window opens as its bytes leave on the other side, not as
  // they arrive: end-to-end flow control.
  nghttp2_option_set_no_auto_window_update(session_options_, 1);
  // Streams are freed when they close: none kept for a priority tree that
  // gRPC never uses (kept, they would grow with every call up to the
  // concurrent-stream limit).
  nghttp2_option_set_no_closed_streams(session_options_, 1);

  for (int i = 0; i < std::max(1, options_.upstream_connections); ++i) {
    upstreams_.push_back(NewUpstreamConnection());
  }
  concurrency_refusal_ = absl::StrCat("poolside: GRPC_MAX_CONCURRENT_REQUESTS (",
                                      options_.max_concurrent_calls, ") calls already in flight");
  waiting_refusal_ =
      absl::StrCat("poolside: GRPC_MAX_PENDING_REQUESTS (", options_.max_waiting_calls,
                   ") calls already waiting for an upstream connection");
  no_connection_refusal_ =
      options_.connection_wait > absl::ZeroDuration()
          ? absl::StrCat("poolside: no upstream connection became ready within ",
                         absl::FormatDuration(options_.connection_wait))
          : "poolside: no upstream connection is up";
  if (options_.health.interval > absl::ZeroDuration()) {
    probing_ = true;
    probe_message_ = HealthCheckRequestMessage(options_.health.service);
    next_probes_ = Clock::now() + absl::ToChronoNanoseconds(options_.health.interval);
  }
  for (const ParsedUpstream& upstream : *upstreams) given_upstreams_.push_back(upstream.text);
  if (!upstreams->empty()) ApplyUpstreams(*upstreams);
  return absl::OkStatus();
}

std::unique_ptr<Connection> FrameRelay::Loop::NewUpstreamConnection() {
  auto upstream = std::make_unique<Connection>();
  upstream->loop = this;
  upstream->side = Side::kUpstream;
  return upstream;
}

absl::Status FrameRelay::Loop::SetUpstreams(const std::vector<UpstreamAddress>& upstreams) {
  if (upstreams.empty()) return absl::InvalidArgumentError("no upstream address");
  absl::StatusOr<std::vector<ParsedUpstream>> parsed = ParseUpstreams(upstreams);
  if (!parsed.ok()) return parsed.status();
  std::vector<std::string> given;
  for (const ParsedUpstream& upstream : *parsed) given.push_back(upstream.text);
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    if (given == given_upstreams_) return absl::OkStatus();
    given_upstreams_ = std::move(given);
    pending_upstreams_ = *std::move(parsed);
  }
  Wake();
  return absl::OkStatus();
}

void FrameRelay::Loop::ApplyUpstreams(const std::vector<ParsedUpstream>& upstreams) {
  // Each address's share of the connections, the first ones taking one more
  // when they do not divide evenly.
  const size_t count = upstreams_.size();
  std::vector<size_t> share(upstreams.size(), count / upstreams.size());
  for (size_t i = 0; i < count % upstreams.size(); ++i) ++share[i];
  auto listed = [&upstreams](const std::string& text) {
    for (size_t i = 0; i < upstreams.size(); ++i) {
      if (upstreams[i].text == text) return i;
    }
    return upstreams.size();
  };
  // Connections already on a listed address stay, up to its share: a change
  // moves as few connections as it can.
  std::vector<bool> stays(count, false);
  for (size_t i = 0; i < count; ++i) {
    const size_t at = listed(upstreams_[i]->address_text);
    if (at < upstreams.size() && share[at] > 0) {
      --share[at];
      stays[i] = true;
    }
  }
  std::lock_guard<std::mutex> lock(slots_mutex_);
  for (size_t i = 0; i < count; ++i) {
    if (stays[i]) continue;
    // The address furthest from its share (the first, on a tie): a fresh
    // split interleaves the addresses, connection i to address i mod n.
    const size_t next =
        static_cast<size_t>(std::max_element(share.begin(), share.end()) - share.begin());
    --share[next];
    RepointUpstream(upstreams_[i], upstreams[next]);
  }
}

void FrameRelay::Loop::CloseIdleRetired() {
  for (auto& upstream : retiring_) {
    if (upstream->session != nullptr && !upstream->dead && !upstream->streams.empty()) continue;
    // Freed by FreeClosedRetired, once no dirty_ entry can point at it.
    Close(*upstream);
    upstream->retired_closed = true;
  }
}

void FrameRelay::Loop::FreeClosedRetired() {
  retiring_.remove_if(
      [](const std::unique_ptr<Connection>& upstream) { return upstream->retired_closed; });
}

void FrameRelay::Loop::CountLostUpstream(Connection& upstream) {
  upstream.errors.fetch_add(1, std::memory_order_relaxed);
  if (options_.on_upstream_lost) options_.on_upstream_lost();
}

nghttp2_session* FrameRelay::Loop::NewSession(Connection& connection) {
  nghttp2_session* session = nullptr;
  if (connection.side == Side::kApp) {
    nghttp2_session_server_new2(&session, callbacks_, &connection, session_options_);
  } else {
    nghttp2_session_client_new2(&session, callbacks_, &connection, session_options_);
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(options_.stream_window_bytes)},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_streams_per_app_connection},
  };
  nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings,
                          connection.side == Side::kApp ? 3 : 2);
  nghttp2_session_set_local_window_size(session, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  return session;
}

void FrameRelay::Loop::Watch(Connection& connection, uint32_t events, int op) {
  epoll_event event{};
  event.events = events;
  event.data.ptr = &connection;
  epoll_ctl(epoll_fd_, op, connection.fd, &event);
}

void FrameRelay::Loop::Connect(Connection& upstream) {
  upstream.fd = socket(upstream.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  upstream.reconnect_at = Clock::time_point::max();
  upstream.dead = false;
  int result = connect(upstream.fd, reinterpret_cast<const sockaddr*>(&upstream.address),
                       upstream.address_length);
  if (result != 0 && errno != EINPROGRESS) {
    close(upstream.fd);
    upstream.fd = -1;
    CountLostUpstream(upstream);
    upstream.reconnect_at = Clock::now() + kReconnectDelay;
    return;
  }
  SetNoDelay(upstream.fd);
  upstream.connecting = true;
  upstream.connect_deadline = Clock::now() + absl::ToChronoNanoseconds(options_.connect_timeout);
  Watch(upstream, EPOLLOUT, EPOLL_CTL_ADD);
}

void FrameRelay::Loop::OnConnected(Connection& upstream) {
  int error = 0;
  socklen_t length = sizeof(error);
  getsockopt(upstream.fd, SOL_SOCKET, SO_ERROR, &error, &length);
  upstream.connecting = false;
  if (error != 0) {
    ReportUpstreamError(upstream, absl::StrCat("connect: ", std::strerror(error)));
    upstream.dead = true;  // Closed and counted as an error by Run().
    return;
  }
  if (tls_ == nullptr) {
    StartSession(upstream);
    return;
  }
  upstream.ssl = tls_->NewConnection(upstream.fd);
  if (upstream.ssl == nullptr) {
    ReportUpstreamError(upstream, "TLS: cannot start a TLS connection");
    upstream.dead = true;
    return;
  }
  upstream.handshaking = true;
  ContinueHandshake(upstream);
}

void FrameRelay::Loop::ContinueHandshake(Connection& upstream) {
  const int result = SSL_do_handshake(upstream.ssl);
  if (result == 1) {
    upstream.handshaking = false;
    if (!UpstreamTls::NegotiatedHttp2(upstream.ssl)) {
      ReportUpstreamError(upstream, "TLS: the upstream chose a protocol other than h2 (ALPN)");
      upstream.dead = true;
      return;
    }
    StartSession(upstream);
    return;
  }
  switch (SSL_get_error(upstream.ssl, result)) {
    case SSL_ERROR_WANT_READ:
      Watch(upstream, EPOLLIN, EPOLL_CTL_MOD);
      return;
    case SSL_ERROR_WANT_WRITE:
      Watch(upstream, EPOLLOUT, EPOLL_CTL_MOD);
      return;
    default:
      ReportUpstreamError(upstream,
                          absl::StrCat("TLS handshake with ", upstream.address_text,
                                       " failed: ", UpstreamTls::Describe(upstream.ssl, result)));
      upstream.dead = true;
  }
}

void FrameRelay::Loop::StartSession(Connection& upstream) {
  upstream.connect_deadline = Clock::time_point::max();
  if (!upstream.last_error.empty()) {
    Log(false, absl::StrCat("upstream ", upstream.address_text, ": connected again"));
    upstream.last_error.clear();
  }
  upstream.session = NewSession(upstream);
  upstream.connected.store(true, std::memory_order_relaxed);
  Watch(upstream, EPOLLIN, EPOLL_CTL_MOD);
  MarkDirty(upstream);
  StartWaitingStreams();
}

void FrameRelay::Loop::ReportUpstreamError(Connection& upstream, const std::string& error) {
  if (error == upstream.last_error) return;
  upstream.last_error = error;
  Log(true, absl::StrCat("upstream ", upstream.address_text, ": ", error));
}

void FrameRelay::Loop::CheckCredentials(Clock::time_point now) {
  next_credential_check_ = now + absl::ToChronoNanoseconds(options_.credential_poll);
  absl::StatusOr<bool> changed = tls_->ReloadIfChanged();
  if (!changed.ok()) {
    // Caught half-way through a rotation, most likely: tried again next time.
    Log(true, absl::StrCat("TLS files changed but do not load yet: ", changed.status().message()));
    return;
  }
  if (!*changed) return;
  Log(false, absl::StrCat("TLS files changed: rolling ", upstreams_.size(), " connections"));
  std::lock_guard<std::mutex> lock(slots_mutex_);
  for (auto& slot : upstreams_) {
    if (slot->address_length == 0) continue;  // No address yet: nothing to roll.
    const ParsedUpstream same{slot->address, slot->address_length, slot->address_text};
    RepointUpstream(slot, same);
  }
}

void FrameRelay::Loop::RepointUpstream(std::unique_ptr<Connection>& slot,
                                       const ParsedUpstream& to) {
  if (slot->fd >= 0 || !slot->streams.empty()) {
    // Its streams finish where they are; new ones go to its successor.
    retiring_.push_back(std::move(slot));
    slot = NewUpstreamConnection();
  }
  slot->address = to.address;
  slot->address_length = to.length;
  slot->address_text = to.text;
  Connect(*slot);
}

void FrameRelay::Loop::Accept() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // The listening socket stays readable while the pending connection
        // cannot be taken: stop watching it for a while instead of spinning.
        epoll_event event{};
        event.data.ptr = &listen_tag_;
        epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &event);
        accept_resumes_at_ = Clock::now() + kAcceptPause;
      }
      return;
    }
    if (options_.max_app_connections > 0 &&
        app_connections_.load(std::memory_order_relaxed) >= options_.max_app_connections) {
      close(fd);
      if (options_.observer != nullptr) {
        options_.observer->AppConnectionCut(AppCutReason::kTooManyConnections);
      }
      continue;
    }
    SetNoDelay(fd);
    auto app = std::make_unique<Connection>();
    app->loop = this;
    app->side = Side::kApp;
    app->fd = fd;
    app->session = NewSession(*app);
    app_connections_.fetch_add(1, std::memory_order_relaxed);
    Watch(*app, EPOLLIN, EPOLL_CTL_ADD);
    MarkDirty(*app);
    apps_.push_back(std::move(app));
  }
}

void FrameRelay::Loop::MarkDirty(Connection& connection) {
  if (connection.dirty || connection.session == nullptr) return;
  connection.dirty = true;
  dirty_.push_back(&connection);
}

bool FrameRelay::Loop::Feed(Connection& connection, const uint8_t* data, size_t length) {
  const ssize_t taken = nghttp2_session_mem_recv(connection.session, data, length);
  if (taken < 0) {
    CutOff(connection, static_cast<int>(taken));
    return false;
  }
  MarkDirty(connection);
  return true;
}

void FrameRelay::Loop::OnReadable(Connection& connection) {
  uint8_t buffer[64 << 10];
  if (connection.ssl != nullptr) {
    // OpenSSL may hold decrypted bytes epoll knows nothing of: read until it
    // wants the socket, or leave the rest for the next round.
    connection.tls_read_pending = false;
    for (int reads = 0; reads < 16 && !connection.dead; ++reads) {
      const int got = SSL_read(connection.ssl, buffer, sizeof(buffer));
      if (got <= 0) {
        const int error = SSL_get_error(connection.ssl, got);
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return;
        if (error != SSL_ERROR_ZERO_RETURN) {
          ReportUpstreamError(connection,
                              absl::StrCat("TLS: ", UpstreamTls::Describe(connection.ssl, got)));
        }
        connection.dead = true;
        return;
      }
      if (!Feed(connection, buffer, static_cast<size_t>(got))) return;
    }
    connection.tls_read_pending = SSL_pending(connection.ssl) > 0;
    return;
  }
  for (int reads = 0; reads < 4 && !connection.dead && !connection.cut; ++reads) {
    ssize_t got = read(connection.fd, buffer, sizeof(buffer));
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (got <= 0) {
      connection.dead = true;
      break;
    }
    if (!Feed(connection, buffer, static_cast<size_t>(got))) break;
    if (static_cast<size_t>(got) < sizeof(buffer)) break;
  }
}

void FrameRelay::Loop::CutOff(Connection& connection, int error) {
  if (connection.side == Side::kUpstream) {
    connection.dead = true;
    return;
  }
  AppCutReason reason = AppCutReason::kMalformed;
  if (error == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) {
    reason = AppCutReason::kHeaderBlockTooLarge;
  } else if (error == NGHTTP2_ERR_FLOODED) {
    reason = connection.last_control_frame == NGHTTP2_PING ? AppCutReason::kPingFlood
                                                           : AppCutReason::kSettingsFlood;
  }
  if (options_.observer != nullptr) options_.observer->AppConnectionCut(reason);
  const uint32_t code =
      reason == AppCutReason::kMalformed ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_ENHANCE_YOUR_CALM;
  // The session ends once the GOAWAY is written (Flush sees it wants nothing
  // more); a session that cannot even queue one is closed at once.
  connection.cut = true;
  if (nghttp2_session_terminate_session(connection.session, code) != 0) connection.dead = true;
  MarkDirty(connection);
}

void FrameRelay::Loop::OnWritable(Connection& connection) {
  if (connection.connecting) {
    OnConnected(connection);
    return;
  }
  MarkDirty(connection);
}

void FrameRelay::Loop::Flush(Connection& connection) {
  connection.dirty = false;
  if (connection.dead || connection.session == nullptr) return;
  for (;;) {
    if (nghttp2_session_send(connection.session) != 0) {
      connection.dead = true;
      return;
    }
    while (!connection.output.empty()) {
      if (connection.ssl != nullptr) {
        const int length = static_cast<int>(std::min<size_t>(connection.output.size(), 1 << 30));
        const int wrote = SSL_write(connection.ssl, connection.output.data(), length);
        if (wrote > 0) {
          connection.output.Pop(static_cast<size_t>(wrote));
          continue;
        }
        const int error = SSL_get_error(connection.ssl, wrote);
        if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) break;
        connection.dead = true;
        return;
      }
      ssize_t wrote = write(connection.fd, connection.output.data(), connection.output.size());
      if (wrote < 0 && errno == EINTR) continue;
      if (wrote < 0 && errno == EAGAIN) break;
      if (wrote < 0) {
        connection.dead = true;
        return;
      }
      connection.output.Pop(static_cast<size_t>(wrote));
    }
    // nghttp2 stopped at kMaxOutput and the socket took it all: go on.
    if (!connection.output.empty() || !nghttp2_session_want_write(connection.session)) break;
  }
  bool blocked = !connection.output.empty();
  if (connection.cut) {
    // A peer cut off gets one try at its GOAWAY, not a socket's worth of
    // patience: it may never read.
    connection.dead = true;
    return;
  }
  if (blocked != connection.waiting_writable) {
    connection.waiting_writable = blocked;
    Watch(connection, blocked ? EPOLLIN | EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
  }
  if (!blocked && !nghttp2_session_want_read(connection.session) &&
      !nghttp2_session_want_write(connection.session)) {
    connection.dead = true;
  }
}

void FrameRelay::Loop::StartLinger(Connection& app) {
  EndSession(app);
  // Closing a socket with bytes unread makes the kernel reset it, and the
  // peer may lose the GOAWAY still in its receive queue: send FIN after it,
  // and read (discarding) until the peer closes or kLingerTime passes.
  shutdown(app.fd, SHUT_WR);
  app.lingering = true;
  app.dead = false;
  app.linger_until = Clock::now() + kLingerTime;
  ++lingering_;
  Watch(app, EPOLLIN, EPOLL_CTL_MOD);
}

void FrameRelay::Loop::DiscardLingering(Connection& app) {
  uint8_t buffer[16 << 10];
  for (int reads = 0; reads < 4; ++reads) {
    const ssize_t got = read(app.fd, buffer, sizeof(buffer));
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (got <= 0) {
      app.dead = true;
      return;
    }
  }
}

void FrameRelay::Loop::EndSession(Connection& connection) {
  // nghttp2_session_del calls no stream callbacks: each stream's other side
  // is told here. Each Close*Side unlinks the stream from this list before
  // it may free it, so the head is always a live stream.
  while (!connection.streams.empty()) {
    RelayStream* stream = connection.streams.oldest();
    if (connection.side == Side::kApp) {
      CloseAppSide(stream, NGHTTP2_CANCEL);
    } else {
      CloseUpstreamSide(stream, NGHTTP2_INTERNAL_ERROR);
    }
  }
  if (connection.session != nullptr) nghttp2_session_del(connection.session);
  connection.session = nullptr;
}

void FrameRelay::Loop::Close(Connection& connection) {
  EndSession(connection);
  if (connection.lingering) {
    connection.lingering = false;
    --lingering_;
  }
  if (connection.fd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection.fd, nullptr);
    close(connection.fd);
  }
  connection.fd = -1;
  if (connection.ssl != nullptr) SSL_free(connection.ssl);
  connection.ssl = nullptr;
  connection.handshaking = false;
  connection.tls_read_pending = false;
  connection.connect_deadline = Clock::time_point::max();
  connection.output.Pop(connection.output.size());
  connection.waiting_writable = false;
  connection.connecting = false;
  if (connection.side == Side::kApp) {
    app_connections_.fetch_sub(1, std::memory_order_relaxed);
  } else {
    connection.connected.store(false, std::memory_order_relaxed);
    // Its session is gone, the probe with it: neither passed nor failed.
    connection.probe_id = -1;
  }
}

void FrameRelay::Loop::OnWake() {
  uint64_t count = 0;
  (void)!read(wake_fd_, &count, sizeof(count));
  if (stop_requested_.load()) stopping_ = true;
  if (drain_requested_.load() && !draining_) StartDraining();
  std::optional<std::vector<ParsedUpstream>> upstreams;
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    upstreams.swap(pending_upstreams_);
  }
  if (upstreams.has_value()) ApplyUpstreams(*upstreams);
}

void FrameRelay::Loop::StartDraining() {
  draining_ = true;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  close(listen_fd_);
  listen_fd_ = -1;
  for (auto& app : apps_) {
    if (app->session == nullptr) continue;
    // Streams the app opened after the last one seen here are refused: its
    // grpc client retries them elsewhere.
    nghttp2_submit_goaway(app->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(app->session), NGHTTP2_NO_ERROR,
                          nullptr, 0);
    MarkDirty(*app);
  }
}

FrameRelayStats FrameRelay::Loop::Stats() const {
  FrameRelayStats stats;
  std::lock_guard<std::mutex> lock(slots_mutex_);
  for (const auto& upstream : upstreams_) {
    FrameRelayStats::Upstream entry;
    entry.address = upstream->address_text;
    entry.connected = upstream->connected.load(std::memory_order_relaxed);
    entry.healthy = upstream->healthy.load(std::memory_order_relaxed);
    entry.open_streams = upstream->open_streams.load(std::memory_order_relaxed);
    entry.streams_started = upstream->streams_started.load(std::memory_order_relaxed);
    entry.errors = upstream->errors.load(std::memory_order_relaxed);
    stats.upstreams.push_back(std::move(entry));
  }
  stats.app_connections = app_connections_.load(std::memory_order_relaxed);
  stats.replayed_streams = replayed_streams_.load(std::memory_order_relaxed);
  return stats;
}

void FrameRelay::Loop::Run() {
  epoll_event events[256];
  while (!stopping_) {
    // epoll_wait sleeps until the nearest timer: no allocation, one pass
    // over the (few) upstream connections.
    Clock::time_point now = Clock::now();
    Clock::time_point wake = Clock::time_point::max();
    auto wake_by = [&wake](Clock::time_point at) { wake = std::min(wake, at); };
    if (!waiting_.empty()) wake_by(waiting_.oldest()->wait_until);
    if (probing_) wake_by(next_probes_);
    if (tls_ != nullptr) wake_by(next_credential_check_);
    wake_by(accept_resumes_at_);
    for (auto& upstream : upstreams_) {
      wake_by(upstream->reconnect_at);
      wake_by(upstream->connect_deadline);
      if (upstream->tls_read_pending) wake_by(now);
      if (upstream->probe_id >= 0 && !upstream->probe_timed_out) {
        wake_by(upstream->probe_deadline);
      }
    }
    for (auto& upstream : retiring_) {
      if (upstream->tls_read_pending) wake_by(now);
    }
    if (lingering_ > 0) {
      // Rare (cut connections only), and at most kLingerTime each.
      for (const auto& app : apps_) {
        if (app->lingering) wake_by(app->linger_until);
      }
    }
    int timeout_ms = -1;
    if (wake <= now) {
      timeout_ms = 0;
    } else if (wake != Clock::time_point::max()) {
      // Rounded up, so that the loop wakes at or after the timer, never just
      // before it.
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake - now);
      timeout_ms = static_cast<int>(std::min<int64_t>(wait.count(), 1 << 30));
    }
    int ready = epoll_wait(epoll_fd_, events, 256, timeout_ms);
    for (int i = 0; i < ready; ++i) {
      void* tag = events[i].data.ptr;
      if (tag == &wake_tag_) {
        OnWake();
        continue;
      }
      if (tag == &listen_tag_) {
        Accept();
        continue;
      }
      auto& connection = *static_cast<Connection*>(tag);
      if (connection.dead) continue;
      if (connection.lingering) {
        DiscardLingering(connection);
        continue;
      }
      if (connection.handshaking) {
        ContinueHandshake(connection);
        continue;
      }
      if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) OnWritable(connection);
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !connection.connecting &&
          !connection.cut && connection.session != nullptr) {
        OnReadable(connection);
      }
    }
    now = Clock::now();
    for (auto& upstream : upstreams_) {
      if (upstream->tls_read_pending && !upstream->dead) OnReadable(*upstream);
      if (upstream->connect_deadline <= now && !upstream->dead) {
        ReportUpstreamError(
            *upstream, upstream->handshaking ? "TLS handshake timed out" : "connect timed out");
        upstream->dead = true;
      }
      if (upstream->reconnect_at <= now) Connect(*upstream);
    }
    for (auto& upstream : retiring_) {
      if (upstream->tls_read_pending && !upstream->dead) OnReadable(*upstream);
    }
    if (tls_ != nullptr && now >= next_credential_check_) CheckCredentials(now);
    if (now >= accept_resumes_at_) {
      accept_resumes_at_ = Clock::time_point::max();
      if (listen_fd_ >= 0) {
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.ptr = &listen_tag_;
        epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &event);
      }
    }
    FailOverdueWaits(now);
    if (probing_) {
      ExpireProbes(now);
      if (now >= next_probes_) SendProbes(now);
    }
    // Flushing one connection may give others work (a window opened, a
    // stream reset): until none is left.
    for (size_t i = 0; i < dirty_.size(); ++i) Flush(*dirty_[i]);
    dirty_.clear();
    for (auto& upstream : upstreams_) {
      if (!upstream->dead) continue;
      CountLostUpstream(*upstream);
      Close(*upstream);
      upstream->dead = false;
      upstream->reconnect_at = Clock::now() + kReconnectDelay;
    }
    for (auto it = apps_.begin(); it != apps_.end();) {
      Connection& app = **it;
      if (app.lingering && app.linger_until <= now) app.dead = true;
      if (!app.dead) {
        ++it;
      } else if (app.cut && !app.lingering && app.fd >= 0) {
        StartLinger(app);
        ++it;
      } else {
        Close(app);
        it = apps_.erase(it);
      }
    }
    CloseIdleRetired();
    // Closing gave other connections work (resets, answers).
    for (size_t i = 0; i < dirty_.size(); ++i) Flush(*dirty_[i]);
    dirty_.clear();
    FreeClosedRetired();
    ReleaseHeapWhenIdle();
    if (draining_ && apps_.empty()) stopping_ = true;
  }
}

namespace {
// Every session's user data is its Connection.
Connection& ConnectionOf(void* user_data) { return *static_cast<Connection*>(user_data); }
FrameRelay::Loop* LoopOf(void* user_data) { return ConnectionOf(user_data).loop; }
}  // namespace

ssize_t FrameRelay::Loop::OnSend(nghttp2_session*, const uint8_t* data, size_t length, int,
                                 void* user_data) {
  Connection& connection = ConnectionOf(user_data);
  if (connection.output.size() >= kMaxOutput) return NGHTTP2_ERR_WOULDBLOCK;
  connection.output.Append(data, length);
  return static_cast<ssize_t>(length);
}

int FrameRelay::Loop::OnSendData(nghttp2_session*, nghttp2_frame*, const uint8_t* frame_header,
                                 size_t length, nghttp2_data_source* source, void* user_data) {
  Loop* loop = LoopOf(user_data);
  Connection& connection = ConnectionOf(user_data);
  if (connection.output.size() >= kMaxOutput) return NGHTTP2_ERR_WOULDBLOCK;
  auto* stream = static_cast<RelayStream*>(source->ptr);
  connection.output.Append(frame_header, 9);
  size_t credit = length;
  if (connection.side == Side::kUpstream) {
    connection.output.Append(stream->upward.data() + stream->upward_sent, length);
    // Bytes written again after a replay were credited the first time.
    const size_t credited = std::min(length, stream->upward_credited_again);
    stream->upward_credited_again -= credited;
    credit -= credited;
    if (stream->replayable && stream->upward_sent + length <= kMaxReplayBytes) {
      stream->upward_sent += length;
    } else {
      StopKeepingRequest(stream);
      stream->upward.Pop(length);
    }
  } else {
    connection.output.Append(stream->downward.data(), length);
    stream->downward.Pop(length);
  }
  // The bytes have left: their sender may send as many again.
  Connection* source_connection =
      connection.side == Side::kUpstream ? stream->app : stream->upstream;
  if (source_connection != nullptr && credit > 0) {
    nghttp2_session_consume(
        source_connection->session,
        connection.side == Side::kUpstream ? stream->app_id : stream->upstream_id, credit);
    loop->MarkDirty(*source_connection);
  }
  return 0;
}

void FrameRelay::Loop::StopKeepingRequest(RelayStream* stream) {
  if (!stream->replayable) return;
  stream->replayable = false;
  stream->upward.Pop(stream->upward_sent);
  stream->upward_sent = 0;
  stream->request.Clear();
}

ssize_t FrameRelay::Loop::ReadUpward(nghttp2_session*, int32_t, uint8_t*, size_t length,
                                     uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* stream = static_cast<RelayStream*>(source->ptr);
  const size_t unsent = stream->upward.size() - stream->upward_sent;
  size_t take = std::min(length, unsent);
  if (take == 0 && !stream->upward_ended) return NGHTTP2_ERR_DEFERRED;
  *flags = NGHTTP2_DATA_FLAG_NO_COPY;
  if (stream->upward_ended && take == unsent) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(take);
}

ssize_t FrameRelay::Loop::ReadDownward(nghttp2_session* session, int32_t stream_id, uint8_t*,
                                       size_t length, uint32_t* flags, nghttp2_data_source* source,
                                       void*) {
  auto* stream = static_cast<RelayStream*>(source->ptr);
  size_t take = std::min(length, stream->downward.size());
  if (take == 0 && !stream->downward_ended) return NGHTTP2_ERR_DEFERRED;
  *flags = NGHTTP2_DATA_FLAG_NO_COPY;
  if (stream->downward_ended && take == stream->downward.size()) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!stream->trailers.empty()) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      std::vector<nghttp2_nv> nv = stream->trailers.ToNv();
      nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size());
      stream->trailers.Clear();
    }
  }
  return static_cast<ssize_t>(take);
}

int FrameRelay::Loop::OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame,
                                     void* user_data) {
  Loop* loop = LoopOf(user_data);
  Connection& connection = ConnectionOf(user_data);
  if (connection.side != Side::kApp || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* stream = new RelayStream;  // Owned by the two sessions: freed in MaybeFree.
  ++loop->live_streams_;
  stream->app = &connection;
  stream->app_id = frame->hd.stream_id;
  Link(connection, stream);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, stream);
  return 0;
}

int FrameRelay::Loop::OnHeader(nghttp2_session* session, const nghttp2_frame* frame,
                               nghttp2_rcbuf* name, nghttp2_rcbuf* value, uint8_t,
                               void* user_data) {
  Connection& connection = ConnectionOf(user_data);
  if (connection.side == Side::kUpstream && frame->hd.stream_id == connection.probe_id) {
    nghttp2_vec n = nghttp2_rcbuf_get_buf(name);
    if (absl::string_view(reinterpret_cast<const char*>(n.base), n.len) == "grpc-status") {
      nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
      connection.probe_grpc_status =
          ParseGrpcStatus(absl::string_view(reinterpret_cast<const char*>(v.base), v.len));
    }
    return 0;
  }
  auto* stream =
      static_cast<RelayStream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (stream != nullptr) stream->receiving.Add(name, value);
  return 0;
}

int FrameRelay::Loop::OnFrameReceived(nghttp2_session* session, const nghttp2_frame* frame,
                                      void* user_data) {
  Loop* loop = LoopOf(user_data);
  Connection& connection = ConnectionOf(user_data);
  if (frame->hd.type == NGHTTP2_PING || frame->hd.type == NGHTTP2_SETTINGS) {
    connection.last_control_frame = frame->hd.type;
    return 0;
  }
  auto* stream =
      static_cast<RelayStream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (stream == nullptr) return 0;
  bool ends_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (connection.side == Side::kApp) {
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      if (loop->options_.observer != nullptr) {
        stream->observer_token =
            loop->options_.observer->CallStarted(stream->receiving.Find(":path"));
        stream->started_at = Clock::now();
      }
      loop->StartUpstream(stream, ends_stream);
      return 0;
    }
    stream->receiving.Clear();  // Request trailers: gRPC has none; not forwarded.
    if (ends_stream && !stream->upward_ended) {
      stream->upward_ended = true;
      if (stream->upstream != nullptr) {
        nghttp2_session_resume_data(stream->upstream->session, stream->upstream_id);
        loop->MarkDirty(*stream->upstream);
      }
    }
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS) {
    if (frame->hd.type == NGHTTP2_DATA && ends_stream) {
      stream->downward_ended = true;
      if (stream->app != nullptr && stream->response_started) {
        nghttp2_session_resume_data(stream->app->session, stream->app_id);
        loop->MarkDirty(*stream->app);
      }
    }
    return 0;
  }
  if (stream->app == nullptr) {
    stream->receiving.Clear();
    return 0;
  }
  // The upstream has seen the request: it is never replayed now.
  StopKeepingRequest(stream);
  if (absl::string_view status = stream->receiving.Find("grpc-status"); !status.empty()) {
    stream->grpc_status = ParseGrpcStatus(status);
  }
  if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && !stream->response_started) {
    std::vector<nghttp2_nv> nv = stream->receiving.ToNv();
    nghttp2_data_provider provider{};
    provider.source.ptr = stream;
    provider.read_callback = ReadDownward;
    stream->response_started = true;
    stream->downward_ended = ends_stream;
    // Trailers only: the answer is this one HEADERS frame.
    nghttp2_submit_response(stream->app->session, stream->app_id, nv.data(), nv.size(),
                            ends_stream ? nullptr : &provider);
    stream->receiving.Clear();
  } else {
    // Trailers: sent once the bytes before them are.
    stream->trailers.Swap(stream->receiving);
    stream->receiving.Clear();
    stream->downward_ended = true;
    nghttp2_session_resume_data(stream->app->session, stream->app_id);
  }
  loop->MarkDirty(*stream->app);
  return 0;
}

int FrameRelay::Loop::OnFrameSent(nghttp2_session* session, const nghttp2_frame* frame,
                                  void* user_data) {
  Connection& connection = ConnectionOf(user_data);
  if (connection.side != Side::kApp) return 0;
  if (frame->hd.type == NGHTTP2_GOAWAY && !connection.cut &&
      frame->goaway.error_code != NGHTTP2_NO_ERROR) {
    // nghttp2 ended the session itself: past its stream reset rate limit
    // (INTERNAL_ERROR, the CVE-2023-44487 fix) or on a protocol breach.
    connection.cut = true;
    Loop* loop = LoopOf(user_data);
    if (loop->options_.observer != nullptr) {
      loop->options_.observer->AppConnectionCut(frame->goaway.error_code == NGHTTP2_INTERNAL_ERROR
                                                    ? AppCutReason::kRapidReset
                                                    : AppCutReason::kMalformed);
    }
    return 0;
  }
  if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  auto* stream =
      static_cast<RelayStream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  // The answer is complete while the app still sends: as a gRPC server
  // does, end the app's side of the stream too.
  if (stream != nullptr && !stream->upward_ended &&
      !nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id)) {
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  }
  return 0;
}

int FrameRelay::Loop::OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                                  const uint8_t* data, size_t length, void* user_data) {
  Loop* loop = LoopOf(user_data);
  Connection& connection = ConnectionOf(user_data);
  auto* stream =
      static_cast<RelayStream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  bool upward = connection.side == Side::kApp;
  if (!upward && stream_id == connection.probe_id) {
    std::string& answer = connection.probe_answer;
    answer.append(reinterpret_cast<const char*>(data),
                  std::min(length, kMaxProbeAnswer - std::min(kMaxProbeAnswer, answer.size())));
    nghttp2_session_consume(session, stream_id, length);
    loop->MarkDirty(connection);
    return 0;
  }
  if (stream != nullptr && stream->message_too_large) {
    nghttp2_session_consume(session, stream_id, length);
    return 0;
  }
  if (stream != nullptr && stream->app != nullptr && (upward || stream->response_started)) {
    CallObserver* observer = loop->options_.observer;
    const bool within_limit = (upward ? stream->upward_messages : stream->downward_messages)
                                  .Advance(data, length, loop->options_.max_message_bytes,
                                           [observer, upward](uint32_t message_length) {
                                             if (observer != nullptr) {
                                               observer->MessageRelayed(upward, message_length);
                                             }
                                           });
    if (!within_limit) {
      nghttp2_session_consume(session, stream_id, length);
      loop->FailMessageTooLarge(stream);
      return 0;
    }
  }
  if (stream != nullptr && stream->wait_link.linked) {
    // Kept for when a connection is up; the stream's window bounds them.
    stream->upward.Append(data, length);
    return 0;
  }
  Connection* destination = stream == nullptr ? nullptr : upward ? stream->upstream : stream->app;
  if (destination == nullptr || (!upward && !stream->response_started)) {
    // Nobody to pass them to: the window opens at once.
    nghttp2_session_consume(session, stream_id, length);
    return 0;
  }
  (upward ? stream->upward : stream->downward).Append(data, length);
  nghttp2_session_resume_data(destination->session, upward ? stream->upstream_id : stream->app_id);
  loop->MarkDirty(*destination);
  return 0;
}

int FrameRelay::Loop::OnStreamClose(nghttp2_session* session, int32_t stream_id,
                                    uint32_t error_code, void* user_data) {
  Loop* loop = LoopOf(user_data);
  Connection& connection = ConnectionOf(user_data);
  if (connection.side == Side::kUpstream && stream_id == connection.probe_id) {
    loop->FinishProbe(connection, error_code);
    return 0;
  }
  auto* stream =
      static_cast<RelayStream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (stream == nullptr) return 0;
  if (connection.side == Side::kApp) {
    loop->CloseAppSide(stream, error_code);
  } else {
    loop->CloseUpstreamSide(stream, error_code);
  }
  return 0;
}

Connection* FrameRelay::Loop::PickUpstream() {
  // [0]: the least busy healthy connection; [1]: the least busy failing its
  // probes, used only while no healthy one is up.
  Connection* best[2] = {nullptr, nullptr};
  size_t count = upstreams_.size();
  if (count == 0) return nullptr;
  for (size_t i = 0; i < count; ++i) {
    Connection* candidate = upstreams_[(next_upstream_ + i) % count].get();
    if (candidate->session == nullptr || candidate->dead ||
        !nghttp2_session_check_request_allowed(candidate->session)) {
      continue;
    }
    Connection*& tier = best[candidate->healthy.load(std::memory_order_relaxed) ? 0 : 1];
    if (tier == nullptr || candidate->open_streams < tier->open_streams) tier = candidate;
  }
  next_upstream_ = (next_upstream_ + 1) % count;
  return best[0] != nullptr ? best[0] : best[1];
}

void FrameRelay::Loop::SendProbes(Clock::time_point now) {
  next_probes_ = now + absl::ToChronoNanoseconds(options_.health.interval);
  const int64_t timeout_ms =
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.health.timeout));
  const std::string grpc_timeout = absl::StrCat(std::min<int64_t>(timeout_ms, 99999999), "m");
  for (auto& upstream : upstreams_) {
    if (upstream->session == nullptr || upstream->dead || upstream->probe_id >= 0 ||
        !nghttp2_session_check_request_allowed(upstream->session)) {
      continue;
    }
    const std::string& authority =
        options_.authority.empty() ? upstream->address_text : options_.authority;
    const std::pair<absl::string_view, absl::string_view> fields[] = {
        {":method", "POST"},
        {":scheme", "http"},
        {":path", kHealthCheckPath},
        {":authority", authority},
        {"content-type", "application/grpc"},
        {"te", "trailers"},
        {"grpc-timeout", grpc_timeout}};
    std::vector<nghttp2_nv> nv;
    for (const auto& [name, value] : fields) {
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider provider{};
    provider.source.ptr = upstream.get();
    provider.read_callback = ReadProbe;
    const int32_t id = nghttp2_submit_request(upstream->session, nullptr, nv.data(), nv.size(),
                                              &provider, nullptr);
    if (id < 0) continue;
    upstream->probe_id = id;
    upstream->probe_deadline = now + absl::ToChronoNanoseconds(options_.health.timeout);
    upstream->probe_timed_out = false;
    upstream->probe_sent = 0;
    upstream->probe_answer.clear();
    upstream->probe_grpc_status = -1;
    MarkDirty(*upstream);
  }
}

void FrameRelay::Loop::ExpireProbes(Clock::time_point now) {
  for (auto& upstream : upstreams_) {
    if (upstream->probe_id < 0 || upstream->probe_timed_out || now < upstream->probe_deadline) {
      continue;
    }
    // Failed when the reset closes the stream (FinishProbe).
    upstream->probe_timed_out = true;
    nghttp2_submit_rst_stream(upstream->session, NGHTTP2_FLAG_NONE, upstream->probe_id,
                              NGHTTP2_CANCEL);
    MarkDirty(*upstream);
  }
}

void FrameRelay::Loop::FinishProbe(Connection& upstream, uint32_t error_code) {
  upstream.probe_id = -1;
  if (!upstream.probe_timed_out && upstream.probe_grpc_status == kGrpcUnimplemented) {
    // No health service upstream: connections are judged by being up, as
    // poolside's HealthMonitor judges them then.
    probing_ = false;
    next_probes_ = Clock::time_point::max();
    for (auto& connection : upstreams_) {
      connection->failed_probes = 0;
      connection->healthy.store(true, std::memory_order_relaxed);
    }
    return;
  }
  const bool passed = !upstream.probe_timed_out && error_code == NGHTTP2_NO_ERROR &&
                      upstream.probe_grpc_status == 0 && IsServing(upstream.probe_answer);
  upstream.probe_answer.clear();
  if (passed) {
    upstream.failed_probes = 0;
    upstream.healthy.store(true, std::memory_order_relaxed);
    return;
  }
  if (++upstream.failed_probes >= options_.health.unhealthy_threshold) {
    upstream.healthy.store(false, std::memory_order_relaxed);
  }
}

ssize_t FrameRelay::Loop::ReadProbe(nghttp2_session*, int32_t, uint8_t* buffer, size_t length,
                                    uint32_t* flags, nghttp2_data_source* source, void*) {
  auto& upstream = *static_cast<Connection*>(source->ptr);
  const std::string& message = upstream.loop->probe_message_;
  const size_t take = std::min(length, message.size() - upstream.probe_sent);
  std::memcpy(buffer, message.data() + upstream.probe_sent, take);
  upstream.probe_sent += take;
  if (upstream.probe_sent == message.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(take);
}

void FrameRelay::Loop::StartUpstream(RelayStream* stream, bool request_ended) {
  stream->upward_ended = request_ended;
  stream->request_has_body = !request_ended;
  if (options_.max_concurrent_calls > 0 && admitted_calls_ >= options_.max_concurrent_calls) {
    // Circuit breaking, as the grpc++ forwarder does it: at once, and counted.
    if (options_.observer != nullptr) options_.observer->CallOverLimit(CallLimit::kConcurrent);
    stream->receiving.Clear();
    stream->replayable = false;
    AnswerHere(stream, 8, "8", concurrency_refusal_.c_str());
    return;
  }
  stream->admitted = true;
  ++admitted_calls_;
  stream->request.Swap(stream->receiving);
  stream->receiving.Clear();
  SubmitUpstream(stream);
}

void FrameRelay::Loop::SubmitUpstream(RelayStream* stream) {
  Connection* upstream = PickUpstream();
  if (upstream == nullptr && options_.connection_wait > absl::ZeroDuration()) {
    Park(stream);
    return;
  }
  int32_t id = -1;
  if (upstream != nullptr) {
    std::vector<nghttp2_nv> nv = stream->request.ToNv();
    if (!options_.authority.empty()) {
      for (nghttp2_nv& field : nv) {
        if (absl::string_view(reinterpret_cast<const char*>(field.name), field.namelen) !=
            ":authority") {
          continue;
        }
        field.value = reinterpret_cast<uint8_t*>(const_cast<char*>(options_.authority.data()));
        field.valuelen = options_.authority.size();
      }
    }
    nghttp2_data_provider provider{};
    provider.source.ptr = stream;
    provider.read_callback = ReadUpward;
    id = nghttp2_submit_request(upstream->session, nullptr, nv.data(), nv.size(),
                                stream->request_has_body ? &provider : nullptr, stream);
  }
  if (id < 0) {
    StopKeepingRequest(stream);
    DropUpward(stream, /*app_stream_open=*/true);
    FailDownward(stream, no_connection_refusal_.c_str());
    return;
  }
  stream->upstream = upstream;
  stream->upstream_id = id;
  Link(*upstream, stream);
  upstream->streams_started.fetch_add(1, std::memory_order_relaxed);
  MarkDirty(*upstream);
}

void FrameRelay::Loop::DropUpward(RelayStream* stream, bool app_stream_open) {
  const size_t uncredited =
      stream->upward.size() - stream->upward_sent - stream->upward_credited_again;
  if (stream->app != nullptr && uncredited > 0) {
    // No write will return these bytes' share of the app's window: it
    // returns now.
    if (app_stream_open) {
      nghttp2_session_consume(stream->app->session, stream->app_id, uncredited);
    } else {
      nghttp2_session_consume_connection(stream->app->session, uncredited);
    }
    MarkDirty(*stream->app);
  }
  stream->upward.Pop(stream->upward.size());
  stream->upward_sent = 0;
  stream->upward_credited_again = 0;
}

void FrameRelay::Loop::AnswerHere(RelayStream* stream, int grpc_status, const char* status_text,
                                  const char* message) {
  std::vector<nghttp2_nv> nv = TrailersOnlyAnswer(status_text, message);
  stream->response_started = true;
  stream->downward_ended = true;
  stream->grpc_status = grpc_status;
  nghttp2_submit_response(stream->app->session, stream->app_id, nv.data(), nv.size(), nullptr);
  MarkDirty(*stream->app);
}

void FrameRelay::Loop::FailDownward(RelayStream* stream, const char* message) {
  if (stream->app == nullptr) return;
  if (!stream->response_started) {
    AnswerHere(stream, 14, "14", message);
  } else {
    stream->grpc_status = GrpcStatusOfReset(NGHTTP2_INTERNAL_ERROR);
    nghttp2_submit_rst_stream(stream->app->session, NGHTTP2_FLAG_NONE, stream->app_id,
                              NGHTTP2_INTERNAL_ERROR);
  }
  MarkDirty(*stream->app);
}

void FrameRelay::Loop::EndCall(RelayStream* stream, uint32_t error_code) {
  if (options_.observer == nullptr) return;
  int status = stream->grpc_status;
  if (status < 0) status = error_code == NGHTTP2_NO_ERROR ? 2 : GrpcStatusOfReset(error_code);
  const auto elapsed =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - stream->started_at);
  options_.observer->CallEnded(stream->observer_token, status, absl::FromChrono(elapsed));
}

void FrameRelay::Loop::CloseAppSide(RelayStream* stream, uint32_t error_code) {
  Connection* app = stream->app;
  if (app == nullptr) return;
  Unpark(stream);
  EndCall(stream, error_code);
  if (stream->admitted) --admitted_calls_;
  // The app's bytes not yet written upstream never will be: the upstream
  // stream is reset below.
  DropUpward(stream, /*app_stream_open=*/false);
  StopKeepingRequest(stream);
  Unlink(*app, stream);
  stream->app = nullptr;
  if (app->session != nullptr) {
    nghttp2_session_set_stream_user_data(app->session, stream->app_id, nullptr);
  }
  if (stream->upstream != nullptr) {
    // What the upstream sent that the app will not read still holds its
    // connection's window.
    nghttp2_session_consume(stream->upstream->session, stream->upstream_id,
                            stream->downward.size());
    stream->downward.Pop(stream->downward.size());
    bool answered = stream->downward_ended && stream->trailers.empty();
    uint32_t code = error_code;
    if (code == NGHTTP2_NO_ERROR && !answered) code = NGHTTP2_CANCEL;
    nghttp2_submit_rst_stream(stream->upstream->session, NGHTTP2_FLAG_NONE, stream->upstream_id,
                              code);
    MarkDirty(*stream->upstream);
  }
  MaybeFree(stream);
}

void FrameRelay::Loop::DetachUpstream(RelayStream* stream) {
  Connection* upstream = stream->upstream;
  Unlink(*upstream, stream);
  stream->upstream = nullptr;
  if (upstream->session != nullptr) {
    nghttp2_session_set_stream_user_data(upstream->session, stream->upstream_id, nullptr);
    // The upstream's bytes still on their way to the app are written with no
    // upstream stream left to credit: their share of the connection window
    // returns now.
    nghttp2_session_consume_connection(upstream->session, stream->downward.size());
  }
}

void FrameRelay::Loop::FailMessageTooLarge(RelayStream* stream) {
  // As grpc ends a call whose message passes its limit: the upstream's
  // stream is cancelled, the app told RESOURCE_EXHAUSTED.
  stream->message_too_large = true;
  StopKeepingRequest(stream);
  Unpark(stream);
  if (Connection* upstream = stream->upstream) {
    nghttp2_submit_rst_stream(upstream->session, NGHTTP2_FLAG_NONE, stream->upstream_id,
                              NGHTTP2_CANCEL);
    MarkDirty(*upstream);
    DetachUpstream(stream);
  }
  DropUpward(stream, /*app_stream_open=*/true);
  stream->grpc_status = 8;
  if (!stream->response_started) {
    AnswerHere(stream, 8, "8", "poolside: message larger than GRPC_MAX_MESSAGE_BYTES");
  } else {
    // Part of the answer is out: a reset the app's grpc reads as
    // RESOURCE_EXHAUSTED.
    stream->downward.Pop(stream->downward.size());
    stream->trailers.Clear();
    nghttp2_submit_rst_stream(stream->app->session, NGHTTP2_FLAG_NONE, stream->app_id,
                              NGHTTP2_ENHANCE_YOUR_CALM);
  }
  MarkDirty(*stream->app);
}

void FrameRelay::Loop::CloseUpstreamSide(RelayStream* stream, uint32_t error_code) {
  if (stream->upstream == nullptr) return;
  DetachUpstream(stream);
  if (stream->app == nullptr) {
    MaybeFree(stream);
    return;
  }
  if (error_code == NGHTTP2_REFUSED_STREAM && stream->replayable && stream->replays < kMaxReplays) {
    // Refused: the upstream never processed it. Everything written is
    // written again, on another connection if there is one.
    stream->upward_credited_again += stream->upward_sent;
    stream->upward_sent = 0;
    ++stream->replays;
    replayed_streams_.fetch_add(1, std::memory_order_relaxed);
    SubmitUpstream(stream);
    return;
  }
  StopKeepingRequest(stream);
  DropUpward(stream, /*app_stream_open=*/true);
  if (error_code != NGHTTP2_NO_ERROR && error_code != NGHTTP2_INTERNAL_ERROR) {
    // The upstream reset the stream: so does the relay, with its code.
    stream->grpc_status = GrpcStatusOfReset(error_code);
    nghttp2_submit_rst_stream(stream->app->session, NGHTTP2_FLAG_NONE, stream->app_id, error_code);
    MarkDirty(*stream->app);
  } else if (!stream->downward_ended) {
    FailDownward(stream, "poolside: the upstream connection was lost before the upstream answered");
  }
}

void FrameRelay::Loop::Park(RelayStream* stream) {
  if (waiting_count_ >= options_.max_waiting_calls) {
    if (options_.observer != nullptr) options_.observer->CallOverLimit(CallLimit::kWaiting);
    StopKeepingRequest(stream);
    DropUpward(stream, /*app_stream_open=*/true);
    AnswerHere(stream, 14, "14", waiting_refusal_.c_str());
    return;
  }
  ++waiting_count_;
  stream->wait_until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          absl::ToChronoNanoseconds(options_.connection_wait));
  waiting_.Add(stream, &RelayStream::wait_link);
}

void FrameRelay::Loop::Unpark(RelayStream* stream) {
  if (!stream->wait_link.linked) return;
  waiting_.Remove(stream, &RelayStream::wait_link);
  --waiting_count_;
}

void FrameRelay::Loop::StartWaitingStreams() {
  // Each either starts now or parks again as the newest: one pass at most.
  for (RelayStream* last = waiting_.newest(); !waiting_.empty();) {
    RelayStream* stream = waiting_.oldest();
    Unpark(stream);
    SubmitUpstream(stream);
    if (stream == last) break;
  }
}

void FrameRelay::Loop::FailOverdueWaits(Clock::time_point now) {
  while (!waiting_.empty() && waiting_.oldest()->wait_until <= now) {
    RelayStream* stream = waiting_.oldest();
    Unpark(stream);
    StopKeepingRequest(stream);
    DropUpward(stream, /*app_stream_open=*/true);
    FailDownward(stream, no_connection_refusal_.c_str());
  }
}

void FrameRelay::Loop::MaybeFree(RelayStream* stream) {
  if (stream->app != nullptr || stream->upstream != nullptr) return;
  delete stream;
  --live_streams_;
  ++freed_since_trim_;
}

void FrameRelay::Loop::ReleaseHeapWhenIdle() {
  // glibc keeps a burst's freed memory, and a container's limit counts it:
  // once the last stream of a burst is gone, hand it back.
  if (live_streams_ != 0 || freed_since_trim_ < kStreamsPerTrim) return;
  freed_since_trim_ = 0;
  malloc_trim(0);
}

FrameRelay::FrameRelay(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}
FrameRelay::~FrameRelay() = default;

absl::StatusOr<std::unique_ptr<FrameRelay>> FrameRelay::Create(const FrameRelayOptions& options) {
  auto loop = std::make_unique<Loop>(options);
  absl::Status status = loop->Init();
  if (!status.ok()) return status;
  return std::unique_ptr<FrameRelay>(new FrameRelay(std::move(loop)));
}

int FrameRelay::port() const { return loop_->port(); }
void FrameRelay::Run() { loop_->Run(); }
void FrameRelay::Stop() { loop_->Stop(); }
void FrameRelay::Drain() { loop_->Drain(); }
FrameRelayStats FrameRelay::Stats() const { return loop_->Stats(); }
absl::Status FrameRelay::SetUpstreams(const std::vector<UpstreamAddress>& upstreams) {
  return loop_->SetUpstreams(upstreams);
}

}  // namespace poolside::relay
