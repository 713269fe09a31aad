// The side port over real sockets: routes, HTTP semantics, and clients that
// are slow, hostile or too many.
#include "admin/admin_http_server.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "metrics/poolside_metrics.h"
#include "tests/metrics/http_connection.h"
#include "tests/metrics/prometheus_text.h"
#include "tests/metrics/subprocess.h"

namespace poolside {
namespace {

using ::poolside::test::HttpConnection;
using ::poolside::test::HttpRequest;
using ::poolside::test::HttpResponse;

constexpr absl::Duration kRequestTimeout = absl::Seconds(1);

PoolSnapshot Pool(int healthy, int unhealthy) {
  PoolSnapshot snapshot;
  for (int i = 0; i < healthy + unhealthy; ++i) {
    ChannelSnapshot channel;
    channel.index = i;
    channel.healthy = i < healthy;
    channel.state = channel.healthy ? GRPC_CHANNEL_READY : GRPC_CHANNEL_TRANSIENT_FAILURE;
    channel.outstanding_calls = i;
    channel.calls_started = 10 * i;
    channel.errors = i == healthy ? 4 : 0;
    channel.age = absl::Seconds(60 + i);
    snapshot.channels.push_back(channel);
  }
  snapshot.connection_errors = 4;
  snapshot.last_health_check = absl::FromUnixSeconds(1700000000);
  return snapshot;
}

class AdminHttpServerTest : public ::testing::Test {
 protected:
  static AdminHttpOptions Options() {
    AdminHttpOptions options;
    options.address = "127.0.0.1:0";
    options.request_timeout = kRequestTimeout;
    return options;
  }

  void StartServer(AdminHttpOptions options = Options()) {
    server_ = std::make_unique<AdminHttpServer>(std::move(options), Handlers());
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_GT(server_->port(), 0);
  }

  AdminHttpHandlers Handlers() {
    return {[this] {
              metrics_.UpdateFromPool(Snapshot());
              return metrics_.Serialize();
            },
            [this] { return Snapshot(); }};
  }

  void SetSnapshot(PoolSnapshot snapshot) {
    absl::MutexLock lock(&mutex_);
    snapshot_ = std::move(snapshot);
  }

  PoolSnapshot Snapshot() {
    absl::MutexLock lock(&mutex_);
    return snapshot_;
  }

  HttpResponse Get(const std::string& target, const std::string& method = "GET") {
    absl::StatusOr<HttpResponse> response = HttpRequest(server_->port(), method, target);
    EXPECT_TRUE(response.ok()) << method << " " << target << ": " << response.status();
    return response.ok() ? *std::move(response) : HttpResponse{};
  }

  // GETs `target`: the answer must be exactly `status` with `body`.
  void ExpectGet(const std::string& target, int status, const std::string& body) {
    const HttpResponse response = Get(target);
    EXPECT_EQ(response.status, status) << target;
    EXPECT_EQ(response.body, body) << target;
  }

  int port() const { return server_->port(); }

