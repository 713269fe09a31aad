// libFuzzer target: the HTTP side port (admin/admin_http_server.h).
//
// The server keeps its request handling (parsing, routing, building the
// response) private to a Session on Asio threads, so this target runs a real
// AdminHttpServer on 127.0.0.1 in-process and, per input, connects, sends the
// input, half-closes and reads until the server closes. It costs a loopback
// connection per input; see FINDINGS.md for the seam that would let a target
// call the handler directly.
//
// The input is also parsed here with Beast's request parser under the same
// limits, to know which requests were HEAD (their responses have no body).
//
// Properties checked besides "does not crash" (ASan/UBSan report on the
// server's threads too):
//   - the server answers and closes within 5 s once the client has half-closed;
//   - every response parses as HTTP/1.1 with a status the routes can produce;
//   - no more responses than requests, plus one error response;
//   - empty input gets no response.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/core/error.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "admin/admin_http_server.h"
#include "pool/pool_snapshot.h"

namespace {

namespace http = boost::beast::http;

constexpr size_t kHeaderLimit = 8 * 1024;
constexpr size_t kBodyLimit = 1024;

[[noreturn]] void Fail(const std::string& what, const std::string& response) {
  std::fprintf(stderr, "admin_http_fuzzer: %s\n--- response ---\n%s\n", what.c_str(),
               response.substr(0, 4096).c_str());
  __builtin_trap();
}

poolside::PoolSnapshot Snapshot() {
  poolside::PoolSnapshot snapshot;
  for (int i = 0; i < 3; ++i) {
    poolside::ChannelSnapshot channel;
    channel.index = i;
    channel.state = i == 2 ? GRPC_CHANNEL_TRANSIENT_FAILURE : GRPC_CHANNEL_READY;
    channel.healthy = i != 2;
    channel.outstanding_calls = i;
    channel.age = absl::Seconds(i);
    snapshot.channels.push_back(channel);
  }
  return snapshot;
}

poolside::AdminHttpServer* StartServer() {
  poolside::AdminHttpOptions options;
  options.address = "127.0.0.1:0";
  options.request_timeout = absl::Seconds(2);
  options.header_limit = kHeaderLimit;
  options.body_limit = kBodyLimit;
  poolside::AdminHttpHandlers handlers;
  handlers.metrics_text = [] {
    return std::string("# TYPE poolside_fuzz gauge\npoolside_fuzz 1\n");
  };
  handlers.pool_snapshot = [] { return Snapshot(); };
  // Lives for the whole run: libFuzzer exits without tearing down.
  auto* server = new poolside::AdminHttpServer(options, handlers);
  if (!server->Start().ok()) {
    std::fprintf(stderr, "admin_http_fuzzer: cannot start the server\n");
    std::abort();
  }
  return server;
}

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    std::perror("admin_http_fuzzer: connect");
    std::abort();
  }
  return fd;
}

// Sends `input`, half-closes, and returns everything the server sends until
// it closes; false if it neither answers nor closes by `deadline`.
bool Exchange(int fd, const std::string& input, std::string& response, absl::Time deadline) {
  size_t sent = 0;
  bool half_closed = false;
  char buffer[16384];
  while (true) {
    if (sent == input.size() && !half_closed) {
      shutdown(fd, SHUT_WR);
      half_closed = true;
    }
    pollfd waiter{fd, static_cast<short>(POLLIN | (half_closed ? 0 : POLLOUT)), 0};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return false;
    if (poll(&waiter, 1, static_cast<int>(left)) <= 0) continue;
    if (waiter.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n <= 0) return true;  // Closed (or reset) by the server.
      response.append(buffer, static_cast<size_t>(n));
    } else if (waiter.revents & POLLOUT) {
      const ssize_t n =
          send(fd, input.data() + sent, input.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      // The server may close before reading everything (e.g. after a 400).
      if (n < 0) {
        shutdown(fd, SHUT_WR);
        half_closed = true;
        sent = input.size();
      } else {
        sent += static_cast<size_t>(n);
      }
    }
  }
}

// The methods of the requests in `input`, as the server's parser sees them,
// up to the first one that does not parse (or asks to close).
std::vector<http::verb> RequestMethods(const std::string& input) {
  std::vector<http::verb> methods;
  boost::asio::const_buffer rest(input.data(), input.size());
  while (rest.size() > 0) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(kHeaderLimit));
    parser.body_limit(kBodyLimit);
    boost::beast::error_code ec;
    while (!parser.is_done()) {
      const size_t consumed = parser.put(rest, ec);
      rest += consumed;
      if (ec && ec != http::error::need_more) break;
      ec = {};
      if (consumed == 0 || rest.size() == 0) {
        // No progress on what is left: the input ends inside this message
        // (the client half-closes there).
        if (!parser.is_done()) parser.put_eof(ec);
        if (!ec && !parser.is_done()) ec = http::error::partial_message;
        break;
      }
    }
    if (ec) return methods;
    methods.push_back(parser.get().method());
    if (!parser.get().keep_alive()) return methods;
  }
  return methods;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static poolside::AdminHttpServer* server = StartServer();
  const std::string input(reinterpret_cast<const char*>(data), size);
  const int fd = Connect(server->port());
  std::string response;
  const bool answered = Exchange(fd, input, response, absl::Now() + absl::Seconds(5));
  // Close with a reset: no TIME_WAIT, so a long run cannot exhaust ports.
  const linger abort_on_close{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  close(fd);
  if (!answered) Fail("no answer within 5 s of the client half-closing", response);
  if (input.empty()) {
    if (!response.empty()) Fail("a response to no request", response);
    return 0;
  }

  const std::vector<http::verb> methods = RequestMethods(input);
  static const std::set<unsigned> kStatuses = {200, 400, 404, 405, 413, 431, 503};
  boost::asio::const_buffer rest(response.data(), response.size());
  size_t responses = 0;
  while (rest.size() > 0) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    // The response to a HEAD request carries Content-Length but no body.
    if (responses < methods.size() && methods[responses] == http::verb::head) parser.skip(true);
    boost::beast::error_code ec;
    while (!parser.is_done() && rest.size() > 0) {
      const size_t consumed = parser.put(rest, ec);
      rest += consumed;
      if (ec && ec != http::error::need_more) break;
      ec = {};
      if (consumed == 0) break;
    }
    if (!ec && !parser.is_done()) parser.put_eof(ec);
    if (ec || !parser.is_done()) {
      Fail("response " + std::to_string(responses) + " does not parse: " + ec.message(), response);
    }
    if (kStatuses.count(parser.get().result_int()) == 0) {
      Fail("unexpected status " + std::to_string(parser.get().result_int()), response);
    }
    ++responses;
  }
  if (responses > methods.size() + 1) {
    Fail(
        std::to_string(responses) + " responses to " + std::to_string(methods.size()) + " requests",
        response);
  }
  return 0;
}
