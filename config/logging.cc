#include "config/logging.h"

#include <algorithm>
#include <ctime>
#include <iterator>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace poolside {
namespace {

constexpr char kTextPattern[] = "[%Y-%m-%dT%H:%M:%S.%e] [%l] %v";
// %j is JsonEscapedMessage below; nothing else in the line needs escaping.
constexpr char kJsonPattern[] = R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","msg":"%j"})";

// Length of the well-formed UTF-8 sequence that starts `text` (RFC 3629,
// which excludes overlong forms and surrogates), or 0 if it is not one.
size_t Utf8SequenceLength(absl::string_view text) {
  const auto byte = [text](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned char second_min = 0x80;
  unsigned char second_max = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_min = 0xA0;
    if (lead == 0xED) second_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_min = 0x90;
    if (lead == 0xF4) second_max = 0x8F;
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < second_min || byte(1) > second_max) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return length;
}

// Appends `text` as the inside of a JSON string. Invalid UTF-8 becomes U+FFFD
// so that every line stays parseable whatever a peer sent us.
void AppendJsonEscaped(absl::string_view text, spdlog::memory_buf_t& out) {
  const auto append = [&out](absl::string_view piece) {
    out.append(piece.data(), piece.data() + piece.size());
  };
  while (!text.empty()) {
    const char c = text.front();
    switch (c) {
      case '"':
        append("\\\"");
        break;
      case '\\':
        append("\\\\");
        break;
      case '\n':
        append("\\n");
        break;
      case '\r':
        append("\\r");
        break;
      case '\t':
        append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          const char escape[] = {'\\', 'u', '0', '0', kHex[(c >> 4) & 0xF], kHex[c & 0xF]};
          append(absl::string_view(escape, sizeof(escape)));
        } else if (const size_t length = Utf8SequenceLength(text); length > 0) {
          append(text.substr(0, length));
          text.remove_prefix(length - 1);
        } else {
          append("\\ufffd");
        }
    }
    text.remove_prefix(1);
  }
}

// The %j pattern flag: the log message, JSON-escaped.
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm& /*tm_time*/,
              spdlog::memory_buf_t& dest) override {
    AppendJsonEscaped(absl::string_view(msg.payload.data(), msg.payload.size()), dest);
  }

  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

template <size_t N>
bool IsOneOf(absl::string_view value, const absl::string_view (&names)[N]) {
  return std::find(std::begin(names), std::end(names), value) != std::end(names);
}

}  // namespace

absl::Status ConfigureLogging(const std::string& level, const std::string& format) {
  if (!IsOneOf(level, kLogLevelNames)) {
    return absl::InvalidArgumentError(absl::StrCat("log level \"", level, "\" is not one of ",
                                                   absl::StrJoin(kLogLevelNames, ", ")));
  }
  std::unique_ptr<spdlog::pattern_formatter> formatter;
  if (format == "text") {
    formatter = std::make_unique<spdlog::pattern_formatter>(kTextPattern);
  } else if (format == "json") {
    formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<JsonEscapedMessage>('j').set_pattern(kJsonPattern);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("log format \"", format, "\" is not one of ",
                                                   absl::StrJoin(kLogFormatNames, ", ")));
  }
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_formatter(std::move(formatter));
  auto logger = std::make_shared<spdlog::logger>("poolside", std::move(sink));
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

}  // namespace poolside
