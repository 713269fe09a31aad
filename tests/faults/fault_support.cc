#include "tests/faults/fault_support.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace poolside::test {
namespace {

// Milliseconds left until `deadline`, for poll(); 0 once it has passed.
int MillisUntil(absl::Time deadline) {
  const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// Writes all of `bytes` to `fd` before `deadline`; false on error or timeout.
bool WriteAll(int fd, absl::string_view bytes, absl::Time deadline) {
  while (!bytes.empty()) {
    pollfd waiter{fd, POLLOUT, 0};
    const int ready = poll(&waiter, 1, MillisUntil(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::string RealPath(const std::string& path) {
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) return path;
  return resolved;
}

void AppendUint32(std::string& out, uint32_t value) {
  out.push_back(static_cast<char>((value >> 24) & 0xff));
  out.push_back(static_cast<char>((value >> 16) & 0xff));
  out.push_back(static_cast<char>((value >> 8) & 0xff));
  out.push_back(static_cast<char>(value & 0xff));
}

uint32_t ReadUint32(absl::string_view bytes) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(bytes[0])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(bytes[1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(bytes[2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(bytes[3]));
}

// HPACK integer with a `prefix_bits`-bit prefix; `first` holds the bits above
// the prefix (RFC 7541 §5.1).
std::string HpackInteger(uint64_t value, int prefix_bits, uint8_t first) {
  std::string out;
  const uint64_t limit = (uint64_t{1} << prefix_bits) - 1;
  if (value < limit) {
    out.push_back(static_cast<char>(first | value));
    return out;
  }
  out.push_back(static_cast<char>(first | limit));
  value -= limit;
  while (value >= 128) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
  return out;
}

std::string HpackString(absl::string_view text) {
  return HpackInteger(text.size(), 7, 0x00) + std::string(text);
}

const char* FrameTypeName(uint8_t type) {
  switch (type) {
    case h2::kData:
      return "DATA";
    case h2::kHeaders:
      return "HEADERS";
    case h2::kRstStream:
      return "RST_STREAM";
    case h2::kSettings:
      return "SETTINGS";
    case h2::kPing:
      return "PING";
    case h2::kGoaway:
      return "GOAWAY";
    case h2::kWindowUpdate:
      return "WINDOW_UPDATE";
    case h2::kContinuation:
      return "CONTINUATION";
    default:
      return "FRAME";
  }
}

}  // namespace

// ---- The poolside process, seen from outside ----

std::optional<int64_t> ResidentKib(pid_t pid) {
  const std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    if (!absl::ConsumePrefix(&line, "VmRSS:")) continue;
    line = absl::StripAsciiWhitespace(line);
    absl::ConsumeSuffix(&line, "kB");
    int64_t kib = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib)) return kib;
  }
  return std::nullopt;
}

int OpenFileDescriptors(pid_t pid) {
  DIR* dir = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (dir == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

pid_t FindChildRunning(const std::string& binary) {
  const std::string wanted = RealPath(binary);
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return -1;
  pid_t found = -1;
  while (const dirent* entry = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    const size_t close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    const std::vector<std::string> fields =
        absl::StrSplit(stat.substr(close_paren + 1), ' ', absl::SkipEmpty());
    pid_t parent = 0;
    if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &parent) || parent != getpid()) continue;
    char exe[PATH_MAX];
    const ssize_t n = readlink(absl::StrCat("/proc/", pid, "/exe").c_str(), exe, sizeof(exe) - 1);
    if (n <= 0) continue;
    if (std::string(exe, static_cast<size_t>(n)) == wanted) {
      found = pid;
      break;
    }
  }
  closedir(proc);
  return found;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = ConnectLoopback(port);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  std::string response;
  bool complete = false;
  if (WriteAll(fd, request, deadline)) {
    char buffer[16384];
    while (true) {
      pollfd waiter{fd, POLLIN, 0};
      const int ready = poll(&waiter, 1, MillisUntil(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) break;
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        complete = n == 0;
        break;
      }
      response.append(buffer, static_cast<size_t>(n));
    }
  }
  close(fd);
  if (!complete) return absl::DeadlineExceededError(absl::StrCat("GET ", path, " timed out"));
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos) {
    return absl::InternalError(absl::StrCat("GET ", path, ": malformed response"));
  }
  if (response.compare(9, 3, "200") != 0) {
    return absl::InternalError(
        absl::StrCat("GET ", path, ": ", response.substr(0, response.find('\r'))));
  }
  return response.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &value)) return value;
  }
  return std::nullopt;
}

