// ParseUpstreamTarget: what each target form resolves to and which name the
// channels keep as their authority.
#include "pool/upstream_target.h"

#include <gtest/gtest.h>

namespace poolside {
namespace {

std::vector<std::string> Labels(const UpstreamTarget& target) {
  std::vector<std::string> labels;
  for (const BackendAddress& address : target.addresses) labels.push_back(address.label);
  return labels;
}

TEST(UpstreamTargetTest, DnsTargetWithoutServerIsLookedUpThroughTheSystem) {
  absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget("dns:///my-service.ns:50051");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->kind, UpstreamTarget::Kind::kDns);
  EXPECT_EQ(target->host, "my-service.ns");
  EXPECT_EQ(target->port, 50051);
  EXPECT_EQ(target->dns_server, "");
  EXPECT_EQ(target->default_authority, "my-service.ns:50051");
}

TEST(UpstreamTargetTest, DnsTargetNamesItsServerAndDefaultsPorts) {
  absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget("dns://127.0.0.1:5353/backends");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->dns_server, "127.0.0.1:5353");
  EXPECT_EQ(target->port, 443);
  EXPECT_EQ(target->default_authority, "backends");
  EXPECT_EQ(ParseUpstreamTarget("dns://[::1]/b:1")->dns_server, "[::1]:53");
  EXPECT_FALSE(ParseUpstreamTarget("dns://resolver.example/b:1").ok());
}

TEST(UpstreamTargetTest, HostPortIsADnsName) {
  absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget("localhost:8080");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->kind, UpstreamTarget::Kind::kDns);
  EXPECT_EQ(target->host, "localhost");
  EXPECT_EQ(target->default_authority, "localhost:8080");
}

TEST(UpstreamTargetTest, IpLiteralsAreFixed) {
  absl::StatusOr<UpstreamTarget> v4 = ParseUpstreamTarget("127.0.0.1:80");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->kind, UpstreamTarget::Kind::kFixed);
  EXPECT_EQ(Labels(*v4), std::vector<std::string>{"127.0.0.1:80"});
  EXPECT_EQ(v4->addresses[0].channel_target, "ipv4:127.0.0.1:80");
  absl::StatusOr<UpstreamTarget> v6 = ParseUpstreamTarget("dns:///[::1]:80");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->addresses[0].channel_target, "ipv6:[::1]:80");
}

TEST(UpstreamTargetTest, AddressListsKeepTheirOrderWithoutDuplicates) {
  absl::StatusOr<UpstreamTarget> target =
      ParseUpstreamTarget("ipv4:10.0.0.2:1,10.0.0.1:1,10.0.0.2:1");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(Labels(*target), (std::vector<std::string>{"10.0.0.2:1", "10.0.0.1:1"}));
  EXPECT_EQ(target->default_authority, "10.0.0.2:1,10.0.0.1:1,10.0.0.2:1");
  absl::StatusOr<UpstreamTarget> v6 = ParseUpstreamTarget("ipv6:///[::1]:5,[fd00::7]:5");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(Labels(*v6), (std::vector<std::string>{"[::1]:5", "[fd00::7]:5"}));
  EXPECT_FALSE(ParseUpstreamTarget("ipv4:10.0.0.1").ok());
  EXPECT_FALSE(ParseUpstreamTarget("ipv4:name:1").ok());
}

TEST(UpstreamTargetTest, UnixSocketIsOneBackendNamedByTheTarget) {
  absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget("unix:///run/app.sock");
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->kind, UpstreamTarget::Kind::kFixed);
  ASSERT_EQ(target->addresses.size(), 1u);
  EXPECT_EQ(target->addresses[0].channel_target, "unix:///run/app.sock");
}

}  // namespace
}  // namespace poolside
