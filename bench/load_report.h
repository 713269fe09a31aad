// The pieces of bench_load's one-line JSON report.
#ifndef POOLSIDE_BENCH_LOAD_REPORT_H_
#define POOLSIDE_BENCH_LOAD_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace poolside::bench {

// The `quantile` (0..1) of `sorted` latencies (nearest rank); 0 if empty.
uint32_t Percentile(const std::vector<uint32_t>& sorted, double quantile);
// `text` as a JSON string (control characters dropped).
std::string JsonString(const std::string& text);
// `value` with 4 decimals, or null when negative (not measured).
std::string JsonNumber(double value);

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_LOAD_REPORT_H_
