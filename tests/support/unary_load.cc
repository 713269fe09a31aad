#include "tests/support/unary_load.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/support/test_upstream.h"

namespace poolside::test {

UnaryLoad::UnaryLoad(std::string target, int threads, CallOptions options)
    : target_(std::move(target)), thread_count_(threads), options_(std::move(options)) {}

UnaryLoad::~UnaryLoad() { Stop(); }

void UnaryLoad::Start() {
  for (int i = 0; i < thread_count_; ++i) threads_.emplace_back([this] { Run(); });
}

std::vector<TimedCall> UnaryLoad::Stop() {
  stop_.store(true);
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  absl::MutexLock lock(&mutex_);
  std::sort(calls_.begin(), calls_.end(),
            [](const TimedCall& a, const TimedCall& b) { return a.start < b.start; });
  return calls_;
}

void UnaryLoad::Run() {
  const std::shared_ptr<grpc::Channel> channel = CreateTestChannel(target_);
  while (!stop_.load()) {
    TimedCall call;
    call.id = next_id_.fetch_add(1);
    CallOptions options = options_;
    options.metadata.emplace_back("x-call-id", absl::StrCat(call.id));
    call.start = absl::Now();
    const CallResult result =
        UnaryCall(channel, kUnaryMethod, absl::StrCat("load ", call.id), options);
    call.end = absl::Now();
    call.code = result.status.error_code();
    call.message = result.status.error_message();
    if (result.timed_out) call.message += " (client gave up waiting)";
    finished_.fetch_add(1);
    const bool failed = call.code != grpc::StatusCode::OK;
    {
      absl::MutexLock lock(&mutex_);
      calls_.push_back(std::move(call));
    }
    // A failing target fails fast: do not spin.
    if (failed) absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string SummarizeCodes(const std::vector<TimedCall>& calls) {
  std::map<grpc::StatusCode, int> counts;
  std::map<grpc::StatusCode, std::string> example;
  for (const TimedCall& call : calls) {
    ++counts[call.code];
    if (call.code != grpc::StatusCode::OK) example.emplace(call.code, call.message);
  }
  std::vector<std::string> parts;
  for (const auto& [code, count] : counts) {
    std::string part = absl::StrCat("code ", static_cast<int>(code), ": ", count);
    if (auto it = example.find(code); it != example.end()) {
      absl::StrAppend(&part, " (e.g. \"", it->second, "\")");
    }
    parts.push_back(part);
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace poolside::test
