// Routes grpc's system calls on the app's sockets to their ScreenedSocket.
//
// poolside defines recvmsg, sendmsg, shutdown, close and epoll_ctl itself. The dynamic
// linker looks up a symbol in the executable before any shared library, so
// libgrpc's calls of them land here: a descriptor registered below goes to
// its ScreenedSocket, every other one straight on to the C library's function
// (dlsym(RTLD_NEXT): libc's, or a sanitizer's interceptor in front of it).
// grpc 1.51's TCP endpoint reads with recvmsg, writes with sendmsg, and ends
// a socket with shutdown and close, and its poller watches sockets with
// epoll_ctl; the hostile-peer and lifecycle tests fail if it stops doing so.
//
// The registry is process-wide because the calls it answers are.
#ifndef POOLSIDE_SCREEN_SOCKET_HOOKS_H_
#define POOLSIDE_SCREEN_SOCKET_HOOKS_H_

#include <memory>

#include "absl/status/status.h"
#include "screen/screened_socket.h"

namespace poolside {

// OK when grpc's calls reach this file's functions (the executable exports
// them); else why the frame screen cannot run.
absl::Status CheckSocketHooks();

// From here until grpc closes `fd`, grpc's reads and writes of it go through
// `socket`. False if `fd` is beyond the registry (over a million descriptors).
bool RegisterScreenedSocket(int fd, std::unique_ptr<ScreenedSocket> socket);

}  // namespace poolside

#endif  // POOLSIDE_SCREEN_SOCKET_HOOKS_H_
