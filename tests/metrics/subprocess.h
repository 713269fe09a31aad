// Child processes and temporary directories for tests that run real tools
// (promtool, prometheus, python3). Every child is killed and reaped, and
// every directory removed, on every path out of the test. Confined to the
// test's thread.
#ifndef POOLSIDE_TESTS_METRICS_SUBPROCESS_H_
#define POOLSIDE_TESTS_METRICS_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/support/files.h"

namespace poolside::test {

// A directory under $TMPDIR (or /tmp), removed with its contents on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct ProcessResult {
  // The exit status, or 128 + signal number if it was killed.
  int exit_code = -1;
  // stdout and stderr, interleaved.
  std::string output;
};

// Runs argv[0] (a path) with `input` on stdin and waits for it, killing it
// after `timeout`.
absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                         const std::string& input, absl::Duration timeout);

// A long-running child (a server). Its stdout and stderr go to `log_path`.
// Destruction stops it: SIGTERM, then SIGKILL after a grace period, then
// reaps it.
class ServerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::vector<std::string>& argv,
                                                              const std::string& log_path);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool Running();
  void Stop();

 private:
  explicit ServerProcess(pid_t pid) : pid_(pid) {}

  pid_t pid_;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_METRICS_SUBPROCESS_H_
