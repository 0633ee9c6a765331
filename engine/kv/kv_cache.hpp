#pragma once
// The paged KV cache of one shard, in its backend's memory: physical blocks of `block_size` token
// slots per layer, slot s of a layer being row s of that layer's tensor. Which blocks a sequence
// uses is decided by whoever owns the block_pool (the batcher's KV manager, or a single-stream
// session); the cache only stores, and only the backend's store_kv op writes it.

#include <cstdint>
#include <vector>

#include "kernels/backend.hpp"

namespace shoal {

struct kv_cache_options {
  std::int32_t block_size = 16;  // token slots per block. Default: 16
  std::int32_t num_blocks = 0;   // 0: enough for one sequence of the model's full context
  dtype type = dtype::f32;       // element type of the cached keys/values; the CPU backends store
                                 // F32 (other types are refused there). Default: f32
};

class kv_cache {
 public:
  /// Keys and values of `k_width` / `v_width` elements per token and layer (v_width 0: no
  /// separate values, as multi-head latent attention's latent plus shared RoPE key).
  kv_cache(kernels::backend& be, std::int64_t n_layers, std::int64_t k_width, std::int64_t v_width,
           const kv_cache_options& opts);

  /// [num_blocks * block_size, k_width]: layer `layer`'s keys (or MLA latent rows).
  kernels::tensor k(std::int64_t layer) const { return layer_view(k_, layer); }
  /// [num_blocks * block_size, v_width]: layer `layer`'s values; empty for a latent cache.
  kernels::tensor v(std::int64_t layer) const { return layer_view(v_, layer); }
  std::int32_t block_size() const { return block_size_; }
  std::int32_t num_blocks() const { return num_blocks_; }
  dtype type() const { return type_; }
  std::int64_t bytes() const;
  /// Bytes one token takes across all layers.
  std::int64_t bytes_per_token() const;

 private:
  kernels::tensor layer_view(const kernels::tensor_buffer& b, std::int64_t layer) const;

  std::int32_t block_size_;
  std::int32_t num_blocks_;
  dtype type_;
  std::int64_t n_layers_;
  std::int64_t k_width_;
  std::int64_t v_width_;
  kernels::tensor_buffer k_;  // [n_layers * slots, k_width]
  kernels::tensor_buffer v_;  // [n_layers * slots, v_width]; empty when v_width is 0
};

/// Free list of physical block ids. One owner mutates it (see the class comment above).
class block_pool {
 public:
  explicit block_pool(std::int32_t num_blocks);
  /// Takes `n` blocks; returns false (taking none) when fewer are free.
  bool allocate(std::int32_t n, std::vector<std::int32_t>& out);
  void release(const std::vector<std::int32_t>& blocks);
  std::int32_t free_count() const { return static_cast<std::int32_t>(free_.size()); }
  std::int32_t total() const { return total_; }

 private:
  std::int32_t total_;
  std::vector<std::int32_t> free_;
};

}  // namespace shoal
