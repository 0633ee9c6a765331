#pragma once
// The forward pass of one shard (tensor-parallel rank) over a batch of tokens from any number of
// sequences, with K/V kept in a paged cache. World size 1 is the whole model. The runner composes
// backend ops: its weights are registered with the backend once, its KV cache and each step's
// temporaries are backend memory, and it never reads or writes activations itself; only the
// step's token ids, positions and block tables go in, and the wanted logits come out.

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
  std::vector<std::int32_t> tokens;               // [n]
  std::vector<std::int32_t> positions;            // [n]
  std::vector<std::int32_t> seq_of_token;         // [n]: index into tables
  std::vector<std::vector<std::int32_t>> tables;  // the block table of each sequence in the batch
  std::vector<std::int32_t> logit_rows;           // indices into tokens whose logits are wanted
  /// Adds a token of the sequence whose block table is `table`: the tokens of one sequence pass
  /// the same vector (its identity, not its contents, tells sequences apart).
  void add(std::int32_t token, std::int32_t pos, const std::vector<std::int32_t>& table, bool want_logits);

 private:
  std::vector<const std::vector<std::int32_t>*> table_ids_;  // parallel to tables
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
  /// `shard.world_size` ways. Registers this shard's weights with `be` (which must outlive the
  /// runner) and allocates the KV cache there.
  model_runner(const model& m, kernels::backend& be, shard_spec shard, communicator* comm,
               kv_cache_options kv);

  /// Runs the batch; `logits` receives [logit_rows.size(), vocab] rows in logit_rows order.
  void forward(const forward_batch& batch, std::vector<float>& logits);

  const kv_cache& cache() const { return cache_; }
  const model& get_model() const { return model_; }
  std::int64_t vocab_size() const { return model_.config().vocab_size; }
  std::int32_t block_size() const { return cache_.block_size(); }
  /// Bytes of scratch the backend holds for this runner's steps (grown to the largest step seen).
  std::int64_t scratch_bytes() const { return scratch_.reserved(); }
  /// MLA only. Default: automatic.
  void set_mla_path(mla_path p) { mla_path_ = p; }

 private:
  using tensor = kernels::tensor;

  // This shard's weights as registered with the backend.
  struct layer_slice {
    tensor attn_norm, ffn_norm;  // [1, hidden]
    kernels::matrix wq, wk, wv, wo;
    tensor bq, bk, bv;           // [1, this shard's q / kv width]; empty if the model has none
    mlp_matrices mlp;            // the dense MLP (its columns of it)
    // DeepSeek: q_a (whole) and this rank's heads of q_b_proj (or q_proj, as wq), kv_a (whole) and
    // this rank's heads of kv_b_proj (wo: their columns), the MoE layer or the dense MLP.
    kernels::matrix wq_a, wkv_a;
    // [local heads] kv_b's rows of a head, registered one head at a time (a registered matrix may
    // be repacked in groups of rows that a head's range would split): keys [nope, r], values [vd, r].
    std::vector<kernels::matrix> w_uk, w_uv;
    tensor q_a_norm, kv_a_norm;
    std::vector<kernels::matrix> w_uk_t;  // [local heads] kv_b's key half of a head, transposed:
                                          // [kv_lora_rank, qk_nope] (F32), the absorbed query's matmul
    moe_layer moe;
    bool is_moe = false;
  };

  // The step's inputs on the backend.
  struct step_inputs {
    tensor ids, positions, seq_of_token, tables, slots;  // i32
  };

  void init_deepseek();
  void mla_attention(std::size_t li, const forward_batch& b, const step_inputs& in, const tensor& xn,
                     const tensor& attn);
  void attend_absorbed(std::size_t li, const tensor& q, const step_inputs& in, const std::vector<std::int32_t>& toks,
                       const tensor& attn);
  void attend_plain(std::size_t li, const tensor& q, const forward_batch& b, const std::vector<std::int32_t>& toks,
                    const tensor& attn);
  /// Rows `toks` of `t` as a new scratch tensor (`t` itself when toks is every row in order), and
  /// their indices on the backend.
  tensor gather(const tensor& t, const std::vector<std::int32_t>& toks, tensor& index);
  void all_reduce(const tensor& t);

  const model& model_;
  kernels::backend& be_;
  shard_spec shard_;
  communicator* comm_;
  std::int64_t n_heads_;     // this shard's query heads
  std::int64_t n_kv_heads_;  // this shard's key/value heads
  std::int64_t ffn_;         // this shard's intermediate columns
  std::vector<layer_slice> layers_;
  kernels::matrix tok_embd_, lm_head_;
  tensor out_norm_;   // [1, hidden]
  tensor inv_freq_;   // [1, rope_dim / 2]
  kv_cache cache_;
  kernels::scratch_arena scratch_;
  mla_path mla_path_ = mla_path::automatic;
  kernels::moe_routing routing_;
  moe_executor moe_;
  expert_range experts_;  // routed experts this rank computes (expert parallelism); all otherwise
  bool split_attention_ = false;  // heads split across ranks: all-reduce after o_proj and dense MLPs
  std::vector<std::vector<float>> w_uk_t_host_;  // what w_uk_t was registered from (host copies)
  std::vector<std::int32_t> host_tables_, host_slots_;  // the step's inputs as sent
};

}  // namespace shoal