std::optional<double> AwaitMetric(int admin_port, const std::string& series, double value,
                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::optional<double> last;
  while (true) {
    absl::StatusOr<std::string> text = HttpGet(admin_port, "/metrics");
    if (text.ok()) last = MetricValue(*text, series);
    if ((last.has_value() && *last == value) || absl::Now() > deadline) return last;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// ---- Raw TCP ----

absl::StatusOr<std::unique_ptr<RawConnection>> RawConnection::Connect(int port) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to 127.0.0.1:", port, ": ", strerror(errno)));
  }
  return std::unique_ptr<RawConnection>(new RawConnection(fd));
}

RawConnection::~RawConnection() {
  if (fd_ >= 0) close(fd_);
}

bool RawConnection::Send(absl::string_view bytes, absl::Duration timeout) {
  return fd_ >= 0 && WriteAll(fd_, bytes, absl::Now() + timeout);
}

RawConnection::ReadResult RawConnection::ReadUntil(
    const std::function<bool(const std::string&)>& done, absl::Duration timeout) {
  ReadResult result;
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[16384];
  while (fd_ >= 0 && !done(result.bytes)) {
    pollfd waiter{fd_, POLLIN, 0};
    const int ready = poll(&waiter, 1, MillisUntil(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;
    const ssize_t n = read(fd_, buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      result.closed = true;
      break;
    }
    result.bytes.append(buffer, static_cast<size_t>(n));
  }
  return result;
}

RawConnection::ReadResult RawConnection::ReadUntilClosed(absl::Duration timeout) {
  return ReadUntil([](const std::string&) { return false; }, timeout);
}

void RawConnection::ShutdownWrite() {
  if (fd_ >= 0) shutdown(fd_, SHUT_WR);
}

void RawConnection::Reset() {
  if (fd_ < 0) return;
  const linger abort_on_close{1, 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  close(fd_);
  fd_ = -1;
}

// ---- HTTP/2 frames ----
namespace h2 {

std::string SerializeFrame(uint8_t type, uint8_t flags, uint32_t stream,
                           absl::string_view payload) {
  std::string frame;
  const uint32_t length = static_cast<uint32_t>(payload.size());
  frame.push_back(static_cast<char>((length >> 16) & 0xff));
  frame.push_back(static_cast<char>((length >> 8) & 0xff));
  frame.push_back(static_cast<char>(length & 0xff));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  AppendUint32(frame, stream & 0x7fffffff);
  frame.append(payload.data(), payload.size());
  return frame;
}

std::string Settings(bool ack) { return SerializeFrame(kSettings, ack ? kAck : 0, 0, ""); }

std::string RstStream(uint32_t stream, uint32_t error_code) {
  std::string payload;
  AppendUint32(payload, error_code);
  return SerializeFrame(kRstStream, 0, stream, payload);
}

std::string LiteralHeader(absl::string_view name, absl::string_view value) {
  return std::string(1, '\0') + HpackString(name) + HpackString(value);
}

std::string HeaderFrames(uint32_t stream, absl::string_view block, bool end_stream,
                         size_t max_frame) {
  std::string frames;
  bool first = true;
  do {
    const absl::string_view piece = block.substr(0, max_frame);
    block.remove_prefix(piece.size());
    uint8_t flags = block.empty() ? kEndHeaders : 0;
    if (first && end_stream) flags |= kEndStream;
    frames += SerializeFrame(first ? kHeaders : kContinuation, flags, stream, piece);
    first = false;
  } while (!block.empty());
  return frames;
}

std::string GrpcMessage(absl::string_view payload) {
  std::string message(1, '\0');
  AppendUint32(message, static_cast<uint32_t>(payload.size()));
  message.append(payload.data(), payload.size());
  return message;
}

std::string GrpcRequestBlock(absl::string_view path, std::optional<std::string> content_type,
                             const std::vector<std::pair<std::string, std::string>>& extra) {
  std::string block = LiteralHeader(":method", "POST") + LiteralHeader(":scheme", "http") +
                      LiteralHeader(":path", path) + LiteralHeader(":authority", "localhost");
  if (content_type.has_value() && !content_type->empty()) {
    block += LiteralHeader("content-type", *content_type);
  }
  block += LiteralHeader("te", "trailers");
  for (const auto& [name, value] : extra) block += LiteralHeader(name, value);
  return block;
}

std::vector<Frame> TakeFrames(std::string& bytes) {
  std::vector<Frame> frames;
  size_t offset = 0;
  while (bytes.size() - offset >= 9) {
    const uint8_t* head = reinterpret_cast<const uint8_t*>(bytes.data() + offset);
    const size_t length = (size_t{head[0]} << 16) | (size_t{head[1]} << 8) | head[2];
    if (bytes.size() - offset < 9 + length) break;
    Frame frame;
    frame.type = head[3];
    frame.flags = head[4];
    frame.stream = ReadUint32(absl::string_view(bytes).substr(offset + 5, 4)) & 0x7fffffff;
    frame.payload = bytes.substr(offset + 9, length);
    frames.push_back(std::move(frame));
    offset += 9 + length;
  }
  bytes.erase(0, offset);
  return frames;
}

std::vector<Frame> ParseFrames(std::string bytes) { return TakeFrames(bytes); }

uint32_t ErrorCodeOf(const Frame& frame) {
  if (frame.type == kRstStream && frame.payload.size() >= 4) return ReadUint32(frame.payload);
  if (frame.type == kGoaway && frame.payload.size() >= 8) {
    return ReadUint32(absl::string_view(frame.payload).substr(4));
  }
  return 0;
}

std::string Describe(const std::vector<Frame>& frames) {
  std::vector<std::string> parts;
  for (const Frame& frame : frames) {
    std::string part =
        absl::StrCat(FrameTypeName(frame.type), "(stream ", frame.stream, ", flags 0x",
                     absl::Hex(frame.flags), ", ", frame.payload.size(), " bytes");
    if (frame.type == kRstStream || frame.type == kGoaway) {
      absl::StrAppend(&part, ", error 0x", absl::Hex(ErrorCodeOf(frame)));
    }
    parts.push_back(part + ")");
  }
  return parts.empty() ? "no frames" : absl::StrJoin(parts, " ");
}

}  // namespace h2

// ---- RawUpstream ----

RawUpstream::RawUpstream(Behavior behavior, uint32_t error_code, absl::Duration reset_delay)
    : behavior_(behavior), error_code_(error_code), reset_delay_(reset_delay) {}

RawUpstream::~RawUpstream() { Stop(); }

std::string RawUpstream::target() const { return absl::StrCat("127.0.0.1:", port_); }

absl::Status RawUpstream::Start() {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listen_fd_, 128) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return absl::InternalError(absl::StrCat("bind/listen: ", strerror(errno)));
  }
  port_ = ntohs(address.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void RawUpstream::Stop() {
  if (stopping_.exchange(true)) return;
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mutex_);
    for (int fd : connection_fds_) shutdown(fd, SHUT_RDWR);
    threads = std::move(connection_threads_);
  }
  for (std::thread& thread : threads) thread.join();
  absl::MutexLock lock(&mutex_);
  for (int fd : connection_fds_) close(fd);
  connection_fds_.clear();
}

void RawUpstream::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd waiter{listen_fd_, POLLIN, 0};
    if (poll(&waiter, 1, 100) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    connections_.fetch_add(1);
    absl::MutexLock lock(&mutex_);
    connection_fds_.push_back(fd);
    connection_threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void RawUpstream::Serve(int fd) {
  const absl::Duration kWriteTimeout = absl::Seconds(5);
  if (behavior_ != Behavior::kSilent &&
      !WriteAll(fd, h2::Settings(), absl::Now() + kWriteTimeout)) {
    return;
  }
  std::string input;
  bool preface_seen = false;
  char buffer[16384];
  while (!stopping_.load()) {
    pollfd waiter{fd, POLLIN, 0};
    const int ready = poll(&waiter, 1, 100);
    if (ready < 0 && errno != EINTR) return;
    if (ready <= 0) continue;
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;
    if (behavior_ == Behavior::kSilent) continue;  // Reads forever, says nothing.
    input.append(buffer, static_cast<size_t>(n));
    if (!preface_seen) {
      if (input.size() < h2::kClientPreface.size()) continue;
      if (!absl::StartsWith(input, h2::kClientPreface)) return;
      input.erase(0, h2::kClientPreface.size());
      preface_seen = true;
    }
    std::string output;
    for (const h2::Frame& frame : h2::TakeFrames(input)) {
      switch (frame.type) {
        case h2::kSettings:
          if ((frame.flags & h2::kAck) == 0) output += h2::Settings(/*ack=*/true);
          break;
        case h2::kPing:
          if ((frame.flags & h2::kAck) == 0) {
            output += h2::SerializeFrame(h2::kPing, h2::kAck, 0, frame.payload);
          }
          break;
        case h2::kHeaders:
          if (behavior_ == Behavior::kMessageThenReset) {
            // ":status: 200" is entry 8 of the HPACK static table.
            const std::string block =
                std::string(1, '\x88') + h2::LiteralHeader("content-type", "application/grpc");
            output += h2::HeaderFrames(frame.stream, block, /*end_stream=*/false);
            output += h2::SerializeFrame(h2::kData, 0, frame.stream, h2::GrpcMessage(""));
            if (reset_delay_ > absl::ZeroDuration()) {
              // This connection's only thread: the delay holds up nothing else.
              if (!WriteAll(fd, output, absl::Now() + kWriteTimeout)) return;
              output.clear();
              absl::SleepFor(reset_delay_);
            }
          }
          output += h2::RstStream(frame.stream, error_code_);
          streams_reset_.fetch_add(1);
          break;
        case h2::kGoaway:
          return;
        default:
          break;
      }
    }
    if (!output.empty() && !WriteAll(fd, output, absl::Now() + kWriteTimeout)) return;
  }
}

// ---- Helper processes ----

std::string FaultClientBinary() { return POOLSIDE_FAULT_CLIENT_BINARY; }
std::string GoawayUpstreamScript() { return POOLSIDE_GOAWAY_UPSTREAM_SCRIPT; }

// ---- Load ----

UnaryLoad::UnaryLoad(std::string target, int threads, CallOptions options)
    : target_(std::move(target)), thread_count_(threads), options_(std::move(options)) {}

UnaryLoad::~UnaryLoad() { Stop(); }

void UnaryLoad::Start() {
  for (int i = 0; i < thread_count_; ++i) threads_.emplace_back([this] { Run(); });
}

std::vector<TimedCall> UnaryLoad::Stop() {
  stop_.store(true);
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  absl::MutexLock lock(&mutex_);
  std::sort(calls_.begin(), calls_.end(),
            [](const TimedCall& a, const TimedCall& b) { return a.start < b.start; });
  return calls_;
}

void UnaryLoad::Run() {
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(target_);
  while (!stop_.load()) {
    TimedCall call;
    call.id = next_id_.fetch_add(1);
    CallOptions options = options_;
    options.metadata.emplace_back("x-call-id", absl::StrCat(call.id));
    call.start = absl::Now();
    const CallResult result =
        UnaryCall(channel, kUnaryMethod, absl::StrCat("load ", call.id), options);
    call.end = absl::Now();
    call.code = result.status.error_code();
    call.message = result.status.error_message();
    if (result.timed_out) call.message += " (client gave up waiting)";
    finished_.fetch_add(1);
    const bool failed = call.code != grpc::StatusCode::OK;
    {
      absl::MutexLock lock(&mutex_);
      calls_.push_back(std::move(call));
    }
    // A failing target fails fast: do not spin.
    if (failed) absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string SummarizeCodes(const std::vector<TimedCall>& calls) {
  std::map<grpc::StatusCode, int> counts;
  std::map<grpc::StatusCode, std::string> example;
  for (const TimedCall& call : calls) {
    ++counts[call.code];
    if (call.code != grpc::StatusCode::OK) example.emplace(call.code, call.message);
  }
  std::vector<std::string> parts;
  for (const auto& [code, count] : counts) {
    std::string part = absl::StrCat("code ", static_cast<int>(code), ": ", count);
    if (auto it = example.find(code); it != example.end()) {
      absl::StrAppend(&part, " (e.g. \"", it->second, "\")");
    }
    parts.push_back(part);
  }
  return absl::StrJoin(parts, ", ");
}

// ---- Many streams ----
namespace {

enum class SwarmOp : uintptr_t {
  kStarted,
  kWritten,
  kEchoed,
  kWritesDone,
  kDrained,
  kFinished,
};
constexpr uintptr_t kSwarmOpBits = 3;

struct SwarmStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
  grpc::ByteBuffer response;
  grpc::Status status;
  bool open = false;
  bool closing = false;
  bool finished = false;
  bool cancel = false;
};

void* SwarmTag(size_t index, SwarmOp op) {
  return reinterpret_cast<void*>((index << kSwarmOpBits) | static_cast<uintptr_t>(op));
}

}  // namespace

SwarmOutcome RunStreamSwarm(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            int streams, size_t message_size, int cancel_every,
                            absl::Duration timeout) {
  SwarmOutcome outcome;
  const absl::Time start = absl::Now();
  const absl::Time open_deadline = start + timeout / 2;
  const absl::Time deadline = start + timeout;
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (const auto& channel : channels)
    stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  grpc::Slice slice(std::string(message_size, 'x'));
  const grpc::ByteBuffer request(&slice, 1);

  std::vector<std::unique_ptr<SwarmStream>> all(static_cast<size_t>(streams));
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = std::make_unique<SwarmStream>();
    SwarmStream& stream = *all[i];
    stream.cancel = cancel_every > 0 && i % static_cast<size_t>(cancel_every) == 0;
    stream.call = stubs[i % stubs.size()]->PrepareCall(&stream.context, kBidiMethod, &cq);
    stream.call->StartCall(SwarmTag(i, SwarmOp::kStarted));
  }

  int ended_before_open = 0;
  int finished = 0;
  bool closing_phase = false;
  bool cancelled_all = false;
  const auto finish = [&](size_t i) {
    all[i]->call->Finish(&all[i]->status, SwarmTag(i, SwarmOp::kFinished));
  };
  const auto close = [&](size_t i) {
    SwarmStream& stream = *all[i];
    stream.closing = true;
    if (stream.cancel) {
      stream.context.TryCancel();
      stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
    } else {
      stream.call->WritesDone(SwarmTag(i, SwarmOp::kWritesDone));
    }
  };
  const auto enter_closing_phase = [&] {
    closing_phase = true;
    outcome.open_time = absl::Now() - start;
    for (size_t i = 0; i < all.size(); ++i) {
      // Streams not open yet are cancelled; they end through their pending op.
      if (all[i]->open) {
        close(i);
      } else if (!all[i]->finished) {
        all[i]->context.TryCancel();
      }
    }
  };

  while (finished < streams) {
    if (!closing_phase &&
        (outcome.opened + ended_before_open == streams || absl::Now() > open_deadline)) {
      enter_closing_phase();
    }
    const absl::Time now = absl::Now();
    if (now > deadline && !cancelled_all) {
      cancelled_all = true;
      for (auto& stream : all) {
        if (!stream->finished) stream->context.TryCancel();
      }
    }
    if (now > deadline + absl::Seconds(15)) {
      std::fprintf(stderr, "stream swarm: %d streams did not end after being cancelled\n",
                   streams - finished);
      std::abort();  // Their contexts still have operations pending.
    }
    void* tag = nullptr;
    bool ok = false;
    const auto status =
        cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    if (status != grpc::CompletionQueue::GOT_EVENT) continue;
    const auto bits = reinterpret_cast<uintptr_t>(tag);
    const size_t i = bits >> kSwarmOpBits;
    SwarmStream& stream = *all[i];
    switch (static_cast<SwarmOp>(bits & ((1u << kSwarmOpBits) - 1))) {
      case SwarmOp::kStarted:
        if (!ok) {
          finish(i);
        } else {
          stream.call->Write(request, SwarmTag(i, SwarmOp::kWritten));
        }
        break;
      case SwarmOp::kWritten:
        if (!ok) {
          finish(i);
        } else {
          stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kEchoed));
        }
        break;
      case SwarmOp::kEchoed:
        if (!ok) {
          finish(i);
        } else {
          stream.open = true;
          ++outcome.opened;
          if (closing_phase) close(i);
        }
        break;
      case SwarmOp::kWritesDone:
        stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
        break;
      case SwarmOp::kDrained:
        if (ok) {
          stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
        } else {
          finish(i);
        }
        break;
      case SwarmOp::kFinished:
        stream.finished = true;
        ++finished;
        if (!stream.open) ++ended_before_open;
        ++outcome.codes[stream.status.error_code()];
        break;
    }
  }
  outcome.unfinished = streams - finished;
  outcome.total_time = absl::Now() - start;
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return outcome;
}

}  // namespace poolside::test
