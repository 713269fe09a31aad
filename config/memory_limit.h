// The container's memory limit, read from the cgroup file system: cgroup v2
// `memory.max`, else cgroup v1 `memory/memory.limit_in_bytes`. Used to derive
// GRPC_MEMORY_LIMIT_BYTES when it is not set.
#ifndef POOLSIDE_CONFIG_MEMORY_LIMIT_H_
#define POOLSIDE_CONFIG_MEMORY_LIMIT_H_

#include <cstdint>
#include <optional>
#include <string>

namespace poolside {

// The limit in bytes, or nullopt when there is none ("max", v1's "unlimited"
// sentinel) or no cgroup file can be read. `cgroup_root` is normally
// /sys/fs/cgroup; tests point it at a directory of their own.
std::optional<int64_t> ContainerMemoryLimitBytes(const std::string& cgroup_root = "/sys/fs/cgroup");

// GRPC_MEMORY_LIMIT_BYTES's default: three quarters of the container's limit
// (the rest is poolside's own heap, stacks and code), or 0 (grpc's own
// default, unbounded) outside a memory-limited container.
int64_t DefaultMemoryLimitBytes(std::optional<int64_t> container_limit);

}  // namespace poolside

#endif  // POOLSIDE_CONFIG_MEMORY_LIMIT_H_
