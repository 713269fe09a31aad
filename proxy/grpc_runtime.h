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
#ifndef POOLSIDE_PROXY_GRPC_RUNTIME_H_
#define POOLSIDE_PROXY_GRPC_RUNTIME_H_

namespace poolside {

// Initializes grpc for the life of the process and runs grpc's
// default-executor work inline. Call once, before any grpc object exists.
void StartGrpcRuntime();

}  // namespace poolside

#endif  // POOLSIDE_PROXY_GRPC_RUNTIME_H_
