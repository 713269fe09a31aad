#include "pool/channel_factory.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <utility>

namespace poolside {
namespace {

// Tags each channel with a distinct argument as well as asking for a local
// subchannel pool: either alone keeps grpc from sharing one TCP connection
// between channels whose arguments are otherwise identical.
constexpr char kSlotArg[] = "poolside.pool_slot";

constexpr int kMaxReconnectBackoffMs = 5000;

// How often grpc re-reads the TLS files; the health monitor waits longer than
// this after seeing them change before it rolls the connections.
constexpr unsigned int kCredentialRefreshSeconds = 1;

std::shared_ptr<grpc::ChannelCredentials> MakeCredentials(const UpstreamChannelOptions& options) {
  if (!options.tls) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions tls;
  const bool has_roots = !options.ca_file.empty();
  const bool has_identity = !options.cert_file.empty();
  if (has_roots || has_identity) {
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.key_file, options.cert_file, options.ca_file, kCredentialRefreshSeconds));
    if (has_roots) tls.watch_root_certs();
    if (has_identity) tls.watch_identity_key_cert_pairs();
  }
  tls.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(tls);
}

class UpstreamChannelFactory : public ChannelFactory {
 public:
  explicit UpstreamChannelFactory(UpstreamChannelOptions options)
      : options_(std::move(options)),
        credentials_(MakeCredentials(options_)),
        authority_(AuthorityOf(options_)) {}

  std::shared_ptr<grpc::Channel> Create(const BackendAddress& backend, int slot) override {
    grpc::ChannelArguments args;
    const int max_bytes = static_cast<int>(std::min<int64_t>(options_.max_message_bytes, INT_MAX));
    args.SetMaxReceiveMessageSize(max_bytes);
    args.SetMaxSendMessageSize(max_bytes);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, options_.transparent_retries ? 1 : 0);
    // grpc backs off up to 120 s between reconnects; a sidecar should find a
    // restarted upstream within seconds.
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
    // channelz counts every call and message on each channel and socket for
    // an introspection service poolside does not serve.
    args.SetInt(GRPC_ARG_ENABLE_CHANNELZ, 0);
    args.SetInt(kSlotArg, slot);
    // Each replacement gets a fresh connection too, not the one it replaces.
    args.SetInt("poolside.channel_generation", generation_++);
    // A channel to one address would call itself by that address; it keeps
    // the target's name instead, so virtual hosting and the TLS certificate
    // check see what one channel to the name would have sent. (grpc checks
    // the certificate against the default authority unless overridden.)
    if (!authority_.empty() && backend.channel_target != options_.target) {
      args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, authority_);
    } else if (!options_.authority.empty()) {
      args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, options_.authority);
    }
    if (!options_.server_name.empty()) {
      args.SetString(GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, options_.server_name);
    }
    return grpc::CreateCustomChannel(backend.channel_target, credentials_, args);
  }

 private:
  static std::string AuthorityOf(const UpstreamChannelOptions& options) {
    if (!options.authority.empty()) return options.authority;
    absl::StatusOr<UpstreamTarget> target = ParseUpstreamTarget(options.target);
    return target.ok() ? target->default_authority : std::string();
  }

  const UpstreamChannelOptions options_;
  // Shared by every channel: one file watcher for the whole pool.
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  // Every channel's :authority.
  const std::string authority_;
  std::atomic<int> generation_{0};
};

}  // namespace

std::vector<std::string> CredentialFiles(const UpstreamChannelOptions& options) {
  std::vector<std::string> files;
  if (!options.tls) return files;
  for (const std::string* file : {&options.ca_file, &options.cert_file, &options.key_file}) {
    if (!file->empty()) files.push_back(*file);
  }
  return files;
}

std::unique_ptr<ChannelFactory> NewUpstreamChannelFactory(UpstreamChannelOptions options) {
  return std::make_unique<UpstreamChannelFactory>(std::move(options));
}

}  // namespace poolside
