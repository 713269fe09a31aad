#include "admin/pool_report.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace poolside {

PoolReport BuildPoolReport(PoolSnapshot snapshot) {
  PoolReport report;
  report.health = PoolHealthOf(snapshot);
  report.counts = absl::StrCat(snapshot.HealthyCount(), " of ", snapshot.ActiveCount(),
                               " upstream connections healthy");
  for (const ChannelSnapshot& channel : snapshot.channels) {
    if (channel.phase != SlotPhase::kActive || channel.healthy) continue;
    absl::StrAppend(&report.unhealthy_channels, "; channel ", channel.index, " ",
                    ConnectivityStateName(channel.state),
                    channel.backend.empty() ? "" : " (" + channel.backend + ")");
  }
  report.snapshot = std::move(snapshot);
  return report;
}

}  // namespace poolside