  PoolsideMetrics metrics_{MetricsOptions{"test", 200}};
  absl::Mutex mutex_;
  PoolSnapshot snapshot_ ABSL_GUARDED_BY(mutex_) = Pool(3, 0);
  std::unique_ptr<AdminHttpServer> server_;
};

TEST_F(AdminHttpServerTest, MetricsServesPrometheusText) {
  StartServer();
  const HttpResponse response = Get("/metrics");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.Header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  absl::StatusOr<test::Exposition> scrape = test::ParseExposition(response.body);
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(scrape->Value("poolside_pool_connections"), 3);
  EXPECT_EQ(scrape->Value("poolside_pool_connection_errors_total"), 4);
}

TEST_F(AdminHttpServerTest, HealthzIsOkWhileServingEvenWhenUnhealthyOrDraining) {
  StartServer();
  SetSnapshot(Pool(0, 3));
  server_->SetDraining();
  ExpectGet("/healthz", 200, "ok\n");
}

TEST_F(AdminHttpServerTest, ReadyzIsOkUnlessUnhealthy) {
  StartServer();
  HttpResponse response = Get("/readyz");
  EXPECT_EQ(response.status, 200);
  EXPECT_TRUE(absl::StartsWith(response.body, "healthy")) << response.body;

  SetSnapshot(Pool(1, 2));
  response = Get("/readyz");
  EXPECT_EQ(response.status, 200);
  EXPECT_TRUE(absl::StartsWith(response.body, "degraded")) << response.body;

  SetSnapshot(Pool(0, 2));
  response = Get("/readyz");
  EXPECT_EQ(response.status, 503);
  EXPECT_TRUE(absl::StrContains(response.body, "unhealthy: 0 of 2 upstream connections healthy"))
      << response.body;
  EXPECT_TRUE(absl::StrContains(response.body, "channel 1 TRANSIENT_FAILURE")) << response.body;

  SetSnapshot(Pool(2, 0));
  EXPECT_EQ(Get("/readyz").status, 200);
}

TEST_F(AdminHttpServerTest, ReadyzIs503OnceDraining) {
  StartServer();
  EXPECT_EQ(Get("/readyz").status, 200);
  server_->SetDraining();
  ExpectGet("/readyz", 503, "draining\n");
}

TEST_F(AdminHttpServerTest, PoolIsValidJsonWithEveryChannel) {
  StartServer();
  SetSnapshot(Pool(2, 1));
  const HttpResponse response = Get("/pool");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.Header("content-type"), "application/json");
  // A real JSON parser checks the document and pulls out a few fields.
  absl::StatusOr<test::ProcessResult> parsed = test::RunProcess(
      {"/usr/bin/python3", "-c",
       "import json, sys\n"
       "pool = json.load(sys.stdin)\n"
       "print(pool['status'], pool['total_connections'], pool['active_connections'],\n"
       "      pool['connection_errors'], pool['draining'])\n"
       "for c in pool['channels']:\n"
       "    print(c['index'], c['state'], c['healthy'], c['outstanding_calls'],\n"
       "          c['calls_started'], c['errors'], c['age_seconds'])\n"},
      response.body, absl::Seconds(30));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->exit_code, 0) << parsed->output << "\n" << response.body;
  EXPECT_EQ(parsed->output,
            "degraded 3 2 4 False\n"
            "0 READY True 0 0 0 60\n"
            "1 READY True 1 10 0 61\n"
            "2 TRANSIENT_FAILURE False 2 20 4 62\n");
}

TEST_F(AdminHttpServerTest, HeadHasTheHeadersButNoBody) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  for (const char* target : {"/metrics", "/healthz", "/readyz", "/pool"}) {
    // A body after a HEAD answer would corrupt the next response on the
    // connection, so each HEAD is followed by a GET on the same connection.
    ASSERT_TRUE(connection.SendRequest("HEAD", target).ok());
    absl::StatusOr<HttpResponse> head = connection.ReadResponse(/*head=*/true);
    ASSERT_TRUE(head.ok()) << target << ": " << head.status();
    EXPECT_EQ(head->status, 200) << target;
    EXPECT_TRUE(head->body.empty()) << target;
    EXPECT_GT(std::stoi(head->Header("content-length")), 0) << target;

    ASSERT_TRUE(connection.SendRequest("GET", "/healthz").ok());
    absl::StatusOr<HttpResponse> get = connection.ReadResponse();
    ASSERT_TRUE(get.ok()) << target << ": " << get.status();
    EXPECT_EQ(get->status, 200);
    EXPECT_EQ(get->body, "ok\n") << "after HEAD " << target;
  }
}

TEST_F(AdminHttpServerTest, OtherMethodsAre405WithAllow) {
  StartServer();
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
    const HttpResponse response = Get("/metrics", method);
    EXPECT_EQ(response.status, 405) << method;
    EXPECT_EQ(response.Header("allow"), "GET, HEAD") << method;
  }
}

TEST_F(AdminHttpServerTest, UnknownPathsAre404) {
  StartServer();
  EXPECT_EQ(Get("/").status, 404);
  EXPECT_EQ(Get("/metricsx").status, 404);
  EXPECT_EQ(Get("/metrics/").status, 404);
  EXPECT_EQ(Get("/admin").status, 404);
  EXPECT_EQ(Get("/nope", "POST").status, 404);
}

TEST_F(AdminHttpServerTest, QueryStringsAreIgnored) {
  StartServer();
  EXPECT_EQ(Get("/healthz?verbose=1").status, 200);
}

TEST_F(AdminHttpServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(connection.SendRequest("GET", i % 2 == 0 ? "/metrics" : "/pool").ok());
    absl::StatusOr<HttpResponse> response = connection.ReadResponse();
    ASSERT_TRUE(response.ok()) << i << ": " << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_TRUE(response->keep_alive);
  }
}

