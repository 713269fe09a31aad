#include "admin/admin_http_routes.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "admin/pool_report.h"

namespace poolside {
namespace admin_http {
namespace {

std::string JsonNumber(double value) {
  return std::isfinite(value) ? absl::StrCat(value) : std::string("0");
}

// Backend addresses come from DNS and the configuration: escaped, not trusted.
std::string JsonEscape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, "\\u00", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string PoolJson(const PoolReport& report, bool draining) {
  const PoolSnapshot& snapshot = report.snapshot;
  std::string json = absl::StrCat(
      "{\"status\":\"", PoolHealthName(report.health),
      "\",\"draining\":", draining ? "true" : "false",
      ",\"total_connections\":", snapshot.ActiveCount(),
      ",\"active_connections\":", snapshot.HealthyCount(),
      ",\"available_connections\":", snapshot.AvailableCount(),
      ",\"max_streams_per_connection\":", snapshot.max_streams_per_connection,
      ",\"connection_errors\":", snapshot.connection_errors,
      ",\"connections_created\":", snapshot.connections_created,
      ",\"health_check_failures\":", snapshot.health_check_failures,
      ",\"last_health_check_timestamp\":",
      snapshot.last_health_check == absl::InfinitePast()
          ? std::string("0")
          : JsonNumber(absl::ToDoubleSeconds(snapshot.last_health_check - absl::UnixEpoch())),
      ",\"channels\":[");
  bool first = true;
  for (const ChannelSnapshot& channel : snapshot.channels) {
    absl::StrAppend(&json, first ? "" : ",", "{\"index\":", channel.index, ",\"backend\":\"",
                    JsonEscape(channel.backend), "\",\"phase\":\"", SlotPhaseName(channel.phase),
                    "\",\"state\":\"", ConnectivityStateName(channel.state),
                    "\",\"healthy\":", channel.healthy ? "true" : "false",
                    ",\"outstanding_calls\":", channel.outstanding_calls,
                    ",\"calls_started\":", channel.calls_started, ",\"errors\":", channel.errors,
                    ",\"age_seconds\":", JsonNumber(absl::ToDoubleSeconds(channel.age)), "}");
    first = false;
  }
  absl::StrAppend(&json, "],\"address_set_changes\":", snapshot.address_set_changes,
                  ",\"resolution_failures\":", snapshot.resolution_failures,
                  ",\"resolution_failing\":", snapshot.resolution_failing ? "true" : "false",
                  ",\"calls_ended_connection_lost\":", snapshot.calls_ended_connection_lost,
                  ",\"calls_ended_drain_grace\":", snapshot.calls_ended_drain_grace,
                  ",\"sizing\":{\"target\":", snapshot.size, ",\"min\":", snapshot.min_size,
                  ",\"max\":", snapshot.max_size, ",\"recommended\":", snapshot.recommended_size,
                  ",\"grow_events\":", snapshot.grow_events,
                  ",\"shrink_events\":", snapshot.shrink_events,
                  ",\"calls_over_stream_limit\":", snapshot.calls_over_stream_limit,
                  ",\"calls_waiting_for_stream_quota\":", snapshot.calls_waiting_for_stream_quota,
                  "}", ",\"backends\":[");
  first = true;
  for (const BackendSnapshot& backend : snapshot.backends) {
    absl::StrAppend(&json, first ? "" : ",", "{\"address\":\"", JsonEscape(backend.address),
                    "\",\"active_connections\":", backend.active_connections,
                    ",\"connecting\":", backend.connecting, ",\"draining\":", backend.draining,
                    ",\"calls_started\":", backend.calls_started, "}");
    first = false;
  }
  absl::StrAppend(&json, "]}\n");
  return json;
}

Reply Readiness(const PoolReport& report, bool draining) {
  if (draining) return {http::status::service_unavailable, kTextContentType, "draining\n"};
  const std::string reason = absl::StrCat(PoolHealthName(report.health), ": ", report.counts);
  if (report.health != PoolHealth::kUnhealthy) {
    return {http::status::ok, kTextContentType, reason + "\n"};
  }
  // Unhealthy: no connection in rotation is healthy, so this names them all.
  return {http::status::service_unavailable, kTextContentType,
          reason + report.unhealthy_channels + "\n"};
}

}  // namespace

Reply Route(const SharedState& state, http::verb method, beast::string_view target) {
  const beast::string_view path = target.substr(0, target.find('?'));
  enum class Page { kMetrics, kHealthz, kReadyz, kPool } page;
  if (path == "/metrics") {
    page = Page::kMetrics;
  } else if (path == "/healthz") {
    page = Page::kHealthz;
  } else if (path == "/readyz") {
    page = Page::kReadyz;
  } else if (path == "/pool") {
    page = Page::kPool;
  } else {
    return {http::status::not_found, kTextContentType, "not found\n"};
  }
  if (method != http::verb::get && method != http::verb::head) {
    return {http::status::method_not_allowed, kTextContentType, "method not allowed\n", true};
  }
  switch (page) {
    case Page::kMetrics:
      return {http::status::ok, kMetricsContentType, state.handlers.metrics_text()};
    case Page::kHealthz:
      return {http::status::ok, kTextContentType, "ok\n"};
    case Page::kReadyz:
      return Readiness(BuildPoolReport(state.handlers.pool_snapshot()), state.draining.load());
    case Page::kPool:
      return {http::status::ok, kJsonContentType,
              PoolJson(BuildPoolReport(state.handlers.pool_snapshot()), state.draining.load())};
  }
  return {http::status::internal_server_error, kTextContentType, "internal error\n"};
}

}  // namespace admin_http
}  // namespace poolside
