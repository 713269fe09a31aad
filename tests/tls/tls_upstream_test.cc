// poolside speaking TLS and mTLS to a real TLS upstream, with certificates
// made by openssl at test time: verification, server names, refusal without
// a client certificate, and certificate rotation without a restart; with
// either forwarder.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/e2e/e2e_test_base.h"
#include "tests/support/admin_http.h"
#include "tests/support/dns_responder.h"
#include "tests/support/files.h"
#include "tests/support/generic_client.h"
#include "tests/support/poolside_process.h"

namespace poolside::test {
namespace {

// A scratch directory of certificates, removed with the object.
class CertificateDirectory {
 public:
  CertificateDirectory() {
    char pattern[] = "/tmp/poolside-tls-XXXXXX";
    dir_ = mkdtemp(pattern);
  }
  ~CertificateDirectory() { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // A self-signed CA: <name>.pem and <name>.key.
  bool MakeCa(const std::string& name) {
    return Run(
        absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
                     "-nodes -days 1 -subj '/CN=",
                     name, "' -keyout ", Path(name + ".key"), " -out ", Path(name + ".pem")));
  }

  // A leaf certificate for DNS name `dns`, signed by `ca`.
  bool MakeLeaf(const std::string& name, const std::string& ca, const std::string& dns) {
    std::ofstream(Path(name + ".ext")) << "subjectAltName=DNS:" << dns << "\n";
    return Run(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                            "-subj '/CN=",
                            dns, "' -keyout ", Path(name + ".key"), " -out ",
                            Path(name + ".csr"))) &&
           Run(absl::StrCat("openssl x509 -req -days 1 -in ", Path(name + ".csr"), " -CA ",
                            Path(ca + ".pem"), " -CAkey ", Path(ca + ".key"),
                            " -CAcreateserial -extfile ", Path(name + ".ext"), " -out ",
                            Path(name + ".pem")));
  }

  // Replaces `to` with `from` in one rename, as a secret rotation does.
  bool Rotate(const std::string& from, const std::string& to) {
    return Run(absl::StrCat("cp ", Path(from), " ", Path(to + ".new"), " && mv ", Path(to + ".new"),
                            " ", Path(to)));
  }

 private:
  static bool Run(const std::string& command) {
    return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
  }

  std::string dir_;
};

// Echoes each message back; records the distinct TCP connections calls use.
class EchoReactor : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor() { StartRead(&message_); }
  void OnReadDone(bool ok) override {
    if (ok) {
      StartWrite(&message_);
    } else {
      Finish(grpc::Status::OK);
    }
  }
  void OnWriteDone(bool ok) override {
    if (ok) {
      StartRead(&message_);
    } else {
      Finish(grpc::Status::CANCELLED);
    }
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class TlsEchoServer : public grpc::CallbackGenericService {
 public:
  // Serves with `cert`/`key`; with `client_ca` non-empty, requires client
  // certificates signed by it.
  TlsEchoServer(const CertificateDirectory& certs, const std::string& leaf,
                const std::string& client_ca) {
    grpc::SslServerCredentialsOptions options(
        client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    if (!client_ca.empty()) options.pem_root_certs = ReadFile(certs.Path(client_ca + ".pem"));
    options.pem_key_cert_pairs.push_back(
        {ReadFile(certs.Path(leaf + ".key")), ReadFile(certs.Path(leaf + ".pem"))});
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(options), &port_);
    builder.RegisterCallbackGenericService(this);
    server_ = builder.BuildAndStart();
  }
  ~TlsEchoServer() override { server_->Shutdown(std::chrono::system_clock::now()); }

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    std::lock_guard<std::mutex> lock(mutex_);
    peers_.insert(context->peer());
    return new EchoReactor();
  }

  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  int port() const { return port_; }
  size_t DistinctPeers() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peers_.size();
  }

 private:
  int port_ = 0;
  std::mutex mutex_;
  std::set<std::string> peers_;
  std::unique_ptr<grpc::Server> server_;
};

