// ScreenedSocket and the socket hooks over a real socketpair, without grpc:
// this process plays grpc (recvmsg, sendmsg, shutdown and close on its end,
// which reach screen/socket_hooks.cc as grpc's calls do) and the app (plain
// send and recv on the other end). What grpc reads must be exactly what the
// app sent, however reads split it, less a header block until it ends; a
// broken rule must end with a GOAWAY and a FIN for the app; a socket grpc
// closes must linger until the app closes.
#include "screen/screened_socket.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "screen/socket_hooks.h"
#include "tests/support/h2_frames.h"

namespace poolside {
namespace {

namespace h2 = test::h2;

// The preface and the acknowledgement of grpc's SETTINGS, as any client sends.
const std::string kPreface = std::string(http2::kClientPreface) + h2::Settings(/*ack=*/true);

class ScreenedSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(CheckSocketHooks().ok()) << CheckSocketHooks();
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
    grpc_fd_ = pair[0];
    app_fd_ = pair[1];
    limits_.max_header_block_bytes = 4096;
    connections_ = std::make_shared<ScreenedConnections>(limits_, nullptr);
    ASSERT_TRUE(RegisterScreenedSocket(grpc_fd_,
                                       std::make_unique<ScreenedSocket>(connections_, "test app")));
    connections_->Opened();
  }

  void TearDown() override {
    if (grpc_fd_ >= 0) close(grpc_fd_);
    for (const int fd : connections_->TakeClosed()) connections_->CloseNow(fd);
    if (app_fd_ >= 0) close(app_fd_);
  }

