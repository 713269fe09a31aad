// LD_PRELOAD'ed into poolside by
// UpstreamFaultTest.UpstreamConnectsSurviveAbslsFirstMutexWaitLandingInsideThem:
// makes absl's once-per-process CPU frequency reading happen inside grpc
// 1.51's TCP connect, between connect() returning EINPROGRESS and grpc
// reading errno, as it does when the process's first absl::Mutex wait lands
// there (tests/faults/FINDINGS.md). On a machine without
// /sys/devices/system/cpu/cpu0/tsc_freq_khz that reading leaves errno at
// ENOENT, and a process that has not taken the reading beforehand sees its
// connect fail with "No such file or directory".
#include <dlfcn.h>

#include <cstring>

#include "absl/base/internal/sysinfo.h"

// grpc 1.51's own declaration (src/core/lib/iomgr/ev_posix.h); libgrpc calls
// it through its PLT, so this definition comes first.
struct grpc_fd;
grpc_fd* grpc_fd_create(int fd, const char* name, bool track_err);

grpc_fd* grpc_fd_create(int fd, const char* name, bool track_err) {
  using FdCreate = grpc_fd* (*)(int, const char*, bool);
  static const auto next_fd_create =
      reinterpret_cast<FdCreate>(dlsym(RTLD_NEXT, "_Z14grpc_fd_createiPKcb"));
  grpc_fd* created = next_fd_create(fd, name, track_err);
  // grpc names a connecting socket's fd "tcp-client:<address>".
  if (std::strncmp(name, "tcp-client:", std::strlen("tcp-client:")) == 0) {
    absl::base_internal::NominalCPUFrequency();
  }
  return created;
}
