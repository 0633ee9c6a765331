#pragma once
// The one kernel interface the forward pass calls. A backend owns memory as well as ops (ggml's
// lesson): tensors live on its device and are allocated and freed by it, weights are registered
// with it once at load (the CPU backends keep zero-copy views of the memory-mapped file, or for
// interleaved layouts a repacked copy; a device backend uploads them), the paged KV cache and each
// step's scratch are backend memory, and the runner composes ops without ever reading or writing
// activations itself. cpu/ implements it twice (the plain reference, and the fast threaded kernels
// checked against it op by op by build/bin/test_backend_ops); cuda/ will be a third.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/dtype.hpp"

namespace shoal::kernels {

/// Where a backend keeps its tensors.
enum class device_kind : std::uint8_t {
  host,  // ordinary memory: the CPU backends
  cuda,  // a CUDA device (not yet built)
};

const char* to_string(device_kind d);

/// A 2-D array of `type` on a backend's device: `rows` x `cols` elements, row r starting
/// `row_stride` elements after row r-1. Views (a row range, a column window such as one attention
/// head of [tokens, heads * head_dim]) share the memory of the tensor they come from. A tensor does
/// not own its memory: tensor_buffer, scratch_arena and the backend's registered weights do.
struct tensor {
  void* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // elements between row starts; == cols when contiguous
  device_kind device = device_kind::host;

  std::int64_t elements() const { return rows * cols; }
  bool contiguous() const { return row_stride == cols || rows <= 1; }
  bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  /// Rows [begin, begin + count).
  tensor rows_view(std::int64_t begin, std::int64_t count) const;
  /// Columns [begin, begin + count) of every row.
  tensor cols_view(std::int64_t begin, std::int64_t count) const;
  /// The same elements as [rows, cols] (contiguous tensors only).
  tensor reshaped(std::int64_t rows, std::int64_t cols) const;
  /// Host pointer to row r (host tensors only; what CPU kernels and tests use).
  template <class T>
  T* row(std::int64_t r) const {
    return static_cast<T*>(data) + r * row_stride;
  }
};

/// A contiguous [rows, cols] view of host memory (F32 or I32): what CPU backends take directly
/// (tests, tools), and what a device backend copies from with from_host.
inline tensor host_tensor(float* data, std::int64_t rows, std::int64_t cols) {
  return tensor{data, dtype::f32, rows, cols, cols, device_kind::host};
}
inline tensor host_tensor(std::int32_t* data, std::int64_t rows, std::int64_t cols) {
  return tensor{data, dtype::i32, rows, cols, cols, device_kind::host};
}

/// A weight matrix W[rows][cols], row-major, possibly a window of a wider matrix (a tensor-parallel
/// slice of rows or columns): row r starts `row_stride` elements after row r-1. Block-quantized
/// types keep whole blocks per row; a column window must start and end on block boundaries.
/// Weights are read-only; `device` says where `data` and `scales` live.
struct matrix {
  const void* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // elements between row starts; == cols for a whole matrix
  /// i8: one scale per row ([rows]); i4: one per group ([rows, cols / group_size]); f8_e4m3: one
  /// per group of columns. Null otherwise.
  const float* scales = nullptr;
  std::int64_t scale_stride = 0;  // floats between rows' scales
  std::int64_t group_size = 0;    // i4 and f8_e4m3 only
  device_kind device = device_kind::host;
  /// Rows per interleaved group, 0 for plain rows. The fast CPU backend's register_weight may
  /// return a repacked copy (kernels/cpu/interleaved_kernels.cpp): rows [0, rows / interleave *
  /// interleave) are stored in groups of `interleave` rows whose blocks sit side by side, each group
  /// taking the bytes its rows would take as plain rows; the remaining rows are plain, where
  /// row() says. Default: 0
  std::int32_t interleave = 0;

