#include "engine/kv/kv_cache.hpp"

#include "engine/common/error.hpp"

namespace shoal {

kv_cache::kv_cache(std::int64_t n_layers, std::int64_t n_kv_heads, std::int64_t head_dim,
                   std::int32_t block_size, std::int32_t num_blocks)
    : kv_cache(n_layers, n_kv_heads * head_dim, n_kv_heads * head_dim, block_size, num_blocks, 0) {}

kv_cache kv_cache::latent(std::int64_t n_layers, std::int64_t width, std::int32_t block_size,
                          std::int32_t num_blocks) {
  return kv_cache(n_layers, width, 0, block_size, num_blocks, 0);
}

kv_cache::kv_cache(std::int64_t n_layers, std::int64_t k_width, std::int64_t v_width, std::int32_t block_size,
                   std::int32_t num_blocks, int)
    : block_size_(block_size),
      num_blocks_(num_blocks),
      n_layers_(n_layers),
      k_width_(k_width),
      v_width_(v_width),
      layer_stride_(static_cast<std::int64_t>(num_blocks) * block_size * k_width) {
  if (block_size <= 0 || num_blocks <= 0) {
    throw error(errc::invalid_argument, "kv cache needs a positive block size and block count");
  }
  k_.assign(static_cast<std::size_t>(layer_stride_ * n_layers), 0.0f);
  v_.assign(static_cast<std::size_t>(static_cast<std::int64_t>(num_blocks) * block_size * v_width * n_layers), 0.0f);
}

block_pool::block_pool(std::int32_t num_blocks) : total_(num_blocks) {
  free_.reserve(num_blocks);
  // Hand out low ids first: pop from the back of a descending list.
  for (std::int32_t i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

bool block_pool::allocate(std::int32_t n, std::vector<std::int32_t>& out) {
  if (n > free_count()) return false;
  for (std::int32_t i = 0; i < n; ++i) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void block_pool::release(const std::vector<std::int32_t>& blocks) {
  for (auto b : blocks) {
    if (b < 0 || b >= total_) throw error(errc::internal, "released block id out of range");
    free_.push_back(b);
  }
}

}  // namespace shoal