// One echo call of `message` through `channel`.
CallResult Echo(const std::shared_ptr<grpc::Channel>& channel, const std::string& message) {
  return UnaryCall(channel, "/tls.Echo/Unary", message);
}

// The parameter is GRPC_FORWARDER: both forwarders speak TLS to the
// upstream, each with its own TLS stack (grpc's; the relay's OpenSSL).
class TlsUpstreamTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.MakeCa("ca"));
    ASSERT_TRUE(certs_.MakeLeaf("server", "ca", "upstream.test"));
    ASSERT_TRUE(certs_.MakeLeaf("client", "ca", "client.test"));
  }

  // The upstream serves the "server" certificate; with `client_ca` non-empty,
  // it requires client certificates signed by it.
  void StartUpstream(const std::string& client_ca) {
    upstream_ = std::make_unique<TlsEchoServer>(certs_, "server", client_ca);
  }

  // REQUIRES: StartUpstream.
  Environment TlsEnvironment() {
    return {{"GRPC_UPSTREAM_TARGET", upstream_->target()},
            {"GRPC_FORWARDER", GetParam()},
            {"GRPC_UPSTREAM_TLS", "true"},
            {"GRPC_UPSTREAM_CA_FILE", certs_.Path("ca.pem")},
            {"GRPC_UPSTREAM_SERVER_NAME", "upstream.test"},
            {"GRPC_CONNECTION_POOL_SIZE", "2"},
            {"GRPC_CONNECTION_TIMEOUT_SECS", "2"},
            {"GRPC_HEALTH_CHECK_INTERVAL_SECS", "1"}};
  }

  // TlsEnvironment plus the client certificate "client" for mutual TLS.
  Environment MutualTlsEnvironment() {
    Environment env = TlsEnvironment();
    env["GRPC_UPSTREAM_CERT_FILE"] = certs_.Path("client.pem");
    env["GRPC_UPSTREAM_KEY_FILE"] = certs_.Path("client.key");
    return env;
  }

  // Starts poolside with `env` and waits until it serves; a fatal failure
  // otherwise, so call it inside ASSERT_NO_FATAL_FAILURE.
  void StartPoolside(Environment env) {
    poolside_ = std::make_unique<PoolsideProcess>(std::move(env));
    ASSERT_TRUE(poolside_->Start().ok());
    ASSERT_TRUE(poolside_->WaitUntilServing(kStartTimeout).ok());
  }

  // One echo call on a new connection to poolside.
  CallResult EchoThroughPoolside(const std::string& message) {
    return Echo(CreateTestChannel(poolside_->listen_target()), message);
  }

  CertificateDirectory certs_;
  // In this order so that poolside stops before its upstream, and both
  // before the certificates are removed.
  std::unique_ptr<TlsEchoServer> upstream_;
  std::unique_ptr<PoolsideProcess> poolside_;
};

TEST_P(TlsUpstreamTest, ForwardsOverTlsVerifyingTheServerName) {
  StartUpstream(/*client_ca=*/"");
  ASSERT_NO_FATAL_FAILURE(StartPoolside(TlsEnvironment()));

  const CallResult result = EchoThroughPoolside("over tls");
  ASSERT_TRUE(result.status.ok()) << result << Tail(poolside_->Stderr());
  EXPECT_EQ(result.responses, std::vector<std::string>{"over tls"});
}

// poolside resolves the name and connects to its address, yet checks the
// certificate against the name, as one channel to the name would.
TEST_P(TlsUpstreamTest, ResolvedNameIsStillTheNameTheCertificateIsCheckedAgainst) {
  StartUpstream(/*client_ca=*/"");
  DnsResponder dns("upstream.test");
  ASSERT_TRUE(dns.Start().ok());
  dns.SetAddresses({"127.0.0.1"});
  Environment env = TlsEnvironment();
  env.erase("GRPC_UPSTREAM_SERVER_NAME");
  env["GRPC_UPSTREAM_TARGET"] =
      absl::StrCat("dns://", dns.address(), "/upstream.test:", upstream_->port());
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));

  const CallResult result = EchoThroughPoolside("by name");
  ASSERT_TRUE(result.status.ok()) << result << Tail(poolside_->Stderr());
  EXPECT_NE(poolside_->Stderr().find("has 1 address: 127.0.0.1:"), std::string::npos)
      << "not resolved by poolside: " << Tail(poolside_->Stderr());
  poolside_->Terminate();
  EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(30)), 0);
}

