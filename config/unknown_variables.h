// The typo guard: GRPC_* environment variables that neither poolside nor gRPC
// core reads. A misspelt setting (GRPC_CONECTION_POOL_SIZE) would otherwise
// leave its default in place without a word; each one found is named with
// the closest variable poolside knows, once at start, and `--check-config
// --strict` refuses them.
#ifndef POOLSIDE_CONFIG_UNKNOWN_VARIABLES_H_
#define POOLSIDE_CONFIG_UNKNOWN_VARIABLES_H_

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace poolside {

struct UnknownVariable {
  std::string name;
  // The known variable nearest to `name` (a few edits away), or empty.
  std::string closest;
};

// The GRPC_* names in `env` that are neither in `known` (poolside's own) nor
// read by gRPC core 1.51 (GRPC_VERBOSITY, GRPC_TRACE, GRPC_DNS_RESOLVER, ...),
// in name order.
std::vector<UnknownVariable> FindUnknownVariables(const std::map<std::string, std::string>& env,
                                                  absl::Span<const absl::string_view> known);

// One line: "GRPC_CONECTION_POOL_SIZE is not a poolside or gRPC setting; did
// you mean GRPC_CONNECTION_POOL_SIZE?".
std::string DescribeUnknownVariable(const UnknownVariable& variable);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_UNKNOWN_VARIABLES_H_
