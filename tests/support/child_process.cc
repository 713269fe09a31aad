#include "tests/support/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace poolside::test {
namespace {

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// Closes every descriptor from `first` up, but `keep`. Async-signal-safe.
void CloseDescriptorsFrom(int first, int keep) {
  auto close_range = [](unsigned low, unsigned high) {
    if (low > high) return;
    if (syscall(SYS_close_range, low, high, 0) == 0) return;
    // Kernels before 5.9: close one by one, up to a generous limit.
    for (unsigned fd = low; fd <= high && fd < 65536; ++fd) close(static_cast<int>(fd));
  };
  close_range(static_cast<unsigned>(first), static_cast<unsigned>(keep) - 1);
  close_range(static_cast<unsigned>(keep) + 1, ~0U);
}

int MillisUntil(absl::Time deadline) {
  const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

}  // namespace

absl::StatusOr<pid_t> SpawnChild(const SpawnOptions& options) {
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int error_pipe[2];
  if (null_fd < 0 || pipe2(error_pipe, O_CLOEXEC) != 0) {
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("cannot set up the child's files: ", strerror(errno)));
  }
  // Everything the child needs is built before fork(): after it, in a
  // multi-threaded process, only async-signal-safe calls are allowed.
  std::vector<std::string> argv_strings = {options.binary};
  argv_strings.insert(argv_strings.end(), options.args.begin(), options.args.end());
  std::vector<std::string> env_strings = options.env.value_or(std::vector<std::string>{});
  std::vector<char*> argv = Pointers(argv_strings);
  std::vector<char*> envp = Pointers(env_strings);
  char** const child_env = options.env ? envp.data() : environ;
  const pid_t parent = getpid();
  sigset_t no_signals;
  sigemptyset(&no_signals);

  const pid_t pid = fork();
  if (pid < 0) {
    close(null_fd);
    close(error_pipe[0]);
    close(error_pipe[1]);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // Die with the thread that started us, even if it never gets to kill us.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(options.stdin_fd >= 0 ? options.stdin_fd : null_fd, STDIN_FILENO);
    if (options.stdout_fd >= 0) dup2(options.stdout_fd, STDOUT_FILENO);
    if (options.stderr_fd >= 0) dup2(options.stderr_fd, STDERR_FILENO);
    CloseDescriptorsFrom(STDERR_FILENO + 1, error_pipe[1]);
    sigprocmask(SIG_SETMASK, &no_signals, nullptr);
    // An ignored signal stays ignored across exec: give the child defaults.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &default_action, nullptr);
    sigaction(SIGTERM, &default_action, nullptr);
    execve(options.binary.c_str(), argv.data(), child_env);
    const int exec_errno = errno;
    while (write(error_pipe[1], &exec_errno, sizeof(exec_errno)) < 0 && errno == EINTR) {
    }
    _exit(127);
  }

  close(null_fd);
  close(error_pipe[1]);
  int exec_errno = 0;
  ssize_t n;
  while ((n = read(error_pipe[0], &exec_errno, sizeof(exec_errno))) < 0 && errno == EINTR) {
  }
  close(error_pipe[0]);
  if (n == sizeof(exec_errno)) {
    WaitForExitOf(pid, absl::Seconds(5));
    return absl::FailedPreconditionError(
        absl::StrCat("cannot execute ", options.binary, ": ", strerror(exec_errno)));
  }
  return pid;
}

void KillAndReap(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

std::optional<int> WaitForExitOf(pid_t pid, absl::Duration timeout) {
  if (pid <= 0) return std::nullopt;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t reaped = waitpid(pid, &status, WNOHANG);
    if (reaped == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (reaped < 0 && errno != EINTR) return std::nullopt;
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

ChildProcess::ChildProcess(std::string binary, std::vector<std::string> args)
    : binary_(std::move(binary)), args_(std::move(args)) {}

ChildProcess::~ChildProcess() {
  KillAndReap(pid_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

absl::Status ChildProcess::Start() {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  SpawnOptions options;
  options.binary = binary_;
  options.args = args_;
  options.stdout_fd = out[1];
  absl::StatusOr<pid_t> pid = SpawnChild(options);
  close(out[1]);
  if (!pid.ok()) {
    close(out[0]);
    return pid.status();
  }
  stdout_fd_ = out[0];
  pid_ = *pid;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ChildProcess::WaitForLine(const std::string& prefix,
                                                      absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[4096];
  while (true) {
    size_t newline;
    while ((newline = stdout_buffer_.find('\n')) != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, newline);
      stdout_buffer_.erase(0, newline + 1);
      if (absl::StartsWith(line, prefix)) return line;
    }
    pollfd waiter{stdout_fd_, POLLIN, 0};
    const int ready = poll(&waiter, 1, MillisUntil(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(binary_, " printed no line starting with \"", prefix, "\""));
    }
    const ssize_t n = read(stdout_fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat(binary_, " closed stdout before \"", prefix, "\""));
    }
    stdout_buffer_.append(buffer, static_cast<size_t>(n));
  }
}

void ChildProcess::Signal(int signal_number) {
  if (pid_ > 0) kill(pid_, signal_number);
}

std::optional<int> ChildProcess::WaitForExit(absl::Duration timeout) {
  std::optional<int> status = WaitForExitOf(pid_, timeout);
  if (status) pid_ = -1;
  return status;
}

std::string TestUpstreamBinary() { return POOLSIDE_TEST_UPSTREAM_BINARY; }

absl::Status UpstreamProcess::Start(absl::Duration timeout) {
  std::vector<std::string> args = {"--port", absl::StrCat(port_)};
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  process_ = std::make_unique<ChildProcess>(TestUpstreamBinary(), std::move(args));
  if (absl::Status started = process_->Start(); !started.ok()) return started;
  absl::StatusOr<std::string> line = process_->WaitForLine("PORT=", timeout);
  if (!line.ok()) return line.status();
  if (!absl::SimpleAtoi(line->substr(5), &port_)) {
    return absl::InternalError(absl::StrCat("test_upstream printed ", *line));
  }
  return absl::OkStatus();
}

void UpstreamProcess::Kill() {
  if (process_ == nullptr) return;
  process_->Signal(SIGKILL);
  process_->WaitForExit(absl::Seconds(5));
  process_.reset();
}

std::string UpstreamProcess::target() const { return absl::StrCat("127.0.0.1:", port_); }

}  // namespace poolside::test
