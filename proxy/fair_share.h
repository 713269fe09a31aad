// FairShare bounds how many upstream calls one app connection may hold at
// once (GRPC_APP_CONNECTION_MAX_SHARE_PERCENT of the pool's upstream streams),
// so that a client that opens calls and never finishes them (stream hoarding)
// cannot take every pooled stream from the other apps of the pod. A call past
// its connection's share is not refused: it waits, first come first served,
// until one of that connection's own calls ends and hands it the place. Other
// connections' calls never wait for it.
//
// A connection is named by the peer string grpc gives its calls ("ipv4:..."
// for a direct connection, "fd:N" for one the frame screen relays), which is
// distinct between connections open at the same time.
//
// Thread-safety: thread-safe. Places are taken and waits begin on the calls'
// queue threads; a place is handed to a waiter by posting the waiter's alarm
// to the waiter's own completion queue, so the waiter resumes on its thread.
#ifndef POOLSIDE_PROXY_FAIR_SHARE_H_
#define POOLSIDE_PROXY_FAIR_SHARE_H_

#include <grpcpp/alarm.h>
#include <grpcpp/completion_queue.h>

#include <cstdint>
#include <list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace poolside {

class FairShare {
 public:
  // A call waiting for a place: when granted, `alarm` is set on `queue` with
  // `tag`. Owned by the waiting call; must stay valid until Cancel() or the
  // tag's delivery.
  struct Waiter {
    grpc::Alarm* alarm = nullptr;
    grpc::CompletionQueue* queue = nullptr;
    void* tag = nullptr;
  };

  // `max_per_connection` places per app connection; <= 0 means no bound.
  explicit FairShare(int64_t max_per_connection) : max_(max_per_connection) {}
  FairShare(const FairShare&) = delete;
  FairShare& operator=(const FairShare&) = delete;

  bool bounded() const { return max_ > 0; }
  int64_t max_per_connection() const { return max_; }

  // Takes a place for `connection` if one is free (and nobody of that
  // connection waits): the common case, with no waiter to set up.
  bool TryAcquire(const std::string& connection);

  // Takes a place for `connection` and returns true, or queues `waiter` and
  // returns false: the place is then handed over by setting its alarm.
  bool AcquireOrWait(const std::string& connection, const Waiter& waiter);

  // Gives a place back; the connection's first waiter, if any, gets it.
  // REQUIRES: a place held for `connection` (taken or handed over).
  void Release(const std::string& connection);

  // Withdraws `waiter`. True if it was still waiting; false if the place has
  // already been handed to it (its alarm is set or about to be; the place is
  // then the caller's to Release).
  bool Cancel(const std::string& connection, const Waiter& waiter);

  // Places held and calls waiting, over every connection (for tests).
  int64_t held() const;
  int64_t waiting() const;

 private:
  struct Connection {
    int64_t held = 0;
    std::list<Waiter> waiting;
  };

  // Constant after construction.
  const int64_t max_;

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Connection> connections_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace poolside

#endif  // POOLSIDE_PROXY_FAIR_SHARE_H_
