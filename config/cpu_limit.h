// How many CPUs poolside may use: the container's cgroup CPU quota (cgroup v2
// `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), the CPUs the
// process may run on (sched_getaffinity) and the machine's cores, whichever is
// least. A sidecar limited to 500m must not run one polling thread per core of
// a 64-core node: the extra threads only take turns being throttled.
//
// The cgroup files are found the way the kernel exposes them to the process:
// /proc/self/cgroup names its cgroup in each hierarchy, /proc/self/mountinfo
// where each hierarchy is mounted and which part of it. Everything below reads
// files under a root directory, "/" in production and a fake tree in tests.
// All functions are thread-compatible and keep no state.
#ifndef POOLSIDE_CONFIG_CPU_LIMIT_H_
#define POOLSIDE_CONFIG_CPU_LIMIT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside {

// A CFS bandwidth limit: at most `quota_us` of CPU time every `period_us`.
struct CpuQuota {
  int64_t quota_us = 0;
  int64_t period_us = 0;
};

// One line of /proc/self/cgroup: "hierarchy-id:controllers:path". cgroup v2
// is the line with hierarchy 0 and no controllers.
struct CgroupMembership {
  int hierarchy_id = 0;
  std::vector<std::string> controllers;
  std::string path;
};

// One cgroup or cgroup2 mount from /proc/self/mountinfo.
struct CgroupMount {
  bool v2 = false;
  // Which directory of the hierarchy is mounted ("/" unless a container
  // runtime mounted only the container's own cgroup).
  std::string root;
  std::string mount_point;
  // v1: the controllers of the hierarchy (from the super options).
  std::vector<std::string> controllers;
};

// Parses /proc/self/cgroup.
absl::StatusOr<std::vector<CgroupMembership>> ParseProcCgroup(absl::string_view text);

// The cgroup and cgroup2 mounts of /proc/self/mountinfo; other lines are skipped.
absl::StatusOr<std::vector<CgroupMount>> ParseCgroupMounts(absl::string_view mountinfo);

// cgroup v2 `cpu.max`: "max 100000" (no quota) or "50000 100000".
absl::StatusOr<std::optional<CpuQuota>> ParseCpuMax(absl::string_view text);

// cgroup v1 `cpu.cfs_quota_us` (-1: no quota) and `cpu.cfs_period_us`.
absl::StatusOr<std::optional<CpuQuota>> ParseCfsQuota(absl::string_view quota_text,
                                                      absl::string_view period_text);

// Where `cgroup_path` (from /proc/self/cgroup) is, under `mount`: the mount
// point plus the path below the mount's root. When the path is not below the
// root — a container runtime mounted the container's own cgroup at the mount
// point, and /proc/self/cgroup shows the host's view — the mount point itself.
std::string CgroupDirectory(const CgroupMount& mount, absl::string_view cgroup_path);

// The tightest CPU quota that applies to this process, looking at cgroup v1
// and v2 (hybrid hosts have both) and at every ancestor cgroup up to the
// mount point, since a parent's quota bounds its children. nullopt: none.
// `root` prefixes every file read ("/" in production).
struct FoundCpuQuota {
  CpuQuota quota;
  // The file that set it, without `root`, for the start-up log.
  std::string file;
};
absl::StatusOr<std::optional<FoundCpuQuota>> FindCpuQuota(const std::string& root);

// Worker threads for `cpus` usable CPUs under `quota`: one per two of
// min(cpus, ceil(quota / period)), at least one; and why, for the log
// ("cgroup cpu quota 50000/100000: one thread per 2 CPUs").
struct WorkerThreadChoice {
  int threads = 1;
  std::string reason;
};
WorkerThreadChoice WorkerThreadsFor(const std::optional<CpuQuota>& quota, int cpus);

// The CPUs this process may run on: the machine's online cores, reduced to
// its sched_getaffinity mask.
int UsableCpus();

// WorkerThreadsFor(FindCpuQuota("/"), UsableCpus()); a cgroup file that cannot
// be parsed is named in the reason and treated as no quota.
WorkerThreadChoice DefaultWorkerThreads();

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_CPU_LIMIT_H_
