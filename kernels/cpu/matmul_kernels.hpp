#pragma once
// Per weight type matmul kernels, per instruction level. The fast backend prepares the activations
// once per call (converted or quantized as the weight type's dot product wants them), then splits
// the weight rows across its thread pool and calls `run` on each range.

#include <cstdint>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/cpu/cpu_features.hpp"

namespace shoal::kernels::cpu {

/// Activations x[n, cols] (row-major F32) and what `prepare` derived from them for one weight type
/// (e.g. int8 blocks with scales, or a BF16 copy). Shared read-only by every thread during `run`.
struct prepared_input {
  const float* x = nullptr;
  std::int64_t n = 0;
  std::int64_t cols = 0;
  std::vector<std::uint8_t> buf;  // type-specific layout, written by prepare
};

struct matmul_kernel {
  /// Derives whatever `run` needs from p.x into p.buf; may be null when nothing is needed.
  void (*prepare)(prepared_input& p, isa level) = nullptr;
  /// y[t * ldy + r] = sum_c w[r, c] * x[t, c] for t < p.n and r in [r0, r1).
  void (*run)(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
              std::int64_t r1, isa level) = nullptr;
  /// Rows per unit of work: ranges handed to `run` start on multiples of it. Default: 1.
  std::int64_t row_granule = 1;
};

/// The kernel for weights of type `t`; `run` and `prepare` dispatch on the level they are given.
const matmul_kernel& matmul_kernel_for(dtype t);

// Per-family tables (float types in float_kernels.cpp, integer/quantized types in quant_kernels.cpp).
const matmul_kernel* float_matmul_kernel(dtype t);
const matmul_kernel* quant_matmul_kernel(dtype t);

/// Reference dequantization of row r of a quantized/integer matrix (q8_0, q4_0, q4_k, q6_k, i8, i4).
void dequantize_quantized_row(const matrix& m, std::int64_t r, float* out);

}  // namespace shoal::kernels::cpu
