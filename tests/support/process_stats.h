// A child process seen from outside, through /proc: its resident memory and
// open file descriptors, for tests that bound what poolside holds under
// load. Stateless; thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_
#define POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

#include "tests/support/sanitizer.h"

namespace poolside::test {

// VmRSS of `pid` in KiB, from /proc/<pid>/status; nullopt if unreadable.
std::optional<int64_t> ResidentKib(pid_t pid);

// Open file descriptors of `pid` (entries of /proc/<pid>/fd); -1 if unreadable.
int OpenFileDescriptors(pid_t pid);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_
