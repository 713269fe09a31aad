#ifndef POOLSIDE_TESTS_SUPPORT_SANITIZER_H_
#define POOLSIDE_TESTS_SUPPORT_SANITIZER_H_

namespace poolside::test {

// Whether this build runs under a sanitizer: several times slower, and its
// allocator replaces glibc's (RSS includes shadow memory and quarantine), so
// rate and RSS bounds do not apply.
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

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_SANITIZER_H_
