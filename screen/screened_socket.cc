#include "screen/screened_socket.h"

#include <spdlog/spdlog.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace poolside {
namespace {

// At most one log line per reason this often; every cut is counted.
constexpr absl::Duration kLogInterval = absl::Seconds(10);
// One read while a header block is withheld.
constexpr size_t kScratchBytes = 16 << 10;

// Appends `count` bytes of the message's buffers, from `offset` on, to `out`.
void AppendFromBuffers(const msghdr& message, size_t offset, size_t count, std::string& out) {
  for (size_t i = 0; i < message.msg_iovlen && count > 0; ++i) {
    const iovec& buffer = message.msg_iov[i];
    if (offset >= buffer.iov_len) {
      offset -= buffer.iov_len;
      continue;
    }
    const size_t taken = std::min(count, buffer.iov_len - offset);
    out.append(static_cast<const char*>(buffer.iov_base) + offset, taken);
    count -= taken;
    offset = 0;
  }
}

// Calls `visit(data, size)` on each buffer's share of the first `filled`
// bytes of the message's buffers, until it returns false.
template <typename Visit>
void ForEachFilled(const msghdr& message, size_t filled, Visit visit) {
  for (size_t i = 0; i < message.msg_iovlen && filled > 0; ++i) {
    const size_t size = std::min(filled, message.msg_iov[i].iov_len);
    if (!visit(static_cast<const uint8_t*>(message.msg_iov[i].iov_base), size)) return;
    filled -= size;
  }
}

// How many of a chunk's `size` bytes, fed from `chunk_start` on, come before
// the unfinished header block that begins at `block` (all if none).
size_t BytesBeforeBlock(size_t size, uint64_t chunk_start, std::optional<uint64_t> block) {
  if (!block) return size;
  return static_cast<size_t>(
      std::min<uint64_t>(size, *block > chunk_start ? *block - chunk_start : 0));
}

// Copies as much of [data, data + size) as the message's buffers hold.
size_t CopyToBuffers(const char* data, size_t size, msghdr& message) {
  size_t copied = 0;
  for (size_t i = 0; i < message.msg_iovlen && copied < size; ++i) {
    const iovec& buffer = message.msg_iov[i];
    const size_t taken = std::min(size - copied, buffer.iov_len);
    std::memcpy(buffer.iov_base, data + copied, taken);
    copied += taken;
  }
  return copied;
}

}  // namespace

ScreenedConnections::ScreenedConnections(const FrameScreenLimits& limits,
                                         HostilePeerCounter* counter)
    : limits_(limits), counter_(counter) {
  last_logged_.fill(absl::InfinitePast());
}

void ScreenedConnections::CountRefused(HostileReason reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (counter_ != nullptr) counter_->Count(PeerSide::kApp, reason);
}

void ScreenedConnections::ReportCut(const std::string& peer, HostileReason reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (counter_ != nullptr) counter_->Count(PeerSide::kApp, reason);
  const size_t index = static_cast<size_t>(reason);
  const absl::Time now = absl::Now();
  if (now - last_logged_[index] < kLogInterval) {
    ++unlogged_[index];
    return;
  }
  spdlog::warn("screen: closed app connection from {}: {}{}", peer,
               std::string(HostileReasonName(reason)),
               unlogged_[index] > 0
                   ? absl::StrCat(" (and ", unlogged_[index], " more since the last such line)")
                   : std::string());
  last_logged_[index] = now;
  unlogged_[index] = 0;
}

void ScreenedConnections::Closed(int fd) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (wake_fd_ >= 0) {
      closed_.push_back(fd);
      const uint64_t one = 1;
      (void)!write(wake_fd_, &one, sizeof(one));
      return;
    }
  }
  CloseNow(fd);
}

void ScreenedConnections::StartLingering(int wake_fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  wake_fd_ = wake_fd;
}

std::vector<int> ScreenedConnections::TakeClosed() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(closed_, {});
}

void ScreenedConnections::StopLingering() {
  std::vector<int> closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_fd_ = -1;
    counter_ = nullptr;
    closed.swap(closed_);
  }
  for (const int fd : closed) CloseNow(fd);
}

void ScreenedConnections::CloseNow(int fd) {
  // A reset, if the app's bytes are unread, then follows the FIN instead of
  // replacing it.
  shutdown(fd, SHUT_WR);
  close(fd);
  open_.fetch_sub(1, std::memory_order_relaxed);
}

ScreenedSocket::ScreenedSocket(std::shared_ptr<ScreenedConnections> connections, std::string peer)
    : connections_(std::move(connections)),
      peer_(std::move(peer)),
      screen_(connections_->limits()) {}

