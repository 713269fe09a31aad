// The bounded set of method names that request metrics are labelled with.
// Method names come from clients, so a client that invents names must not be
// able to grow memory or the number of time series: the first `max_methods`
// well-formed names get their own id, every other name shares kOtherMethod.
//
// Thread-safety: thread-safe. Find() takes a mutex until the table is full;
// after that the table never changes again and Find() is lock-free.
#ifndef POOLSIDE_METRICS_METHOD_TABLE_H_
#define POOLSIDE_METRICS_METHOD_TABLE_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace poolside {

// Index of a method in a MethodTable; ids are dense, 0..max_methods.
using MethodId = uint32_t;

// The id of the method labelled grpc_service="other",grpc_method="other".
inline constexpr MethodId kOtherMethod = 0;

// Longer method paths fold into "other": a label value should stay readable
// and a hostile path must not make each series kilobytes long.
inline constexpr size_t kMaxMethodPathLength = 256;

struct MethodLabels {
  std::string service;
  std::string method;
};

// Splits "/pkg.Service/Method" into its labels. nullopt for anything else: no
// leading '/', no second '/', a third '/', an empty part, a byte outside
// printable ASCII, or a path longer than kMaxMethodPathLength.
std::optional<MethodLabels> ParseMethodPath(absl::string_view path);

class MethodTable {
 public:
  // REQUIRES: max_methods >= 0.
  explicit MethodTable(int max_methods);
  MethodTable(const MethodTable&) = delete;
  MethodTable& operator=(const MethodTable&) = delete;

  // The id of `path`, assigning the next free one to a well-formed path seen
  // for the first time while there is room; kOtherMethod otherwise.
  MethodId Find(absl::string_view path);

  // Labels of every assigned id, indexed by id; [kOtherMethod] is "other".
  std::vector<MethodLabels> Labels() const;

  int max_methods() const { return max_methods_; }

 private:
  // Find() once full_ is set: ids_ no longer changes, so no lock is needed.
  MethodId FindInFullTable(absl::string_view path) const ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // Constant after construction.
  const int max_methods_;

  // Set, with release order, once ids_ is full; from then on nothing below
  // changes and ids_ may be read without mutex_.
  std::atomic<bool> full_{false};

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, MethodId> ids_ ABSL_GUARDED_BY(mutex_);
  std::vector<MethodLabels> labels_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace poolside

#endif  // POOLSIDE_METRICS_METHOD_TABLE_H_
