// The relay thread's loop and the per-connection relay: bytes app -> screen
// -> grpc and grpc -> app, withholding unfinished header blocks, passing on
// grpc's last bytes once its end closes, and cutting off a connection that
// broke a rule (GOAWAY, count, log, linger, close).
// The loop stays in this file with what it calls for every event.
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "screen/relay.h"

namespace poolside {
namespace {

using screen_relay::Buffer;
using screen_relay::kRelayBufferBytes;

// How long an app may take to read the last bytes sent to it (a cut-off
// connection's GOAWAY, grpc's last trailers) and close, once it has its FIN.
constexpr absl::Duration kLinger = absl::Seconds(1);
// How long an app may take to read what grpc wrote before its end closed:
// an app that stops reading cannot hold a connection longer.
constexpr absl::Duration kPassOnLimit = absl::Seconds(10);
// At most one log line per reason this often; every cut is counted.
constexpr absl::Duration kLogInterval = absl::Seconds(10);

// Writes what it can of `buffer` to `fd`. False if the peer is gone.
bool Flush(int fd, Buffer& buffer) {
  while (!buffer.empty()) {
    const ssize_t written =
        send(fd, buffer.data.get() + buffer.begin, buffer.end - buffer.begin, MSG_NOSIGNAL);
    if (written < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    buffer.begin += static_cast<size_t>(written);
  }
  buffer.begin = buffer.end = 0;
  return true;
}

enum class ReadResult { kData, kAgain, kClosed };

ReadResult Fill(int fd, Buffer& buffer) {
  const ssize_t got = recv(fd, buffer.data.get(), kRelayBufferBytes, 0);
  if (got > 0) {
    buffer.begin = 0;
    buffer.end = static_cast<size_t>(got);
    return ReadResult::kData;
  }
  if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    return ReadResult::kAgain;
  }
  return ReadResult::kClosed;
}

}  // namespace

void ScreenedListener::Relay::Run() {
  std::array<epoll_event, 64> events;
  last_logged_.fill(absl::InfinitePast());
  while (true) {
    const int ready = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                                 closing_.empty() && listen_watched_ ? 1000 : 50);
    const absl::Time now = absl::Now();
    for (int i = 0; i < ready; ++i) {
      void* cookie = events[i].data.ptr;
      if (cookie == &wake_fd_) {
        uint64_t commands = 0;
        (void)!read(wake_fd_, &commands, sizeof(commands));
        if (commands >= kShutdown) return PassOnWhatIsLeft();
        if (commands & kStopAccepting) accepting_ = false;
      } else if (cookie == &listen_fd_) {
        Accept();
      } else {
        Serve(*static_cast<End*>(cookie), events[i].events, now);
      }
    }
    for (Connection* connection : removed_) connections_.erase(connection);
    removed_.clear();
    if (!accepting_ && listen_fd_ >= 0) {
      // Closed, not just ignored: new connections are refused at once.
      close(listen_fd_);
      listen_fd_ = -1;
      listen_watched_ = false;
    }
    if (accepting_ && !listen_watched_ && now >= accept_paused_until_) {
      Watch(listen_fd_, EPOLLIN, &listen_fd_);
      listen_watched_ = true;
    }
    ExpireClosing(now);
  }
}

