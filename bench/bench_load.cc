// bench_load: a closed-loop gRPC load generator for poolside's benchmarks.
//
// It keeps --inflight calls (or streams) running over --connections distinct
// client channels (distinct TCP connections) for --warmup and then --duration
// seconds, verifies every response (status OK, echoed size equal to the
// payload), and prints one JSON line: calls and calls/s completed in the
// measured window, latency percentiles in microseconds, and errors by status
// code name.
//
// Modes:
//   unary                 one message each way per call
//   bidi                  --inflight long-lived streams, each a ping-pong of
//                         one message at a time; a "call" is one round trip
//   new-channel-per-call  unary, but each call on a fresh channel with its own
//                         connection (the "without pooling" baseline)
//   open-streams          opens --inflight streams, does one round trip on
//                         each, then holds them all open and idle for
//                         --duration seconds (for memory measurements)
//
// To measure what other processes spend on the same calls, --watch names
// groups of pids whose CPU time (utime + stime from /proc/PID/stat) is read at
// the start and the end of the measured window, and whose resident memory is
// read at its end; the generator's own CPU is always reported as "self".
//
// The generator is built for low overhead on a machine it shares with the
// system under test: completion queues, one thread by default, no locks.
#include <grpcpp/alarm.h>
#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/internal/sysinfo.h"
#include "bench/load_flags.h"
#include "bench/load_report.h"
#include "bench/proc_stats.h"
#include "metrics/request_metrics.h"

namespace {

using poolside::bench::EstablishedConnectionsOnPort;
using poolside::bench::Flags;
using poolside::bench::JsonNumber;
using poolside::bench::JsonString;
using poolside::bench::MachineBusyCpuSeconds;
using poolside::bench::Mode;
using poolside::bench::ModeName;
using poolside::bench::ParseFlags;
using poolside::bench::Percentile;
using poolside::bench::ProcessCpuSeconds;
using poolside::bench::ProcessStatusKib;
using poolside::bench::SelfCpuSeconds;
using poolside::bench::SumOverGroup;
using poolside::bench::WatchGroup;

using Clock = std::chrono::steady_clock;

// A duration of `seconds` in the units of clock `C`.
template <typename C = Clock>
typename C::duration Seconds(double seconds) {
  return std::chrono::duration_cast<typename C::duration>(std::chrono::duration<double>(seconds));
}

// --- Recording ---

constexpr int kStatusCodes = 17;
// Pseudo status for a call that succeeded with a wrong-sized echo.
constexpr int kBadResponseSize = kStatusCodes;

const char* ErrorName(int code) {
  return code == kBadResponseSize ? "BAD_RESPONSE_SIZE" : poolside::StatusCodeName(code);
}

// Outcomes of the calls of one worker. Confined to the worker's thread until
// the run has drained.
class Recorder {
 public:
  Recorder(Clock::time_point window_start, Clock::time_point window_end)
      : window_start_(window_start), window_end_(window_end) {}

  void RecordOk(Clock::time_point start, Clock::time_point end) {
    ++calls_total_;
    if (!InWindow(end)) return;
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(end - start).count();
    latencies_us_.push_back(static_cast<uint32_t>(std::min<int64_t>(micros, UINT32_MAX)));
  }

  void RecordError(int code, Clock::time_point end) {
    ++calls_total_;
    const int index = code >= 0 && code <= kStatusCodes ? code : 2;
    (InWindow(end) ? errors_window_ : errors_outside_)[index]++;
  }

  const std::vector<uint32_t>& latencies_us() const { return latencies_us_; }
  uint64_t calls_total() const { return calls_total_; }
  const std::array<uint64_t, kStatusCodes + 1>& errors_window() const { return errors_window_; }
  const std::array<uint64_t, kStatusCodes + 1>& errors_outside() const { return errors_outside_; }

 private:
  bool InWindow(Clock::time_point at) const { return at >= window_start_ && at < window_end_; }

