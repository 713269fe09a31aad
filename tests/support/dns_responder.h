// DnsResponder: a small authoritative DNS server on a loopback UDP port that
// a test controls: it answers A and AAAA queries for one name with the
// addresses the test sets, and can be told to fail, so that a test can scale
// a "headless Service" out and in, or make its name stop resolving, while
// poolside (target dns://127.0.0.1:PORT/NAME:PORT) follows.
//
// Answers carry a TTL of 1 s. Other names get NXDOMAIN.
//
// Thread-safe. Serves on its own thread from Start() until destruction.
#ifndef POOLSIDE_TESTS_SUPPORT_DNS_RESPONDER_H_
#define POOLSIDE_TESTS_SUPPORT_DNS_RESPONDER_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace poolside::test {

class DnsResponder {
 public:
  enum class Failure {
    kNone,
    // Answers SERVFAIL.
    kServerFailure,
    // Answers NXDOMAIN for the name too.
    kNoSuchName,
    // Does not answer at all (the client times out).
    kSilent,
  };

  // `name` without a trailing dot, e.g. "backends.poolside.test".
  explicit DnsResponder(std::string name);
  ~DnsResponder();
  DnsResponder(const DnsResponder&) = delete;
  DnsResponder& operator=(const DnsResponder&) = delete;

  // Binds 127.0.0.1:0 and starts answering.
  absl::Status Start();

  // IPv4 and IPv6 literals ("127.0.0.2", "::1") the name resolves to.
  void SetAddresses(std::vector<std::string> addresses);
  void SetFailure(Failure failure);

  int port() const { return port_; }
  // "127.0.0.1:<port>", the authority of a dns:// target.
  std::string address() const;
  // Queries received so far.
  int64_t queries() const { return queries_.load(); }

 private:
  void Serve();
  // The reply to `query`, or empty for none.
  std::string Answer(const std::string& query);

  const std::string name_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> queries_{0};

  mutable absl::Mutex mutex_;
  std::vector<std::string> addresses_ ABSL_GUARDED_BY(mutex_);
  Failure failure_ ABSL_GUARDED_BY(mutex_) = Failure::kNone;

  std::thread thread_;
};

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_DNS_RESPONDER_H_
