// How poolside sets up grpc core's own threads before it creates anything.
//
// grpc 1.51 hands work to its "default executor" threads whenever a thread
// that is draining a completion queue has a completion waiting for it and a
// transport's combiner still has work queued: the rest of that work moves to
// an executor thread so the queue's thread can return. On a forwarder every
// thread always has completions waiting, so this handoff happens on most
// forwarded messages — a futex wake-up and a context switch each, measured at
// about 15% of poolside's context switches and 8% of its CPU per call
// (bench/RESULTS.md). With the default executor's threads off, that work
// runs where it was queued. DNS resolution (grpc's blocking getaddrinfo) runs
// on the separate resolver executor, whose threads stay on.
//
// It also makes absl measure the CPU's frequency up front. absl does that
// lazily, the first time any absl::Mutex in the process queues a waiter, and
// on machines without /sys/devices/system/cpu/cpu0/tsc_freq_khz (most VMs) the
// attempt to read that file leaves errno at ENOENT. grpc 1.51's TCP connect
// reads errno after taking mutexes (tcp_client_posix.cc, after
// grpc_fd_create), so if that first wait lands there, a connect that was
// merely in progress fails as "No such file or directory" and the channel
// backs off for a second (tests/faults/FINDINGS.md).
#ifndef POOLSIDE_PROXY_GRPC_RUNTIME_H_
#define POOLSIDE_PROXY_GRPC_RUNTIME_H_

namespace poolside {

// Initializes grpc for the life of the process, runs grpc's default-executor
// work inline and settles absl's CPU frequency. Call once, before any grpc
// object exists.
void StartGrpcRuntime();

}  // namespace poolside

#endif  // POOLSIDE_PROXY_GRPC_RUNTIME_H_
