#include "tests/support/admin_http.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/support/loopback_socket.h"

namespace poolside::test {

absl::StatusOr<std::string> HttpGet(int port, const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const int fd = ConnectLoopback(port);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  std::string response;
  bool complete = false;
  if (WriteAll(fd, request, deadline)) {
    char buffer[16384];
    while (true) {
      pollfd waiter{fd, POLLIN, 0};
      const int ready = poll(&waiter, 1, MillisUntil(deadline));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) break;
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        complete = n == 0;
        break;
      }
      response.append(buffer, static_cast<size_t>(n));
    }
  }
  close(fd);
  if (!complete) return absl::DeadlineExceededError(absl::StrCat("GET ", path, " timed out"));
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos) {
    return absl::InternalError(absl::StrCat("GET ", path, ": malformed response"));
  }
  if (response.compare(9, 3, "200") != 0) {
    return absl::InternalError(
        absl::StrCat("GET ", path, ": ", response.substr(0, response.find('\r'))));
  }
  return response.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &value)) return value;
  }
  return std::nullopt;
}

std::optional<double> AwaitMetric(int admin_port, const std::string& series, double value,
                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::optional<double> last;
  while (true) {
    absl::StatusOr<std::string> text = HttpGet(admin_port, "/metrics");
    if (text.ok()) last = MetricValue(*text, series);
    if ((last.has_value() && *last == value) || absl::Now() > deadline) return last;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace poolside::test
