// libFuzzer target: poolside::ParseCommandLine, the only code that reads
// untrusted-ish input before anything else runs (the environment and argv).
//
// Input: lines. "NAME=VALUE" is an environment variable, anything else
// (a line starting with '-', or without '=') is one command-line argument;
// "\n" never occurs inside a value, every other byte may.
//
// Properties checked besides "does not crash":
//   - a rejected configuration is a one-line message (it is printed as the
//     single line before exit 2);
//   - an accepted one prints (--check-config) as VAR=value lines that parse
//     back to the same configuration.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "config/config.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "config_fuzzer: %s\n", what.c_str());
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> env;
  std::vector<std::string> args;
  for (absl::string_view line : absl::StrSplit(input, '\n')) {
    const size_t equals = line.find('=');
    if (!line.empty() && line.front() != '-' && equals != absl::string_view::npos) {
      env.emplace(line.substr(0, equals), line.substr(equals + 1));
    } else {
      args.emplace_back(line);
    }
  }

  const absl::StatusOr<poolside::ParsedCommandLine> parsed = poolside::ParseCommandLine(env, args);
  if (!parsed.ok()) {
    if (parsed.status().message().find('\n') != absl::string_view::npos) {
      Fail("error message spans lines: " + std::string(parsed.status().message()));
    }
    return 0;
  }
  if (parsed->command != poolside::Command::kRun &&
      parsed->command != poolside::Command::kCheckConfig) {
    return 0;  // --help and --version answer without a configuration.
  }

  // What --check-config prints must read back as the same configuration.
  const std::string described = poolside::DescribeConfig(parsed->config);
  std::map<std::string, std::string> reread_env;
  for (absl::string_view line : absl::StrSplit(described, '\n', absl::SkipEmpty())) {
    const size_t equals = line.find('=');
    if (equals == absl::string_view::npos) Fail("--check-config line without '=': " + described);
    reread_env.emplace(line.substr(0, equals), line.substr(equals + 1));
  }
  const absl::StatusOr<poolside::ParsedCommandLine> reread =
      poolside::ParseCommandLine(reread_env, {});
  if (!reread.ok()) {
    Fail("--check-config output does not parse back: " + std::string(reread.status().message()) +
         "\n" + described);
  }
  if (poolside::DescribeConfig(reread->config) != described) {
    Fail("--check-config output parses back differently:\n" + described + "---\n" +
         poolside::DescribeConfig(reread->config));
  }

  // The address parser the side port uses, on every value seen.
  for (const auto& [name, value] : env) {
    const absl::StatusOr<poolside::HostPort> host_port = poolside::ParseHostPort(value);
    if (host_port.ok() && (host_port->port < 0 || host_port->port > 65535)) {
      Fail("ParseHostPort accepted port out of range: " + value);
    }
  }
  return 0;
}
