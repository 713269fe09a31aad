#include "tests/support/stream_swarm.h"

#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {
namespace {

enum class SwarmOp : uintptr_t {
  kStarted,
  kWritten,
  kEchoed,
  kWritesDone,
  kDrained,
  kFinished,
};
constexpr uintptr_t kSwarmOpBits = 3;

struct SwarmStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
  grpc::ByteBuffer response;
  grpc::Status status;
  bool open = false;
  bool closing = false;
  bool finished = false;
  bool cancel = false;
};

void* SwarmTag(size_t index, SwarmOp op) {
  return reinterpret_cast<void*>((index << kSwarmOpBits) | static_cast<uintptr_t>(op));
}

}  // namespace

SwarmOutcome RunStreamSwarm(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            int streams, size_t message_size, int cancel_every,
                            absl::Duration timeout) {
  SwarmOutcome outcome;
  const absl::Time start = absl::Now();
  const absl::Time open_deadline = start + timeout / 2;
  const absl::Time deadline = start + timeout;
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (const auto& channel : channels)
    stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  grpc::Slice slice(std::string(message_size, 'x'));
  const grpc::ByteBuffer request(&slice, 1);

  std::vector<std::unique_ptr<SwarmStream>> all(static_cast<size_t>(streams));
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = std::make_unique<SwarmStream>();
    SwarmStream& stream = *all[i];
    stream.cancel = cancel_every > 0 && i % static_cast<size_t>(cancel_every) == 0;
    stream.call = stubs[i % stubs.size()]->PrepareCall(&stream.context, kBidiMethod, &cq);
    stream.call->StartCall(SwarmTag(i, SwarmOp::kStarted));
  }

  int ended_before_open = 0;
  int finished = 0;
  bool closing_phase = false;
  bool cancelled_all = false;
  const auto finish = [&](size_t i) {
    all[i]->call->Finish(&all[i]->status, SwarmTag(i, SwarmOp::kFinished));
  };
  const auto close = [&](size_t i) {
    SwarmStream& stream = *all[i];
    stream.closing = true;
    if (stream.cancel) {
      stream.context.TryCancel();
      stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
    } else {
      stream.call->WritesDone(SwarmTag(i, SwarmOp::kWritesDone));
    }
  };
  const auto enter_closing_phase = [&] {
    closing_phase = true;
    outcome.open_time = absl::Now() - start;
    for (size_t i = 0; i < all.size(); ++i) {
      // Streams not open yet are cancelled; they end through their pending op.
      if (all[i]->open) {
        close(i);
      } else if (!all[i]->finished) {
        all[i]->context.TryCancel();
      }
    }
  };

  while (finished < streams) {
    if (!closing_phase &&
        (outcome.opened + ended_before_open == streams || absl::Now() > open_deadline)) {
      enter_closing_phase();
    }
    const absl::Time now = absl::Now();
    if (now > deadline && !cancelled_all) {
      cancelled_all = true;
      for (auto& stream : all) {
        if (!stream->finished) stream->context.TryCancel();
      }
    }
    if (now > deadline + absl::Seconds(15)) {
      std::fprintf(stderr, "stream swarm: %d streams did not end after being cancelled\n",
                   streams - finished);
      std::abort();  // Their contexts still have operations pending.
    }
    void* tag = nullptr;
    bool ok = false;
    const auto status =
        cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    if (status != grpc::CompletionQueue::GOT_EVENT) continue;
    const auto bits = reinterpret_cast<uintptr_t>(tag);
    const size_t i = bits >> kSwarmOpBits;
    SwarmStream& stream = *all[i];
    switch (static_cast<SwarmOp>(bits & ((1u << kSwarmOpBits) - 1))) {
      case SwarmOp::kStarted:
        if (!ok) {
          finish(i);
        } else {
          stream.call->Write(request, SwarmTag(i, SwarmOp::kWritten));
        }
        break;
      case SwarmOp::kWritten:
        if (!ok) {
          finish(i);
        } else {
          stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kEchoed));
        }
        break;
      case SwarmOp::kEchoed:
        if (!ok) {
          finish(i);
        } else {
          stream.open = true;
          ++outcome.opened;
          if (closing_phase) close(i);
        }
        break;
      case SwarmOp::kWritesDone:
        stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
        break;
      case SwarmOp::kDrained:
        if (ok) {
          stream.call->Read(&stream.response, SwarmTag(i, SwarmOp::kDrained));
        } else {
          finish(i);
        }
        break;
      case SwarmOp::kFinished:
        stream.finished = true;
        ++finished;
        if (!stream.open) ++ended_before_open;
        ++outcome.codes[stream.status.error_code()];
        break;
    }
  }
  outcome.unfinished = streams - finished;
  outcome.total_time = absl::Now() - start;
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return outcome;
}

}  // namespace poolside::test
