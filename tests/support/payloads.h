// Test payloads shared by the end-to-end suites.
#ifndef POOLSIDE_TESTS_SUPPORT_PAYLOADS_H_
#define POOLSIDE_TESTS_SUPPORT_PAYLOADS_H_

#include <cstddef>
#include <random>
#include <string>

namespace poolside::test {

// `size` pseudo-random bytes, every value 0..255 possible (NULs included).
inline std::string RandomBytes(size_t size, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(byte(rng));
  return bytes;
}

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_PAYLOADS_H_
