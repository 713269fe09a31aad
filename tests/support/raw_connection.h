// A blocking TCP client connection to 127.0.0.1 that sends and reads raw
// bytes, for clients that misbehave on purpose (half requests, hostile
// frames, abrupt resets). Every wait is bounded.
#ifndef POOLSIDE_TESTS_SUPPORT_RAW_CONNECTION_H_
#define POOLSIDE_TESTS_SUPPORT_RAW_CONNECTION_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside::test {

// A blocking TCP client connection to 127.0.0.1. Owns its socket (closed on
// destruction or Reset). Confined to one thread.
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

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_RAW_CONNECTION_H_
