// The lists a completion queue keeps of its calls that hold a step back
// (ProxyCall::Hold, ProxyCall::HoldRead), in the order they began to hold, so
// that the oldest, whose bound comes first, is always at hand. Intrusive: a
// call carries one HoldLink per list it may join, so joining and leaving
// allocate nothing and cost O(1). Confined to the queue's thread.
#ifndef POOLSIDE_PROXY_HOLD_LIST_H_
#define POOLSIDE_PROXY_HOLD_LIST_H_

namespace poolside {

template <typename T>
struct HoldLink {
  bool linked = false;
  T* newer = nullptr;
  T* older = nullptr;
};

// `link` names the member of T that links it into this list; every call on
// one list must pass the same one.
template <typename T>
class HoldList {
 public:
  T* newest() const { return newest_; }
  T* oldest() const { return oldest_; }
  bool empty() const { return newest_ == nullptr; }

  // Joins as the newest; does nothing if `item` is on the list already.
  void Add(T* item, HoldLink<T> T::*link) {
    HoldLink<T>& mine = item->*link;
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
  void Remove(T* item, HoldLink<T> T::*link) {
    HoldLink<T>& mine = item->*link;
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

#endif  // POOLSIDE_PROXY_HOLD_LIST_H_
