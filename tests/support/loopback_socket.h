// Blocking socket helpers on 127.0.0.1 shared by the test support: binding,
// connecting and writing with a deadline. Stateless; thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_LOOPBACK_SOCKET_H_
#define POOLSIDE_TESTS_SUPPORT_LOOPBACK_SOCKET_H_

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside::test {

// Milliseconds left until `deadline`, for poll(); 0 once it has passed.
int MillisUntil(absl::Time deadline);

// A TCP socket bound to 127.0.0.1:`port` (0: any free port), or -1.
int BindLoopback(int port);

// The local port `fd` is bound to, or 0.
int LocalPort(int fd);

// A TCP connection to 127.0.0.1:`port` with Nagle off, or -1 (errno says why).
int ConnectLoopback(int port);

// Writes all of `bytes` to `fd` before `deadline`; false on error or timeout.
bool WriteAll(int fd, absl::string_view bytes, absl::Time deadline);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_LOOPBACK_SOCKET_H_