TEST_P(TlsUpstreamTest, ForwardsWithMutualTls) {
  StartUpstream(/*client_ca=*/"ca");
  ASSERT_NO_FATAL_FAILURE(StartPoolside(MutualTlsEnvironment()));

  const CallResult result = EchoThroughPoolside("mtls");
  EXPECT_TRUE(result.status.ok()) << result << Tail(poolside_->Stderr());
}

TEST_P(TlsUpstreamTest, UpstreamRequiringAClientCertificateIsUnavailableWithoutOne) {
  StartUpstream(/*client_ca=*/"ca");
  ASSERT_NO_FATAL_FAILURE(StartPoolside(TlsEnvironment()));

  const CallResult result = EchoThroughPoolside("x");
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
}

TEST_P(TlsUpstreamTest, WrongCaFailsLoudlyAndMakesThePoolUnhealthy) {
  ASSERT_TRUE(certs_.MakeCa("other-ca"));
  StartUpstream(/*client_ca=*/"");
  Environment env = TlsEnvironment();
  env["GRPC_UPSTREAM_CA_FILE"] = certs_.Path("other-ca.pem");
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));
  auto channel = CreateTestChannel(poolside_->listen_target());

  const CallResult result = Echo(channel, "x");
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
  if (GetParam() == "frames") {
    // The frame forwarder serves no PoolAdmin: its readiness says the same.
    EXPECT_FALSE(HttpGet(poolside_->admin_port(), "/readyz").ok());
  } else {
    const auto health = AdminHealthCheck(channel);
    ASSERT_TRUE(health.ok());
    EXPECT_EQ(health->status(), "unhealthy");
  }
  // The health monitor (the relay, with frames) names the cause.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (poolside_->Stderr().find("certificate verify failed") == std::string::npos &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(poolside_->Stderr().find("certificate verify failed"), std::string::npos)
      << "the log must say why: " << Tail(poolside_->Stderr());
}

TEST_P(TlsUpstreamTest, WrongServerNameFails) {
  StartUpstream(/*client_ca=*/"");
  Environment env = TlsEnvironment();
  env["GRPC_UPSTREAM_SERVER_NAME"] = "someone-else.test";
  ASSERT_NO_FATAL_FAILURE(StartPoolside(env));

  const CallResult result = EchoThroughPoolside("x");
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result;
}

TEST_P(TlsUpstreamTest, RotatedClientCertificateRollsConnectionsWithoutFailingCalls) {
  ASSERT_TRUE(certs_.MakeLeaf("client-2", "ca", "client.test"));
  StartUpstream(/*client_ca=*/"ca");
  ASSERT_NO_FATAL_FAILURE(StartPoolside(MutualTlsEnvironment()));
  auto channel = CreateTestChannel(poolside_->listen_target());
  ASSERT_TRUE(Echo(channel, "before").status.ok());

  ASSERT_TRUE(certs_.Rotate("client-2.key", "client.key"));
  ASSERT_TRUE(certs_.Rotate("client-2.pem", "client.pem"));

  // Calls keep succeeding while both connections are replaced.
  int failed = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (upstream_->DistinctPeers() < 4 && absl::Now() < deadline) {
    if (!Echo(channel, "during").status.ok()) ++failed;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GE(upstream_->DistinctPeers(), 4u) << Tail(poolside_->Stderr());
  EXPECT_EQ(failed, 0);
  EXPECT_NE(poolside_->Stderr().find("rolling 2 connections"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Forwarders, TlsUpstreamTest, ::testing::Values("grpc", "frames"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace poolside::test
