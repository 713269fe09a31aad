#include "config/cpu_limit.h"

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace poolside {
namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return contents.str();
}

bool IsDirectory(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string Unescape(absl::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '3' &&
        field[i + 2] >= '0' && field[i + 2] <= '7' && field[i + 3] >= '0' && field[i + 3] <= '7') {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

bool Contains(const std::vector<std::string>& names, absl::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Whether `path` is `ancestor` or below it.
bool IsUnder(absl::string_view path, absl::string_view ancestor) {
  if (ancestor == "/") return absl::StartsWith(path, "/");
  return path == ancestor || (absl::StartsWith(path, ancestor) && path.size() > ancestor.size() &&
                              path[ancestor.size()] == '/');
}

// Whether a quota lets the process use less CPU than another.
bool Tighter(const CpuQuota& a, const CpuQuota& b) {
  return static_cast<double>(a.quota_us) / static_cast<double>(a.period_us) <
         static_cast<double>(b.quota_us) / static_cast<double>(b.period_us);
}

absl::StatusOr<int64_t> PositiveMicros(absl::string_view text, absl::string_view what) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": want a positive number of microseconds, got '", text, "'"));
  }
  return value;
}

// Which of several mounts of one hierarchy holds `cgroup_path`: the one whose
// root contains it most closely, else the first (a container's own cgroup
// mounted at the mount point).
const CgroupMount* PickMount(const std::vector<const CgroupMount*>& mounts,
                             absl::string_view cgroup_path) {
  const CgroupMount* best = nullptr;
  for (const CgroupMount* mount : mounts) {
    if (IsUnder(cgroup_path, mount->root) &&
        (best == nullptr || mount->root.size() > best->root.size())) {
      best = mount;
    }
  }
  return best != nullptr ? best : (mounts.empty() ? nullptr : mounts.front());
}

// Reads the quota of one cgroup directory (without the root prefix);
// nullopt when the directory sets none or has no such files.
using QuotaReader = absl::StatusOr<std::optional<FoundCpuQuota>> (*)(const std::string& root,
                                                                     const std::string& directory);

absl::StatusOr<std::optional<FoundCpuQuota>> ReadV2Quota(const std::string& root,
                                                         const std::string& directory) {
  const std::string file = absl::StrCat(directory == "/" ? "" : directory, "/cpu.max");
  std::optional<std::string> text = ReadFile(root + file);
  if (!text) return std::nullopt;
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCpuMax(*text);
  if (!quota.ok())
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", quota.status().message()));
  if (!quota->has_value()) return std::nullopt;
  return FoundCpuQuota{**quota, file};
}

absl::StatusOr<std::optional<FoundCpuQuota>> ReadV1Quota(const std::string& root,
                                                         const std::string& directory) {
  const std::string base = directory == "/" ? "" : directory;
  const std::string quota_file = base + "/cpu.cfs_quota_us";
  std::optional<std::string> quota_text = ReadFile(root + quota_file);
  if (!quota_text) return std::nullopt;
  const std::string period_file = base + "/cpu.cfs_period_us";
  std::optional<std::string> period_text = ReadFile(root + period_file);
  if (!period_text) return absl::NotFoundError(absl::StrCat(period_file, ": cannot be read"));
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCfsQuota(*quota_text, *period_text);
  if (!quota.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(quota_file, ": ", quota.status().message()));
  }
  if (!quota->has_value()) return std::nullopt;
  return FoundCpuQuota{**quota, quota_file};
}

// The tightest quota from the process's cgroup up to the mount point: a
// parent's quota bounds all of its children, and a runtime may set the limit
// on the pod's cgroup rather than the container's.
absl::StatusOr<std::optional<FoundCpuQuota>> TightestUpTo(const std::string& root,
                                                          const CgroupMount& mount,
                                                          absl::string_view cgroup_path,
                                                          QuotaReader read) {
  std::string directory = CgroupDirectory(mount, cgroup_path);
  // The process may sit in a cgroup this mount does not show (another
  // namespace's view); the mount point is then the closest we can see.
  if (!IsDirectory(root + directory)) directory = mount.mount_point;
  std::optional<FoundCpuQuota> tightest;
  while (true) {
    absl::StatusOr<std::optional<FoundCpuQuota>> found = read(root, directory);
    if (!found.ok()) return found.status();
    if (found->has_value() && (!tightest || Tighter((*found)->quota, tightest->quota))) {
      tightest = **found;
    }
    if (directory == mount.mount_point || !IsUnder(directory, mount.mount_point)) break;
    directory = directory.substr(0, directory.rfind('/'));
    if (directory.empty()) directory = "/";
  }
  return tightest;
}

}  // namespace

