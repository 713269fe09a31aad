// PoolsideProcess: the poolside binary run as a child process, for end-to-end
// tests that exercise it exactly as it ships: configured by environment
// variables, stopped by signals, judged by its exit code and stderr.
//
// Never leaves a process behind: the destructor kills (SIGKILL) and reaps a
// child still running, and the child is killed by the kernel if the thread
// that started it dies (PR_SET_PDEATHSIG), so start it from a thread that
// outlives it (e.g. the test's main thread).
#ifndef POOLSIDE_TESTS_SUPPORT_POOLSIDE_PROCESS_H_
#define POOLSIDE_TESTS_SUPPORT_POOLSIDE_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace poolside::test {

// Environment variables for poolside: name -> value.
using Environment = std::map<std::string, std::string>;

// A TCP port on 127.0.0.1 that is free now: bound to port 0, then closed.
// Never returns the same port twice in one process. Thread-safe.
int PickFreePort();

// Whether something accepts TCP connections on 127.0.0.1:`port` now.
bool PortAcceptsConnections(int port);

// A TCP port on 127.0.0.1 held in the listening state (without SO_REUSEPORT)
// for the object's lifetime, so that binding it elsewhere fails with
// EADDRINUSE. Not thread-safe.
class OccupiedPort {
 public:
  OccupiedPort();
  ~OccupiedPort();
  OccupiedPort(const OccupiedPort&) = delete;
  OccupiedPort& operator=(const OccupiedPort&) = delete;

  // 0 if the port could not be occupied.
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// One run of the poolside binary. Confined to the thread that created it.
class PoolsideProcess {
 public:
  struct ExitResult {
    // The exit status; 128 + the signal number if killed by a signal; -1 if
    // it did not exit in time (it was then killed).
    int exit_code = -1;
    std::string stderr_output;
  };

  // The child's environment is this process's, minus every GRPC_* variable
  // but GRPC_VERBOSITY and GRPC_TRACE (so a developer's shell cannot change a
  // test), plus `env`. GRPC_LISTEN_ADDR and GRPC_ADMIN_ADDR default to
  // 127.0.0.1 on free ports. `args` follow the binary's path on its command
  // line.
  explicit PoolsideProcess(Environment env, std::vector<std::string> args = {});
  // Kills (SIGKILL) and reaps the child if it is still running.
  ~PoolsideProcess();

  PoolsideProcess(const PoolsideProcess&) = delete;
  PoolsideProcess& operator=(const PoolsideProcess&) = delete;

  // Spawns the child. Fails if the binary cannot be executed.
  // REQUIRES: not started before.
  absl::Status Start();

  // Waits until the listen port accepts TCP connections. Fails (quoting
  // stderr) if the child exits first or `timeout` passes.
  absl::Status WaitUntilServing(absl::Duration timeout);

  // Sends SIGTERM.
  void Terminate();
  // Sends `signal_number`.
  void Signal(int signal_number);

  // Waits for the child to exit and returns its exit code (see ExitResult),
  // or nullopt if it is still running after `timeout`.
  std::optional<int> WaitForExit(absl::Duration timeout);

  // Whether the child has been started and not yet reaped.
  bool running() const { return pid_ > 0; }
  // The child's pid, for reading its /proc entries (process_stats.h); -1
  // before Start and once reaped.
  pid_t pid() const { return pid_; }

  // What the child wrote so far.
  std::string Stderr() const;
  std::string Stdout() const;

  const Environment& env() const { return env_; }
  // "<host>:<port>" to connect to the listen address (0.0.0.0 -> 127.0.0.1).
  std::string listen_target() const;
  int listen_port() const { return listen_port_; }
  int admin_port() const { return admin_port_; }

  // Runs poolside with `env` and `args` until it exits or `timeout` passes
  // (it is then killed and exit_code is -1).
  static ExitResult RunToExit(Environment env, std::vector<std::string> args,
                              absl::Duration timeout);

  // The binary run: $POOLSIDE_BINARY if set, else the one this build made.
  static std::string BinaryPath();

 private:
  // Reaps the child if it has exited; true if it has.
  bool TryReap();

  // Constant after construction.
  const Environment env_;
  const std::vector<std::string> args_;
  std::string listen_host_;
  int listen_port_ = 0;
  int admin_port_ = 0;

  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  // Unlinked temporary files the child's output goes to.
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_POOLSIDE_PROCESS_H_
