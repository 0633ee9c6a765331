#pragma once
// The forward pass of one shard (tensor-parallel rank) over a batch of tokens from any number of
// sequences, with K/V kept in a paged cache. World size 1 is the whole model.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/kv/kv_cache.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/communicator.hpp"
#include "engine/runner/moe.hpp"
#include "kernels/backend.hpp"

namespace shoal {

/// How a model is split across the ranks of one replica.
enum class parallel_mode : std::uint8_t {
  tensor,         // Megatron: attention heads and MLP columns split (every routed and shared
                  // expert's columns too), all-reduce after row-parallel matmuls
  expert,         // mixture of experts (DeepSeek): attention, dense MLPs, embeddings and the latent
                  // KV cache replicated on every rank; routed experts split by contiguous expert-id
                  // ranges; each MoE layer's partial outputs summed with an all-reduce
  tensor_expert,  // both on the same ranks (vLLM's --enable-expert-parallel): attention heads,
                  // dense MLP and shared-expert columns split as `tensor`, routed experts split
                  // by id as `expert`
};

/// "tensor", "expert", "tensor+expert" (the cluster YAML's replica key `parallel`).
const char* to_string(parallel_mode m);
/// Throws shoal::error naming the accepted values.
parallel_mode parse_parallel_mode(const std::string& s);

struct shard_spec {
  int rank = 0;                                // Default: 0
  int world_size = 1;                          // Default: 1 (no parallelism)
  parallel_mode mode = parallel_mode::tensor;  // Default: tensor
};

/// The routed experts [begin, end) that `rank` of `world_size` owns under expert parallelism:
/// contiguous ranges whose sizes differ by at most one.
expert_range expert_slice(std::int64_t n_experts, int rank, int world_size);

/// Throws shoal::error (naming the model and the remedy) when `m` cannot be split as `shard` asks.
void check_shard(const model& m, shard_spec shard);

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

/// How multi-head latent attention (DeepSeek) attends over the latent cache.
enum class mla_path : std::uint8_t {
  automatic,  // plain for a sequence with several tokens in the step (prefill), absorbed for one
  absorbed,   // kv_b_proj's key half folded into the query, its value half applied after: attention
              // runs over the cached latents directly
  plain,      // keys and values up-projected from the cached latents, then ordinary attention
};

/// KV-cache bytes per token (all layers, F32) of `c` on one of `world_size` tensor-parallel shards:
/// full keys and values, or for MLA the latent plus the shared RoPE key.
std::int64_t kv_bytes_per_token(const model_config& c, int world_size = 1);

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
  /// MLA only. Default: automatic.
  void set_mla_path(mla_path p) { mla_path_ = p; }

 private:
  struct layer_slice {
    kernels::matrix wq, wk, wv, wo, w_gate, w_up, w_down;
    const float* bq = nullptr;
    const float* bk = nullptr;
    const float* bv = nullptr;
    // DeepSeek: this rank's heads of q_b_proj (or q_proj) and kv_b_proj (wo: their columns), its
    // columns of the dense MLP, and the expert MLPs it runs (whole or column slices).
    kernels::matrix wkv_b;
    mlp_weights dense;
    std::vector<mlp_weights> experts;
    mlp_weights shared;
    bool with_shared = false;
  };

  void init_deepseek();
  void mla_attention(std::size_t li, const forward_batch& b);
  void attend_absorbed(std::size_t li, const forward_batch& b, const std::vector<std::int64_t>& toks);
  void attend_plain(std::size_t li, const forward_batch& b, const std::vector<std::int64_t>& toks);
  void deepseek_ffn(std::size_t li, std::int64_t n);

  const model& model_;
  kernels::backend& be_;
  shard_spec shard_;
  communicator* comm_;
  std::int64_t n_heads_;     // this shard's query heads
  std::int64_t n_kv_heads_;  // this shard's key/value heads
  std::int64_t ffn_;         // this shard's intermediate columns
  std::vector<layer_slice> layers_;
  kv_cache cache_;
  mla_path mla_path_ = mla_path::automatic;
  // MLA: per layer, kv_b_proj's key half transposed per head, [n_heads][kv_lora_rank, qk_nope]
  // (F32), so the absorbed query is a matmul.
  std::vector<std::vector<float>> w_uk_t_;
  moe_executor moe_;
  expert_range experts_;  // routed experts this rank computes (expert parallelism); all otherwise
  bool split_attention_ = false;  // heads split across ranks: all-reduce after o_proj and dense MLPs
  // Scratch, grown to the largest batch seen.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, rows_;
  std::vector<float> qa_, qan_, kva_, mq_, mo_, mk_, mv_, head_in_, head_out_;
};

}  // namespace shoal