TEST_F(AdminHttpServerTest, Http10RequestIsAnsweredThenClosed) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  ASSERT_TRUE(connection.SendRaw("GET /healthz HTTP/1.0\r\n\r\n").ok());
  absl::StatusOr<HttpResponse> response = connection.ReadResponse();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "ok\n");
  EXPECT_TRUE(connection.WaitForClose(absl::Seconds(5)));
}

TEST_F(AdminHttpServerTest, GarbageGets400AndIsClosed) {
  StartServer();
  for (const std::string& garbage :
       {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15),
        std::string("HELLO WORLD\r\n\r\n"), std::string("GET /metrics HTTP/9.9\r\n\r\n"),
        std::string("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")}) {
    HttpConnection connection;
    ASSERT_TRUE(connection.Connect(port()).ok());
    ASSERT_TRUE(connection.SendRaw(garbage).ok());
    absl::StatusOr<HttpResponse> response = connection.ReadResponse();
    if (response.ok()) {
      EXPECT_EQ(response->status, 400) << garbage;
    }
    EXPECT_TRUE(connection.WaitForClose(absl::Seconds(5))) << garbage;
  }
  EXPECT_EQ(Get("/healthz").status, 200);
}

TEST_F(AdminHttpServerTest, OversizedHeadersGet431AndAreClosed) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  const std::string request = absl::StrCat(
      "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ", std::string(16 * 1024, 'a'), "\r\n\r\n");
  // The server may close before it has read everything; that is a pass too.
  (void)connection.SendRaw(request);
  absl::StatusOr<HttpResponse> response = connection.ReadResponse();
  if (response.ok()) {
    EXPECT_EQ(response->status, 431);
  }
  EXPECT_TRUE(connection.WaitForClose(absl::Seconds(5)));
  EXPECT_EQ(Get("/healthz").status, 200);
}

TEST_F(AdminHttpServerTest, RequestBodyOverTheLimitGets413) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  (void)connection.SendRaw(absl::StrCat("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: ",
                                        64 * 1024, "\r\n\r\n", std::string(64 * 1024, 'b')));
  absl::StatusOr<HttpResponse> response = connection.ReadResponse();
  if (response.ok()) {
    EXPECT_EQ(response->status, 413);
  }
  EXPECT_TRUE(connection.WaitForClose(absl::Seconds(5)));
}

// A client that connects and says nothing is dropped after the read deadline,
// and /metrics answers other clients all the while.
TEST_F(AdminHttpServerTest, SilentClientIsClosedAfterTheDeadlineWhileMetricsAnswers) {
  StartServer();
  HttpConnection silent;
  ASSERT_TRUE(silent.Connect(port()).ok());
  const absl::Time connected = absl::Now();
  bool closed = false;
  int scrapes = 0;
  while (!closed && absl::Now() - connected < absl::Seconds(5)) {
    const absl::Time before = absl::Now();
    EXPECT_EQ(Get("/metrics").status, 200);
    EXPECT_LT(absl::Now() - before, absl::Milliseconds(500));
    ++scrapes;
    closed = silent.WaitForClose(absl::Milliseconds(100));
  }
  const absl::Duration lifetime = absl::Now() - connected;
  EXPECT_TRUE(closed);
  EXPECT_GE(lifetime, kRequestTimeout - absl::Milliseconds(100));
  EXPECT_LT(lifetime, kRequestTimeout + absl::Seconds(2));
  EXPECT_GT(scrapes, 1);
}

// A request dribbled a byte at a time must still arrive within the deadline.
TEST_F(AdminHttpServerTest, DribblingClientIsClosedAfterTheDeadline) {
  StartServer();
  HttpConnection slow;
  ASSERT_TRUE(slow.Connect(port()).ok());
  const absl::Time connected = absl::Now();
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaa\r\n";
  bool closed = false;
  for (size_t i = 0; i < request.size() && !closed; ++i) {
    closed = !slow.SendRaw(request.substr(i, 1)).ok() || slow.WaitForClose(absl::Milliseconds(100));
  }
  if (!closed) closed = slow.WaitForClose(absl::Seconds(3));
  EXPECT_TRUE(closed);
  EXPECT_LT(absl::Now() - connected, kRequestTimeout + absl::Seconds(2));
}

TEST_F(AdminHttpServerTest, IdleKeepAliveConnectionIsClosedAfterTheDeadline) {
  StartServer();
  HttpConnection connection;
  ASSERT_TRUE(connection.Connect(port()).ok());
  ASSERT_TRUE(connection.SendRequest("GET", "/healthz").ok());
  ASSERT_TRUE(connection.ReadResponse().ok());
  EXPECT_TRUE(connection.WaitForClose(kRequestTimeout + absl::Seconds(2)));
}

