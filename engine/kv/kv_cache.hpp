#pragma once
// The paged KV cache of one shard: physical blocks of `block_size` token slots per layer. Which
// blocks a sequence uses is decided by whoever owns the block_pool (the batcher's KV manager, or a
// single-stream session); the cache only stores.

#include <cstdint>
#include <vector>

namespace shoal {

struct kv_cache_options {
  std::int32_t block_size = 16;  // token slots per block. Default: 16
  std::int32_t num_blocks = 0;   // 0: enough for one sequence of the model's full context
};

class kv_cache {
 public:
  /// Full keys and values: `n_kv_heads * head_dim` floats each per token and layer.
  kv_cache(std::int64_t n_layers, std::int64_t n_kv_heads, std::int64_t head_dim,
           std::int32_t block_size, std::int32_t num_blocks);
  /// One row of `width` floats per token and layer and no separate values: multi-head latent
  /// attention's latent plus shared RoPE key, from which keys and values are derived.
  static kv_cache latent(std::int64_t n_layers, std::int64_t width, std::int32_t block_size,
                         std::int32_t num_blocks);

  float* k(std::int64_t layer) { return k_.data() + layer * layer_stride_; }  // [n_blocks, block_size, n_kv_heads, head_dim]
  float* v(std::int64_t layer) { return v_.data() + layer * layer_stride_; }  // same layout as k; empty for latent
  /// The latent cache's rows: [n_blocks, block_size, width].
  float* latent_rows(std::int64_t layer) { return k(layer); }
  std::int32_t block_size() const { return block_size_; }
  std::int32_t num_blocks() const { return num_blocks_; }
  std::int64_t bytes() const { return static_cast<std::int64_t>(k_.size() + v_.size()) * 4; }
  /// Bytes one token takes across all layers.
  std::int64_t bytes_per_token() const { return (k_width_ + v_width_) * n_layers_ * 4; }

 private:
  kv_cache(std::int64_t n_layers, std::int64_t k_width, std::int64_t v_width, std::int32_t block_size,
           std::int32_t num_blocks, int);

  std::int32_t block_size_;
  std::int32_t num_blocks_;
  std::int64_t n_layers_;
  std::int64_t k_width_;  // floats per token and layer
  std::int64_t v_width_;
  std::int64_t layer_stride_;
  std::vector<float> k_;
  std::vector<float> v_;
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
