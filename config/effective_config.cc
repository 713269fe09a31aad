// The effective-configuration printer behind --check-config and the start-up
// log: one VAR=value line per variable, in a form ParseCommandLine reads back.
#include "absl/strings/str_cat.h"
#include "config/config.h"
#include "config/variables.h"

namespace poolside {

std::string DescribeConfig(const Config& config) {
  std::string description;
  for (const Variable& variable : Variables()) {
    absl::StrAppend(&description, variable.env, "=", variable.print(config), "\n");
  }
  return description;
}

}  // namespace poolside
