// Creates the pool's upstream channels. Injected into ChannelPool so that
// tests can substitute their own channels.
#ifndef POOLSIDE_POOL_CHANNEL_FACTORY_H_
#define POOLSIDE_POOL_CHANNEL_FACTORY_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace poolside {

class ChannelFactory {
 public:
  virtual ~ChannelFactory() = default;
  // A new channel for pool slot `slot`. Every call returns a channel with its
  // own TCP connection, never one shared with an earlier channel.
  // Thread-safe.
  virtual std::shared_ptr<grpc::Channel> Create(int slot) = 0;
};

struct UpstreamChannelOptions {
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
};

// The files whose change must roll the pool's connections over.
std::vector<std::string> CredentialFiles(const UpstreamChannelOptions& options);

// Channels to `options.target` (h2c, or TLS re-reading its files as they
// change), tuned for forwarding: retries
// off (the app's own client decides about retries), a private subchannel pool
// so that each channel is its own connection.
std::unique_ptr<ChannelFactory> NewUpstreamChannelFactory(UpstreamChannelOptions options);

}  // namespace poolside

#endif  // POOLSIDE_POOL_CHANNEL_FACTORY_H_
