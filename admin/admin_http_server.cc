#include "admin/admin_http_server.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "admin/admin_http_routes.h"
#include "config/address.h"

namespace poolside {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

using admin_http::kTextContentType;
using admin_http::Reply;
using admin_http::Route;
using admin_http::SharedState;

// After an error the connection is closed, but the client's unread request
// bytes are drained for at most this long first: closing a socket with unread
// input sends a reset, which can destroy the error response in flight.
constexpr auto kMaxLinger = std::chrono::seconds(1);

// After a failed accept (e.g. out of file descriptors) the listener pauses
// rather than spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);

// One client connection: reads a request, answers it, and repeats while the
// client keeps the connection alive. Owned by the handlers of its pending
// operation (shared_from_this); confined to its strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<SharedState> state)
      : stream_(std::move(socket)), state_(std::move(state)) {
    state_->connections.fetch_add(1);
  }
  ~Session() { state_->connections.fetch_sub(1); }

  void Run() {
    asio::dispatch(stream_.get_executor(),
                   beast::bind_front_handler(&Session::ReadRequest, shared_from_this()));
  }

 private:
  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(state_->options.header_limit));
    parser_->body_limit(state_->options.body_limit);
    stream_.expires_after(state_->request_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec == http::error::end_of_stream) return Close();
    if (ec && ec.category() == http::make_error_code(http::error::bad_method).category()) {
      // The request did not parse: answer, then close (the stream is out of
      // sync with the message boundaries).
      if (ec == http::error::header_limit) {
        return Send(http::status::request_header_fields_too_large, "request header too large\n",
                    /*keep_alive=*/false);
      }
      if (ec == http::error::body_limit) {
        return Send(http::status::payload_too_large, "request body too large\n", false);
      }
      return Send(http::status::bad_request, absl::StrCat("bad request: ", ec.message(), "\n"),
                  false);
    }
    // Timed out (the stream is closed already), reset, or shut down.
    if (ec) return;

    const http::request<http::string_body>& request = parser_->get();
    Reply reply;
    try {
      reply = Route(*state_, request.method(), request.target());
    } catch (const std::exception& e) {
      spdlog::error("admin http: {} {}: {}", std::string(request.method_string()),
                    std::string(request.target()), e.what());
      reply = {http::status::internal_server_error, kTextContentType, "internal error\n"};
    }
    response_ = {};
    response_.version(request.version());
    response_.result(reply.status);
    response_.set(http::field::content_type, reply.content_type);
    response_.set(http::field::cache_control, "no-store");
    if (reply.allow_header) response_.set(http::field::allow, "GET, HEAD");
    response_.keep_alive(request.keep_alive());
    // HEAD: the same headers, Content-Length included, and no body.
    response_.content_length(reply.body.size());
    if (request.method() != http::verb::head) response_.body() = std::move(reply.body);
    Write();
  }

  void Send(http::status status, std::string body, bool keep_alive) {
    response_ = {};
    response_.version(11);
    response_.result(status);
    response_.set(http::field::content_type, kTextContentType);
    response_.keep_alive(keep_alive);
    response_.body() = std::move(body);
    response_.prepare_payload();
    Write();
  }

  void Write() {
    stream_.expires_after(state_->request_timeout);
    http::async_write(
        stream_, response_,
        beast::bind_front_handler(&Session::OnWrite, shared_from_this(), response_.need_eof()));
  }

  void OnWrite(bool close, beast::error_code ec, size_t) {
    if (ec) return;
    if (close) return Close();
    ReadRequest();
  }

  // Sends FIN, then drains what the client still sends until it closes too or
  // the linger time is up; the session ends with the last handler.
  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(
        std::min<std::chrono::steady_clock::duration>(state_->request_timeout, kMaxLinger));
    Drain();
  }

  void Drain() {
    stream_.async_read_some(asio::buffer(drain_buffer_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (!ec) self->Drain();
                            });
  }

  beast::tcp_stream stream_;
  const std::shared_ptr<SharedState> state_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  char drain_buffer_[1024];
};

