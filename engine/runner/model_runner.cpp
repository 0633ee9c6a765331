#include "engine/runner/model_runner.hpp"

#include <cmath>
#include <cstring>

#include "engine/common/error.hpp"

namespace shoal {

namespace {

std::int32_t default_blocks(const model_config& c, std::int32_t block_size) {
  return static_cast<std::int32_t>((c.max_positions + block_size - 1) / block_size);
}

kv_cache make_cache(const model_config& c, shard_spec shard, kv_cache_options kv) {
  const std::int32_t blocks = kv.num_blocks > 0 ? kv.num_blocks : default_blocks(c, kv.block_size);
  if (c.family == model_family::deepseek) {
    return kv_cache::latent(c.n_layers, c.mla.kv_lora_rank + c.mla.qk_rope_dim, kv.block_size, blocks);
  }
  const int ways = shard.mode == parallel_mode::expert ? 1 : std::max(shard.world_size, 1);
  return kv_cache(c.n_layers, c.n_kv_heads / ways, c.head_dim, kv.block_size, blocks);
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


// Columns [r * I / ways, ...) of one gated MLP: gate/up by output rows, down by input columns.
mlp_weights slice_mlp(const mlp_weights& w, int r, int ways) {
  if (ways == 1 || !w.gate.m.data) return w;
  const std::int64_t i = w.gate.m.rows / ways;
  mlp_weights s = w;
  s.gate.m = w.gate.m.row_slice(r * i, i);
  s.up.m = w.up.m.row_slice(r * i, i);
  s.down.m = w.down.m.col_slice(r * i, i);
  return s;
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

model_runner::model_runner(const model& m, kernels::backend& be, shard_spec shard,
                           communicator* comm, kv_cache_options kv)
    : model_(m),
      be_(be),
      shard_(shard),
      comm_(comm),
      n_heads_(m.config().n_heads / split_ways(shard)),
      n_kv_heads_(m.config().n_kv_heads / split_ways(shard)),
      ffn_(m.config().intermediate_size / split_ways(shard)),
      cache_(make_cache(m.config(), shard, kv)) {
  const auto& c = m.config();
  check_shard(m, shard);
  const int w = shard.world_size, r = shard.rank;
  if (w > 1 && !comm) throw error(errc::invalid_argument, "a " + std::to_string(w) + "-rank runner needs a communicator");
  if (c.family == model_family::deepseek) {
    if (w > 1 && shard.mode != parallel_mode::tensor) experts_ = expert_slice(c.moe.n_routed_experts, r, w);
    split_attention_ = w > 1 && shard.mode != parallel_mode::expert;
    init_deepseek();
    return;
  }
  const std::int64_t hd = c.head_dim;
  // Megatron split: q/k/v/gate/up by output rows (column-parallel), o/down by input columns
  // (row-parallel) followed by an all-reduce. Contiguous head ranges keep GQA groups together.
  for (const auto& l : m.weights().layers) {
    layer_slice s;
    s.wq = l.wq.m.row_slice(r * n_heads_ * hd, n_heads_ * hd);
    s.wk = l.wk.m.row_slice(r * n_kv_heads_ * hd, n_kv_heads_ * hd);
    s.wv = l.wv.m.row_slice(r * n_kv_heads_ * hd, n_kv_heads_ * hd);
    s.wo = l.wo.m.col_slice(r * n_heads_ * hd, n_heads_ * hd);
    s.w_gate = l.w_gate.m.row_slice(r * ffn_, ffn_);
    s.w_up = l.w_up.m.row_slice(r * ffn_, ffn_);
    s.w_down = l.w_down.m.col_slice(r * ffn_, ffn_);
    if (!l.bq.empty()) {
      s.bq = l.bq.data() + r * n_heads_ * hd;
      s.bk = l.bk.data() + r * n_kv_heads_ * hd;
      s.bv = l.bv.data() + r * n_kv_heads_ * hd;
    }
    layers_.push_back(s);
  }
}

void model_runner::init_deepseek() {
  const auto& c = model_.config();
  const auto& a = c.mla;
  const std::int64_t r = a.kv_lora_rank, nope = a.qk_nope_dim, qk = nope + a.qk_rope_dim;
  const std::int64_t vd = a.v_head_dim, per_head = nope + vd;
  const int ways = split_ways(shard_), rank = ways > 1 ? shard_.rank : 0;
  const std::int64_t h0 = rank * n_heads_;  // this rank's first head
  std::vector<float> row(static_cast<std::size_t>(r));
  for (const auto& l : model_.weights().layers) {
    layer_slice s;
    s.wq = (a.q_lora_rank > 0 ? l.wq_b : l.wq).m.row_slice(h0 * qk, n_heads_ * qk);
    s.wkv_b = l.wkv_b.m.row_slice(h0 * per_head, n_heads_ * per_head);
    s.wo = l.wo.m.col_slice(h0 * vd, n_heads_ * vd);
    // W_uk for local head h is rows [h * per_head, h * per_head + nope) of the slice; stored transposed.
    std::vector<float> t(static_cast<std::size_t>(n_heads_ * r * nope));
    for (std::int64_t h = 0; h < n_heads_; ++h) {
      for (std::int64_t i = 0; i < nope; ++i) {
        kernels::dequantize_row(s.wkv_b, h * per_head + i, row.data());
        for (std::int64_t j = 0; j < r; ++j) t[(h * r + j) * nope + i] = row[j];
      }
    }
    w_uk_t_.push_back(std::move(t));
    s.dense = slice_mlp(mlp_weights{l.w_gate, l.w_up, l.w_down}, rank, ways);
    const int expert_ways = shard_.mode == parallel_mode::tensor ? ways : 1;
    s.experts.reserve(l.experts.size());
    for (const auto& e : l.experts) s.experts.push_back(slice_mlp(e, rank, expert_ways));
    // Shared experts: column slices where heads are split; under expert parallelism alone rank 0
    // runs them whole.
    s.shared = slice_mlp(l.shared, rank, ways);
    s.with_shared = ways > 1 || shard_.rank == 0;
    layers_.push_back(std::move(s));
  }
}

void model_runner::forward(const forward_batch& b, std::vector<float>& logits) {
  const auto& c = model_.config();
  const auto& W = model_.weights();
  const std::int64_t n = static_cast<std::int64_t>(b.tokens.size());
  if (n == 0) {
    logits.clear();
    return;
  }
  const std::int64_t H = c.hidden_size, hd = c.head_dim;
  const std::int64_t qd = n_heads_ * hd, kd = n_kv_heads_ * hd;
  const std::int32_t bs = cache_.block_size();
  for (std::int64_t t = 0; t < n; ++t) {
    if (b.tokens[t] < 0 || b.tokens[t] >= c.vocab_size) {
      throw error(errc::out_of_range, "token id " + std::to_string(b.tokens[t]) + " is outside the vocabulary (" +
                                          std::to_string(c.vocab_size) + ")");
    }
    if (b.positions[t] < 0 || b.positions[t] >= c.max_positions) {
      throw error(errc::out_of_range, "position " + std::to_string(b.positions[t]) + " is beyond the context (" +
                                          std::to_string(c.max_positions) + ")");
    }
  }
  x_.resize(n * H);
  xn_.resize(n * H);
  q_.resize(n * qd);
  k_.resize(n * kd);
  v_.resize(n * kd);
  attn_.resize(n * qd);
  proj_.resize(n * H);
  gate_.resize(n * ffn_);
  up_.resize(n * ffn_);

  be_.embed(W.tok_embd.m, b.tokens, x_.data());
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (std::size_t li = 0; li < layers_.size(); ++li) {
    const auto& L = layers_[li];
    const auto& LW = W.layers[li];
    if (c.family == model_family::deepseek) {
      be_.rmsnorm(x_.data(), LW.attn_norm.data(), c.rms_norm_eps, n, H, xn_.data());
      mla_attention(li, b);
      be_.add(x_.data(), proj_.data(), n * H);
      be_.rmsnorm(x_.data(), LW.ffn_norm.data(), c.rms_norm_eps, n, H, xn_.data());
      deepseek_ffn(li, n);
      be_.add(x_.data(), proj_.data(), n * H);
      continue;
    }
    be_.rmsnorm(x_.data(), LW.attn_norm.data(), c.rms_norm_eps, n, H, xn_.data());
    const kernels::matmul_job qkv[] = {{L.wq, q_.data()}, {L.wk, k_.data()}, {L.wv, v_.data()}};
    be_.matmul_multi(qkv, xn_.data(), n);
    if (L.bq) {
      for (std::int64_t t = 0; t < n; ++t) {
        be_.add(q_.data() + t * qd, L.bq, qd);
        be_.add(k_.data() + t * kd, L.bk, kd);
        be_.add(v_.data() + t * kd, L.bv, kd);
      }
    }
    be_.rope(q_.data(), b.positions, static_cast<std::int32_t>(n_heads_), static_cast<std::int32_t>(hd),
             static_cast<std::int32_t>(c.rope_dim), c.rope_style, model_.rope_inv_freq().data(),
             model_.rope_attn_factor());
    be_.rope(k_.data(), b.positions, static_cast<std::int32_t>(n_kv_heads_), static_cast<std::int32_t>(hd),
             static_cast<std::int32_t>(c.rope_dim), c.rope_style, model_.rope_inv_freq().data(),
             model_.rope_attn_factor());
    // Write this batch's keys/values into their slots before attending, so a prompt chunk sees
    // itself causally.
    float* kc = cache_.k(li);
    float* vc = cache_.v(li);
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int32_t p = b.positions[t];
      const std::int64_t slot = static_cast<std::int64_t>(b.block_tables[t][p / bs]) * bs + p % bs;
      std::memcpy(kc + slot * kd, k_.data() + t * kd, kd * sizeof(float));
      std::memcpy(vc + slot * kd, v_.data() + t * kd, kd * sizeof(float));
    }
    kernels::attention_args a;
    a.q = q_.data();
    a.out = attn_.data();
    a.k_cache = kc;
    a.v_cache = vc;
    a.positions = b.positions;
    a.block_tables = b.block_tables;
    a.n_heads = static_cast<std::int32_t>(n_heads_);
    a.n_kv_heads = static_cast<std::int32_t>(n_kv_heads_);
    a.head_dim = static_cast<std::int32_t>(hd);
    a.block_size = bs;
    a.scale = attn_scale;
    be_.attention(a);
    be_.matmul(L.wo, attn_.data(), n, proj_.data());
    if (shard_.world_size > 1) comm_->all_reduce_sum(proj_.data(), proj_.size());
    be_.add(x_.data(), proj_.data(), n * H);

    be_.rmsnorm(x_.data(), LW.ffn_norm.data(), c.rms_norm_eps, n, H, xn_.data());
    const kernels::matmul_job gate_up[] = {{L.w_gate, gate_.data()}, {L.w_up, up_.data()}};
    be_.matmul_multi(gate_up, xn_.data(), n);
    be_.silu_mul(gate_.data(), up_.data(), n * ffn_);
    be_.matmul(L.w_down, gate_.data(), n, proj_.data());
    if (shard_.world_size > 1) comm_->all_reduce_sum(proj_.data(), proj_.size());
    be_.add(x_.data(), proj_.data(), n * H);
  }

  const std::int64_t nl = static_cast<std::int64_t>(b.logit_rows.size());
  rows_.resize(nl * H);
  for (std::int64_t i = 0; i < nl; ++i) {
    std::memcpy(rows_.data() + i * H, x_.data() + static_cast<std::int64_t>(b.logit_rows[i]) * H, H * sizeof(float));
  }
  xn_.resize(std::max<std::int64_t>(n, nl) * H);
  be_.rmsnorm(rows_.data(), W.out_norm.data(), c.rms_norm_eps, nl, H, xn_.data());
  logits.resize(nl * c.vocab_size);
  be_.matmul(W.lm_head.m, xn_.data(), nl, logits.data());
  be_.idle();
}

}  // namespace shoal
