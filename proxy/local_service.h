// Methods poolside answers itself instead of forwarding them: its own
// PoolAdmin service. They are served through the same generic completion-queue
// path as forwarded calls, so poolside runs no callback-API threads of grpc's
// (those poll the same connections and hand work across threads).
#ifndef POOLSIDE_PROXY_LOCAL_SERVICE_H_
#define POOLSIDE_PROXY_LOCAL_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <functional>

#include "absl/strings/string_view.h"

namespace poolside {

// Implementations must be thread-safe: every forwarding thread calls them.
class LocalService {
 public:
  // Receives the answer to one call, exactly once, on any thread.
  using Reply = std::function<void(grpc::Status status, grpc::ByteBuffer response)>;

  virtual ~LocalService() = default;

  // Whether `method` ("/package.Service/Method") is answered here rather than
  // forwarded. Runs for every accepted call: must be cheap.
  virtual bool Serves(absl::string_view method) const = 0;

  // Answers one unary call of a method Serves() claims.
  virtual void Answer(absl::string_view method, const grpc::ByteBuffer& request, Reply reply) = 0;
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_LOCAL_SERVICE_H_
