// Creates the pool's upstream channels. Injected into ChannelPool so that
// tests can substitute their own channels.
#ifndef POOLSIDE_POOL_CHANNEL_FACTORY_H_
#define POOLSIDE_POOL_CHANNEL_FACTORY_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pool/upstream_target.h"

namespace poolside {

class ChannelFactory {
 public:
  virtual ~ChannelFactory() = default;
  // A new channel for pool slot `slot`, connecting to `backend` only. Every
  // call returns a channel with its own TCP connection, never one shared
  // with an earlier channel. Thread-safe.
  virtual std::shared_ptr<grpc::Channel> Create(const BackendAddress& backend, int slot) = 0;
};

struct UpstreamChannelOptions {
  // The target as configured: its name is every channel's :authority and TLS
  // server name, whichever backend address the channel connects to.
  std::string target;
  // :authority for every call; empty means the target's own.
  std::string authority;
  int64_t max_message_bytes = 64 << 20;

  // TLS (see config.h for the meaning of each); plaintext h2c when false.
  bool tls = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::string server_name;

  // GRPC_ARG_ENABLE_RETRIES. No retry policy is configured, so grpc retries
  // only what provably never reached the upstream, on the same channel (so
  // the same backend), once the channel is back: ProxyCall's upstream calls
  // wait for ready, with a bound of its own. Costs about 5% more
  // instructions per call (pool/ARCHITECTURE.md, "Calls that never reached
  // an upstream").
  bool transparent_retries = true;
};

// The files whose change must roll the pool's connections over.
std::vector<std::string> CredentialFiles(const UpstreamChannelOptions& options);

// Channels to one backend address of `options.target` each (h2c, or TLS
// re-reading its files as they change), named as the target (its authority
// and TLS server name), tuned for forwarding: a private subchannel pool so
// that each channel is its own connection, and no retry beyond grpc's
// transparent one (the app's own client decides about retries; see
// `transparent_retries`).
std::unique_ptr<ChannelFactory> NewUpstreamChannelFactory(UpstreamChannelOptions options);

}  // namespace poolside

#endif  // POOLSIDE_POOL_CHANNEL_FACTORY_H_
