#include "tests/metrics/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

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

// Forks and execs `argv` with stdin from `stdin_path` and stdout+stderr to
// `output_path`. In the child only async-signal-safe calls are made.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& stdin_path,
                            const std::string& output_path) {
  const int in = open(stdin_path.c_str(), O_RDONLY | O_CLOEXEC);
  const int out = open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (in < 0 || out < 0) {
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    return absl::InternalError(absl::StrCat("open: ", std::strerror(errno)));
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Even if the test process crashes, no child outlives it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    // Sockets of the test's own servers must not live on in the child.
    close_range(3, ~0U, 0);
    // The test process blocks no signals the child needs, but restore
    // defaults in case the runner changed them.
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in);
  close(out);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
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

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << contents;
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path) {
  absl::StatusOr<pid_t> pid = Spawn(argv, "/dev/null", log_path);
  if (!pid.ok()) return pid.status();
  return std::unique_ptr<ChildProcess>(new ChildProcess(*pid));
}

ChildProcess::~ChildProcess() { Stop(); }

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  if (WaitFor(pid_, absl::ZeroDuration()) == -1) return true;
  pid_ = 0;
  return false;
}

void ChildProcess::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  if (WaitFor(pid_, absl::Seconds(5)) == -1) {
    kill(pid_, SIGKILL);
    WaitFor(pid_, absl::InfiniteDuration());
  }
  pid_ = 0;
}

}  // namespace poolside::test
