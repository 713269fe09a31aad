// Test clients that speak raw bytes through grpc::GenericStub, so a test sees
// exactly the bytes, metadata and status that reached it. Every wait is
// bounded: a call that takes longer than CallOptions::wait is cancelled and
// reported as timed out, so a hung proxy fails a test instead of hanging it.
#ifndef POOLSIDE_TESTS_SUPPORT_GENERIC_CLIENT_H_
#define POOLSIDE_TESTS_SUPPORT_GENERIC_CLIENT_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {

// One call as the client saw it.
struct CallResult {
  grpc::Status status;
  Metadata initial_metadata;
  Metadata trailing_metadata;
  std::vector<std::string> responses;
  // The client gave up waiting (CallOptions::wait) and cancelled the call.
  bool timed_out = false;
};

// For gtest failure messages: status, metadata keys and response sizes.
std::ostream& operator<<(std::ostream& os, const CallResult& result);

struct CallOptions {
  // Request metadata, in order (keys may repeat; -bin values are raw bytes).
  std::vector<std::pair<std::string, std::string>> metadata;
  // The call's deadline, relative to its start; none if unset.
  std::optional<absl::Duration> timeout;
  bool wait_for_ready = false;
  // How long the client waits for the call (or, for InteractiveCall, for
  // each step) before cancelling it.
  absl::Duration wait = absl::Seconds(30);
};

// An insecure channel to `target` with no message size limits of its own and
// its own TCP connection (a local subchannel pool), so each channel is a new
// client connection.
std::shared_ptr<grpc::Channel> CreateTestChannel(const std::string& target);

// A unary call (GenericStub::PrepareUnaryCall). Blocks until it ends.
CallResult UnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& request, const CallOptions& options = {});

// A streaming call of any shape: writes `requests` in order, then half-closes,
// while reading every response (callback API, reads and writes concurrent).
// Blocks until it ends.
CallResult StreamingCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                         const std::vector<std::string>& requests, const CallOptions& options = {});

// Starts one unary call per request, all at once (callback API), and waits
// for all of them. Results are in request order; `options.wait` bounds the
// whole batch.
std::vector<CallResult> ConcurrentUnaryCalls(const std::shared_ptr<grpc::Channel>& channel,
                                             const std::string& method,
                                             const std::vector<std::string>& requests,
                                             const CallOptions& options = {});

// A streaming call driven one step at a time on its own completion queue, for
// tests that interleave (write, read, cancel mid-stream). Each step blocks
// until done, bounded by CallOptions::wait. The call starts on construction;
// destroying it cancels the call if it has not finished.
// Confined to one thread at a time.
class InteractiveCall {
 public:
  InteractiveCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                  const CallOptions& options = {});
  ~InteractiveCall();

  InteractiveCall(const InteractiveCall&) = delete;
  InteractiveCall& operator=(const InteractiveCall&) = delete;

  // False if the message could not be sent (the call is over).
  bool Write(const std::string& message);
  // The next message, or nullopt when the stream has ended.
  std::optional<std::string> Read();
  // Half-closes. False if the call is over.
  bool WritesDone();
  // Cancels the call (ClientContext::TryCancel). Finish() still reports it.
  void Cancel();
  // Waits for the status. REQUIRES: called once.
  CallResult Finish();

  // Whether a step timed out (the call was then cancelled).
  bool timed_out() const { return timed_out_; }

 private:
  // Waits for the completion of the one operation outstanding; its `ok`.
  bool Await();

  const absl::Duration wait_;
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
  bool finished_ = false;
  bool timed_out_ = false;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_GENERIC_CLIENT_H_
