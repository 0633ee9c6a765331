#include "engine/runner/model_runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/common/error.hpp"

namespace shoal {

namespace {

std::int32_t default_blocks(const model_config& c, std::int32_t block_size) {
  return static_cast<std::int32_t>((c.max_positions + block_size - 1) / block_size);
}

kv_cache make_cache(kernels::backend& be, const model_config& c, shard_spec shard, kv_cache_options kv) {
  if (kv.num_blocks <= 0) kv.num_blocks = default_blocks(c, kv.block_size);
  if (c.family == model_family::deepseek) {
    return kv_cache(be, c.n_layers, c.mla.kv_lora_rank + c.mla.qk_rope_dim, 0, kv);
  }
  const int ways = shard.mode == parallel_mode::expert ? 1 : std::max(shard.world_size, 1);
  const std::int64_t width = c.n_kv_heads / ways * c.head_dim;
  return kv_cache(be, c.n_layers, width, width, kv);
}

}  // namespace

std::int64_t kv_bytes_per_token(const model_config& c, int world_size) {
  if (c.family == model_family::deepseek) return c.n_layers * (c.mla.kv_lora_rank + c.mla.qk_rope_dim) * 4;
  return 2 * c.n_layers * (c.n_kv_heads / std::max(world_size, 1)) * c.head_dim * 4;
}

expert_range expert_slice(std::int64_t n_experts, int rank, int world_size) {
  return expert_range{n_experts * rank / world_size, n_experts * (rank + 1) / world_size};
}

const char* to_string(parallel_mode m) {
  switch (m) {
    case parallel_mode::tensor: return "tensor";
    case parallel_mode::expert: return "expert";
    case parallel_mode::tensor_expert: return "tensor+expert";
  }
  return "?";
}

parallel_mode parse_parallel_mode(const std::string& s) {
  for (auto m : {parallel_mode::tensor, parallel_mode::expert, parallel_mode::tensor_expert}) {
    if (s == to_string(m)) return m;
  }
  throw error(errc::invalid_argument, "unknown parallel mode '" + s + "' (tensor, expert or tensor+expert)");
}

namespace {

// Tensor parallelism splits heads and MLP columns; expert parallelism alone keeps them whole.
int split_ways(shard_spec s) { return s.mode == parallel_mode::expert ? 1 : std::max(s.world_size, 1); }


// Columns [r * I / ways, ...) of one gated MLP (gate/up by output rows, down by input columns),
// registered with the backend: only this shard's slices reach it.
mlp_matrices slice_mlp(kernels::backend& be, const mlp_weights& w, int r, int ways) {
  if (!w.gate.m.data) return {};
  if (ways == 1) r = 0;
  const std::int64_t i = w.gate.m.rows / ways;
  return mlp_matrices{be.register_weight(w.gate.m.row_slice(r * i, i)), be.register_weight(w.up.m.row_slice(r * i, i)),
                      be.register_weight(w.down.m.col_slice(r * i, i))};
}

// A vector the model keeps on the host (norms, biases), registered with the backend; a slice of
// it when `count` is given.
kernels::tensor vec(kernels::backend& be, const std::vector<float>& v, std::int64_t begin = 0, std::int64_t count = -1) {
  if (v.empty()) return {};
  if (count < 0) count = static_cast<std::int64_t>(v.size()) - begin;
  return be.register_vector(std::span<const float>(v.data() + begin, static_cast<std::size_t>(count)));
}

}  // namespace

void check_shard(const model& m, shard_spec shard) {
  const auto& c = m.config();
  const int w = shard.world_size, r = shard.rank;
  if (w < 1 || r < 0 || r >= w) throw error(errc::invalid_argument, "invalid shard rank/world size");
  if (w == 1) return;
  const std::string ways = std::to_string(w);
  const bool deepseek = c.family == model_family::deepseek;
  if (shard.mode != parallel_mode::tensor) {
    if (!deepseek || c.moe.n_routed_experts < 1) {
      throw error(errc::invalid_argument, m.path() + ": expert parallelism ('parallel: " +
                                              std::string(to_string(shard.mode)) +
                                              "') needs a mixture-of-experts model (DeepSeek); " + c.architecture +
                                              " has no routed experts: use 'parallel: tensor'");
    }
    if (c.moe.n_routed_experts < w) {
      throw error(errc::invalid_argument, m.path() + ": cannot split " + std::to_string(c.moe.n_routed_experts) +
                                              " routed experts across " + ways + " expert-parallel ranks");
    }
    if (shard.mode == parallel_mode::expert) return;
  }
  auto uneven = [&](std::int64_t n, const std::string& what) {
    if (n % w != 0) {
      throw error(errc::invalid_argument, m.path() + ": cannot split " + std::to_string(n) + " " + what +
                                              " evenly across " + ways + " tensor-parallel ranks (parallel: " +
                                              to_string(shard.mode) + ")");
    }
  };
  // A column window of a block-quantized matrix must start and end on its blocks.
  auto window = [&](const weight& t, std::int64_t per_rank) {
    if (!t.m.data) return;
    for (int k = 0; k < w; ++k) {
      try {
        (void)t.m.col_slice(k * per_rank, per_rank);
      } catch (const std::invalid_argument& e) {
        throw error(errc::invalid_argument, m.path() + ": cannot split '" + t.name + "' " + ways +
                                                " ways for tensor parallelism: " + e.what());
      }
    }
  };
  if (!deepseek) {
    uneven(c.n_heads, "attention heads");
    uneven(c.n_kv_heads, "key/value heads");
    uneven(c.intermediate_size, "MLP columns");
    for (const auto& l : m.weights().layers) {
      window(l.wo, c.n_heads / w * c.head_dim);
      window(l.w_down, c.intermediate_size / w);
    }
    return;
  }
  uneven(c.n_heads, "attention heads");
  for (std::size_t li = 0; li < m.weights().layers.size(); ++li) {
    const auto& l = m.weights().layers[li];
    window(l.wo, c.n_heads / w * c.mla.v_head_dim);
    if (l.w_down.m.data) {
      uneven(l.w_down.m.cols, "dense MLP columns");
      window(l.w_down, l.w_down.m.cols / w);
    }
    if (l.shared.down.m.data) {
      uneven(l.shared.down.m.cols, "shared-expert columns");
      window(l.shared.down, l.shared.down.m.cols / w);
    }
    if (shard.mode == parallel_mode::tensor) {
      for (const auto& e : l.experts) {
        uneven(e.down.m.cols, "routed-expert columns (moe_intermediate_size)");
        window(e.down, e.down.m.cols / w);
      }
    }
  }
}

void forward_batch::add(std::int32_t token, std::int32_t pos, const std::vector<std::int32_t>& table, bool want_logits) {
  std::int32_t seq = -1;
  // Sequences are few per step and their tokens come together: search from the last one.
  for (std::size_t i = table_ids_.size(); i-- > 0;) {
    if (table_ids_[i] == &table) {
      seq = static_cast<std::int32_t>(i);
      break;
    }
  }
  if (seq < 0) {
    seq = static_cast<std::int32_t>(tables.size());
    tables.push_back(table);
    table_ids_.push_back(&table);
  }
  if (want_logits) logit_rows.push_back(static_cast<std::int32_t>(tokens.size()));
  tokens.push_back(token);
  positions.push_back(pos);
  seq_of_token.push_back(seq);
}

model_runner::model_runner(const model& m, kernels::backend& be, shard_spec shard, communicator* comm,
                           kv_cache_options kv)
    : model_(m),
      be_(be),
      shard_(shard),
      comm_(comm),
      n_heads_(m.config().n_heads / split_ways(shard)),
      n_kv_heads_(m.config().n_kv_heads / split_ways(shard)),
      ffn_(m.config().intermediate_size / split_ways(shard)),
      cache_(make_cache(be, m.config(), shard, kv)),
      scratch_(be) {
  const auto& c = m.config();
  check_shard(m, shard);
  const int w = shard.world_size, r = shard.rank;
  if (w > 1 && !comm) throw error(errc::invalid_argument, "a " + std::to_string(w) + "-rank runner needs a communicator");
  const auto& W = m.weights();
  tok_embd_ = be.register_weight(W.tok_embd.m);
  // Tied embeddings: one registration, so a backend that copies weights holds them once.
  const bool tied = W.lm_head.m.data == W.tok_embd.m.data && W.lm_head.m.type == W.tok_embd.m.type &&
                    W.lm_head.m.rows == W.tok_embd.m.rows && W.lm_head.m.cols == W.tok_embd.m.cols;
  lm_head_ = tied ? tok_embd_ : be.register_weight(W.lm_head.m);
  out_norm_ = vec(be, W.out_norm);
  inv_freq_ = vec(be, m.rope_inv_freq());
  if (c.family == model_family::deepseek) {
    if (w > 1 && shard.mode != parallel_mode::tensor) experts_ = expert_slice(c.moe.n_routed_experts, r, w);
    split_attention_ = w > 1 && shard.mode != parallel_mode::expert;
    routing_ = routing_of(c.moe);
    init_deepseek();
    return;
  }
  const std::int64_t hd = c.head_dim;
  // Megatron split: q/k/v/gate/up by output rows (column-parallel), o/down by input columns
  // (row-parallel) followed by an all-reduce. Contiguous head ranges keep GQA groups together.
  for (const auto& l : W.layers) {
    layer_slice s;
    s.attn_norm = vec(be, l.attn_norm);
    s.ffn_norm = vec(be, l.ffn_norm);
    s.wq = be.register_weight(l.wq.m.row_slice(r * n_heads_ * hd, n_heads_ * hd));
    s.wk = be.register_weight(l.wk.m.row_slice(r * n_kv_heads_ * hd, n_kv_heads_ * hd));
    s.wv = be.register_weight(l.wv.m.row_slice(r * n_kv_heads_ * hd, n_kv_heads_ * hd));
    s.wo = be.register_weight(l.wo.m.col_slice(r * n_heads_ * hd, n_heads_ * hd));
    s.mlp = slice_mlp(be, mlp_weights{l.w_gate, l.w_up, l.w_down}, r, split_ways(shard));
    s.bq = vec(be, l.bq, r * n_heads_ * hd, n_heads_ * hd);
    s.bk = vec(be, l.bk, r * n_kv_heads_ * hd, n_kv_heads_ * hd);
    s.bv = vec(be, l.bv, r * n_kv_heads_ * hd, n_kv_heads_ * hd);
    layers_.push_back(std::move(s));
  }
}

void model_runner::all_reduce(const tensor& t) {
  if (shard_.world_size > 1) comm_->all_reduce_sum(t);
}

void model_runner::forward(const forward_batch& b, std::vector<float>& logits) {
  const auto& c = model_.config();
  const std::int64_t n = static_cast<std::int64_t>(b.tokens.size());
  if (n == 0) {
    logits.clear();
    return;
  }
  const std::int64_t H = c.hidden_size, hd = c.head_dim;
  const std::int64_t qd = n_heads_ * hd, kd = n_kv_heads_ * hd;
  const std::int32_t bs = cache_.block_size();
  // The step's inputs, checked and laid out on the host (index bookkeeping, not activations).
  std::size_t width = 1;
  for (const auto& t : b.tables) width = std::max(width, t.size());
  host_tables_.assign(b.tables.size() * width, 0);
  for (std::size_t s = 0; s < b.tables.size(); ++s) {
    std::copy(b.tables[s].begin(), b.tables[s].end(), host_tables_.begin() + static_cast<std::ptrdiff_t>(s * width));
  }
  // A batch the scheduler built wrong is a bug (internal), not a client's bad input: the batcher
  // checks what clients send before anything is scheduled.
  if (b.positions.size() != b.tokens.size() || b.seq_of_token.size() != b.tokens.size()) {
    throw error(errc::internal, "the step has " + std::to_string(n) + " tokens but " +
                                    std::to_string(b.positions.size()) + " positions and " +
                                    std::to_string(b.seq_of_token.size()) + " sequence indices");
  }
  host_slots_.resize(static_cast<std::size_t>(n));
  // Attention reads, for each token, every cached position of its sequence up to its own
  // (table[p / block_size] for all p <= pos), so the table must cover the furthest of them with
  // blocks of this cache: checked here once, before any kernel reads through it.
  std::vector<std::int32_t> furthest(b.tables.size(), -1);
  for (std::int64_t t = 0; t < n; ++t) {
    if (b.tokens[t] < 0 || b.tokens[t] >= c.vocab_size) {
      throw error(errc::out_of_range, "token id " + std::to_string(b.tokens[t]) + " is outside the vocabulary (" +
                                          std::to_string(c.vocab_size) + ")");
    }
    if (b.positions[t] < 0 || b.positions[t] >= c.max_positions) {
      throw error(errc::out_of_range, "position " + std::to_string(b.positions[t]) + " is beyond the context (" +
                                          std::to_string(c.max_positions) + ")");
    }
    const std::int32_t seq = b.seq_of_token[t];
    if (seq < 0 || static_cast<std::size_t>(seq) >= b.tables.size()) {
      throw error(errc::internal, "token " + std::to_string(t) + " names sequence " + std::to_string(seq) +
                                      " of a step with " + std::to_string(b.tables.size()) + " block tables");
    }
    furthest[static_cast<std::size_t>(seq)] = std::max(furthest[static_cast<std::size_t>(seq)], b.positions[t]);
  }
  for (std::size_t s = 0; s < b.tables.size(); ++s) {
    if (furthest[s] < 0) continue;
    const auto& table = b.tables[s];
    const std::size_t needed = static_cast<std::size_t>(furthest[s] / bs) + 1;
    if (table.size() < needed) {
      throw error(errc::internal, "sequence " + std::to_string(s) + " attends up to position " +
                                      std::to_string(furthest[s]) + ", which needs " + std::to_string(needed) +
                                      " KV blocks of " + std::to_string(bs) + ", but its table has " +
                                      std::to_string(table.size()));
    }
    for (std::size_t i = 0; i < needed; ++i) {
      if (table[i] < 0 || table[i] >= cache_.num_blocks()) {
        throw error(errc::internal, "sequence " + std::to_string(s) + "'s block table names block " +
                                        std::to_string(table[i]) + " at index " + std::to_string(i) +
                                        ", outside the cache's " + std::to_string(cache_.num_blocks()) + " blocks");
      }
    }
  }
  for (std::int64_t t = 0; t < n; ++t) {
    const auto& table = b.tables[static_cast<std::size_t>(b.seq_of_token[t])];
    host_slots_[t] = table[static_cast<std::size_t>(b.positions[t] / bs)] * bs + b.positions[t] % bs;
  }
  scratch_.reset();
  step_inputs in;
  in.ids = scratch_.take(dtype::i32, 1, n);
  in.positions = scratch_.take(dtype::i32, 1, n);
  in.seq_of_token = scratch_.take(dtype::i32, 1, n);
  in.tables = scratch_.take(dtype::i32, static_cast<std::int64_t>(b.tables.size()), static_cast<std::int64_t>(width));
  in.slots = scratch_.take(dtype::i32, 1, n);
  be_.from_host(in.ids, b.tokens.data());
  be_.from_host(in.positions, b.positions.data());
  be_.from_host(in.seq_of_token, b.seq_of_token.data());
  be_.from_host(in.tables, host_tables_.data());
  be_.from_host(in.slots, host_slots_.data());

  const tensor x = scratch_.take(dtype::f32, n, H);
  const tensor xn = scratch_.take(dtype::f32, n, H);
  const tensor proj = scratch_.take(dtype::f32, n, H);
  be_.embed(tok_embd_, in.ids, x);
  const bool deepseek = c.family == model_family::deepseek;
  const tensor attn = scratch_.take(dtype::f32, n, deepseek ? n_heads_ * c.mla.v_head_dim : qd);
  if (deepseek) {
    for (std::size_t li = 0; li < layers_.size(); ++li) {
      const auto& L = layers_[li];
      be_.rmsnorm(x, L.attn_norm, c.rms_norm_eps, xn);
      mla_attention(li, b, in, xn, attn);
      be_.matmul(L.wo, attn, proj);
      if (split_attention_) all_reduce(proj);
      be_.add(x, proj);
      be_.rmsnorm(x, L.ffn_norm, c.rms_norm_eps, xn);
      if (L.is_moe) {
        // Every rank routes all tokens (identically) and runs its share: its experts (expert
        // parallelism) or its columns of every expert (tensor parallelism), and its part of the
        // shared experts; the all-reduce sums the partial outputs.
        moe_.forward(be_, scratch_, routing_, L.moe, xn, experts_, proj);
        all_reduce(proj);
      } else {
        run_mlp(be_, scratch_, L.mlp, xn, proj);
        if (split_attention_) all_reduce(proj);
      }
      be_.add(x, proj);
    }
  } else {
    const tensor q = scratch_.take(dtype::f32, n, qd);
    const tensor k = scratch_.take(dtype::f32, n, kd);
    const tensor v = scratch_.take(dtype::f32, n, kd);
    const tensor gate = scratch_.take(dtype::f32, n, ffn_);
    const tensor up = scratch_.take(dtype::f32, n, ffn_);
    const float attn_scale = 1.0f / std::sqrt(static_cast<float>(hd));
    for (std::size_t li = 0; li < layers_.size(); ++li) {
      const auto& L = layers_[li];
      be_.rmsnorm(x, L.attn_norm, c.rms_norm_eps, xn);
      const kernels::matmul_job qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};
      be_.matmul_multi(qkv, xn);
      if (!L.bq.empty()) {
        be_.add(q, L.bq);
        be_.add(k, L.bk);
        be_.add(v, L.bv);
      }
      be_.rope(q, in.positions, static_cast<std::int32_t>(n_heads_), static_cast<std::int32_t>(hd),
               static_cast<std::int32_t>(c.rope_dim), c.rope_style, inv_freq_, model_.rope_attn_factor());
      be_.rope(k, in.positions, static_cast<std::int32_t>(n_kv_heads_), static_cast<std::int32_t>(hd),
               static_cast<std::int32_t>(c.rope_dim), c.rope_style, inv_freq_, model_.rope_attn_factor());
      // This batch's keys/values go into their slots before attending, so a prompt chunk sees
      // itself causally.
      be_.store_kv(cache_.k(static_cast<std::int64_t>(li)), k, in.slots);
      be_.store_kv(cache_.v(static_cast<std::int64_t>(li)), v, in.slots);
      kernels::attention_args a;
      a.q = q;
      a.out = attn;
      a.k_cache = cache_.k(static_cast<std::int64_t>(li));
      a.v_cache = cache_.v(static_cast<std::int64_t>(li));
      a.positions = in.positions;
      a.block_tables = in.tables;
      a.seq_of_token = in.seq_of_token;
      a.n_heads = static_cast<std::int32_t>(n_heads_);
      a.n_kv_heads = static_cast<std::int32_t>(n_kv_heads_);
      a.head_dim = static_cast<std::int32_t>(hd);
      a.block_size = bs;
      a.scale = attn_scale;
      be_.attention(a);
      be_.matmul(L.wo, attn, proj);
      all_reduce(proj);
      be_.add(x, proj);

      be_.rmsnorm(x, L.ffn_norm, c.rms_norm_eps, xn);
      const kernels::matmul_job gate_up[] = {{L.mlp.gate, gate}, {L.mlp.up, up}};
      be_.matmul_multi(gate_up, xn);
      be_.silu_mul(gate, up);
      be_.matmul(L.mlp.down, gate, proj);
      all_reduce(proj);
      be_.add(x, proj);
    }
  }

  const std::int64_t nl = static_cast<std::int64_t>(b.logit_rows.size());
  logits.resize(static_cast<std::size_t>(nl * c.vocab_size));
  if (nl == 0) {
    be_.idle();
    return;
  }
  const tensor rows = scratch_.take(dtype::f32, nl, H);
  const tensor rows_n = scratch_.take(dtype::f32, nl, H);
  const tensor picked = scratch_.take(dtype::i32, 1, nl);
  const tensor out = scratch_.take(dtype::f32, nl, c.vocab_size);
  be_.from_host(picked, b.logit_rows.data());
  be_.gather_rows(rows, x, picked);
  be_.rmsnorm(rows, out_norm_, c.rms_norm_eps, rows_n);
  be_.matmul(lm_head_, rows_n, out);
  be_.to_host(out, logits.data());
  be_.idle();
}

}  // namespace shoal
