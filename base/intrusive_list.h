// A list of objects in the order they joined, so that the oldest is always at
// hand: a completion queue's calls that hold a step back (ProxyCall::Hold,
// ProxyCall::HoldRead), a relay connection's streams and the streams waiting
// for a connection (relay/frame_relay.cc). Intrusive: an object carries one
// IntrusiveLink per list it may join, so joining and leaving allocate nothing
// and cost O(1). Not thread-safe: each list is confined to one thread.
#ifndef POOLSIDE_BASE_INTRUSIVE_LIST_H_
#define POOLSIDE_BASE_INTRUSIVE_LIST_H_

namespace poolside {

template <typename T>
struct IntrusiveLink {
  bool linked = false;
  T* newer = nullptr;
  T* older = nullptr;
};

// `link` names the member of T that links it into this list; every call on
// one list must pass the same one.
template <typename T>
class IntrusiveList {
 public:
  T* newest() const { return newest_; }
  T* oldest() const { return oldest_; }
  bool empty() const { return newest_ == nullptr; }

  // Joins as the newest; does nothing if `item` is on the list already.
  void Add(T* item, IntrusiveLink<T> T::*link) {
    IntrusiveLink<T>& mine = item->*link;
    if (mine.linked) return;
    mine.linked = true;
    mine.older = newest_;
    if (newest_ != nullptr) {
      (newest_->*link).newer = item;
    } else {
      oldest_ = item;
    }
    newest_ = item;
  }

  // Leaves; does nothing if `item` is not on the list.
  void Remove(T* item, IntrusiveLink<T> T::*link) {
    IntrusiveLink<T>& mine = item->*link;
    if (!mine.linked) return;
    mine.linked = false;
    if (mine.newer != nullptr) {
      (mine.newer->*link).older = mine.older;
    } else {
      newest_ = mine.older;
    }
    if (mine.older != nullptr) {
      (mine.older->*link).newer = mine.newer;
    } else {
      oldest_ = mine.newer;
    }
    mine.newer = mine.older = nullptr;
  }

 private:
  T* newest_ = nullptr;
  T* oldest_ = nullptr;
};

}  // namespace poolside

#endif  // POOLSIDE_BASE_INTRUSIVE_LIST_H_
