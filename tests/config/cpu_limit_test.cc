#include "config/cpu_limit.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside {
namespace {

using ::testing::HasSubstr;

// A fake file system root holding /proc/self and cgroup trees, removed at
// the end of the test.
class FakeRoot {
 public:
  FakeRoot() {
    const testing::TestInfo* test = testing::UnitTest::GetInstance()->current_test_info();
    root_ = std::filesystem::path(testing::TempDir()) /
            absl::StrCat("cpu_limit_", test->test_suite_name(), "_", test->name(), "_", getpid());
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  ~FakeRoot() { std::filesystem::remove_all(root_); }

  // Writes `contents` to `path` (absolute, inside the fake root).
  void Write(const std::string& path, const std::string& contents) const {
    const std::filesystem::path file = root_ / path.substr(1);
    std::filesystem::create_directories(file.parent_path());
    std::ofstream(file) << contents;
  }
  void MakeDirectory(const std::string& path) const {
    std::filesystem::create_directories(root_ / path.substr(1));
  }
  std::string path() const { return root_.string(); }

 private:
  std::filesystem::path root_;
};

std::optional<CpuQuota> QuotaOrDie(const FakeRoot& root) {
  absl::StatusOr<std::optional<FoundCpuQuota>> found = FindCpuQuota(root.path());
  EXPECT_TRUE(found.ok()) << found.status();
  if (!found.ok() || !found->has_value()) return std::nullopt;
  return (*found)->quota;
}

constexpr char kV2Mount[] =
    "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n";

// This machine's layout: v1 controllers under /sys/fs/cgroup/<name>, an empty
// v2 tree at /sys/fs/cgroup/unified.
constexpr char kHybridMounts[] =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(ParseCpuMaxTest, MaxMeansNoQuota) {
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCpuMax("max 100000\n");
  ASSERT_TRUE(quota.ok()) << quota.status();
  EXPECT_FALSE(quota->has_value());
}

TEST(ParseCpuMaxTest, ReadsQuotaAndPeriod) {
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCpuMax("50000 100000\n");
  ASSERT_TRUE(quota.ok() && quota->has_value());
  EXPECT_EQ((*quota)->quota_us, 50000);
  EXPECT_EQ((*quota)->period_us, 100000);
}

TEST(ParseCpuMaxTest, RefusesGarbage) {
  EXPECT_FALSE(ParseCpuMax("").ok());
  EXPECT_FALSE(ParseCpuMax("lots 100000").ok());
  EXPECT_FALSE(ParseCpuMax("50000 0").ok());
  EXPECT_FALSE(ParseCpuMax("50000 100000 7").ok());
}

TEST(ParseCfsQuotaTest, MinusOneMeansNoQuota) {
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCfsQuota("-1\n", "100000\n");
  ASSERT_TRUE(quota.ok()) << quota.status();
  EXPECT_FALSE(quota->has_value());
}

TEST(ParseCfsQuotaTest, ReadsQuotaAndPeriod) {
  absl::StatusOr<std::optional<CpuQuota>> quota = ParseCfsQuota("150000\n", "100000\n");
  ASSERT_TRUE(quota.ok() && quota->has_value());
  EXPECT_EQ((*quota)->quota_us, 150000);
  EXPECT_EQ((*quota)->period_us, 100000);
  EXPECT_FALSE(ParseCfsQuota("-5", "100000").ok());
  EXPECT_FALSE(ParseCfsQuota("1000", "x").ok());
}

TEST(ParseProcCgroupTest, ReadsV1AndV2Lines) {
  absl::StatusOr<std::vector<CgroupMembership>> lines =
      ParseProcCgroup("4:cpu,cpuacct:/kubepods/pod1/ctr\n0::/user.slice/a:b\n");
  ASSERT_TRUE(lines.ok()) << lines.status();
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_EQ((*lines)[0].hierarchy_id, 4);
  EXPECT_THAT((*lines)[0].controllers, testing::ElementsAre("cpu", "cpuacct"));
  EXPECT_EQ((*lines)[0].path, "/kubepods/pod1/ctr");
  EXPECT_EQ((*lines)[1].hierarchy_id, 0);
  EXPECT_TRUE((*lines)[1].controllers.empty());
  // A colon in the path belongs to the path.
  EXPECT_EQ((*lines)[1].path, "/user.slice/a:b");
  EXPECT_FALSE(ParseProcCgroup("nonsense\n").ok());
}

TEST(ParseCgroupMountsTest, KeepsCgroupMountsOnly) {
  absl::StatusOr<std::vector<CgroupMount>> mounts = ParseCgroupMounts(kHybridMounts);
  ASSERT_TRUE(mounts.ok()) << mounts.status();
  ASSERT_EQ(mounts->size(), 3u);
  EXPECT_FALSE((*mounts)[0].v2);
  EXPECT_EQ((*mounts)[0].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
  EXPECT_THAT((*mounts)[0].controllers, testing::Contains("cpu"));
  EXPECT_TRUE((*mounts)[2].v2);
  EXPECT_EQ((*mounts)[2].mount_point, "/sys/fs/cgroup/unified");
}

TEST(ParseCgroupMountsTest, UnescapesPaths) {
  absl::StatusOr<std::vector<CgroupMount>> mounts =
      ParseCgroupMounts("7 1 0:5 /a\\040b /mnt/c\\134d rw - cgroup2 none rw\n");
  ASSERT_TRUE(mounts.ok()) << mounts.status();
  ASSERT_EQ(mounts->size(), 1u);
  EXPECT_EQ((*mounts)[0].root, "/a b");
  EXPECT_EQ((*mounts)[0].mount_point, "/mnt/c\\d");
}

TEST(CgroupDirectoryTest, MapsPathBelowTheMountRoot) {
  CgroupMount whole{true, "/", "/sys/fs/cgroup", {}};
  EXPECT_EQ(CgroupDirectory(whole, "/"), "/sys/fs/cgroup");
  EXPECT_EQ(CgroupDirectory(whole, "/kubepods/pod1"), "/sys/fs/cgroup/kubepods/pod1");
  CgroupMount partial{true, "/kubepods", "/sys/fs/cgroup", {}};
  EXPECT_EQ(CgroupDirectory(partial, "/kubepods/pod1"), "/sys/fs/cgroup/pod1");
  EXPECT_EQ(CgroupDirectory(partial, "/kubepods"), "/sys/fs/cgroup");
  // Not "/kubepods-other": a prefix of the name is not an ancestor.
  EXPECT_EQ(CgroupDirectory(partial, "/kubepods-other/x"), "/sys/fs/cgroup");
}

TEST(CgroupDirectoryTest, PathOutsideTheMountRootIsTheMountPoint) {
  CgroupMount own{false, "/docker/abc", "/sys/fs/cgroup/cpu", {"cpu"}};
  EXPECT_EQ(CgroupDirectory(own, "/system.slice/docker-abc.scope"), "/sys/fs/cgroup/cpu");
  CgroupMount whole{true, "/", "/sys/fs/cgroup", {}};
  EXPECT_EQ(CgroupDirectory(whole, "/../../outside"), "/sys/fs/cgroup");
}

TEST(FindCpuQuotaTest, V2QuotaOfOwnCgroup) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kV2Mount);
  root.Write("/proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
  root.Write("/sys/fs/cgroup/cpu.max", "max 100000\n");
  root.Write("/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "50000 100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 50000);
  EXPECT_EQ(quota->period_us, 100000);
}

TEST(FindCpuQuotaTest, V2WithoutQuota) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kV2Mount);
  root.Write("/proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
  root.Write("/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  EXPECT_FALSE(QuotaOrDie(root).has_value());
}

TEST(FindCpuQuotaTest, AncestorQuotaBoundsNestedCgroup) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kV2Mount);
  root.Write("/proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
  root.Write("/sys/fs/cgroup/kubepods/cpu.max", "400000 100000\n");
  root.Write("/sys/fs/cgroup/kubepods/pod1/cpu.max", "25000 50000\n");
  root.Write("/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 25000);
  EXPECT_EQ(quota->period_us, 50000);
}

TEST(FindCpuQuotaTest, V1OnlyQuota) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo",
             "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
             "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n");
  root.Write("/proc/self/cgroup",
             "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 150000);
  EXPECT_EQ(WorkerThreadsFor(quota, 8).threads, 1);
}

TEST(FindCpuQuotaTest, HybridWithoutQuotaAnywhere) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kHybridMounts);
  root.Write("/proc/self/cgroup", "4:memory:/process_api/c831\n1:cpu,cpuacct:/\n0::/\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  root.MakeDirectory("/sys/fs/cgroup/unified");
  EXPECT_FALSE(QuotaOrDie(root).has_value());
}

