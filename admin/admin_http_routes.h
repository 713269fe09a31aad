// The admin HTTP side port's routes: which page a request asks for, and the
// page itself (/metrics, /healthz, /readyz, /pool), rendered from one
// PoolReport. Private to admin/: admin_http_server.cc reads and answers the
// requests, this renders what they ask for. Called on the server's threads.
#ifndef POOLSIDE_ADMIN_ADMIN_HTTP_ROUTES_H_
#define POOLSIDE_ADMIN_ADMIN_HTTP_ROUTES_H_

#include <atomic>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/verb.hpp>
#include <chrono>
#include <string>

#include "admin/admin_http_server.h"

namespace poolside {
namespace admin_http {

namespace beast = boost::beast;
namespace http = boost::beast::http;

inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";
inline constexpr char kTextContentType[] = "text/plain; charset=utf-8";
inline constexpr char kJsonContentType[] = "application/json";

// What the sessions share with the server. Constant after Start() except for
// the atomics.
struct SharedState {
  AdminHttpOptions options;
  AdminHttpHandlers handlers;
  std::chrono::steady_clock::duration request_timeout;
  std::atomic<int> connections{0};
  std::atomic<bool> draining{false};
};

struct Reply {
  http::status status = http::status::ok;
  const char* content_type = kTextContentType;
  std::string body;
  bool allow_header = false;
};

// The answer to `method` on `target` (query ignored).
Reply Route(const SharedState& state, http::verb method, beast::string_view target);

}  // namespace admin_http
}  // namespace poolside

#endif  // POOLSIDE_ADMIN_ADMIN_HTTP_ROUTES_H_
