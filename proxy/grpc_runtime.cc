#include "proxy/grpc_runtime.h"

#include <grpc/grpc.h>

#include "absl/base/internal/sysinfo.h"

// grpc 1.51 exports its executor's switch from libgrpc.so but ships no public
// header for it; this declares the one static member poolside calls (the
// mangled name is all the linker matches).
namespace grpc_core {
class Executor {
 public:
  static void SetThreadingDefault(bool enable);
};
}  // namespace grpc_core

namespace poolside {

void StartGrpcRuntime() {
  // Never released: grpc would stop its threads (and restart the executor's)
  // whenever the last grpc object of the moment went away.
  grpc_init();
  grpc_core::Executor::SetThreadingDefault(false);
  // absl's only entry point to its once-per-process frequency reading is
  // internal; see the header for why it must not happen inside a connect.
  absl::base_internal::NominalCPUFrequency();
}

}  // namespace poolside
