#include "bench/proc_stats.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace poolside::bench {

// utime + stime of `pid` in seconds, or a negative value when it is gone.
double ProcessCpuSeconds(int pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(file, line)) return -1;
  // The command name may hold spaces and parentheses; fields resume after
  // the last ')'. utime and stime are fields 14 and 15.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(line.substr(close + 2));
  std::string field;
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  for (int index = 3; fields >> field; ++index) {
    if (index == 14) utime = std::stoull(field);
    if (index == 15) {
      stime = std::stoull(field);
      break;
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds the whole machine spent busy (every core, every process).
double MachineBusyCpuSeconds() {
  std::ifstream file("/proc/stat");
  std::string label;
  file >> label;
  if (label != "cpu") return -1;
  // user nice system idle iowait irq softirq steal: all but idle and iowait.
  unsigned long long value = 0;
  unsigned long long busy = 0;
  for (int field = 0; field < 8 && file >> value; ++field) {
    if (field != 3 && field != 4) busy += value;
  }
  return static_cast<double>(busy) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The value in kB of `key` (e.g. "VmRSS") in /proc/PID/status, or -1.
long ProcessStatusKib(int pid, const std::string& key) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(file, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) {
      return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
    }
  }
  return -1;
}

// ESTABLISHED TCP connections whose local port is `port`.
int EstablishedConnectionsOnPort(int port) {
  int count = 0;
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream file(path);
    std::string line;
    std::getline(file, line);  // Header.
    while (std::getline(file, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      const size_t colon = local.rfind(':');
      if (colon == std::string::npos || state != "01") continue;
      if (std::strtol(local.c_str() + colon + 1, nullptr, 16) == port) ++count;
    }
  }
  return count;
}

}  // namespace poolside::bench
