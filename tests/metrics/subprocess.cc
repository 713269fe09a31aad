#include "tests/metrics/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/support/child_process.h"
#include "tests/support/files.h"

namespace poolside::test {
namespace {

// Waits for `pid` until `timeout`; returns its wait status, or -1 if it is
// still running.
int WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return status;
    if (done < 0 && errno != EINTR) return 0;
    if (absl::Now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Runs `argv` with stdin from `stdin_path` and stdout+stderr to
// `output_path`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& stdin_path,
                            const std::string& output_path) {
  const int in = open(stdin_path.c_str(), O_RDONLY | O_CLOEXEC);
  const int out = open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (in < 0 || out < 0) {
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    return absl::InternalError(absl::StrCat("open: ", std::strerror(errno)));
  }
  SpawnOptions options;
  options.binary = argv.at(0);
  options.args.assign(argv.begin() + 1, argv.end());
  options.stdin_fd = in;
  options.stdout_fd = out;
  options.stderr_fd = out;
  absl::StatusOr<pid_t> pid = SpawnChild(options);
  close(in);
  close(out);
  return pid;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/poolside-test-XXXXXX");
  if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                         const std::string& input, absl::Duration timeout) {
  TempDir dir;
  if (dir.path().empty()) return absl::InternalError("mkdtemp failed");
  const std::string stdin_path = dir.path() + "/stdin";
  const std::string output_path = dir.path() + "/output";
  if (absl::Status written = WriteFile(stdin_path, input); !written.ok()) return written;
  absl::StatusOr<pid_t> pid = Spawn(argv, stdin_path, output_path);
  if (!pid.ok()) return pid.status();
  int status = WaitFor(*pid, timeout);
  if (status == -1) {
    kill(*pid, SIGKILL);
    status = WaitFor(*pid, absl::InfiniteDuration());
  }
  return ProcessResult{ExitCode(status), ReadFile(output_path)};
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path) {
  absl::StatusOr<pid_t> pid = Spawn(argv, "/dev/null", log_path);
  if (!pid.ok()) return pid.status();
  return std::unique_ptr<ServerProcess>(new ServerProcess(*pid));
}

ServerProcess::~ServerProcess() { Stop(); }

bool ServerProcess::Running() {
  if (pid_ <= 0) return false;
  if (WaitFor(pid_, absl::ZeroDuration()) == -1) return true;
  pid_ = 0;
  return false;
}

void ServerProcess::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  if (WaitFor(pid_, absl::Seconds(5)) == -1) {
    kill(pid_, SIGKILL);
    WaitFor(pid_, absl::InfiniteDuration());
  }
  pid_ = 0;
}

}  // namespace poolside::test