TEST(FindCpuQuotaTest, HybridTakesTheTighterOfV1AndV2) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kHybridMounts);
  root.Write("/proc/self/cgroup", "1:cpu,cpuacct:/app\n0::/app\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_quota_us", "300000\n");
  root.Write("/sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_period_us", "100000\n");
  root.Write("/sys/fs/cgroup/unified/app/cpu.max", "100000 100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 100000);
}

TEST(FindCpuQuotaTest, ContainerCgroupMountedAtTheMountPoint) {
  // Docker without a cgroup namespace: /proc/self/cgroup shows the host's
  // path, and the mount shows only the container's own cgroup.
  FakeRoot root;
  root.Write("/proc/self/mountinfo",
             "1200 1100 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
  root.Write("/proc/self/cgroup", "3:cpu:/docker/abc\n");
  root.Write("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n");
  root.Write("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 50000);
}

TEST(FindCpuQuotaTest, CgroupPathOutsideTheMountedRoot) {
  // The mount shows the container's cgroup, /proc/self/cgroup a path from a
  // view that is not below it: the mount point is the container's cgroup.
  FakeRoot root;
  root.Write("/proc/self/mountinfo",
             "1200 1100 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  root.Write("/proc/self/cgroup", "0::/system.slice/containerd.service\n");
  root.Write("/sys/fs/cgroup/cpu.max", "200000 100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 200000);
}

TEST(FindCpuQuotaTest, CgroupDirectoryMissingFallsBackToTheMountPoint) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kV2Mount);
  root.Write("/proc/self/cgroup", "0::/gone/elsewhere\n");
  root.Write("/sys/fs/cgroup/cpu.max", "150000 100000\n");
  std::optional<CpuQuota> quota = QuotaOrDie(root);
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, 150000);
}

TEST(FindCpuQuotaTest, NoProcMeansNoQuota) {
  FakeRoot root;
  EXPECT_FALSE(QuotaOrDie(root).has_value());
}

TEST(FindCpuQuotaTest, MalformedQuotaFileIsAnErrorNamingIt) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo", kV2Mount);
  root.Write("/proc/self/cgroup", "0::/\n");
  root.Write("/sys/fs/cgroup/cpu.max", "lots\n");
  absl::StatusOr<std::optional<FoundCpuQuota>> found = FindCpuQuota(root.path());
  ASSERT_FALSE(found.ok());
  EXPECT_THAT(found.status().message(), HasSubstr("/sys/fs/cgroup/cpu.max"));
}

