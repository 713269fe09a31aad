// TLS for the frame relay's upstream connections (OpenSSL 3, as grpc links
// it): one client context built from the PEM files GRPC_UPSTREAM_CA_FILE,
// _CERT_FILE and _KEY_FILE name, offering ALPN "h2" and verifying the
// upstream's certificate against one name; one SSL object per connection.
// The context is rebuilt when the files change (Kubernetes rotates mounted
// secrets by swapping a symlink), so that new connections use the new files.
//
// Threading: confined to the relay's thread.
#ifndef POOLSIDE_RELAY_UPSTREAM_TLS_H_
#define POOLSIDE_RELAY_UPSTREAM_TLS_H_

#include <openssl/ssl.h>
#include <sys/types.h>

#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace poolside::relay {

struct UpstreamTlsOptions {
  bool enabled = false;
  // PEM root certificates; empty means the system's roots.
  std::string ca_file;
  // PEM client certificate chain and key, for mutual TLS; both or neither.
  std::string cert_file;
  std::string key_file;
  // The name the upstream's certificate must carry (a DNS name, sent as SNI,
  // or an IP literal, checked against the certificate's IP addresses).
  std::string server_name;
};

class UpstreamTls {
 public:
  // Loads the files; InvalidArgument naming the file that does not load.
  static absl::StatusOr<std::unique_ptr<UpstreamTls>> Create(const UpstreamTlsOptions& options);
  ~UpstreamTls();
  UpstreamTls(const UpstreamTls&) = delete;
  UpstreamTls& operator=(const UpstreamTls&) = delete;

  // A client SSL on `fd`, in connect state, with SNI and the name check set;
  // the caller frees it (SSL_free). Null if OpenSSL cannot make one.
  SSL* NewConnection(int fd) const;

  // Whether the files changed since the context was built, rebuilding it if
  // so. An error (the old context kept) when the changed files do not load,
  // as when a rotation is caught half-way: the next call tries again.
  absl::StatusOr<bool> ReloadIfChanged();

  // Why the last OpenSSL call on `ssl` failed (`result` is what it
  // returned): the verification error if there is one, else OpenSSL's
  // error queue, which this clears.
  static std::string Describe(SSL* ssl, int result);
  // Whether the handshake on `ssl` agreed on HTTP/2 (ALPN "h2", or no ALPN
  // at all, as from a server that does not speak it but serves h2).
  static bool NegotiatedHttp2(const SSL* ssl);

 private:
  struct FileStamp {
    ino_t inode = 0;
    off_t size = 0;
    timespec modified{};
    bool operator==(const FileStamp& other) const;
  };

  explicit UpstreamTls(UpstreamTlsOptions options);
  // The stamps of the files now (a missing file stamps as zeros).
  std::vector<FileStamp> StampFiles() const;
  absl::StatusOr<SSL_CTX*> BuildContext() const;

  const UpstreamTlsOptions options_;
  const bool server_name_is_ip_;
  SSL_CTX* context_ = nullptr;
  std::vector<FileStamp> stamps_;
};

}  // namespace poolside::relay

#endif  // POOLSIDE_RELAY_UPSTREAM_TLS_H_
