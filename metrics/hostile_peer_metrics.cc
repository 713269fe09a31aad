#include "metrics/hostile_peer_metrics.h"

#include <string>

namespace poolside {

absl::string_view HostileReasonName(HostileReason reason) {
  switch (reason) {
    case HostileReason::kNone:
      return "none";
    case HostileReason::kHeaderBlockTooLarge:
      return "header_block_too_large";
    case HostileReason::kRapidReset:
      return "rapid_reset";
    case HostileReason::kPingFlood:
      return "ping_flood";
    case HostileReason::kSettingsFlood:
      return "settings_flood";
    case HostileReason::kMalformed:
      return "malformed";
    case HostileReason::kSettingsNotAcked:
      return "settings_not_acked";
    case HostileReason::kTooManyConnections:
      return "too_many_connections";
  }
  return "none";
}

absl::string_view PeerSideName(PeerSide side) {
  return side == PeerSide::kApp ? "app" : "upstream";
}

HostilePeerMetrics::HostilePeerMetrics(prometheus::Registry& registry) {
  auto& family = prometheus::BuildCounter()
                     .Name("poolside_hostile_peer_total")
                     .Help(
                         "Peers poolside cut off for breaking an HTTP/2 abuse rule, by side "
                         "(app: a connection to the listen port; upstream: a pooled connection) "
                         "and reason.")
                     .Register(registry);
  for (PeerSide side : {PeerSide::kApp, PeerSide::kUpstream}) {
    for (size_t i = 1; i < kHostileReasonCount; ++i) {
      const auto reason = static_cast<HostileReason>(i);
      counters_[static_cast<size_t>(side)][i] =
          &family.Add({{"side", std::string(PeerSideName(side))},
                       {"reason", std::string(HostileReasonName(reason))}});
    }
  }
}

void HostilePeerMetrics::Count(PeerSide side, HostileReason reason) {
  prometheus::Counter* counter = counters_[static_cast<size_t>(side)][static_cast<size_t>(reason)];
  if (counter != nullptr) counter->Increment();
}

}  // namespace poolside
