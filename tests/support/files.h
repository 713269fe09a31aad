// Whole files as strings, for tests that write configurations and read logs,
// certificates and /proc entries. Stateless; thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_FILES_H_
#define POOLSIDE_TESTS_SUPPORT_FILES_H_

#include <string>

#include "absl/status/status.h"

namespace poolside::test {

// The whole of `path`; empty if it cannot be read.
std::string ReadFile(const std::string& path);

// Replaces `path`'s contents with `contents`.
absl::Status WriteFile(const std::string& path, const std::string& contents);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_FILES_H_