ssize_t ScreenedSocket::Receive(int fd, msghdr* message, int flags, RecvmsgFunction recvmsg) {
  std::lock_guard<std::mutex> lock(read_mutex_);
  if (cut_off_) {
    errno = ECONNRESET;
    return -1;
  }
  if (ready_begin_ < ready_.size() || !held_.empty()) {
    return ReceiveWithheld(fd, message, flags, recvmsg);
  }
  // The common case: grpc's buffers take the bytes straight from the kernel,
  // and the screen reads their frame headers there.
  const ssize_t got = recvmsg(fd, message, flags);
  if (got <= 0) return got;
  const absl::Time now = absl::Now();
  HostileReason broken = HostileReason::kNone;
  ForEachFilled(*message, static_cast<size_t>(got), [&](const uint8_t* data, size_t size) {
    broken = screen_.Feed(data, size, now);
    return broken == HostileReason::kNone;
  });
  if (broken != HostileReason::kNone) return Cut(fd, broken);
  const std::optional<uint64_t> block = screen_.unfinished_block_begin();
  if (!block) return got;
  // A header block began and has not ended: grpc gets the bytes before it.
  const size_t size = static_cast<size_t>(got);
  const size_t sendable = BytesBeforeBlock(size, screen_.fed_bytes() - size, block);
  AppendFromBuffers(*message, sendable, size - sendable, held_);
  if (sendable > 0) return static_cast<ssize_t>(sendable);
  return ReceiveWithheld(fd, message, flags, recvmsg);
}

ssize_t ScreenedSocket::ReceiveWithheld(int fd, msghdr* message, int flags,
                                        RecvmsgFunction recvmsg) {
  while (true) {
    if (ready_begin_ < ready_.size()) {
      const size_t copied =
          CopyToBuffers(ready_.data() + ready_begin_, ready_.size() - ready_begin_, *message);
      ready_begin_ += copied;
      if (ready_begin_ == ready_.size()) {
        ready_.clear();
        ready_begin_ = 0;
      }
      // No TCP_INQ figure: grpc reads again, until EAGAIN.
      message->msg_controllen = 0;
      message->msg_flags = 0;
      return static_cast<ssize_t>(copied);
    }
    // Everything screened is out; the withheld block waits for its end.
    if (scratch_ == nullptr) scratch_ = std::make_unique<char[]>(kScratchBytes);
    iovec buffer{scratch_.get(), kScratchBytes};
    msghdr scratch_message{};
    scratch_message.msg_iov = &buffer;
    scratch_message.msg_iovlen = 1;
    const ssize_t got = recvmsg(fd, &scratch_message, flags);
    // EAGAIN: the kernel's queue is empty, so the next bytes wake grpc again.
    // The end of the connection ends an unfinished block too.
    if (got <= 0) return got;
    const size_t size = static_cast<size_t>(got);
    const HostileReason broken =
        screen_.Feed(reinterpret_cast<const uint8_t*>(scratch_.get()), size, absl::Now());
    if (broken != HostileReason::kNone) return Cut(fd, broken);
    Withhold(scratch_.get(), size, screen_.fed_bytes() - size, screen_.unfinished_block_begin());
  }
}

void ScreenedSocket::Withhold(const char* chunk, size_t size, uint64_t chunk_start,
                              std::optional<uint64_t> block) {
  // The chunk's bytes before the unfinished block may go; the rest waits.
  const size_t sendable = BytesBeforeBlock(size, chunk_start, block);
  if (sendable > 0 || !block) {
    // Whatever was held belongs before these bytes: its block has ended.
    ready_.append(held_);
    ready_.append(chunk, sendable);
    held_.clear();
  }
  held_.append(chunk + sendable, size - sendable);
}

ssize_t ScreenedSocket::Send(int fd, const msghdr* message, int flags, SendmsgFunction sendmsg) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  if (writes_refused_) {
    errno = EPIPE;
    return -1;
  }
  const ssize_t sent = sendmsg(fd, message, flags);
  if (sent > 0) {
    ForEachFilled(*message, static_cast<size_t>(sent), [&](const uint8_t* data, size_t size) {
      written_.Feed(data, size);
      return true;
    });
  }
  return sent;
}

ssize_t ScreenedSocket::Cut(int fd, HostileReason reason) {
  connections_->ReportCut(peer_, reason);
  cut_off_ = true;
  ready_.clear();
  ready_begin_ = 0;
  held_.clear();
  {
    std::lock_guard<std::mutex> lock(write_mutex_);
    writes_refused_ = true;
    // The GOAWAY may only go between grpc's frames. grpc writes whole frames,
    // so only a write the kernel took in part (a full socket) leaves it out.
    if (written_.AtBoundary()) {
      const std::string goaway = GoawayFrame(screen_.last_stream_id(), http2::kEnhanceYourCalm);
      (void)!send(fd, goaway.data(), goaway.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    shutdown(fd, SHUT_WR);
  }
  errno = ECONNRESET;
  return -1;
}

}  // namespace poolside
