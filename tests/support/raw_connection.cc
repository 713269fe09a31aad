#include "tests/support/raw_connection.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/loopback_socket.h"

namespace poolside::test {

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

}  // namespace poolside::test
