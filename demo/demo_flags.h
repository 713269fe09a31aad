// Command-line flags of the demo binaries: --name=value pairs from a fixed
// list, --help and --version. Anything else is a one-line error and exit 2,
// so a typo never starts a server on a surprise port.
#ifndef POOLSIDE_DEMO_DEMO_FLAGS_H_
#define POOLSIDE_DEMO_DEMO_FLAGS_H_

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>

namespace poolside::demo {

class Flags {
 public:
  // `defaults`: every flag the program takes, with its default value.
  // Exits (0 after --help or --version, 2 on a bad argument) when the
  // program should not run.
  Flags(int argc, char** argv, const char* program, const char* usage,
        std::map<std::string, std::string> defaults)
      : values_(std::move(defaults)) {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::fputs(usage, stdout);
        std::exit(0);
      }
      if (arg == "--version") {
        std::printf("%s %s\n", program, POOLSIDE_VERSION);
        std::exit(0);
      }
      const size_t equals = arg.find('=');
      const std::string name = arg.rfind("--", 0) == 0 && equals != std::string::npos
                                   ? arg.substr(2, equals - 2)
                                   : std::string();
      if (name.empty() || values_.count(name) == 0) {
        std::fprintf(stderr, "%s: unknown argument '%s' (see --help)\n", program, arg.c_str());
        std::exit(2);
      }
      values_[name] = arg.substr(equals + 1);
    }
    program_ = program;
  }

  const std::string& Get(const std::string& name) const { return values_.at(name); }

  // The flag as an integer in [min, max]; exit 2 otherwise.
  int GetInt(const std::string& name, int min, int max) const {
    const std::string& text = Get(name);
    char* end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || value < min || value > max) {
      std::fprintf(stderr, "%s: --%s=%s is not a whole number from %d to %d\n", program_.c_str(),
                   name.c_str(), text.c_str(), min, max);
      std::exit(2);
    }
    return static_cast<int>(value);
  }

 private:
  std::map<std::string, std::string> values_;
  std::string program_;
};

}  // namespace poolside::demo

#endif  // POOLSIDE_DEMO_DEMO_FLAGS_H_
