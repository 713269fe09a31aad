// poolside's HTTP side port as a test reads it: one GET at a time, and the
// samples of its Prometheus text. Every wait is bounded. Stateless;
// thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_ADMIN_HTTP_H_
#define POOLSIDE_TESTS_SUPPORT_ADMIN_HTTP_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace poolside::test {

// The body of `GET <path>` from 127.0.0.1:`port` (HTTP/1.0, one request per
// connection), or an error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5));

// The value of the sample `series` (a metric name with its labels exactly as
// printed, e.g. `poolside_forwarded_messages_total{direction="downstream"}`)
// in Prometheus text, or nullopt.
std::optional<double> MetricValue(const std::string& text, const std::string& series);

// Polls poolside's /metrics until `series` equals `value` or `timeout`
// passes; the last value seen (nullopt: never read).
std::optional<double> AwaitMetric(int admin_port, const std::string& series, double value,
                                  absl::Duration timeout);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_ADMIN_HTTP_H_
