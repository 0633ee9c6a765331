// DeepSeek layers of model_runner: multi-head latent attention over the latent cache (absorbed and
// plain paths) and the dense-or-MoE feed-forward. Shapes per token: r = kv_lora_rank, rd =
// qk_rope_dim, nope = qk_nope_dim, qk = nope + rd, vd = v_head_dim, nh = heads.

#include <algorithm>
#include <cstring>
#include <map>

#include "engine/runner/model_runner.hpp"

namespace shoal {

void model_runner::mla_attention(std::size_t li, const forward_batch& b) {
  const auto& c = model_.config();
  const auto& a = c.mla;
  const auto& LW = model_.weights().layers[li];
  const auto& L = layers_[li];
  const std::int64_t n = static_cast<std::int64_t>(b.tokens.size());
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd, vd = a.v_head_dim;
  q_.resize(n * nh * qk);      // [n, nh, qk]: q_nope then q_pe per head
  kva_.resize(n * lw);         // [n, r + rd]: latent then k_pe
  if (a.q_lora_rank > 0) {
    qa_.resize(n * a.q_lora_rank);
    qan_.resize(n * a.q_lora_rank);
    const kernels::matmul_job jobs[] = {{LW.wq_a.m, qa_.data()}, {LW.wkv_a.m, kva_.data()}};
    be_.matmul_multi(jobs, xn_.data(), n);
    be_.rmsnorm(qa_.data(), LW.q_a_norm.data(), c.rms_norm_eps, n, a.q_lora_rank, qan_.data());
    be_.matmul(L.wq, qan_.data(), n, q_.data());
  } else {
    const kernels::matmul_job jobs[] = {{L.wq, q_.data()}, {LW.wkv_a.m, kva_.data()}};
    be_.matmul_multi(jobs, xn_.data(), n);
  }
  const auto* inv_freq = model_.rope_inv_freq().data();
  be_.rope(q_.data() + nope, b.positions, static_cast<std::int32_t>(nh), static_cast<std::int32_t>(qk),
           static_cast<std::int32_t>(rd), c.rope_style, inv_freq, model_.rope_attn_factor());
  be_.rope(kva_.data() + r, b.positions, 1, static_cast<std::int32_t>(lw), static_cast<std::int32_t>(rd),
           c.rope_style, inv_freq, model_.rope_attn_factor());
  // The cache row of a token: its normed latent, then its roped shared key.
  float* cache = cache_.latent_rows(static_cast<std::int64_t>(li));
  const std::int32_t bs = cache_.block_size();
  for (std::int64_t t = 0; t < n; ++t) {
    const std::int32_t p = b.positions[t];
    const std::int64_t slot = static_cast<std::int64_t>(b.block_tables[t][p / bs]) * bs + p % bs;
    float* dst = cache + slot * lw;
    be_.rmsnorm(kva_.data() + t * lw, LW.kv_a_norm.data(), c.rms_norm_eps, 1, r, dst);
    std::memcpy(dst + r, kva_.data() + t * lw + r, rd * sizeof(float));
  }

  attn_.resize(n * nh * vd);
  std::map<const std::int32_t*, std::vector<std::int64_t>> by_seq;
  for (std::int64_t t = 0; t < n; ++t) by_seq[b.block_tables[t]].push_back(t);
  std::vector<std::int64_t> absorbed;
  for (auto& [table, toks] : by_seq) {
    const bool plain = mla_path_ == mla_path::plain || (mla_path_ == mla_path::automatic && toks.size() > 1);
    if (plain) {
      attend_plain(li, b, toks);
    } else {
      absorbed.insert(absorbed.end(), toks.begin(), toks.end());
    }
  }
  if (!absorbed.empty()) attend_absorbed(li, b, absorbed);
  proj_.resize(n * c.hidden_size);
  be_.matmul(L.wo, attn_.data(), n, proj_.data());
  if (split_attention_) comm_->all_reduce_sum(proj_.data(), static_cast<std::size_t>(n * c.hidden_size));
}

// score(t, j) = q_nope . (W_uk c_j) + q_pe . k_pe_j = (W_uk^T q_nope) . c_j + q_pe . k_pe_j, and
// out = W_uv (sum_j p_j c_j): one attention with a single shared "head" of width r + rd over the
// cache rows themselves (keys and values both the row; the value's last rd dims are dropped).
void model_runner::attend_absorbed(std::size_t li, const forward_batch& b, const std::vector<std::int64_t>& toks) {
  const auto& a = model_.config().mla;
  const std::int64_t m = static_cast<std::int64_t>(toks.size());
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd, vd = a.v_head_dim;
  mq_.resize(m * nh * lw);
  mo_.resize(m * nh * lw);
  head_in_.resize(m * std::max(nope, r));
  head_out_.resize(m * std::max(r, vd));
  std::vector<std::int32_t> pos(m);
  std::vector<const std::int32_t*> tables(m);
  for (std::int64_t i = 0; i < m; ++i) {
    pos[i] = b.positions[toks[i]];
    tables[i] = b.block_tables[toks[i]];
  }
  for (std::int64_t h = 0; h < nh; ++h) {
    for (std::int64_t i = 0; i < m; ++i) {
      const float* q = q_.data() + (toks[i] * nh + h) * qk;
      std::memcpy(head_in_.data() + i * nope, q, nope * sizeof(float));
      std::memcpy(mq_.data() + (i * nh + h) * lw + r, q + nope, rd * sizeof(float));
    }
    const kernels::matrix w_uk_t{w_uk_t_[li].data() + h * r * nope, dtype::f32, r, nope, nope};
    be_.matmul(w_uk_t, head_in_.data(), m, head_out_.data());
    for (std::int64_t i = 0; i < m; ++i) {
      std::memcpy(mq_.data() + (i * nh + h) * lw, head_out_.data() + i * r, r * sizeof(float));
    }
  }
  kernels::attention_args args;
  args.q = mq_.data();
  args.out = mo_.data();
  args.k_cache = cache_.latent_rows(static_cast<std::int64_t>(li));
  args.v_cache = args.k_cache;
  args.positions = pos;
  args.block_tables = tables;
  args.n_heads = static_cast<std::int32_t>(nh);
  args.n_kv_heads = 1;
  args.head_dim = static_cast<std::int32_t>(lw);
  args.block_size = cache_.block_size();
  args.scale = a.softmax_scale;
  be_.attention(args);
  for (std::int64_t h = 0; h < nh; ++h) {
    for (std::int64_t i = 0; i < m; ++i) {
      std::memcpy(head_in_.data() + i * r, mo_.data() + (i * nh + h) * lw, r * sizeof(float));
    }
    const kernels::matrix w_uv = layers_[li].wkv_b.row_slice(h * (nope + vd) + nope, vd);
    be_.matmul(w_uv, head_in_.data(), m, head_out_.data());
    for (std::int64_t i = 0; i < m; ++i) {
      std::memcpy(attn_.data() + (toks[i] * nh + h) * vd, head_out_.data() + i * vd, vd * sizeof(float));
    }
  }
}

// Keys and values of the sequence's whole context up-projected from its cached latents, then
// ordinary attention (zero-padded to one head width when qk and vd differ).
void model_runner::attend_plain(std::size_t li, const forward_batch& b, const std::vector<std::int64_t>& toks) {
  const auto& a = model_.config().mla;
  const std::int64_t m = static_cast<std::int64_t>(toks.size());
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd, vd = a.v_head_dim, hw = std::max(qk, vd);
  const std::int32_t* table = b.block_tables[toks[0]];
  std::int32_t ctx = 0;
  for (auto t : toks) ctx = std::max(ctx, b.positions[t] + 1);
  const std::int32_t bs = cache_.block_size();
  const float* cache = cache_.latent_rows(static_cast<std::int64_t>(li));
  head_in_.resize(static_cast<std::size_t>(ctx) * r);
  for (std::int32_t j = 0; j < ctx; ++j) {
    const std::int64_t slot = static_cast<std::int64_t>(table[j / bs]) * bs + j % bs;
    std::memcpy(head_in_.data() + j * r, cache + slot * lw, r * sizeof(float));
  }
  head_out_.resize(static_cast<std::size_t>(ctx) * nh * (nope + vd));
  be_.matmul(layers_[li].wkv_b, head_in_.data(), ctx, head_out_.data());
  mk_.assign(static_cast<std::size_t>(ctx) * nh * hw, 0.0f);
  mv_.assign(static_cast<std::size_t>(ctx) * nh * hw, 0.0f);
  for (std::int32_t j = 0; j < ctx; ++j) {
    const std::int64_t slot = static_cast<std::int64_t>(table[j / bs]) * bs + j % bs;
    for (std::int64_t h = 0; h < nh; ++h) {
      const float* kv = head_out_.data() + (static_cast<std::int64_t>(j) * nh + h) * (nope + vd);
      float* k = mk_.data() + (static_cast<std::int64_t>(j) * nh + h) * hw;
      std::memcpy(k, kv, nope * sizeof(float));
      std::memcpy(k + nope, cache + slot * lw + r, rd * sizeof(float));
      std::memcpy(mv_.data() + (static_cast<std::int64_t>(j) * nh + h) * hw, kv + nope, vd * sizeof(float));
    }
  }
  mq_.assign(static_cast<std::size_t>(m * nh * hw), 0.0f);
  mo_.resize(static_cast<std::size_t>(m * nh * hw));
  std::vector<std::int32_t> pos(m);
  const std::int32_t whole = 0;  // the context above is one block of ctx slots
  std::vector<const std::int32_t*> tables(m, &whole);
  for (std::int64_t i = 0; i < m; ++i) {
    pos[i] = b.positions[toks[i]];
    for (std::int64_t h = 0; h < nh; ++h) {
      std::memcpy(mq_.data() + (i * nh + h) * hw, q_.data() + (toks[i] * nh + h) * qk, qk * sizeof(float));
    }
  }
  kernels::attention_args args;
  args.q = mq_.data();
  args.out = mo_.data();
  args.k_cache = mk_.data();
  args.v_cache = mv_.data();
  args.positions = pos;
  args.block_tables = tables;
  args.n_heads = static_cast<std::int32_t>(nh);
  args.n_kv_heads = static_cast<std::int32_t>(nh);
  args.head_dim = static_cast<std::int32_t>(hw);
  args.block_size = ctx;
  args.scale = a.softmax_scale;
  be_.attention(args);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t h = 0; h < nh; ++h) {
      std::memcpy(attn_.data() + (toks[i] * nh + h) * vd, mo_.data() + (i * nh + h) * hw, vd * sizeof(float));
    }
  }
}

void model_runner::deepseek_ffn(std::size_t li, std::int64_t n) {
  const auto& c = model_.config();
  const auto& LW = model_.weights().layers[li];
  const std::int64_t H = c.hidden_size;
  proj_.resize(n * H);
  const auto& L = layers_[li];
  if (c.moe.is_moe_layer(static_cast<std::int64_t>(li))) {
    // Every rank routes all tokens (identically) and runs its share: its experts (expert
    // parallelism) or its columns of every expert (tensor parallelism), and its part of the shared
    // experts; the all-reduce sums the partial outputs.
    moe_.forward(be_, c.moe, LW, L.experts, L.with_shared ? &L.shared : nullptr, xn_.data(), n, H, experts_,
                 proj_.data());
    if (shard_.world_size > 1) comm_->all_reduce_sum(proj_.data(), static_cast<std::size_t>(n * H));
  } else {
    run_mlp(be_, L.dense, xn_.data(), n, proj_.data(), gate_, up_);
    if (split_attention_) comm_->all_reduce_sum(proj_.data(), static_cast<std::size_t>(n * H));
  }
}

}  // namespace shoal
