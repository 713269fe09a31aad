#include "tests/metrics/prometheus_text.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace poolside::test {
namespace {

bool Includes(const Sample& sample, absl::string_view name,
              const std::map<std::string, std::string>& labels) {
  if (sample.name != name) return false;
  for (const auto& [key, value] : labels) {
    auto it = sample.labels.find(key);
    if (it == sample.labels.end() || it->second != value) return false;
  }
  return true;
}

bool IsNameChar(char c, bool first) {
  return absl::ascii_isalpha(c) || c == '_' || c == ':' || (!first && absl::ascii_isdigit(c));
}

std::optional<double> ParseValue(absl::string_view text) {
  if (text == "+Inf") return std::numeric_limits<double>::infinity();
  if (text == "-Inf") return -std::numeric_limits<double>::infinity();
  if (text == "NaN") return std::numeric_limits<double>::quiet_NaN();
  double value = 0;
  if (!absl::SimpleAtod(text, &value)) return std::nullopt;
  return value;
}

absl::StatusOr<Sample> ParseSample(absl::string_view line) {
  Sample sample;
  size_t i = 0;
  while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
  if (i == 0) return absl::InvalidArgumentError("no metric name");
  sample.name = std::string(line.substr(0, i));
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t start = i;
      while (i < line.size() && IsNameChar(line[i], i == start)) ++i;
      if (i == start || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
        return absl::InvalidArgumentError("bad label");
      }
      std::string key(line.substr(start, i - start));
      i += 2;
      std::string value;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
        ++i;
      }
      if (i >= line.size()) return absl::InvalidArgumentError("unterminated label value");
      ++i;
      if (!sample.labels.emplace(std::move(key), std::move(value)).second) {
        return absl::InvalidArgumentError("duplicate label");
      }
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return absl::InvalidArgumentError("unterminated labels");
    ++i;
  }
  std::vector<absl::string_view> rest = absl::StrSplit(line.substr(i), ' ', absl::SkipWhitespace());
  if (rest.empty() || rest.size() > 2) return absl::InvalidArgumentError("bad value");
  std::optional<double> value = ParseValue(rest[0]);
  if (!value) return absl::InvalidArgumentError("bad value");
  sample.value = *value;
  return sample;
}

}  // namespace

std::vector<Sample> Exposition::Find(absl::string_view name,
                                     const std::map<std::string, std::string>& labels) const {
  std::vector<Sample> found;
  for (const Sample& sample : samples) {
    if (Includes(sample, name, labels)) found.push_back(sample);
  }
  return found;
}

std::optional<double> Exposition::Value(absl::string_view name,
                                        const std::map<std::string, std::string>& labels) const {
  std::vector<Sample> found = Find(name, labels);
  if (found.size() != 1) return std::nullopt;
  return found[0].value;
}

double Exposition::Sum(absl::string_view name,
                       const std::map<std::string, std::string>& labels) const {
  double sum = 0;
  for (const Sample& sample : Find(name, labels)) sum += sample.value;
  return sum;
}

absl::StatusOr<Exposition> ParseExposition(absl::string_view text) {
  Exposition exposition;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (line.empty()) continue;
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      if (parts.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": bad TYPE"));
      }
      exposition.types[parts[0]] = parts[1];
      continue;
    }
    if (line[0] == '#') continue;
    absl::StatusOr<Sample> sample = ParseSample(line);
    if (!sample.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": ", sample.status().message(), ": ", line));
    }
    exposition.samples.push_back(*std::move(sample));
  }
  return exposition;
}

}  // namespace poolside::test
