// Many bidi streams at once through one completion queue, for tests that
// bound what poolside holds while thousands of streams open and close.
#ifndef POOLSIDE_TESTS_SUPPORT_STREAM_SWARM_H_
#define POOLSIDE_TESTS_SUPPORT_STREAM_SWARM_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <map>
#include <memory>
#include <vector>

#include "absl/time/time.h"

namespace poolside::test {

struct SwarmOutcome {
  // Streams that echoed their first message (were open end to end).
  int opened = 0;
  // How each stream ended, by status code.
  std::map<grpc::StatusCode, int> codes;
  // Streams that had not ended when the swarm's time ran out.
  int unfinished = 0;
  absl::Duration open_time;
  absl::Duration total_time;
};

// Opens `streams` bidi streams to /poolside.test.Echo/Bidi spread over
// `channels`, each writing one `message_size`-byte message and reading its
// echo; once all are open (or `timeout` passes) half-closes them all (every
// `cancel_every`-th is cancelled instead, 0: none) and waits for each status.
// One completion queue, driven by the calling thread.
SwarmOutcome RunStreamSwarm(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            int streams, size_t message_size, int cancel_every,
                            absl::Duration timeout);

}  // namespace poolside::test

#endif  // POOLSIDE_TESTS_SUPPORT_STREAM_SWARM_H_
