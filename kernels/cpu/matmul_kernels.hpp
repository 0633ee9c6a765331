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

/// The kernel for plain rows of type `t`; `run` and `prepare` dispatch on the level they are given.
const matmul_kernel& matmul_kernel_for(dtype t);
/// The kernel for `w` as registered: its type's interleaved kernel when w.interleave is set.
const matmul_kernel& matmul_kernel_for(const matrix& w);

// Per-family tables (float types in float_kernels.cpp, integer/quantized types in quant_kernels.cpp,
// interleaved layouts in interleaved_kernels.cpp).
const matmul_kernel* float_matmul_kernel(dtype t);
const matmul_kernel* quant_matmul_kernel(dtype t);
const matmul_kernel* interleaved_matmul_kernel(dtype t);

/// Rows per group of the interleaved layout the fast backend repacks weights of type `t` into at
/// `level`; 0 keeps plain rows.
std::int32_t interleave_for(dtype t, isa level);
/// Writes groups [g0, g1) of `src` (plain rows, any row stride) into `dst`, the contiguous
/// interleaved copy: group g at dst + g * group rows' bytes; a last, partial group's rows plain.
void repack_interleaved(const matrix& src, std::int32_t group, std::int64_t g0, std::int64_t g1, std::uint8_t* dst);
/// Row r of an interleaved matrix (r inside a whole group) as the bytes of a plain row.
void deinterleave_row(const matrix& m, std::int64_t r, std::uint8_t* out);

/// Where `prepare` puts int8 activations quantized in blocks of `block` (32, 256, or a whole padded
/// row) for the quantized kernels, in prepared_input::buf:
///   q[n][ldq]  int8, rows padded with zeros to a multiple of 64 (vector loads may run past cols)
///   d[n][nb]   float scale per block (x ~= d * q)
///   s[n][nb]   int32 offset correction per block: -sum(q) times the kernel's correction scale
///   bs[n][ldq / 16]  int16 sums of q per 16 elements (Q4_K mins, Q6_K's -32 offset)
struct xq_layout {
  std::int64_t n, cols, block, ldq, nb;
  std::size_t q_off, d_off, s_off, bs_off, total;

  xq_layout(std::int64_t n_, std::int64_t cols_, std::int64_t block_)
      : n(n_), cols(cols_), block(block_) {
    ldq = (cols + 63) / 64 * 64;
    nb = (cols + block - 1) / block;
    q_off = 0;
    d_off = static_cast<std::size_t>((n * ldq + 63) / 64 * 64);
    s_off = d_off + static_cast<std::size_t>((n * nb * 4 + 63) / 64 * 64);
    bs_off = s_off + static_cast<std::size_t>((n * nb * 4 + 63) / 64 * 64);
    total = bs_off + static_cast<std::size_t>((n * (ldq / 16) * 2 + 63) / 64 * 64);
  }
};

/// Reference dequantization of row r of a quantized/integer matrix (q8_0, q4_0, q4_k, q6_k, i8, i4).
void dequantize_quantized_row(const matrix& m, std::int64_t r, float* out);

}  // namespace shoal::kernels::cpu
