// The hot-path recorders and what RequestMetrics makes of them at scrape time.
#include "metrics/call_recorder.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "metrics/method_table.h"
#include "metrics/request_metrics.h"
#include "tests/metrics/prometheus_text.h"

namespace poolside {
namespace {

using ::poolside::test::Exposition;
using ::poolside::test::ParseExposition;

Exposition Scrape(const RequestMetrics& metrics) {
  absl::StatusOr<Exposition> parsed =
      ParseExposition(prometheus::TextSerializer().Serialize(metrics.Collect()));
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *std::move(parsed) : Exposition{};
}

TEST(ParseMethodPathTest, SplitsServiceAndMethod) {
  std::optional<MethodLabels> labels = ParseMethodPath("/helloworld.Greeter/SayHello");
  ASSERT_TRUE(labels.has_value());
  EXPECT_EQ(labels->service, "helloworld.Greeter");
  EXPECT_EQ(labels->method, "SayHello");
}

TEST(ParseMethodPathTest, RejectsMalformedPaths) {
  for (const char* path :
       {"", "/", "//", "noslash", "pkg.Service/Method", "/pkg.Service", "/pkg.Service/", "//Method",
        "/a/b/c", "/pkg Service/Method", "/pkg.Service/Meth\xc3\xa9od", "/pkg.Service/Method\n"}) {
    EXPECT_FALSE(ParseMethodPath(path).has_value()) << path;
  }
  EXPECT_FALSE(ParseMethodPath("/s/" + std::string(kMaxMethodPathLength, 'm')).has_value());
}

TEST(MethodTableTest, AssignsDenseIdsThenFoldsIntoOther) {
  MethodTable table(2);
  const MethodId a = table.Find("/pkg.A/Get");
  const MethodId b = table.Find("/pkg.B/Get");
  EXPECT_NE(a, kOtherMethod);
  EXPECT_NE(b, kOtherMethod);
  EXPECT_NE(a, b);
  EXPECT_EQ(table.Find("/pkg.A/Get"), a);
  EXPECT_EQ(table.Find("/pkg.C/Get"), kOtherMethod);
  EXPECT_EQ(table.Find("/pkg.B/Get"), b);  // still found once the table is full
  const std::vector<MethodLabels> labels = table.Labels();
  ASSERT_EQ(labels.size(), 3u);
  EXPECT_EQ(labels[kOtherMethod].service, "other");
  EXPECT_EQ(labels[kOtherMethod].method, "other");
  EXPECT_EQ(labels[a].service, "pkg.A");
}

TEST(MethodTableTest, MalformedPathsTakeNoSlot) {
  MethodTable table(1);
  EXPECT_EQ(table.Find("garbage"), kOtherMethod);
  EXPECT_EQ(table.Find("/no-second-slash"), kOtherMethod);
  EXPECT_NE(table.Find("/pkg.A/Get"), kOtherMethod);
}

TEST(CallRecorderTest, RecordsCallUnderServiceMethodAndCode) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
  const MethodId say_hello = recorder->Method("/helloworld.Greeter/SayHello");
  recorder->RecordCall(say_hello, grpc::StatusCode::OK, absl::Milliseconds(3));
  recorder->RecordCall(say_hello, grpc::StatusCode::OK, absl::Milliseconds(4));
  recorder->RecordCall(say_hello, grpc::StatusCode::DEADLINE_EXCEEDED, absl::Seconds(2));

  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.types.at("poolside_requests_total"), "counter");
  EXPECT_EQ(scrape.types.at("poolside_request_duration_seconds"), "histogram");
  const std::map<std::string, std::string> method = {{"grpc_service", "helloworld.Greeter"},
                                                     {"grpc_method", "SayHello"}};
  auto with_code = [&](const char* code) {
    std::map<std::string, std::string> labels = method;
    labels["grpc_code"] = code;
    return labels;
  };
  EXPECT_EQ(scrape.Value("poolside_requests_total", with_code("OK")), 2);
  EXPECT_EQ(scrape.Value("poolside_requests_total", with_code("DEADLINE_EXCEEDED")), 1);
  // Codes never seen have no series.
  EXPECT_FALSE(scrape.Value("poolside_requests_total", with_code("UNAVAILABLE")).has_value());
  EXPECT_EQ(scrape.Value("poolside_request_duration_seconds_count", method), 3);
  EXPECT_NEAR(*scrape.Value("poolside_request_duration_seconds_sum", method), 2.007, 1e-9);
}