TEST_F(AdminHttpServerTest, ConnectionsBeyondTheCapAreClosedAtOnce) {
  AdminHttpOptions options = Options();
  options.max_connections = 3;
  options.request_timeout = absl::Seconds(30);
  StartServer(options);
  std::vector<std::unique_ptr<HttpConnection>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<HttpConnection>());
    ASSERT_TRUE(held.back()->Connect(port()).ok());
    // A served request proves the server counted this connection.
    ASSERT_TRUE(held.back()->SendRequest("GET", "/healthz").ok());
    ASSERT_TRUE(held.back()->ReadResponse().ok());
  }
  HttpConnection extra;
  ASSERT_TRUE(extra.Connect(port()).ok());
  EXPECT_TRUE(extra.WaitForClose(absl::Seconds(2)));

  // Room again once a held connection goes away.
  held.pop_back();
  bool served = false;
  for (absl::Time deadline = absl::Now() + absl::Seconds(5); !served && absl::Now() < deadline;) {
    absl::StatusOr<HttpResponse> response = HttpRequest(port(), "GET", "/healthz");
    served = response.ok() && response->status == 200;
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(served);
}

TEST_F(AdminHttpServerTest, HandlerFailureIs500AndTheServerCarriesOn) {
  server_ = std::make_unique<AdminHttpServer>(
      Options(), AdminHttpHandlers{[]() -> std::string { throw std::runtime_error("boom"); },
                                   [this] { return Snapshot(); }});
  ASSERT_TRUE(server_->Start().ok());
  EXPECT_EQ(Get("/metrics").status, 500);
  EXPECT_EQ(Get("/healthz").status, 200);
}

TEST_F(AdminHttpServerTest, AddressInUseIsAOneLineError) {
  StartServer();
  AdminHttpOptions options = Options();
  options.address = absl::StrCat("127.0.0.1:", port());
  AdminHttpServer second(options, Handlers());
  const absl::Status status = second.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), options.address)) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "in use")) << status;
  EXPECT_FALSE(absl::StrContains(status.message(), "\n")) << status;
  // The first server is unaffected.
  EXPECT_EQ(Get("/healthz").status, 200);
}

TEST_F(AdminHttpServerTest, BadAddressIsAnError) {
  for (const char* address : {"nonsense", "127.0.0.1:99999", "256.1.1.1:80x"}) {
    AdminHttpOptions options = Options();
    options.address = address;
    AdminHttpServer server(options, Handlers());
    EXPECT_FALSE(server.Start().ok()) << address;
  }
}

TEST_F(AdminHttpServerTest, MissingHandlerIsAnError) {
  AdminHttpServer server(Options(), AdminHttpHandlers{});
  EXPECT_EQ(server.Start().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AdminHttpServerTest, ShutdownIsPromptWithClientsConnected) {
  AdminHttpOptions options = Options();
  options.request_timeout = absl::Seconds(30);
  StartServer(options);
  std::vector<std::unique_ptr<HttpConnection>> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<HttpConnection>());
    ASSERT_TRUE(clients.back()->Connect(port()).ok());
  }
  ASSERT_TRUE(clients[0]->SendRaw("GET /metr").ok());
  ASSERT_EQ(Get("/healthz").status, 200);
  const absl::Time before = absl::Now();
  server_->Shutdown();
  EXPECT_LT(absl::Now() - before, absl::Seconds(1));
  for (auto& client : clients) EXPECT_TRUE(client->WaitForClose(absl::Seconds(2)));
  EXPECT_FALSE(HttpRequest(port(), "GET", "/healthz", absl::Seconds(2)).ok());
  server_->Shutdown();  // idempotent
}

TEST_F(AdminHttpServerTest, ConcurrentScrapesOnSeveralThreads) {
  AdminHttpOptions options = Options();
  options.threads = 3;
  StartServer(options);
  std::vector<std::thread> scrapers;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    scrapers.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        absl::StatusOr<HttpResponse> response = HttpRequest(port(), "GET", "/metrics");
        if (response.ok() && response->status == 200) ok.fetch_add(1);
      }
    });
  }
  for (std::thread& scraper : scrapers) scraper.join();
  EXPECT_EQ(ok.load(), 100);
}

}  // namespace
}  // namespace poolside