// Accepts connections and starts a Session for each, or closes it at once
// when max_connections are open. Owned by the handler of its pending accept.
class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(asio::io_context& io, tcp::acceptor&& acceptor, std::shared_ptr<SharedState> state)
      : io_(io), acceptor_(std::move(acceptor)), retry_timer_(io), state_(std::move(state)) {}

  void Accept() {
    acceptor_.async_accept(asio::make_strand(io_),
                           beast::bind_front_handler(&Listener::OnAccept, shared_from_this()));
  }

 private:
  void OnAccept(beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      spdlog::warn("admin http: accept failed: {}", ec.message());
      retry_timer_.expires_after(kAcceptRetryDelay);
      retry_timer_.async_wait([self = shared_from_this()](beast::error_code wait_error) {
        if (!wait_error) self->Accept();
      });
      return;
    }
    if (state_->connections.load() >= state_->options.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<Session>(std::move(socket), state_)->Run();
    }
    Accept();
  }

  asio::io_context& io_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  const std::shared_ptr<SharedState> state_;
};

absl::StatusOr<tcp::endpoint> ResolveListenAddress(asio::io_context& io,
                                                   const std::string& address) {
  absl::StatusOr<HostPort> host_port = ParseHostPort(address);
  if (!host_port.ok()) return host_port.status();
  beast::error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host_port->host, ec);
  if (!ec) return tcp::endpoint(ip, static_cast<unsigned short>(host_port->port));
  tcp::resolver resolver(io);
  const auto results =
      resolver.resolve(host_port->host, std::to_string(host_port->port),
                       tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve \"", host_port->host,
                                                   "\": ", ec ? ec.message() : "no address"));
  }
  return results.begin()->endpoint();
}

}  // namespace

class AdminHttpServer::Impl {
 public:
  Impl(AdminHttpOptions options, AdminHttpHandlers handlers)
      : state_(std::make_shared<SharedState>()) {
    state_->options = std::move(options);
    state_->handlers = std::move(handlers);
    state_->request_timeout = absl::ToChronoNanoseconds(state_->options.request_timeout);
  }

  ~Impl() { Shutdown(); }

  absl::Status Start() {
    const AdminHttpOptions& options = state_->options;
    if (!state_->handlers.metrics_text || !state_->handlers.pool_snapshot) {
      return absl::InvalidArgumentError("admin http server: both handlers must be set");
    }
    io_.emplace(std::max(1, options.threads));
    absl::StatusOr<tcp::endpoint> endpoint = ResolveListenAddress(*io_, options.address);
    if (!endpoint.ok()) {
      io_.reset();
      return endpoint.status();
    }
    if (absl::Status listening = Listen(*endpoint); !listening.ok()) {
      io_.reset();
      return listening;
    }
    for (int i = 0; i < std::max(1, options.threads); ++i) {
      threads_.emplace_back([io = &*io_] {
        pthread_setname_np(pthread_self(), "ps-admin-http");
        RunLoop(*io);
      });
    }
    return absl::OkStatus();
  }

  // Opens the listening socket and starts accepting on it.
  absl::Status Listen(const tcp::endpoint& endpoint) {
    tcp::acceptor acceptor(*io_);
    beast::error_code ec;
    const char* step = "open";
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) {
      step = "set SO_REUSEADDR on";
      acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
      step = "bind";
      acceptor.bind(endpoint, ec);
    }
    if (!ec) {
      step = "listen on";
      acceptor.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot ", step, " ", state_->options.address, ": ", ec.message()));
    }
    port_.store(acceptor.local_endpoint().port());
    // The listener lives in its pending accept handler only, so that it dies
    // with the io_context and never outlives it.
    std::make_shared<Listener>(*io_, std::move(acceptor), state_)->Accept();
    return absl::OkStatus();
  }

  void Shutdown() {
    if (!io_) return;
    io_->stop();
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
    // Destroys the listener and every session with the handlers that own
    // them, closing their sockets.
    io_.reset();
  }

  void SetDraining() { state_->draining.store(true); }
  int port() const { return port_.load(); }

 private:
  static void RunLoop(asio::io_context& io) {
    for (;;) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("admin http: {}", e.what());
      }
    }
  }

  const std::shared_ptr<SharedState> state_;
  std::atomic<int> port_{0};
  std::optional<asio::io_context> io_;
  std::vector<std::thread> threads_;
};

AdminHttpServer::AdminHttpServer(AdminHttpOptions options, AdminHttpHandlers handlers)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handlers))) {}

AdminHttpServer::~AdminHttpServer() = default;

absl::Status AdminHttpServer::Start() { return impl_->Start(); }

void AdminHttpServer::SetDraining() { impl_->SetDraining(); }

void AdminHttpServer::Shutdown() { impl_->Shutdown(); }

int AdminHttpServer::port() const { return impl_->port(); }

}  // namespace poolside