TEST(CallRecorderTest, EveryCanonicalCodeHasItsName) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
  const MethodId id = recorder->Method("/pkg.S/M");
  for (int code = 0; code < kStatusCodeCount; ++code) {
    recorder->RecordCall(id, static_cast<grpc::StatusCode>(code), absl::Milliseconds(1));
  }
  const Exposition scrape = Scrape(metrics);
  // Abseil's canonical codes are gRPC's, number for number, so its names
  // check metrics' table without copying it here.
  for (int code = 0; code < kStatusCodeCount; ++code) {
    const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
    EXPECT_EQ(StatusCodeName(code), name) << code;
    EXPECT_EQ(scrape.Value("poolside_requests_total", {{"grpc_code", name}}), 1) << name;
  }
  // A few by their literal names, should both tables ever drift together.
  EXPECT_STREQ(StatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_STREQ(StatusCodeName(grpc::StatusCode::DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_STREQ(StatusCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
}

TEST(CallRecorderTest, OutOfRangeCodeCountsAsUnknown) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
  recorder->RecordCall(recorder->Method("/pkg.S/M"), static_cast<grpc::StatusCode>(42),
                       absl::Milliseconds(1));
  recorder->RecordCall(recorder->Method("/pkg.S/M"), grpc::StatusCode::DO_NOT_USE,
                       absl::Milliseconds(1));
  EXPECT_EQ(Scrape(metrics).Value("poolside_requests_total", {{"grpc_code", "UNKNOWN"}}), 2);
}

TEST(CallRecorderTest, MalformedPathCountsAsOther) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
  EXPECT_EQ(recorder->Method("not-a-path"), kOtherMethod);
  recorder->RecordCall(recorder->Method("/missing-second-slash"), grpc::StatusCode::UNIMPLEMENTED,
                       absl::Microseconds(50));
  EXPECT_EQ(Scrape(metrics).Value("poolside_requests_total", {{"grpc_service", "other"},
                                                              {"grpc_method", "other"},
                                                              {"grpc_code", "UNIMPLEMENTED"}}),
            1);
}

TEST(CallRecorderTest, HistogramBucketsAreCumulativeAndInclusive) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
  const MethodId id = recorder->Method("/pkg.S/M");
  recorder->RecordCall(id, grpc::StatusCode::OK, absl::Microseconds(100));  // le="0.0001"
  recorder->RecordCall(id, grpc::StatusCode::OK, absl::Microseconds(101));  // le="0.00025"
  recorder->RecordCall(id, grpc::StatusCode::OK, absl::Seconds(30));        // le="30"
  recorder->RecordCall(id, grpc::StatusCode::OK, absl::Seconds(60));        // le="+Inf" only
  recorder->RecordCall(id, grpc::StatusCode::OK, -absl::Seconds(1));        // clamped to 0

  const Exposition scrape = Scrape(metrics);
  std::vector<test::Sample> buckets = scrape.Find("poolside_request_duration_seconds_bucket");
  ASSERT_EQ(buckets.size(), kRequestDurationBounds.size() + 1);
  double previous = 0;
  for (const test::Sample& bucket : buckets) {
    EXPECT_GE(bucket.value, previous) << bucket.labels.at("le");
    previous = bucket.value;
  }
  auto bucket = [&](const char* le) {
    return scrape.Value("poolside_request_duration_seconds_bucket", {{"le", le}});
  };
  EXPECT_EQ(bucket("0.0001"), 2);
  EXPECT_EQ(bucket("0.00025"), 3);
  EXPECT_EQ(bucket("10"), 3);
  EXPECT_EQ(bucket("30"), 4);
  EXPECT_EQ(bucket("+Inf"), 5);
  EXPECT_EQ(scrape.Value("poolside_request_duration_seconds_count"), 5);
  EXPECT_NEAR(*scrape.Value("poolside_request_duration_seconds_sum"), 90.000201, 1e-9);
}

TEST(CallRecorderTest, CountsInflightCallsAndForwardedMessages) {
  RequestMetrics metrics(200);
  std::unique_ptr<CallRecorder> first = metrics.NewRecorder();
  std::unique_ptr<CallRecorder> second = metrics.NewRecorder();
  first->CallStarted();
  first->CallStarted();
  second->CallStarted();
  first->CallEnded();
  first->RecordMessage(Direction::kUpstream, 100);
  second->RecordMessage(Direction::kUpstream, 20);
  second->RecordMessage(Direction::kDownstream, 5000);

  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Value("poolside_inflight_requests"), 2);
  EXPECT_EQ(scrape.Value("poolside_forwarded_bytes_total", {{"direction", "upstream"}}), 120);
  EXPECT_EQ(scrape.Value("poolside_forwarded_bytes_total", {{"direction", "downstream"}}), 5000);
  EXPECT_EQ(scrape.Value("poolside_forwarded_messages_total", {{"direction", "upstream"}}), 2);
  EXPECT_EQ(scrape.Value("poolside_forwarded_messages_total", {{"direction", "downstream"}}), 1);
}

TEST(CallRecorderTest, NothingRecordedStillExportsTheFamilies) {
  RequestMetrics metrics(200);
  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.types.count("poolside_requests_total"), 1u);
  EXPECT_EQ(scrape.types.count("poolside_request_duration_seconds"), 1u);
  EXPECT_EQ(scrape.Value("poolside_inflight_requests"), 0);
  EXPECT_EQ(scrape.Value("poolside_forwarded_bytes_total", {{"direction", "upstream"}}), 0);
}