  const Clock::time_point window_start_;
  const Clock::time_point window_end_;
  std::vector<uint32_t> latencies_us_;
  uint64_t calls_total_ = 0;
  std::array<uint64_t, kStatusCodes + 1> errors_window_{};
  std::array<uint64_t, kStatusCodes + 1> errors_outside_{};
};

// --- Calls ---

// Something that issues completion-queue tags: its address with the event in
// the low bits.
class alignas(8) Tagged {
 public:
  virtual ~Tagged() = default;
  virtual void OnEvent(int event, bool ok) = 0;

  void* Tag(int event) {
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) |
                                   static_cast<uintptr_t>(event));
  }
  static void Dispatch(void* tag, bool ok) {
    const auto bits = reinterpret_cast<uintptr_t>(tag);
    reinterpret_cast<Tagged*>(bits & ~uintptr_t{7})->OnEvent(static_cast<int>(bits & 7), ok);
  }
};

// Constant after the slots start, except for the counters.
struct Run {
  Flags flags;
  grpc::ByteBuffer request;
  Clock::time_point window_start;
  Clock::time_point window_end;
  // Deadline of every call (unary) or stream (bidi, open-streams).
  std::chrono::system_clock::duration call_timeout;
  std::chrono::system_clock::time_point stream_deadline;
  // Slots that still have a call or stream running.
  std::atomic<int> active_slots{0};
  // open-streams: streams that have opened, and that have opened or failed.
  std::atomic<int> open_streams{0};
  std::atomic<int> settled_streams{0};
  std::atomic<uint64_t> channels_created{0};
};

class Slot;

// One completion queue, its thread and the slots confined to it.
class Worker : public Tagged {
 public:
  Worker(Clock::time_point window_start, Clock::time_point window_end)
      : recorder_(window_start, window_end) {}

  grpc::CompletionQueue& queue() { return queue_; }
  Recorder& recorder() { return recorder_; }
  void AddSlot(Slot* slot) { slots_.push_back(slot); }

  void StartThread() {
    thread_ = std::thread([this] {
      void* tag = nullptr;
      bool ok = false;
      while (queue_.Next(&tag, &ok)) Tagged::Dispatch(tag, ok);
    });
  }
  // open-streams: asks every slot to end its stream, on the worker's thread.
  void CloseStreams() { close_alarm_.Set(&queue_, std::chrono::system_clock::now(), Tag(0)); }
  void Stop() {
    queue_.Shutdown();
    thread_.join();
  }

  void OnEvent(int event, bool ok) override;

 private:
  grpc::CompletionQueue queue_;
  Recorder recorder_;
  std::vector<Slot*> slots_;
  grpc::Alarm close_alarm_;
  std::thread thread_;
};

// One unit of concurrency: a sequence of calls (or a stream) issued one after
// the other. Confined to its worker's thread once the threads run.
class Slot : public Tagged {
 public:
  Slot(Run& run, Worker& worker) : run_(run), worker_(worker) {}
  virtual void Start() = 0;
  virtual void Close() {}

 protected:
  bool CorrectSize(const grpc::ByteBuffer& response) const {
    return response.Length() == static_cast<size_t>(run_.flags.payload);
  }
  void Done() { run_.active_slots.fetch_sub(1, std::memory_order_relaxed); }

  Run& run_;
  Worker& worker_;
};