  /// Rows [begin, begin + count) of this matrix. Of an interleaved matrix only whole groups (or a
  /// range running to the last row) can be taken; throws otherwise.
  matrix row_slice(std::int64_t begin, std::int64_t count) const;
  /// Columns [begin, begin + count) of this matrix; throws if not on block/group boundaries or if
  /// the matrix is interleaved.
  matrix col_slice(std::int64_t begin, std::int64_t count) const;
  /// Address of row r's first element (of an interleaved matrix: of r's group when r starts one,
  /// of the row itself past the last whole group).
  const std::uint8_t* row(std::int64_t r) const {
    return static_cast<const std::uint8_t*>(data) + dtype_bytes(type, r * row_stride);
  }
  /// Bytes the matrix's data (and scales) take: what a matmul with it streams from memory.
  std::int64_t bytes() const;
};

/// Converts one row of a host matrix (row r, all its columns) to F32: the reference
/// dequantization every kernel is checked against.
void dequantize_row(const matrix& m, std::int64_t r, float* out);

enum class rope_style : std::uint8_t {
  neox,         // rotate halves: (x[i], x[i + d/2]) pairs; Hugging Face's rotate_half layout
  interleaved,  // rotate (x[2i], x[2i+1]) pairs; GGUF/llama.cpp "NORM" layout, Meta's original
};

/// Attention of a batch of query tokens over a paged KV cache. Token t belongs to the sequence
/// whose block table is row seq_of_token[t] of `block_tables`; it attends to positions
/// 0..positions[t] of that sequence (causal), whose keys/values are already in the cache. Slot s of
/// the cache is row s (block b holds slots [b * block_size, (b + 1) * block_size)).
struct attention_args {
  tensor q;             // [n_tokens, n_heads * head_dim] (may be a strided view)
  tensor out;           // [n_tokens, n_heads * head_dim]
  tensor k_cache;       // [n_blocks * block_size, n_kv_heads * head_dim]
  tensor v_cache;       // same layout as k_cache (MLA's latent cache passes itself for both)
  tensor positions;     // i32 [1, n_tokens]
  tensor block_tables;  // i32 [n_sequences, blocks per table]
  tensor seq_of_token;  // i32 [1, n_tokens]: the row of block_tables each token reads
  std::int32_t n_heads = 0;
  std::int32_t n_kv_heads = 0;
  std::int32_t head_dim = 0;
  std::int32_t block_size = 0;
  float scale = 1.0f;
};

/// One output of a fused matmul: y[t, r] = sum_c w[r, c] * x[t, c], y is [n, w.rows].
struct matmul_job {
  matrix w;
  tensor y;
};

/// How a mixture-of-experts router turns its logits into each token's experts (DeepSeek's
/// published definition; the engine's moe_config says which).
struct moe_routing {
  enum class method : std::uint8_t { greedy, group_limited_greedy, noaux_tc };
  enum class scoring : std::uint8_t { softmax, sigmoid };
  std::int64_t n_experts = 0;
  std::int64_t top_k = 0;
  std::int64_t n_group = 1;     // expert groups (grouped methods). Default: 1
  std::int64_t topk_group = 1;  // groups kept per token. Default: 1
  method select = method::greedy;
  scoring score = scoring::softmax;
  bool norm_topk_prob = false;
  bool scale_after_norm = true;  // V3 scales the weights always; V2 only when not normalized
  float routed_scaling_factor = 1.0f;
};

class backend;

/// Memory from one backend, freed by it when the buffer goes away (move-only).
class tensor_buffer {
 public:
  tensor_buffer() = default;
  tensor_buffer(backend& be, dtype type, std::int64_t rows, std::int64_t cols);
  ~tensor_buffer();
  tensor_buffer(tensor_buffer&& o) noexcept;
  tensor_buffer& operator=(tensor_buffer&& o) noexcept;
  tensor_buffer(const tensor_buffer&) = delete;
  tensor_buffer& operator=(const tensor_buffer&) = delete;
  const tensor& get() const { return t_; }
  operator const tensor&() const { return t_; }  // NOLINT: a buffer is used as its tensor

 private:
  backend* be_ = nullptr;
  tensor t_;
};

/// Bump allocation of one step's temporaries from a backend: take() hands out tensors valid until
/// the next reset(), which a runner calls at the start of each step. After a step that needed more
/// than the current block, reset() replaces the blocks by one that holds it all, so a steady state
/// allocates nothing. One owner (a runner); not thread-safe.
class scratch_arena {
 public:
  explicit scratch_arena(backend& be) : be_(be) {}
  ~scratch_arena();
  scratch_arena(const scratch_arena&) = delete;
  scratch_arena& operator=(const scratch_arena&) = delete;

  /// A contiguous [rows, cols] tensor of `type`, uninitialised.
  tensor take(dtype type, std::int64_t rows, std::int64_t cols);
  void reset();
  /// Bytes currently reserved from the backend.
  std::int64_t reserved() const;

 private:
  struct block {
    void* data = nullptr;
    std::int64_t bytes = 0;
  };
  backend& be_;
  std::vector<block> blocks_;
  std::int64_t used_ = 0;    // in the last block
  std::int64_t wanted_ = 0;  // bytes taken since reset()
};

class backend {
 public:
  virtual ~backend() = default;
  virtual const char* name() const = 0;
  virtual device_kind device() const = 0;

  // ---- memory

  /// `bytes` of device memory aligned for any kernel (64 bytes), uninitialised; throws
  /// shoal::error (out_of_range) when the device has no room.
  virtual void* allocate(std::int64_t bytes) = 0;
  virtual void deallocate(void* p) = 0;
  /// A weight matrix on this backend, valid while the backend lives: the reference CPU backend
  /// returns a view of `host` (no copy); the fast one a view too, or, for weight types with an
  /// interleaved layout at its instruction level, a repacked copy it owns (one per call: register
  /// a weight once), after which it asks the OS to drop the pages of `host` from memory (they stay
  /// readable; only a file mapping's pages are actually released); a device backend uploads it
  /// once.
  virtual matrix register_weight(const matrix& host) = 0;
  /// A read-only F32 vector (norm weights, biases, RoPE frequencies) as a [1, n] tensor on this
  /// backend, valid while the backend lives (CPU: a view of `host`).
  virtual tensor register_vector(std::span<const float> host) = 0;
  /// Copies `src` (any strides) to contiguous host memory at `dst`: logits at the end of a step,
  /// routing decisions.
  virtual void to_host(const tensor& src, void* dst) = 0;
  /// Copies contiguous host memory at `src` into `dst`: a step's token ids, positions, tables.
  virtual void from_host(const tensor& dst, const void* src) = 0;

