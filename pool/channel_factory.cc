#include "pool/channel_factory.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
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

class UpstreamChannelFactory : public ChannelFactory {
 public:
  explicit UpstreamChannelFactory(UpstreamChannelOptions options) : options_(std::move(options)) {}

  std::shared_ptr<grpc::Channel> Create(int slot) override {
    grpc::ChannelArguments args;
    const int max_bytes = static_cast<int>(std::min<int64_t>(options_.max_message_bytes, INT_MAX));
    args.SetMaxReceiveMessageSize(max_bytes);
    args.SetMaxSendMessageSize(max_bytes);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    // grpc backs off up to 120 s between reconnects; a sidecar should find a
    // restarted upstream within seconds.
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
    args.SetInt(kSlotArg, slot);
    // Each replacement gets a fresh connection too, not the one it replaces.
    args.SetInt("poolside.channel_generation", generation_++);
    if (!options_.authority.empty()) args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, options_.authority);
    return grpc::CreateCustomChannel(options_.target, grpc::InsecureChannelCredentials(), args);
  }

 private:
  const UpstreamChannelOptions options_;
  std::atomic<int> generation_{0};
};

}  // namespace

std::unique_ptr<ChannelFactory> NewUpstreamChannelFactory(UpstreamChannelOptions options) {
  return std::make_unique<UpstreamChannelFactory>(std::move(options));
}

}  // namespace poolside
