#include "tests/metrics/http_connection.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/read.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace poolside::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

std::string HttpResponse::Header(const std::string& lower_case_name) const {
  auto it = headers.find(lower_case_name);
  return it == headers.end() ? std::string() : it->second;
}

HttpConnection::HttpConnection() : socket_(io_) {}

HttpConnection::~HttpConnection() {
  beast::error_code ignored;
  socket_.close(ignored);
}

bool HttpConnection::RunUntil(const bool& done, absl::Duration timeout) {
  io_.restart();
  io_.run_for(absl::ToChronoNanoseconds(timeout));
  if (done) return true;
  beast::error_code ignored;
  socket_.cancel(ignored);
  io_.restart();
  io_.run();
  return false;
}

absl::Status HttpConnection::Connect(int port, absl::Duration timeout) {
  bool done = false;
  beast::error_code result;
  socket_.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                        [&](beast::error_code ec) {
                          result = ec;
                          done = true;
                        });
  if (!RunUntil(done, timeout)) return absl::DeadlineExceededError("connect timed out");
  if (result) return absl::UnavailableError(absl::StrCat("connect: ", result.message()));
  return absl::OkStatus();
}

absl::Status HttpConnection::SendRaw(const std::string& bytes, absl::Duration timeout) {
  bool done = false;
  beast::error_code result;
  asio::async_write(socket_, asio::buffer(bytes), [&](beast::error_code ec, size_t) {
    result = ec;
    done = true;
  });
  if (!RunUntil(done, timeout)) return absl::DeadlineExceededError("write timed out");
  if (result) return absl::UnavailableError(absl::StrCat("write: ", result.message()));
  return absl::OkStatus();
}

absl::Status HttpConnection::SendRequest(const std::string& method, const std::string& target) {
  return SendRaw(absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
}

absl::StatusOr<HttpResponse> HttpConnection::ReadResponse(bool head, absl::Duration timeout) {
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  parser.skip(head);
  bool done = false;
  beast::error_code result;
  http::async_read(socket_, buffer_, parser, [&](beast::error_code ec, size_t) {
    result = ec;
    done = true;
  });
  if (!RunUntil(done, timeout)) return absl::DeadlineExceededError("read timed out");
  if (result) return absl::UnavailableError(absl::StrCat("read: ", result.message()));
  const http::response<http::string_body>& message = parser.get();
  HttpResponse response;
  response.status = message.result_int();
  for (const auto& field : message) {
    response.headers[absl::AsciiStrToLower(std::string(field.name_string()))] =
        std::string(field.value());
  }
  response.body = message.body();
  response.keep_alive = message.keep_alive();
  return response;
}

bool HttpConnection::WaitForClose(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  // Whatever was buffered is not a close.
  buffer_.consume(buffer_.size());
  char scratch[4096];
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    bool done = false;
    beast::error_code result;
    socket_.async_read_some(asio::buffer(scratch), [&](beast::error_code ec, size_t) {
      result = ec;
      done = true;
    });
    if (!RunUntil(done, left)) return false;
    if (result) return true;
  }
}

absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& target, absl::Duration timeout) {
  HttpConnection connection;
  if (absl::Status status = connection.Connect(port, timeout); !status.ok()) return status;
  if (absl::Status status = connection.SendRequest(method, target); !status.ok()) return status;
  return connection.ReadResponse(method == "HEAD", timeout);
}

}  // namespace poolside::test
