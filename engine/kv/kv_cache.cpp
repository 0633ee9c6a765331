#include "engine/kv/kv_cache.hpp"

#include "engine/common/error.hpp"

namespace shoal {

kv_cache::kv_cache(kernels::backend& be, std::int64_t n_layers, std::int64_t k_width, std::int64_t v_width,
                   const kv_cache_options& opts)
    : block_size_(opts.block_size),
      num_blocks_(opts.num_blocks),
      type_(opts.type),
      n_layers_(n_layers),
      k_width_(k_width),
      v_width_(v_width) {
  if (block_size_ <= 0 || num_blocks_ <= 0) {
    throw error(errc::invalid_argument, "kv cache needs a positive block size and block count");
  }
  const std::int64_t slots = static_cast<std::int64_t>(num_blocks_) * block_size_;
  k_ = kernels::tensor_buffer(be, type_, n_layers * slots, k_width);
  if (v_width > 0) v_ = kernels::tensor_buffer(be, type_, n_layers * slots, v_width);
  // Unwritten slots are never attended to (attention reads positions 0..p of a sequence, all
  // stored before), but a cache that starts zeroed keeps a bug from reading garbage.
  if (type_ == dtype::f32) {
    be.fill(k_, 0.0f);
    if (v_width > 0) be.fill(v_, 0.0f);
  }
}

kernels::tensor kv_cache::layer_view(const kernels::tensor_buffer& b, std::int64_t layer) const {
  if (b.get().data == nullptr) return {};
  const std::int64_t slots = static_cast<std::int64_t>(num_blocks_) * block_size_;
  return b.get().rows_view(layer * slots, slots);
}

std::int64_t kv_cache::bytes() const {
  const std::int64_t slots = static_cast<std::int64_t>(num_blocks_) * block_size_;
  return dtype_bytes(type_, n_layers_ * slots * (k_width_ + v_width_));
}

std::int64_t kv_cache::bytes_per_token() const { return dtype_bytes(type_, (k_width_ + v_width_) * n_layers_); }

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
