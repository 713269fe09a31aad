// An event that completes on a completion queue drained by someone else's
// threads. The pool's connectivity watches use it to ride the forwarding
// threads' queues instead of keeping a thread of their own: a thread waiting
// in CompletionQueue::Next() polls grpc's I/O, so an extra waiting thread
// takes reads of forwarded connections away from the forwarding threads and
// hands every completion back to them (a wake-up and a context switch each).
//
// The owner of the queue tells these tags from its own by their low bits:
// kTagBits all set. Its own tags must never have all of them set.
#ifndef POOLSIDE_POOL_QUEUE_EVENT_H_
#define POOLSIDE_POOL_QUEUE_EVENT_H_

#include <cstdint>

namespace poolside {

class alignas(16) QueueEvent {
 public:
  static constexpr uintptr_t kTagBits = 15;

  virtual ~QueueEvent() = default;

  // Runs on the thread that drained the queue. `ok` is the queue's verdict.
  virtual void OnQueueEvent(bool ok) = 0;

  // The tag to hand grpc for this event.
  void* tag() { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) | kTagBits); }

  // Whether `tag` was made by tag().
  static bool IsQueueEventTag(void* tag) {
    return (reinterpret_cast<uintptr_t>(tag) & kTagBits) == kTagBits;
  }

  // REQUIRES: IsQueueEventTag(tag).
  static void Dispatch(void* tag, bool ok) {
    reinterpret_cast<QueueEvent*>(reinterpret_cast<uintptr_t>(tag) & ~kTagBits)->OnQueueEvent(ok);
  }
};

}  // namespace poolside

#endif  // POOLSIDE_POOL_QUEUE_EVENT_H_