void Worker::OnEvent(int /*event*/, bool /*ok*/) {
  for (Slot* slot : slots_) slot->Close();
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, int64_t distinct) {
  // As poolside does at start (proxy/grpc_runtime.h): absl's lazy reading of
  // the CPU frequency, if it first happens inside grpc 1.51's connect, fails
  // that connect with a stale ENOENT.
  static const double kCpuFrequency = absl::base_internal::NominalCPUFrequency();
  static_cast<void>(kCpuFrequency);
  grpc::ChannelArguments args;
  // A local subchannel pool and a distinct argument: otherwise grpc would
  // share one TCP connection between channels with identical arguments.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("bench.channel", static_cast<int>(distinct));
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// Unary calls, one after the other, on a shared channel or (with a null
// channel) on a fresh channel each.
class UnarySlot : public Slot {
 public:
  UnarySlot(Run& run, Worker& worker, std::shared_ptr<grpc::Channel> channel)
      : Slot(run, worker), per_call_channel_(channel == nullptr) {
    if (channel != nullptr) stub_.emplace(std::move(channel));
  }

  void Start() override { Issue(); }

  void OnEvent(int /*event*/, bool /*ok*/) override {
    const Clock::time_point now = Clock::now();
    Recorder& recorder = worker_.recorder();
    if (!status_.ok()) {
      recorder.RecordError(status_.error_code(), now);
    } else if (!CorrectSize(response_)) {
      recorder.RecordError(kBadResponseSize, now);
    } else {
      recorder.RecordOk(start_, now);
    }
    if (now < run_.window_end) return Issue();
    reader_.reset();
    context_.reset();
    Done();
  }

 private:
  void Issue() {
    reader_.reset();
    context_.reset();
    context_.emplace();
    start_ = Clock::now();
    context_->set_deadline(std::chrono::system_clock::now() + run_.call_timeout);
    if (per_call_channel_) {
      stub_.reset();
      stub_.emplace(NewChannel(run_.flags.target, run_.channels_created.fetch_add(1)));
    }
    reader_ =
        stub_->PrepareUnaryCall(&*context_, run_.flags.method, run_.request, &worker_.queue());
    reader_->StartCall();
    reader_->Finish(&response_, &status_, Tag(0));
  }

  const bool per_call_channel_;
  std::optional<grpc::GenericStub> stub_;
  std::optional<grpc::ClientContext> context_;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader_;
  grpc::ByteBuffer response_;
  grpc::Status status_;
  Clock::time_point start_;
};

// A bidi stream doing ping-pong: one message written and its echo read per
// round. In open-streams mode (`hold`), it stops after the first round and
// stays open until Close().
class StreamSlot : public Slot {
 public:
  StreamSlot(Run& run, Worker& worker, std::shared_ptr<grpc::Channel> channel, bool hold)
      : Slot(run, worker), stub_(std::move(channel)), hold_(hold) {}

  void Start() override {
    stream_.reset();
    context_.reset();
    context_.emplace();
    context_->set_deadline(run_.stream_deadline);
    failed_ = false;
    writes_done_ = false;
    stream_ = stub_.PrepareCall(&*context_, run_.flags.method, &worker_.queue());
    stream_->StartCall(Tag(kStarted));
  }

  void Close() override {
    closing_ = true;
    if (opened_ && !ended_ && pending_ == 0 && !writes_done_) CloseWrites();
  }

  void OnEvent(int event, bool ok) override {
    switch (event) {
      case kStarted:
        if (!ok) return FinishStream();
        return Round();
      case kWrite:
      case kRead:
        if (!ok) failed_ = true;
        if (--pending_ > 0) return;
        return OnRoundDone();
      case kWritesDone:
        return FinishStream();
      case kFinish:
        return OnFinished();
    }
  }

 private:
  enum Event { kStarted, kWrite, kRead, kWritesDone, kFinish };

  void Round() {
    start_ = Clock::now();
    pending_ = 2;
    stream_->Write(run_.request, Tag(kWrite));
    stream_->Read(&response_, Tag(kRead));
  }

  void OnRoundDone() {
    // A failed write or read ends the stream; its status tells why.
    if (failed_) return FinishStream();
    const Clock::time_point now = Clock::now();
    if (!CorrectSize(response_)) {
      worker_.recorder().RecordError(kBadResponseSize, now);
      return CloseWrites();
    }
    worker_.recorder().RecordOk(start_, now);
    if (hold_) {
      if (!opened_) {
        opened_ = true;
        run_.open_streams.fetch_add(1, std::memory_order_relaxed);
        run_.settled_streams.fetch_add(1, std::memory_order_relaxed);
      }
      if (closing_) CloseWrites();
      return;  // Idle until Close().
    }
    if (now < run_.window_end) return Round();
    CloseWrites();
  }

  void CloseWrites() {
    writes_done_ = true;
    stream_->WritesDone(Tag(kWritesDone));
  }

  void FinishStream() { stream_->Finish(&status_, Tag(kFinish)); }

  void OnFinished() {
    const Clock::time_point now = Clock::now();
    // A wrong-sized echo was counted already; the stream then ends cleanly.
    if (!status_.ok()) worker_.recorder().RecordError(status_.error_code(), now);
    if (hold_) {
      ended_ = true;
      if (!opened_) run_.settled_streams.fetch_add(1, std::memory_order_relaxed);
      Done();
      return;
    }
    // A stream that broke during the run is replaced so the load stays.
    if (now < run_.window_end) return Start();
    Done();
  }

  grpc::GenericStub stub_;
  const bool hold_;
  std::optional<grpc::ClientContext> context_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream_;
  grpc::ByteBuffer response_;
  grpc::Status status_;
  Clock::time_point start_;
  int pending_ = 0;
  bool failed_ = false;
  bool writes_done_ = false;
  bool opened_ = false;
  bool ended_ = false;
  bool closing_ = false;
};

// --- Results ---

std::string ErrorsJson(const std::array<uint64_t, kStatusCodes + 1>& errors) {
  std::string json = "{";
  for (int code = 0; code <= kStatusCodes; ++code) {
    if (errors[code] == 0) continue;
    if (json.size() > 1) json += ",";
    json += JsonString(ErrorName(code)) + ":" + std::to_string(errors[code]);
  }
  return json + "}";
}

struct Snapshot {
  double machine_busy = 0;
  double self_cpu = 0;
  std::vector<double> group_cpu;
};

Snapshot TakeSnapshot(const Flags& flags) {
  Snapshot snapshot;
  snapshot.machine_busy = MachineBusyCpuSeconds();
  snapshot.self_cpu = SelfCpuSeconds();
  for (const WatchGroup& group : flags.watch) {
    snapshot.group_cpu.push_back(SumOverGroup(group, ProcessCpuSeconds));
  }
  return snapshot;
}

}  // namespace