  // ---- ops (every tensor on this backend; F32 unless said otherwise)

  /// y[t, r] = sum_c w[r, c] * x[t, c] for t < x.rows; x is [n, w.cols], y is [n, w.rows].
  virtual void matmul(const matrix& w, const tensor& x, const tensor& y) = 0;
  /// Several matmuls over the same input (q/k/v, gate/up) in one pass: backends with threads split
  /// all their rows at once instead of synchronizing per matrix.
  virtual void matmul_multi(std::span<const matmul_job> jobs, const tensor& x) {
    for (const auto& j : jobs) matmul(j.w, x, j.y);
  }
  /// out[t, :] = table[ids[t], :] converted to F32; ids is i32 [1, n].
  virtual void embed(const matrix& table, const tensor& ids, const tensor& out) = 0;
  /// y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight; weight is [1, x.cols].
  virtual void rmsnorm(const tensor& x, const tensor& weight, float eps, const tensor& y) = 0;
  /// Rotates the first `rot_dim` dims of each of `n_heads` heads of every row of x (head h of row t
  /// starts h * head_dim elements into the row) by positions[t] * inv_freq[i], multiplying cos and
  /// sin by `attn_factor` (YaRN's magnitude correction; 1 otherwise). positions: i32 [1, x.rows];
  /// inv_freq: [1, rot_dim / 2].
  virtual void rope(const tensor& x, const tensor& positions, std::int32_t n_heads, std::int32_t head_dim,
                    std::int32_t rot_dim, rope_style style, const tensor& inv_freq, float attn_factor) = 0;
  virtual void attention(const attention_args& args) = 0;
  /// gate = silu(gate) * up (same shapes).
  virtual void silu_mul(const tensor& gate, const tensor& up) = 0;
  /// y += scale * x; an x of one row is added to every row of y (a bias).
  virtual void add(const tensor& y, const tensor& x, float scale = 1.0f) = 0;
  /// dst = src (same shapes, any strides).
  virtual void copy(const tensor& dst, const tensor& src) = 0;
  virtual void fill(const tensor& dst, float value) = 0;
  /// dst[i, :] = src[index[i], :]; index is i32 [1, dst.rows].
  virtual void gather_rows(const tensor& dst, const tensor& src, const tensor& index) = 0;
  /// dst[index[i], :] = src[i, :]; index is i32 [1, src.rows] (MLA: heads' outputs back to tokens).
  virtual void scatter_rows(const tensor& dst, const tensor& src, const tensor& index) = 0;
  /// dst[index[i], :] += weight[i] * src[i, :]; index i32 [1, src.rows], weight [src.rows, 1]
  /// (MoE combine). Indices may repeat.
  virtual void scatter_add_rows(const tensor& dst, const tensor& src, const tensor& index,
                                const tensor& weight) = 0;
  /// Writes a step's keys or values into their cache slots: cache[slots[i], :] = src[i, :],
  /// converted to the cache's dtype; slots is i32 [1, src.rows].
  virtual void store_kv(const tensor& cache, const tensor& src, const tensor& slots) = 0;
  /// Each token's experts and combine weights from router logits [n, n_experts]: scores (sigmoid
  /// or softmax), `bias` ([1, n_experts] or empty; noaux_tc only) added only to choose, grouped
  /// selection, weights from the unbiased scores (normalized, scaled) as `r` says. experts: i32
  /// [n, top_k], best first; weights: [n, top_k].
  virtual void moe_route(const tensor& logits, const tensor& bias, const moe_routing& r, const tensor& experts,
                         const tensor& weights) = 0;
  /// A hint that no op follows soon (end of a forward pass): threaded backends stop spinning.
  virtual void idle() {}
};

/// The plain F32 reference: simple loops, single-threaded, the yardstick for every fast kernel.
std::unique_ptr<backend> make_reference_backend();

/// The fast CPU backend: kernels for the best instruction level this CPU has (AVX2, AVX-512 with
/// BF16/VNNI; a portable path otherwise; $SHOAL_ISA caps it) and a pool of `threads` threads (the
/// caller included).
std::unique_ptr<backend> make_cpu_backend(int threads);

/// The same at a given instruction level: "portable", "avx2" or "avx512" (each kernel path can be
/// tested on a CPU that has a better one). Throws shoal::error when this CPU cannot run `level`.
std::unique_ptr<backend> make_cpu_backend(int threads, const std::string& level);

/// Instruction levels this CPU can run, lowest first ("portable", ...).
std::vector<std::string> cpu_levels();

}  // namespace shoal::kernels