absl::StatusOr<std::vector<CgroupMembership>> ParseProcCgroup(absl::string_view text) {
  std::vector<CgroupMembership> memberships;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    CgroupMembership membership;
    if (fields.size() != 3 || !absl::SimpleAtoi(fields[0], &membership.hierarchy_id)) {
      return absl::InvalidArgumentError(absl::StrCat("not a cgroup line: '", line, "'"));
    }
    for (absl::string_view controller : absl::StrSplit(fields[1], ',', absl::SkipEmpty())) {
      membership.controllers.emplace_back(controller);
    }
    membership.path = std::string(absl::StripTrailingAsciiWhitespace(fields[2]));
    memberships.push_back(std::move(membership));
  }
  return memberships;
}

absl::StatusOr<std::vector<CgroupMount>> ParseCgroupMounts(absl::string_view mountinfo) {
  std::vector<CgroupMount> mounts;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipWhitespace())) {
    // id parent major:minor root mount-point options [optional...] - type source super-options
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    auto separator = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || separator == fields.end() || fields.end() - separator < 3) {
      return absl::InvalidArgumentError(absl::StrCat("not a mountinfo line: '", line, "'"));
    }
    const absl::string_view type = separator[1];
    if (type != "cgroup" && type != "cgroup2") continue;
    CgroupMount mount;
    mount.v2 = type == "cgroup2";
    mount.root = Unescape(fields[3]);
    mount.mount_point = Unescape(fields[4]);
    if (!mount.v2 && fields.end() - separator >= 4) {
      for (absl::string_view option : absl::StrSplit(separator[3], ',', absl::SkipEmpty())) {
        mount.controllers.emplace_back(option);
      }
    }
    mounts.push_back(std::move(mount));
  }
  return mounts;
}

absl::StatusOr<std::optional<CpuQuota>> ParseCpuMax(absl::string_view text) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(text), ' ', absl::SkipEmpty());
  if (fields.empty() || fields.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("want 'max PERIOD' or 'QUOTA PERIOD', got '", text, "'"));
  }
  // The period is optional on write and defaults to 100 ms.
  int64_t period = 100000;
  if (fields.size() == 2) {
    absl::StatusOr<int64_t> parsed = PositiveMicros(fields[1], "period");
    if (!parsed.ok()) return parsed.status();
    period = *parsed;
  }
  if (fields[0] == "max") return std::nullopt;
  absl::StatusOr<int64_t> quota = PositiveMicros(fields[0], "quota");
  if (!quota.ok()) return quota.status();
  return CpuQuota{*quota, period};
}

absl::StatusOr<std::optional<CpuQuota>> ParseCfsQuota(absl::string_view quota_text,
                                                      absl::string_view period_text) {
  int64_t quota = 0;
  const absl::string_view quota_field = absl::StripAsciiWhitespace(quota_text);
  if (!absl::SimpleAtoi(quota_field, &quota) || quota == 0 || quota < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("want -1 or a positive number of microseconds, got '", quota_field, "'"));
  }
  if (quota == -1) return std::nullopt;
  absl::StatusOr<int64_t> period =
      PositiveMicros(absl::StripAsciiWhitespace(period_text), "cpu.cfs_period_us");
  if (!period.ok()) return period.status();
  return CpuQuota{quota, *period};
}

std::string CgroupDirectory(const CgroupMount& mount, absl::string_view cgroup_path) {
  // ".." appears when the process sits outside its cgroup namespace's root.
  if (!IsUnder(cgroup_path, mount.root) || absl::StrContains(cgroup_path, "/..")) {
    return mount.mount_point;
  }
  absl::string_view below = cgroup_path.substr(mount.root == "/" ? 0 : mount.root.size());
  if (below.empty() || below == "/") return mount.mount_point;
  return absl::StrCat(mount.mount_point == "/" ? "" : mount.mount_point, below);
}

