#pragma once
// What benchmarks report about the host they ran on: its CPU's features and its memory read
// bandwidth (the yardstick of bandwidth-bound decode). Public, so tools need no CPU-backend
// internals.

#include <cstdint>
#include <string>

namespace shoal::kernels {

/// One line: the CPU's features that matter to the kernels (AVX2, AVX-512 BF16/VNNI, ...).
std::string describe_host_cpu();

struct bandwidth_sample {
  double gb_per_s = 0;       // median of the passes
  double best_gb_per_s = 0;
  std::int64_t bytes = 0;
};

/// A STREAM-style read of `bytes` (default 1 GiB, much larger than the caches) with `threads`
/// threads, `passes` times.
bandwidth_sample measure_host_read_bandwidth(int threads, std::int64_t bytes = std::int64_t{1} << 30,
                                             int passes = 5);

}  // namespace shoal::kernels