void ScreenedListener::Relay::Serve(End& end, uint32_t events, absl::Time now) {
  Connection& connection = *end.connection;
  if (connection.removed) return;
  if (connection.phase != Phase::kRelaying) {
    if (connection.phase == Phase::kPassingOn) {
      // The app is gone (reset): nothing more can reach it.
      if (end.app && (events & (EPOLLHUP | EPOLLERR)) != 0) return Remove(connection);
      return PassOn(connection, now);
    }
    // Lingering. grpc's end is closed: an event for it is left from this batch.
    if (!end.app) return;
    // Discard what the app still sends; its end means we may close.
    if (Fill(connection.app_fd, connection.up) != ReadResult::kClosed) return;
    return Remove(connection);
  }
  // Only the direction the event is about moves: trying the other one as
  // well cost a recv that failed with EAGAIN on nearly every wake-up. A
  // socket's writability frees its buffer, so the read that was waiting for
  // it follows at once instead of on the next wake-up. A hang-up or error
  // moves both ways, so that what is left is read out and passed on.
  bool alive = true;
  if ((events & (EPOLLHUP | EPOLLERR)) != 0) {
    alive = PumpUp(connection, now) && PumpDown(connection, now);
  } else if (end.app) {
    if ((events & EPOLLIN) != 0) alive = PumpUp(connection, now);
    if (alive && (events & EPOLLOUT) != 0) alive = PumpDown(connection, now);
  } else {
    if ((events & EPOLLIN) != 0) alive = PumpDown(connection, now);
    if (alive && (events & EPOLLOUT) != 0) alive = PumpUp(connection, now);
  }
  if (alive) UpdateInterest(connection);
}

bool ScreenedListener::Relay::PumpUp(Connection& connection, absl::Time now) {
  // app -> screen -> grpc.
  if (!FlushUp(connection)) return StartPassingOn(connection, now);
  if (!connection.up.empty() || !connection.up_out.empty()) return true;
  const uint64_t chunk_start = connection.screen.fed_bytes();
  const ReadResult read = Fill(connection.app_fd, connection.up);
  if (read == ReadResult::kAgain) return true;
  // The app is gone; grpc learns it when its end closes.
  if (read == ReadResult::kClosed) return Drop(connection);
  const HostileReason broken =
      connection.screen.Feed(connection.up.data.get(), connection.up.end, now);
  if (broken != HostileReason::kNone) {
    Cut(connection, broken);
    return false;
  }
  const std::optional<uint64_t> block = connection.screen.unfinished_block_begin();
  if (block || !connection.held.empty()) Withhold(connection, chunk_start, block);
  return FlushUp(connection) || StartPassingOn(connection, now);
}

bool ScreenedListener::Relay::PumpDown(Connection& connection, absl::Time now) {
  // grpc -> app.
  if (!Flush(connection.app_fd, connection.down)) return Drop(connection);
  if (!connection.down.empty()) return true;
  const ReadResult read = Fill(connection.grpc_fd, connection.down);
  if (read == ReadResult::kAgain) return true;
  // grpc closed the connection (GOAWAY sent, or shut down): pass it on, as
  // its last bytes are out (`down` is empty).
  if (read == ReadResult::kClosed) {
    Linger(connection, now);
    return false;
  }
  connection.down_frames.Feed(connection.down.data.get(), connection.down.end);
  return Flush(connection.app_fd, connection.down) || Drop(connection);
}

bool ScreenedListener::Relay::FlushUp(Connection& connection) {
  return Flush(connection.grpc_fd, connection.up) && FlushOut(connection);
}

bool ScreenedListener::Relay::Drop(Connection& connection) {
  Remove(connection);
  return false;
}

bool ScreenedListener::Relay::StartPassingOn(Connection& connection, absl::Time now) {
  // A write to grpc failed (EPIPE): its end is closed or shut down, and
  // what it wrote before is still queued for us to read, its EOF after it.
  // What the app sent cannot go anywhere.
  connection.up.begin = connection.up.end = 0;
  connection.up_out.clear();
  connection.up_out_begin = 0;
  connection.held.clear();
  StartClosing(connection, Phase::kPassingOn, now + kPassOnLimit);
  PassOn(connection, now);
  return false;
}

