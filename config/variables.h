// The environment-variable table: every setting poolside has, its variable,
// its flag, its meaning, how its text is validated and how its value prints
// back. The command line (config/command_line.cc), --help and the
// effective-configuration printer (config/effective_config.cc) all walk this
// one table. Constant; thread-safe.
#ifndef POOLSIDE_CONFIG_VARIABLES_H_
#define POOLSIDE_CONFIG_VARIABLES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "config/config.h"

namespace poolside {

enum class Presence { kOptional, kRequired };

// One setting: its environment variable, its flag, and how its value reads.
struct Variable {
  absl::string_view env;
  absl::string_view flag;  // Without the leading "--".
  absl::string_view meaning;
  Presence presence;
  // Sets the field from `text`; false (field untouched) if `text` is not allowed.
  bool (*parse)(absl::string_view text, Config& config);
  // What is allowed, for error messages and --help.
  std::string (*allowed)();
  // The field as text `parse` accepts.
  std::string (*print)(const Config& config);
};

// Every setting, in the order --help and --check-config list them. Defaults
// are Config's own.
absl::Span<const Variable> Variables();

// Rules that involve more than one variable (pool bounds, TLS files that go
// together and can be read); the first one broken, as a one-line message.
absl::Status CheckVariableCombinations(const Config& config);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_VARIABLES_H_
