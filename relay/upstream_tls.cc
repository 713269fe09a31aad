#include "relay/upstream_tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace poolside::relay {
namespace {

constexpr unsigned char kAlpnHttp2[] = {2, 'h', '2'};

bool IsIpLiteral(const std::string& name) {
  unsigned char address[sizeof(in6_addr)];
  return inet_pton(AF_INET, name.c_str(), address) == 1 ||
         inet_pton(AF_INET6, name.c_str(), address) == 1;
}

// OpenSSL's error queue as one line, cleared.
std::string TakeErrors() {
  std::string text;
  for (unsigned long error = ERR_get_error(); error != 0; error = ERR_get_error()) {
    char line[256];
    ERR_error_string_n(error, line, sizeof(line));
    if (!text.empty()) text += "; ";
    text += line;
  }
  return text;
}

}  // namespace

bool UpstreamTls::FileStamp::operator==(const FileStamp& other) const {
  return inode == other.inode && size == other.size && modified.tv_sec == other.modified.tv_sec &&
         modified.tv_nsec == other.modified.tv_nsec;
}

UpstreamTls::UpstreamTls(UpstreamTlsOptions options)
    : options_(std::move(options)), server_name_is_ip_(IsIpLiteral(options_.server_name)) {}

UpstreamTls::~UpstreamTls() {
  if (context_ != nullptr) SSL_CTX_free(context_);
}

absl::StatusOr<std::unique_ptr<UpstreamTls>> UpstreamTls::Create(
    const UpstreamTlsOptions& options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS: a client certificate needs its key, and a key its "
        "certificate");
  }
  std::unique_ptr<UpstreamTls> tls(new UpstreamTls(options));
  tls->stamps_ = tls->StampFiles();
  absl::StatusOr<SSL_CTX*> context = tls->BuildContext();
  if (!context.ok()) return context.status();
  tls->context_ = *context;
  return tls;
}

std::vector<UpstreamTls::FileStamp> UpstreamTls::StampFiles() const {
  std::vector<FileStamp> stamps;
  for (const std::string* file : {&options_.ca_file, &options_.cert_file, &options_.key_file}) {
    FileStamp stamp;
    struct stat status {};
    if (!file->empty() && stat(file->c_str(), &status) == 0) {
      stamp.inode = status.st_ino;
      stamp.size = status.st_size;
      stamp.modified = status.st_mtim;
    }
    stamps.push_back(stamp);
  }
  return stamps;
}

absl::StatusOr<SSL_CTX*> UpstreamTls::BuildContext() const {
  SSL_CTX* context = SSL_CTX_new(TLS_client_method());
  if (context == nullptr) return absl::InternalError(absl::StrCat("TLS: ", TakeErrors()));
  auto fail = [context](const std::string& what) {
    SSL_CTX_free(context);
    return absl::InvalidArgumentError(absl::StrCat("TLS: ", what, ": ", TakeErrors()));
  };
  // HTTP/2 over TLS needs TLS 1.2 at least (RFC 9113, 9.2).
  SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
  // Partial writes from a buffer that may move between retries (the
  // connection's output queue); idle connections give their buffers back.
  SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_set_alpn_protos(context, kAlpnHttp2, sizeof(kAlpnHttp2)) != 0) {
    return fail("cannot offer ALPN h2");
  }
  if (options_.ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(context) != 1) return fail("the system's roots");
  } else if (SSL_CTX_load_verify_locations(context, options_.ca_file.c_str(), nullptr) != 1) {
    return fail(options_.ca_file);
  }
  if (!options_.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(context, options_.cert_file.c_str()) != 1) {
      return fail(options_.cert_file);
    }
    if (SSL_CTX_use_PrivateKey_file(context, options_.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return fail(options_.key_file);
    }
    if (SSL_CTX_check_private_key(context) != 1) {
      return fail(absl::StrCat(options_.key_file, " does not match ", options_.cert_file));
    }
  }
  return context;
}

SSL* UpstreamTls::NewConnection(int fd) const {
  SSL* ssl = SSL_new(context_);
  if (ssl == nullptr) return nullptr;
  SSL_set_fd(ssl, fd);
  SSL_set_connect_state(ssl);
  X509_VERIFY_PARAM* check = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(check, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  const char* name = options_.server_name.c_str();
  const bool named = server_name_is_ip_ ? X509_VERIFY_PARAM_set1_ip_asc(check, name) == 1
                                        : SSL_set_tlsext_host_name(ssl, name) == 1 &&
                                              SSL_set1_host(ssl, name) == 1;
  if (!named) {
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

absl::StatusOr<bool> UpstreamTls::ReloadIfChanged() {
  std::vector<FileStamp> stamps = StampFiles();
  if (stamps == stamps_) return false;
  absl::StatusOr<SSL_CTX*> context = BuildContext();
  if (!context.ok()) return context.status();
  SSL_CTX_free(context_);
  context_ = *context;
  stamps_ = std::move(stamps);
  return true;
}

std::string UpstreamTls::Describe(SSL* ssl, int result) {
  // SSL_get_error reads the error queue: before TakeErrors empties it.
  const int error = SSL_get_error(ssl, result);
  const long verified = SSL_get_verify_result(ssl);
  std::string errors = TakeErrors();
  if (verified != X509_V_OK) {
    return absl::StrCat("certificate verify failed: ", X509_verify_cert_error_string(verified));
  }
  if (!errors.empty()) return errors;
  if (error == SSL_ERROR_SYSCALL) {
    return result == 0 ? "the upstream closed the connection during the TLS handshake"
                       : absl::StrCat("TLS: ", std::strerror(errno));
  }
  return absl::StrCat("TLS error ", error);
}

bool UpstreamTls::NegotiatedHttp2(const SSL* ssl) {
  const unsigned char* protocol = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &protocol, &length);
  return length == 0 || (length == 2 && std::memcmp(protocol, "h2", 2) == 0);
}

}  // namespace poolside::relay