TEST(WorkerThreadsForTest, OnePerTwoCpusOfTheQuotaRoundedUp) {
  WorkerThreadChoice half = WorkerThreadsFor(CpuQuota{50000, 100000}, 16);
  EXPECT_EQ(half.threads, 1);
  EXPECT_EQ(half.reason, "cgroup cpu quota 50000/100000: one thread per 2 CPUs");
  EXPECT_EQ(WorkerThreadsFor(CpuQuota{150000, 100000}, 16).threads, 1);
  EXPECT_EQ(WorkerThreadsFor(CpuQuota{350000, 100000}, 16).threads, 2);
  EXPECT_EQ(WorkerThreadsFor(CpuQuota{1000, 100000}, 16).threads, 1);
}

TEST(WorkerThreadsForTest, CappedByUsableCpus) {
  WorkerThreadChoice choice = WorkerThreadsFor(CpuQuota{800000, 100000}, 4);
  EXPECT_EQ(choice.threads, 2);
  EXPECT_THAT(choice.reason, HasSubstr("capped at 4 CPUs"));
}

TEST(WorkerThreadsForTest, WithoutQuotaOnePerTwoCpus) {
  WorkerThreadChoice choice = WorkerThreadsFor(std::nullopt, 2);
  EXPECT_EQ(choice.threads, 1);
  EXPECT_EQ(choice.reason, "2 CPUs, no quota: one thread per 2 CPUs");
  EXPECT_EQ(WorkerThreadsFor(std::nullopt, 16).threads, 8);
  EXPECT_EQ(WorkerThreadsFor(std::nullopt, 1).threads, 1);
}

TEST(UsableCpusTest, AtLeastOneAndNoMoreThanTheMachine) {
  EXPECT_GE(UsableCpus(), 1);
  const int machine = static_cast<int>(std::thread::hardware_concurrency());
  if (machine > 0) {
    EXPECT_LE(UsableCpus(), machine);
  }
}

}  // namespace
}  // namespace poolside
