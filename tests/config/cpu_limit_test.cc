#include "config/cpu_limit.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside {
namespace {

using ::testing::HasSubstr;

// A file to write into a FakeRoot, or an empty directory to make there
// (contents kEmptyDirectory). `path` is absolute, as the process sees it.
struct FakeEntry {
  std::string path;
  std::optional<std::string> contents;
};

const std::optional<std::string> kEmptyDirectory = std::nullopt;

// A fake file system root holding /proc/self and cgroup trees, removed at
// the end of the test.
class FakeRoot {
 public:
  explicit FakeRoot(const std::vector<FakeEntry>& entries) {
    const testing::TestInfo* test = testing::UnitTest::GetInstance()->current_test_info();
    // Parameterized tests have '/' in their names; keep the root one directory.
    root_ = std::filesystem::path(testing::TempDir()) /
            absl::StrReplaceAll(absl::StrCat("cpu_limit_", test->test_suite_name(), "_",
                                             test->name(), "_", getpid()),
                                {{"/", "_"}});
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
    for (const FakeEntry& entry : entries) {
      const std::filesystem::path file = root_ / entry.path.substr(1);
      if (!entry.contents.has_value()) {
        std::filesystem::create_directories(file);
        continue;
      }
      std::filesystem::create_directories(file.parent_path());
      std::ofstream(file) << *entry.contents;
    }
  }
  ~FakeRoot() { std::filesystem::remove_all(root_); }
  FakeRoot(const FakeRoot&) = delete;
  FakeRoot& operator=(const FakeRoot&) = delete;

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

// One layout of cgroup files and the quota FindCpuQuota must find in it.
struct QuotaCase {
  // The test's name.
  std::string name;
  std::vector<FakeEntry> entries;
  std::optional<CpuQuota> expected;
};

// For failure messages: the case's name rather than its bytes.
void PrintTo(const QuotaCase& quota_case, std::ostream* os) { *os << quota_case.name; }

constexpr std::nullopt_t kNoQuota = std::nullopt;

// cgroup v1 only: the cpu,cpuacct hierarchy has no quota at its root, 1.5
// CPUs on the container's cgroup.
const std::vector<FakeEntry> kV1OnlyQuotaEntries = {
    {"/proc/self/mountinfo",
     "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
     "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"},
    {"/proc/self/cgroup",
     "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"},
    {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"},
    {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"},
    {"/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n"},
    {"/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n"},
};

const QuotaCase kQuotaCases[] = {
    {"V2QuotaOfOwnCgroup",
     {{"/proc/self/mountinfo", kV2Mount},
      {"/proc/self/cgroup", "0::/kubepods/pod1/ctr\n"},
      {"/sys/fs/cgroup/cpu.max", "max 100000\n"},
      {"/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "50000 100000\n"}},
     CpuQuota{50000, 100000}},
    {"V2WithoutQuota",
     {{"/proc/self/mountinfo", kV2Mount},
      {"/proc/self/cgroup", "0::/kubepods/pod1/ctr\n"},
      {"/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n"}},
     kNoQuota},
    {"AncestorQuotaBoundsNestedCgroup",
     {{"/proc/self/mountinfo", kV2Mount},
      {"/proc/self/cgroup", "0::/kubepods/pod1/ctr\n"},
      {"/sys/fs/cgroup/kubepods/cpu.max", "400000 100000\n"},
      {"/sys/fs/cgroup/kubepods/pod1/cpu.max", "25000 50000\n"},
      {"/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n"}},
     CpuQuota{25000, 50000}},
    {"V1OnlyQuota", kV1OnlyQuotaEntries, CpuQuota{150000, 100000}},
    {"HybridWithoutQuotaAnywhere",
     {{"/proc/self/mountinfo", kHybridMounts},
      {"/proc/self/cgroup", "4:memory:/process_api/c831\n1:cpu,cpuacct:/\n0::/\n"},
      {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"},
      {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"},
      {"/sys/fs/cgroup/unified", kEmptyDirectory}},
     kNoQuota},
    {"HybridTakesTheTighterOfV1AndV2",
     {{"/proc/self/mountinfo", kHybridMounts},
      {"/proc/self/cgroup", "1:cpu,cpuacct:/app\n0::/app\n"},
      {"/sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_quota_us", "300000\n"},
      {"/sys/fs/cgroup/cpu,cpuacct/app/cpu.cfs_period_us", "100000\n"},
      {"/sys/fs/cgroup/unified/app/cpu.max", "100000 100000\n"}},
     CpuQuota{100000, 100000}},
    // Docker without a cgroup namespace: /proc/self/cgroup shows the host's
    // path, and the mount shows only the container's own cgroup.
    {"ContainerCgroupMountedAtTheMountPoint",
     {{"/proc/self/mountinfo",
       "1200 1100 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"},
      {"/proc/self/cgroup", "3:cpu:/docker/abc\n"},
      {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n"},
      {"/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"}},
     CpuQuota{50000, 100000}},
    // The mount shows the container's cgroup, /proc/self/cgroup a path from a
    // view that is not below it: the mount point is the container's cgroup.
    {"CgroupPathOutsideTheMountedRoot",
     {{"/proc/self/mountinfo",
       "1200 1100 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"},
      {"/proc/self/cgroup", "0::/system.slice/containerd.service\n"},
      {"/sys/fs/cgroup/cpu.max", "200000 100000\n"}},
     CpuQuota{200000, 100000}},
    {"CgroupDirectoryMissingFallsBackToTheMountPoint",
     {{"/proc/self/mountinfo", kV2Mount},
      {"/proc/self/cgroup", "0::/gone/elsewhere\n"},
      {"/sys/fs/cgroup/cpu.max", "150000 100000\n"}},
     CpuQuota{150000, 100000}},
    {"NoProcMeansNoQuota", {}, kNoQuota},
};

class FindCpuQuotaTest : public testing::TestWithParam<QuotaCase> {};

TEST_P(FindCpuQuotaTest, FindsTheTightestQuota) {
  const QuotaCase& quota_case = GetParam();
  std::optional<CpuQuota> quota = QuotaOrDie(FakeRoot(quota_case.entries));
  if (!quota_case.expected.has_value()) {
    EXPECT_FALSE(quota.has_value());
    return;
  }
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(quota->quota_us, quota_case.expected->quota_us);
  EXPECT_EQ(quota->period_us, quota_case.expected->period_us);
}

INSTANTIATE_TEST_SUITE_P(CgroupLayouts, FindCpuQuotaTest, testing::ValuesIn(kQuotaCases),
                         [](const testing::TestParamInfo<QuotaCase>& info) {
                           return info.param.name;
                         });

TEST(FindCpuQuotaErrorTest, MalformedQuotaFileIsAnErrorNamingIt) {
  const FakeRoot root({{"/proc/self/mountinfo", kV2Mount},
                       {"/proc/self/cgroup", "0::/\n"},
                       {"/sys/fs/cgroup/cpu.max", "lots\n"}});
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

TEST(WorkerThreadsForTest, OneForTheV1OnlyQuotaOnEightCpus) {
  std::optional<CpuQuota> quota = QuotaOrDie(FakeRoot(kV1OnlyQuotaEntries));
  ASSERT_TRUE(quota.has_value());
  EXPECT_EQ(WorkerThreadsFor(quota, 8).threads, 1);
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