absl::StatusOr<std::optional<FoundCpuQuota>> FindCpuQuota(const std::string& root) {
  const std::string prefix(absl::StripSuffix(root, "/"));
  std::optional<std::string> cgroup_text = ReadFile(prefix + "/proc/self/cgroup");
  std::optional<std::string> mountinfo_text = ReadFile(prefix + "/proc/self/mountinfo");
  // Not Linux, or /proc not mounted: nothing limits us that we can see.
  if (!cgroup_text || !mountinfo_text) return std::nullopt;
  absl::StatusOr<std::vector<CgroupMembership>> memberships = ParseProcCgroup(*cgroup_text);
  if (!memberships.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/self/cgroup: ", memberships.status().message()));
  }
  absl::StatusOr<std::vector<CgroupMount>> mounts = ParseCgroupMounts(*mountinfo_text);
  if (!mounts.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/self/mountinfo: ", mounts.status().message()));
  }

  std::optional<FoundCpuQuota> tightest;
  // A hybrid host has the cpu controller on v1 and an empty v2 tree, or the
  // other way round; the tighter of both applies either way.
  for (const CgroupMembership& membership : *memberships) {
    const bool v2 = membership.hierarchy_id == 0 && membership.controllers.empty();
    if (!v2 && !Contains(membership.controllers, "cpu")) continue;
    std::vector<const CgroupMount*> candidates;
    for (const CgroupMount& mount : *mounts) {
      if (v2 ? mount.v2 : (!mount.v2 && Contains(mount.controllers, "cpu"))) {
        candidates.push_back(&mount);
      }
    }
    const CgroupMount* mount = PickMount(candidates, membership.path);
    if (mount == nullptr) continue;
    absl::StatusOr<std::optional<FoundCpuQuota>> found =
        TightestUpTo(prefix, *mount, membership.path, v2 ? &ReadV2Quota : &ReadV1Quota);
    if (!found.ok()) return found.status();
    if (found->has_value() && (!tightest || Tighter((*found)->quota, tightest->quota))) {
      tightest = **found;
    }
  }
  return tightest;
}

WorkerThreadChoice WorkerThreadsFor(const std::optional<CpuQuota>& quota, int cpus) {
  cpus = std::max(1, cpus);
  WorkerThreadChoice choice;
  int64_t usable = cpus;
  if (!quota) {
    choice.reason = absl::StrCat(cpus, cpus == 1 ? " CPU" : " CPUs", ", no quota");
  } else {
    const int64_t by_quota = (quota->quota_us + quota->period_us - 1) / quota->period_us;
    usable = std::max<int64_t>(1, std::min<int64_t>(cpus, by_quota));
    choice.reason = absl::StrCat("cgroup cpu quota ", quota->quota_us, "/", quota->period_us);
    if (by_quota > cpus) absl::StrAppend(&choice.reason, ", capped at ", cpus, " CPUs");
  }
  // Every forwarding thread polls grpc 1.51's one shared epoll set, so a
  // second thread mostly hands completions across threads: on 2 CPUs, one
  // thread costs 15-25% less CPU per call with the same throughput under
  // load (bench/RESULTS.md, "Forwarding threads").
  choice.threads = static_cast<int>(std::max<int64_t>(1, usable / 2));
  absl::StrAppend(&choice.reason, ": one thread per 2 CPUs");
  return choice;
}

int UsableCpus() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int allowed = CPU_COUNT(&set);
    if (allowed > 0 && (cpus <= 0 || allowed < cpus)) cpus = allowed;
  }
  return std::max(1, cpus);
}

WorkerThreadChoice DefaultWorkerThreads() {
  absl::StatusOr<std::optional<FoundCpuQuota>> found = FindCpuQuota("/");
  std::optional<CpuQuota> quota;
  if (found.ok() && found->has_value()) quota = (*found)->quota;
  WorkerThreadChoice choice = WorkerThreadsFor(quota, UsableCpus());
  if (!found.ok()) {
    absl::StrAppend(&choice.reason, "; cgroup quota unreadable: ", found.status().message());
  }
  return choice;
}

}  // namespace poolside
