// Child processes for tests: one way to start a binary (SpawnChild), and
// ChildProcess, a helper binary whose stdout the test reads line by line.
// Every child dies with the thread that started it (PR_SET_PDEATHSIG), gets
// no descriptor of ours but stdin, stdout and stderr (an inherited listening
// socket would keep a test's port bound), and starts with no signal blocked
// and SIGPIPE and SIGTERM at their defaults. tests/metrics/subprocess.h and
// tests/support/poolside_process.h start their children through SpawnChild.
#ifndef POOLSIDE_TESTS_SUPPORT_CHILD_PROCESS_H_
#define POOLSIDE_TESTS_SUPPORT_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace poolside::test {

struct SpawnOptions {
  std::string binary;
  std::vector<std::string> args;
  // "NAME=value" strings; nullopt keeps this process's environment.
  std::optional<std::vector<std::string>> env;
  // The child's stdin (-1: /dev/null), stdout and stderr (-1: ours).
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
};

// Forks and executes; returns the child's pid, or why it could not run (a
// failed exec is reported here, not as an exit status).
absl::StatusOr<pid_t> SpawnChild(const SpawnOptions& options);

// SIGKILL and reap. No-op for pid <= 0.
void KillAndReap(pid_t pid);

// The exit status of `pid` (128 + signal if killed) once it has exited, or
// nullopt after `timeout`.
std::optional<int> WaitForExitOf(pid_t pid, absl::Duration timeout);

// A helper binary run as a child with its stdout on a pipe. Killed (SIGKILL)
// and reaped by the destructor. Confined to one thread.
class ChildProcess {
 public:
  ChildProcess(std::string binary, std::vector<std::string> args);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  absl::Status Start();
  // Reads stdout until a line starting with `prefix` and returns that line.
  absl::StatusOr<std::string> WaitForLine(const std::string& prefix, absl::Duration timeout);
  void Signal(int signal_number);
  // The exit status (128 + signal if killed), or nullopt after `timeout`.
  std::optional<int> WaitForExit(absl::Duration timeout);
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

 private:
  const std::string binary_;
  const std::vector<std::string> args_;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string stdout_buffer_;
};

// The test_upstream binary this build made (test_upstream_main.cc).
std::string TestUpstreamBinary();

// test_upstream as a child on 127.0.0.1:`port` (0: any free port).
class UpstreamProcess {
 public:
  // `extra_args` go to test_upstream after --port (see test_upstream_main.cc).
  explicit UpstreamProcess(int port = 0, std::vector<std::string> extra_args = {})
      : port_(port), extra_args_(std::move(extra_args)) {}
  // Starts it and waits until it serves.
  absl::Status Start(absl::Duration timeout = absl::Seconds(10));
  // SIGKILL and reap: the upstream vanishes without a word.
  void Kill();
  int port() const { return port_; }
  std::string target() const;

 private:
  int port_;
  const std::vector<std::string> extra_args_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_CHILD_PROCESS_H_
