#include "config/memory_limit.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace poolside {
namespace {

// A scratch cgroup root, removed at the end.
class MemoryLimitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/poolside-cgroup-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    unlink((root_ + "/memory.max").c_str());
    unlink((root_ + "/memory/memory.limit_in_bytes").c_str());
    rmdir((root_ + "/memory").c_str());
    rmdir(root_.c_str());
  }
  void Write(const std::string& relative, const std::string& text) {
    if (relative.find('/') != std::string::npos) mkdir((root_ + "/memory").c_str(), 0700);
    std::ofstream(root_ + "/" + relative) << text;
  }
  std::string root_;
};

TEST_F(MemoryLimitTest, ReadsCgroupV2MemoryMax) {
  Write("memory.max", "134217728\n");
  EXPECT_EQ(ContainerMemoryLimitBytes(root_), 134217728);
  EXPECT_EQ(DefaultMemoryLimitBytes(ContainerMemoryLimitBytes(root_)), 100663296);
}

TEST_F(MemoryLimitTest, CgroupV2MaxMeansNoLimit) {
  Write("memory.max", "max\n");
  EXPECT_FALSE(ContainerMemoryLimitBytes(root_).has_value());
  EXPECT_EQ(DefaultMemoryLimitBytes(std::nullopt), 0);
}

TEST_F(MemoryLimitTest, ReadsCgroupV1LimitAndItsUnlimitedSentinel) {
  Write("memory/memory.limit_in_bytes", "268435456\n");
  EXPECT_EQ(ContainerMemoryLimitBytes(root_), 268435456);
  Write("memory/memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_FALSE(ContainerMemoryLimitBytes(root_).has_value());
}

TEST_F(MemoryLimitTest, NoCgroupFilesMeansNoLimit) {
  EXPECT_FALSE(ContainerMemoryLimitBytes(root_).has_value());
}

}  // namespace
}  // namespace poolside
