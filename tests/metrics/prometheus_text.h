// A reader for the Prometheus text exposition format, so tests can check
// what /metrics says by value rather than by substring. Test-only; plain
// functions, no state.
#ifndef POOLSIDE_TESTS_METRICS_PROMETHEUS_TEXT_H_
#define POOLSIDE_TESTS_METRICS_PROMETHEUS_TEXT_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside::test {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::vector<Sample> samples;
  // Metric family name -> "counter", "gauge", "histogram", ...
  std::map<std::string, std::string> types;

  // The value of the one sample with `name` whose labels include `labels`;
  // nullopt if there is none or more than one.
  std::optional<double> Value(absl::string_view name,
                              const std::map<std::string, std::string>& labels = {}) const;
  // The sum over every sample with `name` whose labels include `labels`.
  double Sum(absl::string_view name, const std::map<std::string, std::string>& labels = {}) const;
  // Samples with `name` whose labels include `labels`.
  std::vector<Sample> Find(absl::string_view name,
                           const std::map<std::string, std::string>& labels = {}) const;
};

// Parses `text`; an error names the first line that is not valid.
absl::StatusOr<Exposition> ParseExposition(absl::string_view text);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_METRICS_PROMETHEUS_TEXT_H_