void ScreenedListener::Relay::PassOn(Connection& connection, absl::Time now) {
  Buffer& down = connection.down;
  while (true) {
    if (!Flush(connection.app_fd, down)) return Remove(connection);
    if (!down.empty()) {
      // Until the app takes `down`: its writability is all that matters.
      if (connection.grpc_watched) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection.grpc_fd, nullptr);
        connection.grpc_watched = false;
      }
      return Rewatch(connection.app_fd, connection.app_events, EPOLLOUT, &connection.app_end);
    }
    switch (Fill(connection.grpc_fd, down)) {
      case ReadResult::kData:
        connection.down_frames.Feed(down.data.get(), down.end);
        break;
      case ReadResult::kAgain:
        // grpc stopped reading but may still write: wait for it.
        Rewatch(connection.app_fd, connection.app_events, 0, &connection.app_end);
        if (!connection.grpc_watched) {
          connection.grpc_events = EPOLLIN;
          Watch(connection.grpc_fd, EPOLLIN, &connection.grpc_end);
          connection.grpc_watched = true;
        }
        return Rewatch(connection.grpc_fd, connection.grpc_events, EPOLLIN, &connection.grpc_end);
      case ReadResult::kClosed:
        return Linger(connection, now);
    }
  }
}

void ScreenedListener::Relay::PassOnWhatIsLeft() {
  // grpc's server has normally shut down by now (ForwardingServer::Shutdown),
  // so its ends are closed, what each wrote last queued in front of its EOF,
  // which this thread may not have read yet. Nothing here waits.
  for (auto& [key, connection] : connections_) {
    if (connection->removed) continue;
    if (connection->phase != Phase::kLingering) {
      Buffer& down = connection->down;
      while (Flush(connection->app_fd, down) && down.empty() &&
             Fill(connection->grpc_fd, down) == ReadResult::kData) {
      }
    }
    // The destructor closes the socket; a reset, if the app's bytes are
    // unread, then follows the FIN instead of replacing it.
    shutdown(connection->app_fd, SHUT_WR);
  }
}

void ScreenedListener::Relay::Withhold(Connection& connection, uint64_t chunk_start,
                                       std::optional<uint64_t> block) {
  Buffer& up = connection.up;
  const auto* chunk = reinterpret_cast<const char*>(up.data.get());
  const size_t size = up.end;
  // The chunk's bytes before the unfinished block may go; the rest waits.
  const size_t sendable = !block ? size
                                 : static_cast<size_t>(std::min<uint64_t>(
                                       size, *block > chunk_start ? *block - chunk_start : 0));
  if (sendable > 0 || !block) {
    // Whatever was held belongs before these bytes: its block has ended.
    connection.up_out.assign(connection.held);
    connection.up_out.append(chunk, sendable);
    connection.up_out_begin = 0;
    connection.held.clear();
  }
  connection.held.append(chunk + sendable, size - sendable);
  up.begin = up.end = 0;
}

bool ScreenedListener::Relay::FlushOut(Connection& connection) {
  std::string& out = connection.up_out;
  while (connection.up_out_begin < out.size()) {
    const ssize_t written = send(connection.grpc_fd, out.data() + connection.up_out_begin,
                                 out.size() - connection.up_out_begin, MSG_NOSIGNAL);
    if (written < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    connection.up_out_begin += static_cast<size_t>(written);
  }
  out.clear();
  connection.up_out_begin = 0;
  return true;
}

void ScreenedListener::Relay::UpdateInterest(Connection& connection) {
  // Read a side only when its buffer is free; wait for writability only
  // while bytes are held for that side.
  const bool up_empty = connection.up.empty() && connection.up_out.empty();
  const uint32_t app_wanted = (up_empty ? EPOLLIN : 0u) | (connection.down.empty() ? 0u : EPOLLOUT);
  const uint32_t grpc_wanted =
      (connection.down.empty() ? EPOLLIN : 0u) | (up_empty ? 0u : EPOLLOUT);
  Rewatch(connection.app_fd, connection.app_events, app_wanted, &connection.app_end);
  Rewatch(connection.grpc_fd, connection.grpc_events, grpc_wanted, &connection.grpc_end);
}

void ScreenedListener::Relay::Cut(Connection& connection, HostileReason reason) {
  if (owner_.counter_ != nullptr) owner_.counter_->Count(PeerSide::kApp, reason);
  const size_t index = static_cast<size_t>(reason);
  const absl::Time now = absl::Now();
  if (now - last_logged_[index] >= kLogInterval) {
    spdlog::warn("screen: closed app connection from {}: {}{}", connection.peer,
                 std::string(HostileReasonName(reason)),
                 unlogged_[index] > 0
                     ? absl::StrCat(" (and ", unlogged_[index], " more since the last such line)")
                     : std::string());
    last_logged_[index] = now;
    unlogged_[index] = 0;
  } else {
    ++unlogged_[index];
  }
  // The GOAWAY may only go between grpc's frames.
  const bool between_frames = FinishDownFrame(connection);
  // grpc sees its end close and cancels this connection's calls.
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection.grpc_fd, nullptr);
  close(connection.grpc_fd);
  connection.grpc_fd = -1;
  if (between_frames) {
    const std::string goaway =
        GoawayFrame(connection.screen.last_stream_id(), http2::kEnhanceYourCalm);
    (void)!send(connection.app_fd, goaway.data(), goaway.size(), MSG_NOSIGNAL);
  }
  Linger(connection, now);
}

