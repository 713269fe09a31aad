#include "config/unknown_variables.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace poolside {
namespace {

// What gRPC core 1.51 reads from the environment (its global config
// variables, upper-cased), and the prefixes of its experimental families.
constexpr absl::string_view kGrpcCoreVariables[] = {
    "GRPC_ABORT_ON_LEAKS",
    "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "GRPC_DNS_RESOLVER",
    "GRPC_ENABLE_FORK_SUPPORT",
    "GRPC_EXPERIMENTS",
    "GRPC_NOT_USE_SYSTEM_SSL_ROOTS",
    "GRPC_POLL_STRATEGY",
    "GRPC_SSL_CIPHER_SUITES",
    "GRPC_STACKTRACE_MINLOGLEVEL",
    "GRPC_SYSTEM_SSL_ROOTS_DIR",
    "GRPC_TRACE",
    "GRPC_VERBOSITY",
    "GRPC_XDS_BOOTSTRAP",
    "GRPC_XDS_BOOTSTRAP_CONFIG",
};
constexpr absl::string_view kGrpcCorePrefixes[] = {"GRPC_EXPERIMENTAL_", "GRPC_XDS_"};

// Edits (insert, delete, substitute) between `a` and `b`.
size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

bool ReadByGrpcCore(absl::string_view name) {
  return std::find(std::begin(kGrpcCoreVariables), std::end(kGrpcCoreVariables), name) !=
             std::end(kGrpcCoreVariables) ||
         std::any_of(std::begin(kGrpcCorePrefixes), std::end(kGrpcCorePrefixes),
                     [name](absl::string_view prefix) { return absl::StartsWith(name, prefix); });
}

}  // namespace

std::vector<UnknownVariable> FindUnknownVariables(const std::map<std::string, std::string>& env,
                                                  absl::Span<const absl::string_view> known) {
  std::vector<UnknownVariable> unknown;
  for (const auto& [name, value] : env) {
    if (!absl::StartsWith(name, "GRPC_") || ReadByGrpcCore(name)) continue;
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    UnknownVariable variable{name, ""};
    // Near enough to be a typo: a quarter of the name's length, at least 2.
    size_t best = std::max<size_t>(2, name.size() / 4) + 1;
    // C++17 lets no lambda capture a structured binding (clang refuses it;
    // the fuzz build uses clang): capture a plain reference instead.
    const std::string& typed = name;
    const auto consider = [&](absl::string_view candidate) {
      const size_t distance = EditDistance(typed, candidate);
      if (distance < best) {
        best = distance;
        variable.closest = std::string(candidate);
      }
    };
    for (absl::string_view candidate : known) consider(candidate);
    for (absl::string_view candidate : kGrpcCoreVariables) consider(candidate);
    unknown.push_back(std::move(variable));
  }
  return unknown;
}

std::string DescribeUnknownVariable(const UnknownVariable& variable) {
  return absl::StrCat(variable.name, " is not a poolside or gRPC setting",
                      variable.closest.empty()
                          ? " and is ignored"
                          : absl::StrCat("; did you mean ", variable.closest, "?"));
}

}  // namespace poolside