int main(int argc, char** argv) {
  Run run;
  run.flags = ParseFlags(argc, argv);
  const Flags& flags = run.flags;
  const std::string payload(static_cast<size_t>(flags.payload), 'x');
  grpc::Slice slice(payload);
  run.request = grpc::ByteBuffer(&slice, 1);
  run.call_timeout = Seconds<std::chrono::system_clock>(flags.call_timeout_s);

  // Connect first, so that connection set-up is not part of the warm-up.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  const int connections = flags.mode == Mode::kNewChannelPerCall ? 1 : flags.connections;
  for (int i = 0; i < connections; ++i) {
    channels.push_back(NewChannel(flags.target, -1 - i));
  }
  const auto connect_deadline = std::chrono::system_clock::now() + std::chrono::seconds(10);
  for (auto& channel : channels) {
    if (!channel->WaitForConnected(connect_deadline)) {
      std::fprintf(stderr, "bench_load: cannot connect to %s\n", flags.target.c_str());
      return 1;
    }
  }
  // The per-call mode's probe channel only proves the target is up.
  if (flags.mode == Mode::kNewChannelPerCall) channels.clear();

  const bool hold = flags.mode == Mode::kOpenStreams;
  const Clock::time_point started = Clock::now();
  // Streams live through the whole run, and may take call_timeout more to end.
  const double stream_life_s = hold ? flags.duration_s + 10 : flags.warmup_s + flags.duration_s;
  run.stream_deadline = std::chrono::system_clock::now() + run.call_timeout +
                        Seconds<std::chrono::system_clock>(stream_life_s);
  if (hold) {
    // Every round trip counts; the window is the time the streams are held.
    run.window_start = Clock::time_point::min();
    run.window_end = Clock::time_point::max();
  } else {
    run.window_start = started + Seconds(flags.warmup_s);
    run.window_end = run.window_start + Seconds(flags.duration_s);
  }

  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < flags.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(run.window_start, run.window_end));
  }
  std::vector<std::unique_ptr<Slot>> slots;
  for (int i = 0; i < flags.inflight; ++i) {
    Worker& worker = *workers[i % workers.size()];
    std::shared_ptr<grpc::Channel> channel =
        channels.empty() ? nullptr : channels[i % channels.size()];
    if (flags.mode == Mode::kUnary || flags.mode == Mode::kNewChannelPerCall) {
      slots.push_back(std::make_unique<UnarySlot>(run, worker, std::move(channel)));
    } else {
      slots.push_back(std::make_unique<StreamSlot>(run, worker, std::move(channel), hold));
    }
    worker.AddSlot(slots.back().get());
  }
  // Started before the threads run: nothing completes until they do.
  run.active_slots.store(static_cast<int>(slots.size()));
  for (auto& slot : slots) slot->Start();
  for (auto& worker : workers) worker->StartThread();

  int max_upstream_connections = 0;
  auto sample_connections = [&] {
    if (flags.upstream_port == 0) return;
    max_upstream_connections =
        std::max(max_upstream_connections, EstablishedConnectionsOnPort(flags.upstream_port));
  };
  // Sleeps until `until`, sampling the upstream's connections every second.
  auto wait_sampling = [&](Clock::time_point until) {
    while (Clock::now() < until) {
      std::this_thread::sleep_until(std::min(until, Clock::now() + std::chrono::seconds(1)));
      sample_connections();
    }
  };

  Clock::time_point window_start;
  Clock::time_point window_end;
  if (hold) {
    const Clock::time_point open_deadline = started + Seconds(flags.call_timeout_s);
    while (run.settled_streams.load() < flags.inflight && Clock::now() < open_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    window_start = Clock::now();
    window_end = window_start + Seconds(flags.duration_s);
  } else {
    window_start = run.window_start;
    window_end = run.window_end;
    std::this_thread::sleep_until(window_start);
  }
  const Snapshot before = TakeSnapshot(flags);
  wait_sampling(window_end);
  sample_connections();
  const Snapshot after_window = TakeSnapshot(flags);
  std::vector<double> rss_kib;
  for (const WatchGroup& group : flags.watch) {
    rss_kib.push_back(
        SumOverGroup(group, [](int pid) { return double(ProcessStatusKib(pid, "VmRSS")); }));
  }
  const int open_streams = run.open_streams.load();
  if (hold) {
    for (auto& worker : workers) worker->CloseStreams();
  }

  // Drain: every call ends by its deadline at the latest.
  const Clock::time_point drain_deadline = Clock::now() + Seconds(flags.call_timeout_s + 5);
  while (run.active_slots.load() > 0 && Clock::now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const int undrained = run.active_slots.load();

  std::vector<uint32_t> latencies;
  uint64_t calls_total = 0;
  std::array<uint64_t, kStatusCodes + 1> errors_window{};
  std::array<uint64_t, kStatusCodes + 1> errors_outside{};
  if (undrained == 0) {
    for (auto& worker : workers) {
      const Recorder& recorder = worker->recorder();
      latencies.insert(latencies.end(), recorder.latencies_us().begin(),
                       recorder.latencies_us().end());
      calls_total += recorder.calls_total();
      for (int code = 0; code <= kStatusCodes; ++code) {
        errors_window[code] += recorder.errors_window()[code];
        errors_outside[code] += recorder.errors_outside()[code];
      }
    }
  }
  std::sort(latencies.begin(), latencies.end());
  uint64_t errors_total = 0;
  for (uint64_t count : errors_window) errors_total += count;
  const double window_s = std::chrono::duration<double>(window_end - window_start).count();
  double mean_us = 0;
  for (uint32_t latency : latencies) mean_us += latency;
  if (!latencies.empty()) mean_us /= static_cast<double>(latencies.size());

  std::string json = "{";
  json += "\"mode\":" + JsonString(ModeName(flags.mode));
  json += ",\"target\":" + JsonString(flags.target);
  json += ",\"method\":" + JsonString(flags.method);
  json += ",\"connections\":" + std::to_string(connections);
  json += ",\"inflight\":" + std::to_string(flags.inflight);
  json += ",\"payload\":" + std::to_string(flags.payload);
  json += ",\"threads\":" + std::to_string(flags.threads);
  json += ",\"window_s\":" + JsonNumber(window_s);
  json += ",\"calls\":" + std::to_string(latencies.size() + errors_total);
  json += ",\"calls_ok\":" + std::to_string(latencies.size());
  json += ",\"calls_per_sec\":" +
          JsonNumber(hold ? 0 : static_cast<double>(latencies.size() + errors_total) / window_s);
  json += ",\"calls_total\":" + std::to_string(calls_total);
  json += ",\"latency_us\":{\"p50\":" + std::to_string(Percentile(latencies, 0.50)) +
          ",\"p90\":" + std::to_string(Percentile(latencies, 0.90)) +
          ",\"p99\":" + std::to_string(Percentile(latencies, 0.99)) +
          ",\"p999\":" + std::to_string(Percentile(latencies, 0.999)) +
          ",\"max\":" + std::to_string(latencies.empty() ? 0 : latencies.back()) +
          ",\"mean\":" + JsonNumber(mean_us) + "}";
  json += ",\"errors\":" + ErrorsJson(errors_window);
  json += ",\"errors_total\":" + std::to_string(errors_total);
  json += ",\"errors_outside_window\":" + ErrorsJson(errors_outside);
  json += ",\"cpu_s\":{\"self\":" + JsonNumber(after_window.self_cpu - before.self_cpu);
  for (size_t i = 0; i < flags.watch.size(); ++i) {
    const double spent = before.group_cpu[i] < 0 || after_window.group_cpu[i] < 0
                             ? -1
                             : after_window.group_cpu[i] - before.group_cpu[i];
    json += "," + JsonString(flags.watch[i].name) + ":" + JsonNumber(spent);
  }
  // Everything the machine did meanwhile, others included: shows how much of
  // the machine the measured processes had.
  const bool busy_known = before.machine_busy >= 0 && after_window.machine_busy >= 0;
  json += ",\"machine_busy\":" +
          JsonNumber(busy_known ? after_window.machine_busy - before.machine_busy : -1);
  json += "},\"rss_kib\":{";
  for (size_t i = 0; i < flags.watch.size(); ++i) {
    if (i > 0) json += ",";
    json += JsonString(flags.watch[i].name) + ":" + JsonNumber(rss_kib[i]);
  }
  json += "}";
  if (flags.upstream_port != 0) {
    json += ",\"upstream_connections_max\":" + std::to_string(max_upstream_connections);
  }
  if (flags.mode == Mode::kNewChannelPerCall) {
    json += ",\"channels_created\":" + std::to_string(run.channels_created.load());
  }
  if (hold) json += ",\"open_streams\":" + std::to_string(open_streams);
  if (undrained > 0) json += ",\"undrained_slots\":" + std::to_string(undrained);
  json += "}\n";
  std::fputs(json.c_str(), stdout);
  std::fflush(stdout);

  if (undrained > 0) {
    // Calls still hold the queues; shutting them down would wait forever.
    std::fprintf(stderr, "bench_load: %d slots did not finish in time\n", undrained);
    std::_Exit(1);
  }
  for (auto& worker : workers) worker->Stop();
  return 0;
}
