#pragma once
// The forward pass of one shard (tensor-parallel rank) over a batch of tokens from any number of
// sequences, with K/V kept in a paged cache. World size 1 is the whole model.

#include <cstdint>
#include <span>
#include <vector>

#include "engine/kv/kv_cache.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/communicator.hpp"
#include "kernels/backend.hpp"

namespace shoal {

struct shard_spec {
  int rank = 0;        // Default: 0
  int world_size = 1;  // Default: 1 (no tensor parallelism)
};

/// One step's work: tokens (prompt chunks and/or decode tokens) with their positions and the block
/// table of the sequence each belongs to.
struct forward_batch {
  std::vector<std::int32_t> tokens;                // [n]
  std::vector<std::int32_t> positions;             // [n]
  std::vector<const std::int32_t*> block_tables;   // [n]: the token's sequence's table
  std::vector<std::int32_t> logit_rows;            // indices into tokens whose logits are wanted
  void add(std::int32_t token, std::int32_t pos, const std::int32_t* table, bool want_logits) {
    if (want_logits) logit_rows.push_back(static_cast<std::int32_t>(tokens.size()));
    tokens.push_back(token);
    positions.push_back(pos);
    block_tables.push_back(table);
  }
};

class model_runner {
 public:
  /// `comm` may be null when world_size is 1. Throws shoal::error when the model cannot be split
  /// `shard.world_size` ways.
  model_runner(const model& m, kernels::backend& be, shard_spec shard, communicator* comm,
               kv_cache_options kv);

  /// Runs the batch; `logits` receives [logit_rows.size(), vocab] rows in logit_rows order.
  void forward(const forward_batch& batch, std::vector<float>& logits);

  kv_cache& cache() { return cache_; }
  const model& get_model() const { return model_; }
  std::int64_t vocab_size() const { return model_.config().vocab_size; }
  std::int32_t block_size() const { return cache_.block_size(); }

 private:
  struct layer_slice {
    kernels::matrix wq, wk, wv, wo, w_gate, w_up, w_down;
    const float* bq = nullptr;
    const float* bk = nullptr;
    const float* bv = nullptr;
  };

  const model& model_;
  kernels::backend& be_;
  shard_spec shard_;
  communicator* comm_;
  std::int64_t n_heads_;     // this shard's query heads
  std::int64_t n_kv_heads_;  // this shard's key/value heads
  std::int64_t ffn_;         // this shard's intermediate columns
  std::vector<layer_slice> layers_;
  kv_cache cache_;
  // Scratch, grown to the largest batch seen.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, rows_;
};

}  // namespace shoal
