#pragma once
// The one kernel interface the forward pass calls. cpu/ implements it (the reference is plain F32
// math; fast backends are checked against it op by op), cuda/ later.

#include <cstdint>
#include <memory>
#include <span>

#include "kernels/dtype.hpp"

namespace shoal::kernels {

/// A weight matrix W[rows][cols], row-major, possibly a window of a wider matrix (a tensor-parallel
/// slice of rows or columns): row r starts `row_stride` elements after row r-1. Block-quantized
/// types keep whole blocks per row; a column window must start and end on block boundaries.
struct matrix {
  const void* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // elements between row starts; == cols for a whole matrix
  /// i8: one scale per row ([rows]); i4: one per group ([rows, cols / group_size]). Null otherwise.
  const float* scales = nullptr;
  std::int64_t scale_stride = 0;  // floats between rows' scales
  std::int64_t group_size = 0;    // i4 only

  /// Rows [begin, begin + count) of this matrix.
  matrix row_slice(std::int64_t begin, std::int64_t count) const;
  /// Columns [begin, begin + count) of this matrix; throws if not on block/group boundaries.
  matrix col_slice(std::int64_t begin, std::int64_t count) const;
  /// Address of row r's first element.
  const std::uint8_t* row(std::int64_t r) const {
    return static_cast<const std::uint8_t*>(data) + dtype_bytes(type, r * row_stride);
  }
  /// Bytes the matrix's data (and scales) take: what a matmul with it streams from memory.
  std::int64_t bytes() const;
};

/// Converts n elements of one row of `m` (row r, starting at column 0) to F32: the reference
/// dequantization every fast kernel is checked against.
void dequantize_row(const matrix& m, std::int64_t r, float* out);

enum class rope_style : std::uint8_t {
  neox,         // rotate halves: (x[i], x[i + d/2]) pairs; Hugging Face's rotate_half layout
  interleaved,  // rotate (x[2i], x[2i+1]) pairs; GGUF/llama.cpp "NORM" layout, Meta's original
};

/// Attention of a batch of query tokens over a paged KV cache. Token t belongs to a sequence whose
/// block table is `block_tables[t]`; it attends to positions 0..positions[t] of that sequence
/// (causal), whose keys/values have already been written to the cache.
struct attention_args {
  const float* q = nullptr;          // [n_tokens, n_heads, head_dim]
  float* out = nullptr;              // [n_tokens, n_heads, head_dim]
  const float* k_cache = nullptr;    // [n_blocks, block_size, n_kv_heads, head_dim]
  const float* v_cache = nullptr;    // [n_blocks, block_size, n_kv_heads, head_dim]
  std::span<const std::int32_t> positions;              // [n_tokens]
  std::span<const std::int32_t* const> block_tables;    // [n_tokens] -> that token's sequence table
  std::int32_t n_heads = 0;
  std::int32_t n_kv_heads = 0;
  std::int32_t head_dim = 0;
  std::int32_t block_size = 0;
  float scale = 1.0f;
};

/// One output of a fused matmul: y[t, r] = sum_c w[r, c] * x[t, c], y is [n, w.rows].
struct matmul_job {
  matrix w;
  float* y = nullptr;
};

class backend {
 public:
  virtual ~backend() = default;
  virtual const char* name() const = 0;

  /// y[t, r] = sum_c w[r, c] * x[t, c] for t < n; x is [n, w.cols], y is [n, w.rows].
  virtual void matmul(const matrix& w, const float* x, std::int64_t n, float* y) = 0;
  /// Several matmuls over the same input (q/k/v, gate/up) in one pass: backends with threads split
  /// all their rows at once instead of synchronizing per matrix.
  virtual void matmul_multi(std::span<const matmul_job> jobs, const float* x, std::int64_t n) {
    for (const auto& j : jobs) matmul(j.w, x, n, j.y);
  }
  /// out[t, :] = table[ids[t], :] converted to F32.
  virtual void embed(const matrix& table, std::span<const std::int32_t> ids, float* out) = 0;
  /// y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight, for n rows of `dim`.
  virtual void rmsnorm(const float* x, const float* weight, float eps, std::int64_t n,
                       std::int64_t dim, float* y) = 0;
  /// Rotates the first `rot_dim` dims of each head in x[t, h, :] by positions[t] * inv_freq[i],
  /// multiplying cos and sin by `attn_factor` (YaRN's magnitude correction; 1 otherwise).
  virtual void rope(float* x, std::span<const std::int32_t> positions, std::int32_t n_heads,
                    std::int32_t head_dim, std::int32_t rot_dim, rope_style style,
                    const float* inv_freq, float attn_factor) = 0;
  virtual void attention(const attention_args& args) = 0;
  /// gate[i] = silu(gate[i]) * up[i].
  virtual void silu_mul(float* gate, const float* up, std::int64_t n) = 0;
  /// y[i] += x[i].
  virtual void add(float* y, const float* x, std::int64_t n) = 0;
  /// A hint that no op follows soon (end of a forward pass): threaded backends stop spinning.
  virtual void idle() {}
};

/// The plain F32 reference: simple loops, single-threaded, the yardstick for every fast kernel.
std::unique_ptr<backend> make_reference_backend();

/// The fast CPU backend: kernels for the best instruction level this CPU has (AVX2, AVX-512 with
/// BF16/VNNI; a portable path otherwise) and a pool of `threads` threads (the caller included).
std::unique_ptr<backend> make_cpu_backend(int threads);

}  // namespace shoal::kernels
