// The command line: flags, commands, --help, and ParseCommandLine, which
// reads the environment and the flags through the variable table.
#include <unistd.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"
#include "config/config.h"
#include "config/unknown_variables.h"
#include "config/value_text.h"
#include "config/variables.h"

namespace poolside {
namespace {

// Flags that ask for something other than running. --help and --version
// answer even when the configuration is wrong or missing.
struct CommandFlag {
  absl::string_view flag;
  absl::string_view short_flag;  // Empty if there is none.
  Command command;
  absl::string_view meaning;
};

constexpr CommandFlag kCommandFlags[] = {
    {"--check-config", "", Command::kCheckConfig,
     "validate the configuration, print it as VAR=value lines and exit"},
    {"--strict", "", Command::kStrict,
     "with --check-config: also fail on GRPC_* variables nothing reads (typos)"},
    {"--help", "-h", Command::kHelp, "print this help and exit"},
    {"--version", "", Command::kVersion, "print the version and exit"},
};

const CommandFlag* FindCommandFlag(absl::string_view name) {
  for (const CommandFlag& command : kCommandFlags) {
    if (name == command.flag || (!command.short_flag.empty() && name == command.short_flag)) {
      return &command;
    }
  }
  return nullptr;
}

const Variable* FindVariableFlag(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "--")) return nullptr;
  for (const Variable& variable : Variables()) {
    if (name == variable.flag) return &variable;
  }
  return nullptr;
}

// The command line sorted out, before anything is validated: which commands
// were asked for, and the last value given to each variable's flag (indexed
// like Variables()). The first malformed argument is kept in `error`, to be
// reported only once it is clear that neither --help nor --version was asked
// for.
struct SortedArguments {
  std::set<Command> commands;
  std::vector<std::optional<std::string>> flag_values;
  absl::Status error;
};

SortedArguments SortArguments(const std::vector<std::string>& args) {
  const absl::Span<const Variable> variables = Variables();
  SortedArguments sorted;
  sorted.flag_values.resize(variables.size());
  const auto fail = [&sorted](std::string message) {
    if (sorted.error.ok()) sorted.error = absl::InvalidArgumentError(std::move(message));
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const absl::string_view arg = args[i];
    const size_t equals = arg.find('=');
    const absl::string_view name = arg.substr(0, equals);
    if (const CommandFlag* command = FindCommandFlag(name)) {
      if (equals == absl::string_view::npos) {
        sorted.commands.insert(command->command);
      } else {
        fail(absl::StrCat(name, " takes no value"));
      }
      continue;
    }
    const Variable* variable = FindVariableFlag(name);
    if (variable == nullptr) {
      fail(absl::StrCat(absl::StartsWith(arg, "-") ? "unknown flag " : "unexpected argument ",
                        QuoteValue(name), "; see --help"));
      continue;
    }
    std::optional<std::string>& value = sorted.flag_values[variable - variables.data()];
    if (equals != absl::string_view::npos) {
      value = std::string(arg.substr(equals + 1));
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      fail(absl::StrCat(name, " requires a value"));
    }
  }
  return sorted;
}

// --help or --version, if either was asked for: they answer even when the
// rest of the command line or the configuration is wrong.
std::optional<Command> InformationCommand(const std::set<Command>& commands) {
  for (Command command : {Command::kHelp, Command::kVersion}) {
    if (commands.count(command) > 0) return command;
  }
  return std::nullopt;
}

// Names the GRPC_* variables nothing reads; with --strict the first one
// fails the parse.
absl::Status CheckUnknownVariables(const std::map<std::string, std::string>& env, bool strict,
                                   ParsedCommandLine& parsed) {
  std::vector<absl::string_view> known;
  for (const Variable& variable : Variables()) known.push_back(variable.env);
  parsed.unknown_variables = FindUnknownVariables(env, known);
  if (strict && !parsed.unknown_variables.empty()) {
    return absl::InvalidArgumentError(DescribeUnknownVariable(parsed.unknown_variables.front()));
  }
  return absl::OkStatus();
}

// Sets every variable given, its flag winning over the environment, and
// validates each value.
absl::Status ApplyVariables(const std::map<std::string, std::string>& env,
                            const std::vector<std::optional<std::string>>& flag_values,
                            Config& config) {
  const absl::Span<const Variable> variables = Variables();
  for (size_t i = 0; i < variables.size(); ++i) {
    const Variable& variable = variables[i];
    std::string source;
    absl::string_view value;
    if (flag_values[i]) {
      source = absl::StrCat("--", variable.flag);
      value = *flag_values[i];
    } else if (auto it = env.find(std::string(variable.env)); it != env.end()) {
      source = std::string(variable.env);
      value = it->second;
    } else if (variable.presence == Presence::kRequired) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable.env, " is required: ", variable.meaning));
    } else {
      continue;
    }
    if (!variable.parse(value, config)) {
      return absl::InvalidArgumentError(absl::StrCat(source, "=", QuoteValue(value),
                                                     " is invalid: expected ", variable.allowed()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ParsedCommandLine> ParseCommandLine(const std::map<std::string, std::string>& env,
                                                   const std::vector<std::string>& args) {
  const SortedArguments arguments = SortArguments(args);
  ParsedCommandLine parsed;
  if (const std::optional<Command> information = InformationCommand(arguments.commands)) {
    parsed.command = *information;
    return parsed;
  }
  if (!arguments.error.ok()) return arguments.error;
  if (arguments.commands.count(Command::kCheckConfig) > 0) parsed.command = Command::kCheckConfig;
  const bool strict = arguments.commands.count(Command::kStrict) > 0;
  if (strict && parsed.command != Command::kCheckConfig) {
    return absl::InvalidArgumentError("--strict goes with --check-config");
  }
  if (absl::Status unknown = CheckUnknownVariables(env, strict, parsed); !unknown.ok()) {
    return unknown;
  }
  if (absl::Status applied = ApplyVariables(env, arguments.flag_values, parsed.config);
      !applied.ok()) {
    return applied;
  }
  if (absl::Status combined = CheckVariableCombinations(parsed.config); !combined.ok()) {
    return combined;
  }
  return parsed;
}

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const absl::string_view text = *entry;
    const size_t equals = text.find('=');
    if (equals == absl::string_view::npos) continue;
    // Like getenv, the first of duplicate entries wins.
    env.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return env;
}

std::string HelpText() {
  const Config defaults;
  std::string help =
      "Usage: poolside [--FLAG=VALUE | --FLAG VALUE]... [--check-config [--strict] | --help | "
      "--version]\n"
      "\n"
      "poolside is a gRPC connection-pooling sidecar proxy. Each setting below is an\n"
      "environment variable and a flag; the flag wins.\n"
      "\n"
      "Settings:\n";
  for (const Variable& variable : Variables()) {
    const std::string default_value = variable.print(defaults);
    const std::string presence = variable.presence == Presence::kRequired ? "required"
                                 : default_value.empty()                  ? "default: empty"
                                                         : absl::StrCat("default: ", default_value);
    absl::StrAppend(&help, "  --", variable.flag, ", ", variable.env, " (", presence, ")\n",
                    "      ", variable.meaning, "\n", "      allowed: ", variable.allowed(), "\n");
  }
  absl::StrAppend(&help, "\nCommands:\n");
  for (const CommandFlag& command : kCommandFlags) {
    const std::string names = command.short_flag.empty()
                                  ? std::string(command.flag)
                                  : absl::StrCat(command.short_flag, ", ", command.flag);
    absl::StrAppend(&help, absl::StrFormat("  %-18s%s\n", names, command.meaning));
  }
  return help;
}

}  // namespace poolside
