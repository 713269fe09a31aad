// A blocking HTTP/1.1 client connection for tests, with a deadline on every
// step, that can also send raw bytes (garbage, half requests) and report
// whether the server closed the connection. Confined to the test's thread.
#ifndef POOLSIDE_TESTS_METRICS_HTTP_CONNECTION_H_
#define POOLSIDE_TESTS_METRICS_HTTP_CONNECTION_H_

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace poolside::test {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool keep_alive = false;

  std::string Header(const std::string& lower_case_name) const;
};

class HttpConnection {
 public:
  HttpConnection();
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  absl::Status Connect(int port, absl::Duration timeout = absl::Seconds(5));
  absl::Status SendRaw(const std::string& bytes, absl::Duration timeout = absl::Seconds(5));
  // Sends `method target HTTP/1.1` with a Host header.
  absl::Status SendRequest(const std::string& method, const std::string& target);
  // Reads one response; `head` says it answers a HEAD request (no body).
  absl::StatusOr<HttpResponse> ReadResponse(bool head = false,
                                            absl::Duration timeout = absl::Seconds(5));
  // True once the server has closed (EOF or reset) within `timeout`; bytes
  // that arrive first are discarded.
  bool WaitForClose(absl::Duration timeout);

 private:
  // Runs the I/O context until `done` or `timeout`, cancelling what is
  // pending on timeout. Returns whether `done` came first.
  bool RunUntil(const bool& done, absl::Duration timeout);

  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
};

// One request on a fresh connection.
absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& target,
                                         absl::Duration timeout = absl::Seconds(10));

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_METRICS_HTTP_CONNECTION_H_
