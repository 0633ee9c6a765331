#pragma once
// A STREAM-style read of a buffer much larger than the caches: the memory read bandwidth that
// bandwidth-bound decode is measured against.

#include <cstdint>

namespace shoal::kernels::cpu {

struct bandwidth_sample {
  double gb_per_s = 0;  // median of the passes
  double best_gb_per_s = 0;
  std::int64_t bytes = 0;
};

/// Reads `bytes` (default 1 GiB) with `threads` threads, `passes` times.
bandwidth_sample measure_read_bandwidth(int threads, std::int64_t bytes = std::int64_t{1} << 30, int passes = 5);

}  // namespace shoal::kernels::cpu