TEST(CallRecorderTest, CountsOutliveTheirRecorder) {
  RequestMetrics metrics(200);
  {
    std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
    recorder->RecordCall(recorder->Method("/pkg.S/M"), grpc::StatusCode::OK, absl::Seconds(1));
  }
  std::unique_ptr<CallRecorder> successor = metrics.NewRecorder();  // reuses the shard
  std::unique_ptr<CallRecorder> other = metrics.NewRecorder();
  successor->RecordCall(successor->Method("/pkg.S/M"), grpc::StatusCode::OK, absl::Seconds(1));
  other->RecordCall(other->Method("/pkg.S/M"), grpc::StatusCode::OK, absl::Seconds(1));
  EXPECT_EQ(Scrape(metrics).Value("poolside_requests_total", {{"grpc_code", "OK"}}), 3);
}

// A client inventing method names must not grow the series or the memory
// without bound: GRPC_METRICS_MAX_METHODS names get a series, the rest share
// "other", and every call is still counted.
TEST(CallRecorderTest, MethodCapHoldsUnderTenThousandInventedNames) {
  constexpr int kMaxMethods = 200;
  constexpr int kInvented = 10000;
  RequestMetrics metrics(kMaxMethods);
  std::unique_ptr<CallRecorder> first = metrics.NewRecorder();
  std::unique_ptr<CallRecorder> second = metrics.NewRecorder();
  for (int i = 0; i < kInvented; ++i) {
    CallRecorder& recorder = i % 2 == 0 ? *first : *second;
    recorder.RecordCall(recorder.Method(absl::StrCat("/fuzz.Service", i, "/Method", i)),
                        grpc::StatusCode::UNIMPLEMENTED, absl::Milliseconds(1));
  }
  const Exposition scrape = Scrape(metrics);
  std::set<std::pair<std::string, std::string>> methods;
  for (const test::Sample& sample : scrape.Find("poolside_requests_total")) {
    methods.emplace(sample.labels.at("grpc_service"), sample.labels.at("grpc_method"));
  }
  EXPECT_EQ(methods.size(), kMaxMethods + 1u);
  EXPECT_EQ(metrics.methods().Labels().size(), kMaxMethods + 1u);
  EXPECT_EQ(scrape.Sum("poolside_requests_total"), kInvented);
  EXPECT_EQ(scrape.Value("poolside_requests_total",
                         {{"grpc_service", "other"}, {"grpc_method", "other"}}),
            kInvented - kMaxMethods);
  EXPECT_EQ(scrape.Find("poolside_request_duration_seconds_count").size(), kMaxMethods + 1u);
  EXPECT_EQ(scrape.Sum("poolside_request_duration_seconds_count"), kInvented);
  // A name that got a slot keeps it.
  EXPECT_NE(first->Method("/fuzz.Service0/Method0"), kOtherMethod);
  EXPECT_EQ(first->Method("/fuzz.Service9999/Method9999"), kOtherMethod);
}

// Two forwarding threads record at once while a scraper reads: nothing is
// lost and no scrape ever sees a counter go down.
TEST(CallRecorderTest, ConcurrentRecordersAddUpWhileScraped) {
  constexpr int kCallsPerThread = 200000;
  RequestMetrics metrics(200);
  std::atomic<int> running{2};
  auto forward = [&](int seed) {
    std::unique_ptr<CallRecorder> recorder = metrics.NewRecorder();
    const MethodId methods[] = {recorder->Method("/pkg.A/Get"), recorder->Method("/pkg.B/Put"),
                                recorder->Method(absl::StrCat("/pkg.Thread", seed, "/Own"))};
    for (int i = 0; i < kCallsPerThread; ++i) {
      recorder->CallStarted();
      recorder->RecordMessage(Direction::kUpstream, 10);
      recorder->RecordCall(methods[i % 3],
                           i % 10 == 0 ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::OK,
                           absl::Microseconds(i % 5000));
      recorder->CallEnded();
    }
    running.fetch_sub(1);
  };
  std::thread a(forward, 1);
  std::thread b(forward, 2);
  double last_total = 0;
  int scrapes = 0;
  while (running.load() > 0 || scrapes == 0) {
    const Exposition scrape = Scrape(metrics);
    const double total = scrape.Sum("poolside_requests_total");
    EXPECT_GE(total, last_total);
    last_total = total;
    ++scrapes;
  }
  a.join();
  b.join();

  const Exposition scrape = Scrape(metrics);
  EXPECT_EQ(scrape.Sum("poolside_requests_total"), 2.0 * kCallsPerThread);
  EXPECT_EQ(scrape.Sum("poolside_request_duration_seconds_count"), 2.0 * kCallsPerThread);
  EXPECT_EQ(scrape.Sum("poolside_requests_total", {{"grpc_code", "UNAVAILABLE"}}),
            2.0 * (kCallsPerThread / 10));
  EXPECT_EQ(scrape.Sum("poolside_requests_total", {{"grpc_service", "pkg.A"}}),
            2.0 * ((kCallsPerThread + 2) / 3));
  EXPECT_EQ(scrape.Value("poolside_forwarded_messages_total", {{"direction", "upstream"}}),
            2.0 * kCallsPerThread);
  EXPECT_EQ(scrape.Value("poolside_inflight_requests"), 0);
}

}  // namespace
}  // namespace poolside