  void AppSends(const std::string& bytes) {
    ASSERT_EQ(send(app_fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }

  // What grpc's reads get until EAGAIN, each read into `pieces` buffers of
  // `piece` bytes. Sets `error_` to the errno of a failed read other than
  // EAGAIN, and `ended_` at the end of the stream.
  std::string GrpcReads(size_t pieces = 1, size_t piece = 8192) {
    std::string got;
    std::vector<std::string> buffers(pieces, std::string(piece, '\0'));
    std::vector<iovec> vectors(pieces);
    while (true) {
      for (size_t i = 0; i < pieces; ++i) vectors[i] = {buffers[i].data(), piece};
      msghdr message{};
      message.msg_iov = vectors.data();
      message.msg_iovlen = pieces;
      const ssize_t read = recvmsg(grpc_fd_, &message, 0);
      if (read < 0) {
        if (errno != EAGAIN) error_ = errno;
        return got;
      }
      if (read == 0) {
        ended_ = true;
        return got;
      }
      size_t left = static_cast<size_t>(read);
      for (size_t i = 0; left > 0; ++i) {
        const size_t taken = std::min(left, piece);
        got.append(buffers[i], 0, taken);
        left -= taken;
      }
    }
  }

  ssize_t GrpcSends(const std::string& bytes) {
    iovec vector{const_cast<char*>(bytes.data()), bytes.size()};
    msghdr message{};
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    return sendmsg(grpc_fd_, &message, MSG_NOSIGNAL);
  }

  // Everything the app can read now; `app_ended_` once it reads the FIN.
  std::string AppReads() {
    std::string got;
    char buffer[4096];
    while (true) {
      const ssize_t read = recv(app_fd_, buffer, sizeof(buffer), 0);
      if (read <= 0) {
        app_ended_ = read == 0;
        return got;
      }
      got.append(buffer, static_cast<size_t>(read));
    }
  }

  FrameScreenLimits limits_;
  std::shared_ptr<ScreenedConnections> connections_;
  int grpc_fd_ = -1;
  int app_fd_ = -1;
  int error_ = 0;
  bool ended_ = false;
  bool app_ended_ = false;
};

TEST_F(ScreenedSocketTest, GrpcReadsExactlyWhatTheAppSentHoweverTheReadsSplitIt) {
  // Calls of every shape, header blocks split over CONTINUATION frames, sent
  // in random pieces and read into random buffers.
  std::string stream = kPreface;
  // Where each header block begins and ends in the stream.
  std::vector<std::pair<size_t, size_t>> blocks;
  for (uint32_t id = 1; id < 80; id += 2) {
    const size_t begin = stream.size();
    stream += h2::HeaderFrames(id, h2::GrpcRequestBlock(absl::StrCat("/test.Echo/M", id)),
                               /*end_stream=*/false, /*max_frame=*/1 + id % 40);
    blocks.emplace_back(begin, stream.size());
    stream += h2::SerializeFrame(h2::kData, h2::kEndStream, id,
                                 h2::GrpcMessage(std::string(size_t{id} * 7, 'x')));
  }
  std::mt19937 random(7);
  std::string read;
  for (size_t sent = 0; sent < stream.size();) {
    const size_t size = std::min<size_t>(stream.size() - sent, 1 + random() % 300);
    AppSends(stream.substr(sent, size));
    sent += size;
    read += GrpcReads(1 + random() % 3, 1 + random() % 200);
    ASSERT_EQ(error_, 0) << std::strerror(error_);
    ASSERT_EQ(read, stream.substr(0, read.size()));
    // Never a part of a header block before its end; at most the first
    // bytes of its frame header, before the screen can tell what frame it is.
    for (const auto& [begin, end] : blocks) {
      ASSERT_FALSE(read.size() >= begin + 9 && read.size() < end)
          << "grpc has " << read.size() - begin << " bytes of a block of " << end - begin;
    }
  }
  EXPECT_EQ(read, stream);
}

TEST_F(ScreenedSocketTest, AHeaderBlockReachesGrpcOnlyOnceItEnds) {
  const std::string frames = h2::HeaderFrames(1, h2::GrpcRequestBlock("/test.Echo/Unary"),
                                              /*end_stream=*/true, /*max_frame=*/10);
  const std::vector<h2::Frame> parsed = h2::ParseFrames(frames);
  ASSERT_GT(parsed.size(), 2u);
  const size_t last_frame_size = 9 + parsed.back().payload.size();
  const std::string unfinished = frames.substr(0, frames.size() - last_frame_size);
  AppSends(kPreface + h2::Settings() + unfinished);
  EXPECT_EQ(GrpcReads(), kPreface + h2::Settings());
  EXPECT_EQ(error_, 0);
  // The block's last frame arrives: all of the block goes to grpc at once.
  AppSends(frames.substr(unfinished.size()));
  EXPECT_EQ(GrpcReads(), frames);
  EXPECT_EQ(error_, 0);
}

TEST_F(ScreenedSocketTest, ABrokenRuleSendsAGoawayAndAFinAndFailsGrpcsReadsAndWrites) {
  AppSends(kPreface);
  EXPECT_EQ(GrpcReads(), kPreface);
  ASSERT_GT(GrpcSends(h2::Settings()), 0);
  // A header block beyond the 4 KiB limit, never ended.
  AppSends(h2::SerializeFrame(h2::kHeaders, 0, 1, std::string(3000, 'h')) +
           h2::SerializeFrame(h2::kContinuation, 0, 1, std::string(3000, 'c')));
  EXPECT_EQ(GrpcReads(), "");
  EXPECT_EQ(error_, ECONNRESET);
  EXPECT_EQ(GrpcSends(h2::Settings()), -1);
  EXPECT_EQ(errno, EPIPE);

  std::string to_app = AppReads();
  EXPECT_TRUE(app_ended_) << "no FIN";
  const std::vector<h2::Frame> frames = h2::TakeFrames(to_app);
  ASSERT_EQ(frames.size(), 2u) << h2::Describe(frames);
  EXPECT_EQ(frames[1].type, h2::kGoaway);
  EXPECT_EQ(h2::ErrorCodeOf(frames[1]), http2::kEnhanceYourCalm);
}

TEST_F(ScreenedSocketTest, ASocketGrpcClosesLingersUntilTheAppCloses) {
  AppSends(kPreface);
  EXPECT_EQ(GrpcReads(), kPreface);
  const int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  connections_->StartLingering(wake);
  // grpc's poller watches the socket, as grpc's epoll1 does.
  const int poller = epoll_create1(EPOLL_CLOEXEC);
  epoll_event watch{};
  watch.events = EPOLLIN | EPOLLET;
  ASSERT_EQ(epoll_ctl(poller, EPOLL_CTL_ADD, grpc_fd_, &watch), 0);
  ASSERT_GT(GrpcSends(h2::Settings()), 0);
  // grpc ends the connection while the app still sends.
  AppSends(h2::SerializeFrame(h2::kPing, 0, 0, std::string(8, 'p')));
  ASSERT_EQ(shutdown(grpc_fd_, SHUT_RDWR), 0);
  ASSERT_EQ(close(grpc_fd_), 0);
  const int closed_fd = grpc_fd_;
  grpc_fd_ = -1;
  // The poller no longer watches the socket that lingers.
  EXPECT_EQ(epoll_ctl(poller, EPOLL_CTL_DEL, closed_fd, &watch), -1);
  EXPECT_EQ(errno, ENOENT);
  close(poller);
  uint64_t woken = 0;
  EXPECT_EQ(read(wake, &woken, sizeof(woken)), static_cast<ssize_t>(sizeof(woken)));
  EXPECT_EQ(connections_->TakeClosed(), std::vector<int>{closed_fd});
  EXPECT_EQ(connections_->open(), 1);
  // The app reads grpc's last bytes and a FIN; its own bytes are still
  // readable on the lingering socket, so no reset has gone out.
  EXPECT_EQ(AppReads(), h2::Settings());
  EXPECT_TRUE(app_ended_);
  char leftover[64];
  EXPECT_EQ(recv(closed_fd, leftover, sizeof(leftover), 0), 17);
  // grpc's SHUT_RDWR left the read side open: the lingering sees the app's
  // end only when the app closes, not as soon as the queue is empty.
  EXPECT_EQ(recv(closed_fd, leftover, sizeof(leftover), 0), -1);
  EXPECT_EQ(errno, EAGAIN);
  close(app_fd_);
  app_fd_ = -1;
  EXPECT_EQ(recv(closed_fd, leftover, sizeof(leftover), 0), 0);
  connections_->StopLingering();
  connections_->CloseNow(closed_fd);
  EXPECT_EQ(connections_->open(), 0);
  close(wake);
}

}  // namespace
}  // namespace poolside
