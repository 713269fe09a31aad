// Shared pieces of the end-to-end tests: a fixture that runs poolside as a
// child process (and shows its output when a test fails) and deterministic
// random payloads.
#ifndef POOLSIDE_TESTS_E2E_E2E_TEST_BASE_H_
#define POOLSIDE_TESTS_E2E_E2E_TEST_BASE_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "poolside/admin/v1/admin.grpc.pb.h"
#include "tests/support/payloads.h"
#include "tests/support/poolside_process.h"

namespace poolside::test {

// How long poolside may take to start listening.
inline constexpr absl::Duration kStartTimeout = absl::Seconds(10);

// The last `n` characters of `text`.
inline std::string Tail(const std::string& text, size_t n = 6000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

// poolside's admin RPCs, each bounded by a 5 s deadline.
inline absl::StatusOr<admin::v1::HealthCheckResponse> AdminHealthCheck(
    const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  admin::v1::HealthCheckResponse response;
  const grpc::Status status = admin::v1::PoolAdmin::NewStub(channel)->HealthCheck(
      &context, admin::v1::HealthCheckRequest(), &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return response;
}

inline absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> AdminPoolMetrics(
    const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  admin::v1::GetConnectionPoolMetricsResponse response;
  const grpc::Status status = admin::v1::PoolAdmin::NewStub(channel)->GetConnectionPoolMetrics(
      &context, admin::v1::GetConnectionPoolMetricsRequest(), &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return response;
}

// Polls poolside's HealthCheck until it reports `wanted` ("healthy",
// "degraded", "unhealthy") or `timeout` passes; the last status seen (or the
// RPC's error).
inline std::string AwaitHealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                                     const std::string& wanted, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  while (true) {
    absl::StatusOr<admin::v1::HealthCheckResponse> response = AdminHealthCheck(channel);
    last = response.ok() ? response->status() : response.status().ToString();
    if (last == wanted || absl::Now() > deadline) return last;
    // poolside cannot notify a test of a state change: poll, briefly.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Polls poolside's GetConnectionPoolMetrics until `n` connections are
// active or `timeout` passes; the last active_connections seen (-1: error).
inline int64_t AwaitActiveConnections(const std::shared_ptr<grpc::Channel>& channel, int64_t n,
                                      absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<admin::v1::GetConnectionPoolMetricsResponse> metrics = AdminPoolMetrics(channel);
    const int64_t active = metrics.ok() ? static_cast<int64_t>(metrics->active_connections()) : -1;
    if (active == n || absl::Now() > deadline) return active;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Runs poolside for one test. Afterwards it must exit 0 on SIGTERM (under
// the sanitizers, that also checks its shutdown for errors and leaks); on
// failure, prints what it logged.
class E2eTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (poolside_ != nullptr && poolside_->running()) {
      poolside_->Terminate();
      EXPECT_EQ(poolside_->WaitForExit(absl::Seconds(30)), 0)
          << "poolside did not exit cleanly on SIGTERM after the test";
    }
    if (HasFailure() && poolside_ != nullptr) {
      std::cerr << "---- poolside stderr ----\n"
                << Tail(poolside_->Stderr()) << "\n---- poolside stdout ----\n"
                << Tail(poolside_->Stdout()) << "\n----\n";
    }
  }

  // Starts poolside with `env` and waits until it serves; a fatal failure
  // otherwise, so call it inside ASSERT_NO_FATAL_FAILURE.
  void StartPoolside(Environment env, std::vector<std::string> args = {}) {
    poolside_ = std::make_unique<PoolsideProcess>(std::move(env), std::move(args));
    absl::Status status = poolside_->Start();
    if (status.ok()) status = poolside_->WaitUntilServing(kStartTimeout);
    ASSERT_TRUE(status.ok()) << status;
  }

  std::unique_ptr<PoolsideProcess> poolside_;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_E2E_E2E_TEST_BASE_H_
