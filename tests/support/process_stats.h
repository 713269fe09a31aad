// A child process seen from outside, through /proc: its resident memory and
// open file descriptors, for tests that bound what poolside holds under
// load. Stateless; thread-safe.
#ifndef POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_
#define POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace poolside::test {

// Whether this build runs under a sanitizer (slower, and RSS includes the
// sanitizer's own shadow memory and quarantine, so RSS bounds do not apply).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kUnderSanitizer = true;
#else
inline constexpr bool kUnderSanitizer = false;
#endif
#else
inline constexpr bool kUnderSanitizer = false;
#endif

// VmRSS of `pid` in KiB, from /proc/<pid>/status; nullopt if unreadable.
std::optional<int64_t> ResidentKib(pid_t pid);

// Open file descriptors of `pid` (entries of /proc/<pid>/fd); -1 if unreadable.
int OpenFileDescriptors(pid_t pid);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_PROCESS_STATS_H_
