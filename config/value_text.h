// How every config parser reads a value's text and echoes it back in an
// error: the variable table (config/variables.cc), the command line and the
// address grammar (config/address.cc) share these so that "an integer" and a
// quoted value mean the same everywhere. Stateless; thread-safe.
#ifndef POOLSIDE_CONFIG_VALUE_TEXT_H_
#define POOLSIDE_CONFIG_VALUE_TEXT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace poolside {

// `text` as an integer in [min, max]: decimal digits with at most a leading
// '-', without the leniency (spaces, '+') of absl::SimpleAtoi.
std::optional<int64_t> ParseStrictInteger(absl::string_view text, int64_t min, int64_t max);

// Printable ASCII other than space: what may go in an address or :authority.
bool IsVisibleAscii(absl::string_view text);

// Quotes a value for a one-line message, escaping anything unprintable.
std::string QuoteValue(absl::string_view value);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_VALUE_TEXT_H_