void ScreenedListener::Relay::Linger(Connection& connection, absl::Time now) {
  // Closing a descriptor also takes it out of the epoll set.
  if (connection.grpc_fd >= 0) close(connection.grpc_fd);
  connection.grpc_fd = -1;
  // The app reads a FIN after the rest; a close with its bytes unread would
  // send a reset instead, and drop what is not sent yet.
  shutdown(connection.app_fd, SHUT_WR);
  StartClosing(connection, Phase::kLingering, now + kLinger);
  connection.up.begin = connection.up.end = 0;
  Rewatch(connection.app_fd, connection.app_events, EPOLLIN, &connection.app_end);
}

void ScreenedListener::Relay::StartClosing(Connection& connection, Phase phase,
                                           absl::Time close_by) {
  if (connection.phase == Phase::kRelaying) closing_.push_back(&connection);
  connection.phase = phase;
  connection.close_by = close_by;
}

bool ScreenedListener::Relay::FinishDownFrame(Connection& connection) {
  // A busy connection (rapid reset: grpc answering hundreds of streams) is
  // usually cut with part of a frame relayed, as the relay reads grpc's
  // output in chunks that ignore frame boundaries. Reading exactly the rest of
  // that frame, when grpc has written it (at most one frame, 16 KiB by
  // default), lets the GOAWAY follow it instead of being left out.
  Buffer& down = connection.down;
  while (true) {
    if (!Flush(connection.app_fd, down) || !down.empty()) return false;
    if (connection.down_frames.AtBoundary()) return true;
    const size_t wanted = std::min(connection.down_frames.BytesToBoundary(), kRelayBufferBytes);
    const ssize_t got = recv(connection.grpc_fd, down.data.get(), wanted, 0);
    if (got <= 0) return false;
    down.begin = 0;
    down.end = static_cast<size_t>(got);
    connection.down_frames.Feed(down.data.get(), down.end);
  }
}

void ScreenedListener::Relay::ExpireClosing(absl::Time now) {
  for (size_t i = 0; i < closing_.size();) {
    Connection* connection = closing_[i];
    if (now >= connection->close_by) {
      Remove(*connection);  // Also drops it from closing_.
    } else {
      ++i;
    }
  }
  for (Connection* connection : removed_) connections_.erase(connection);
  removed_.clear();
}

void ScreenedListener::Relay::CloseBoth(Connection& connection) {
  if (connection.app_fd >= 0) close(connection.app_fd);
  if (connection.grpc_fd >= 0) close(connection.grpc_fd);
  connection.app_fd = connection.grpc_fd = -1;
}

void ScreenedListener::Relay::Remove(Connection& connection) {
  if (connection.removed) return;
  // Closing a descriptor also takes it out of the epoll set.
  CloseBoth(connection);
  if (connection.phase != Phase::kRelaying) {
    for (size_t i = 0; i < closing_.size(); ++i) {
      if (closing_[i] == &connection) {
        closing_[i] = closing_.back();
        closing_.pop_back();
        break;
      }
    }
  }
  owner_.open_connections_.fetch_sub(1, std::memory_order_relaxed);
  connection.removed = true;
  removed_.push_back(&connection);
}

}  // namespace poolside
