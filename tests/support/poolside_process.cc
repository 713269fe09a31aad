#include "tests/support/poolside_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/support/child_process.h"
#include "tests/support/loopback_socket.h"

extern char** environ;

namespace poolside::test {
namespace {

// The port after the last ':' of "host:port", or 0.
int PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return 0;
  return port;
}

std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? "" : address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") return "127.0.0.1";
  return host;
}

Environment WithDefaultAddresses(Environment env) {
  if (env.count("GRPC_LISTEN_ADDR") == 0) {
    env["GRPC_LISTEN_ADDR"] = absl::StrCat("127.0.0.1:", PickFreePort());
  }
  if (env.count("GRPC_ADMIN_ADDR") == 0) {
    env["GRPC_ADMIN_ADDR"] = absl::StrCat("127.0.0.1:", PickFreePort());
  }
  return env;
}

// This process's environment, minus GRPC_* variables but gRPC core's own
// debugging switches, overridden by `env`, as "NAME=value" strings.
std::vector<std::string> ChildEnvironment(const Environment& env) {
  std::map<std::string, std::string> merged;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string variable = *entry;
    const size_t equals = variable.find('=');
    if (equals == std::string::npos) continue;
    const std::string name = variable.substr(0, equals);
    if (absl::StartsWith(name, "GRPC_") && name != "GRPC_VERBOSITY" && name != "GRPC_TRACE") {
      continue;
    }
    merged[name] = variable.substr(equals + 1);
  }
  for (const auto& [name, value] : env) merged[name] = value;
  std::vector<std::string> strings;
  for (const auto& [name, value] : merged) strings.push_back(absl::StrCat(name, "=", value));
  return strings;
}

// An unlinked temporary file open for reading and writing, or -1.
int AnonymousTempFile() {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string path = absl::StrCat(tmpdir != nullptr ? tmpdir : "/tmp", "/poolside-test-XXXXXX");
  const int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd >= 0) unlink(path.c_str());
  return fd;
}

std::string ReadAll(int fd) {
  std::string out;
  if (fd < 0) return out;
  char buffer[4096];
  off_t offset = 0;
  while (true) {
    const ssize_t n = pread(fd, buffer, sizeof(buffer), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
    offset += n;
  }
  return out;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

bool PortAcceptsConnections(int port) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return false;
  close(fd);
  return true;
}

int PickFreePort() {
  static absl::Mutex mutex(absl::kConstInit);
  static std::set<int>* returned = new std::set<int>();
  absl::MutexLock lock(&mutex);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = BindLoopback(0);
    if (fd < 0) continue;
    const int port = LocalPort(fd);
    close(fd);
    if (port != 0 && returned->insert(port).second) return port;
  }
  std::fprintf(stderr, "PickFreePort: no free port found\n");
  std::abort();
}

OccupiedPort::OccupiedPort() {
  fd_ = BindLoopback(PickFreePort());
  if (fd_ >= 0 && listen(fd_, 16) == 0) port_ = LocalPort(fd_);
}

OccupiedPort::~OccupiedPort() {
  if (fd_ >= 0) close(fd_);
}

PoolsideProcess::PoolsideProcess(Environment env, std::vector<std::string> args)
    : env_(WithDefaultAddresses(std::move(env))), args_(std::move(args)) {
  const std::string& listen_addr = env_.at("GRPC_LISTEN_ADDR");
  listen_host_ = HostOf(listen_addr);
  listen_port_ = PortOf(listen_addr);
  admin_port_ = PortOf(env_.at("GRPC_ADMIN_ADDR"));
}

PoolsideProcess::~PoolsideProcess() {
  KillAndReap(pid_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
  if (stderr_fd_ >= 0) close(stderr_fd_);
}

std::string PoolsideProcess::BinaryPath() {
  const char* path = std::getenv("POOLSIDE_BINARY");
  if (path != nullptr && *path != '\0') return path;
  return POOLSIDE_BINARY;
}

absl::Status PoolsideProcess::Start() {
  if (pid_ > 0 || exit_code_.has_value()) return absl::FailedPreconditionError("already started");
  stdout_fd_ = AnonymousTempFile();
  stderr_fd_ = AnonymousTempFile();
  if (stdout_fd_ < 0 || stderr_fd_ < 0) {
    return absl::InternalError(absl::StrCat("cannot set up the child's files: ", strerror(errno)));
  }
  SpawnOptions options;
  options.binary = BinaryPath();
  options.args = args_;
  options.env = ChildEnvironment(env_);
  options.stdout_fd = stdout_fd_;
  options.stderr_fd = stderr_fd_;
  absl::StatusOr<pid_t> pid = SpawnChild(options);
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  return absl::OkStatus();
}

absl::Status PoolsideProcess::WaitUntilServing(absl::Duration timeout) {
  if (listen_port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no port in GRPC_LISTEN_ADDR=", env_.at("GRPC_LISTEN_ADDR")));
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (TryReap()) {
      return absl::FailedPreconditionError(absl::StrCat("poolside exited with code ", *exit_code_,
                                                        " before serving; stderr:\n", Stderr()));
    }
    if (pid_ <= 0) return absl::FailedPreconditionError("poolside not started");
    if (PortAcceptsConnections(listen_port_)) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("poolside not serving on port ", listen_port_,
                                                      " after ", absl::FormatDuration(timeout),
                                                      "; stderr:\n", Stderr()));
    }
    // An external process cannot notify us: poll, briefly.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void PoolsideProcess::Terminate() { Signal(SIGTERM); }

void PoolsideProcess::Signal(int signal_number) {
  if (pid_ > 0) kill(pid_, signal_number);
}

bool PoolsideProcess::TryReap() {
  if (pid_ <= 0) return exit_code_.has_value();
  int status = 0;
  pid_t reaped;
  while ((reaped = waitpid(pid_, &status, WNOHANG)) < 0 && errno == EINTR) {
  }
  if (reaped != pid_) return false;
  exit_code_ = DecodeWaitStatus(status);
  pid_ = -1;
  return true;
}

std::optional<int> PoolsideProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!TryReap()) {
    if (pid_ <= 0 || absl::Now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exit_code_;
}

std::string PoolsideProcess::Stderr() const { return ReadAll(stderr_fd_); }

std::string PoolsideProcess::Stdout() const { return ReadAll(stdout_fd_); }

std::string PoolsideProcess::listen_target() const {
  return absl::StrCat(listen_host_, ":", listen_port_);
}

PoolsideProcess::ExitResult PoolsideProcess::RunToExit(Environment env,
                                                       std::vector<std::string> args,
                                                       absl::Duration timeout) {
  PoolsideProcess process(std::move(env), std::move(args));
  ExitResult result;
  if (absl::Status status = process.Start(); !status.ok()) {
    result.stderr_output = std::string(status.message());
    return result;
  }
  result.exit_code = process.WaitForExit(timeout).value_or(-1);
  result.stderr_output = process.Stderr();
  return result;
}

}  // namespace poolside::test
