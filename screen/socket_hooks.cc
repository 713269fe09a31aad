#include "screen/socket_hooks.h"

#include <dlfcn.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace poolside {
namespace {

using RecvmsgFunction = ScreenedSocket::RecvmsgFunction;
using SendmsgFunction = ScreenedSocket::SendmsgFunction;
using ShutdownFunction = int (*)(int, int);
using CloseFunction = int (*)(int);
using EpollCtlFunction = int (*)(int, int, int, epoll_event*);

// Descriptor numbers the registry covers. The table is mapped, not
// allocated, so only the pages of the descriptors in use are ever touched.
constexpr size_t kSlots = size_t{1} << 20;
using Slot = std::atomic<ScreenedSocket*>;

// Null until the first socket is registered; never unmapped.
std::atomic<Slot*> g_slots{nullptr};

// The C library's functions, found at their first use.
std::atomic<RecvmsgFunction> g_next_recvmsg{nullptr};
std::atomic<SendmsgFunction> g_next_sendmsg{nullptr};
std::atomic<ShutdownFunction> g_next_shutdown{nullptr};
std::atomic<CloseFunction> g_next_close{nullptr};
std::atomic<EpollCtlFunction> g_next_epoll_ctl{nullptr};

template <typename Function>
Function Next(std::atomic<Function>& cache, const char* name) {
  Function function = cache.load(std::memory_order_relaxed);
  if (function == nullptr) {
    function = reinterpret_cast<Function>(dlsym(RTLD_NEXT, name));
    cache.store(function, std::memory_order_relaxed);
  }
  return function;
}

Slot* SlotOf(int fd) {
  if (fd < 0 || static_cast<size_t>(fd) >= kSlots) return nullptr;
  Slot* slots = g_slots.load(std::memory_order_acquire);
  return slots == nullptr ? nullptr : &slots[fd];
}

ScreenedSocket* Find(int fd) {
  Slot* slot = SlotOf(fd);
  return slot == nullptr ? nullptr : slot->load(std::memory_order_acquire);
}

}  // namespace

absl::Status CheckSocketHooks() {
  const bool hooked = dlsym(RTLD_DEFAULT, "recvmsg") == reinterpret_cast<void*>(&::recvmsg) &&
                      dlsym(RTLD_DEFAULT, "sendmsg") == reinterpret_cast<void*>(&::sendmsg) &&
                      dlsym(RTLD_DEFAULT, "shutdown") == reinterpret_cast<void*>(&::shutdown) &&
                      dlsym(RTLD_DEFAULT, "close") == reinterpret_cast<void*>(&::close) &&
                      dlsym(RTLD_DEFAULT, "epoll_ctl") == reinterpret_cast<void*>(&::epoll_ctl);
  const bool found =
      Next(g_next_recvmsg, "recvmsg") != nullptr && Next(g_next_sendmsg, "sendmsg") != nullptr &&
      Next(g_next_shutdown, "shutdown") != nullptr && Next(g_next_close, "close") != nullptr &&
      Next(g_next_epoll_ctl, "epoll_ctl") != nullptr;
  if (hooked && found) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "the frame screen cannot see grpc's socket calls in this build (the executable must "
      "export recvmsg, sendmsg, shutdown, close and epoll_ctl); GRPC_FRAME_SCREEN=false runs "
      "without it");
}

bool RegisterScreenedSocket(int fd, std::unique_ptr<ScreenedSocket> socket) {
  static std::once_flag mapped;
  std::call_once(mapped, [] {
    void* table = mmap(nullptr, kSlots * sizeof(Slot), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (table != MAP_FAILED) g_slots.store(static_cast<Slot*>(table), std::memory_order_release);
  });
  Slot* slot = SlotOf(fd);
  if (slot == nullptr) return false;
  // The slot owns the socket until close() takes it back. `fd` was free, so
  // anything still in the slot is left from a close that bypassed the hook.
  std::unique_ptr<ScreenedSocket> stale(
      slot->exchange(socket.release(), std::memory_order_acq_rel));
  return true;
}

}  // namespace poolside

extern "C" {

ssize_t recvmsg(int fd, msghdr* message, int flags) {
  const poolside::RecvmsgFunction next = poolside::Next(poolside::g_next_recvmsg, "recvmsg");
  // The error queue (timestamps, zero-copy completions) carries no app bytes.
  if ((flags & MSG_ERRQUEUE) == 0) {
    if (poolside::ScreenedSocket* socket = poolside::Find(fd)) {
      return socket->Receive(fd, message, flags, next);
    }
  }
  return next(fd, message, flags);
}

ssize_t sendmsg(int fd, const msghdr* message, int flags) {
  const poolside::SendmsgFunction next = poolside::Next(poolside::g_next_sendmsg, "sendmsg");
  if (poolside::ScreenedSocket* socket = poolside::Find(fd)) {
    return socket->Send(fd, message, flags, next);
  }
  return next(fd, message, flags);
}

int shutdown(int fd, int how) __THROW {
  // grpc ends a connection with SHUT_RDWR, then closes it. The read side
  // stays open for the lingering after the close, which reads the app's
  // last bytes until it closes (a socket closed with bytes unread sends a
  // reset, and the app may lose what it has not read yet).
  if (how == SHUT_RDWR && poolside::Find(fd) != nullptr) how = SHUT_WR;
  return poolside::Next(poolside::g_next_shutdown, "shutdown")(fd, how);
}

int epoll_ctl(int epoll_fd, int operation, int fd, epoll_event* event) __THROW {
  const poolside::EpollCtlFunction next = poolside::Next(poolside::g_next_epoll_ctl, "epoll_ctl");
  if (operation == EPOLL_CTL_ADD) {
    if (poolside::ScreenedSocket* socket = poolside::Find(fd)) socket->WatchedBy(epoll_fd);
  }
  return next(epoll_fd, operation, fd, event);
}

int close(int fd) {
  poolside::Slot* slot = poolside::SlotOf(fd);
  std::unique_ptr<poolside::ScreenedSocket> socket(
      slot == nullptr ? nullptr : slot->exchange(nullptr, std::memory_order_acq_rel));
  if (socket == nullptr) return poolside::Next(poolside::g_next_close, "close")(fd);
  // grpc is done with the socket. Its poller watches a descriptor until the
  // socket's last close, so it lets go of it here; then the listener's
  // thread lingers on it and closes it. The socket is destroyed first: that
  // orders grpc's last read and write of it (maybe on other threads) before
  // everything the listener's thread does with the descriptor.
  const std::shared_ptr<poolside::ScreenedConnections> connections = socket->shared_connections();
  const int watcher = socket->watched_by();
  socket.reset();
  if (watcher >= 0) {
    epoll_event unused{};
    poolside::Next(poolside::g_next_epoll_ctl, "epoll_ctl")(watcher, EPOLL_CTL_DEL, fd, &unused);
  }
  connections->Closed(fd);
  return 0;
}

}  // extern "C"
