#include "tests/faults/fault_support.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/loopback_socket.h"

namespace poolside::test {

RawUpstream::RawUpstream(Behavior behavior, uint32_t error_code, absl::Duration reset_delay)
    : behavior_(behavior), error_code_(error_code), reset_delay_(reset_delay) {}

RawUpstream::~RawUpstream() { Stop(); }

std::string RawUpstream::target() const { return absl::StrCat("127.0.0.1:", port_); }

absl::Status RawUpstream::Start() {
  listen_fd_ = BindLoopback(0);
  if (listen_fd_ < 0 || listen(listen_fd_, 128) != 0) {
    return absl::InternalError(absl::StrCat("bind/listen: ", strerror(errno)));
  }
  port_ = LocalPort(listen_fd_);
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
        case h2::kPing:
          output += h2::AckFor(frame);
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

std::string FirstMutexWaitShim() { return POOLSIDE_FIRST_MUTEX_WAIT_SHIM; }

}  // namespace poolside::test
