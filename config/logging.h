// Process-wide logging set-up: spdlog's default logger, writing to stderr as
// plain text or as one JSON object per line.
#ifndef POOLSIDE_CONFIG_LOGGING_H_
#define POOLSIDE_CONFIG_LOGGING_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace poolside {

// The level names ConfigureLogging accepts (spdlog's), most verbose first.
inline constexpr absl::string_view kLogLevelNames[] = {"trace", "debug",    "info", "warn",
                                                       "error", "critical", "off"};
// The formats ConfigureLogging accepts.
inline constexpr absl::string_view kLogFormatNames[] = {"text", "json"};

// Replaces spdlog's default logger with one that writes to stderr at `level`.
// "text" lines read `[2024-05-01T12:00:00.123] [info] message` (local time);
// "json" lines are `{"ts":"2024-05-01T12:00:00.123Z","level":"info","msg":"..."}`
// (UTC), the message JSON-escaped. InvalidArgument for an unknown level or
// format, leaving the current logger in place.
// REQUIRES: no other thread is logging (call it once, at start-up).
absl::Status ConfigureLogging(const std::string& level, const std::string& format);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_LOGGING_H_
