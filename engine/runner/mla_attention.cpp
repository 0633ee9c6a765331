// DeepSeek layers of model_runner: multi-head latent attention over the latent cache (absorbed and
// plain paths) and the registration of the MLA/MoE weights. Shapes per token: r = kv_lora_rank,
// rd = qk_rope_dim, nope = qk_nope_dim, qk = nope + rd, vd = v_head_dim, nh = this rank's heads.
// Per-head work is expressed as ops on column windows of [tokens, heads * width] tensors (one
// head's slice of every row), so nothing here touches activation memory directly.

#include <algorithm>
#include <cstring>

#include "engine/common/error.hpp"
#include "engine/runner/model_runner.hpp"

namespace shoal {

using kernels::tensor;

void model_runner::init_deepseek() {
  const auto& c = model_.config();
  const auto& a = c.mla;
  const std::int64_t r = a.kv_lora_rank, nope = a.qk_nope_dim, qk = nope + a.qk_rope_dim;
  const std::int64_t vd = a.v_head_dim, per_head = nope + vd;
  const int ways = shard_.mode == parallel_mode::expert ? 1 : std::max(shard_.world_size, 1);
  const int rank = ways > 1 ? shard_.rank : 0;
  const std::int64_t h0 = rank * n_heads_;  // this rank's first head
  auto vec = [&](const std::vector<float>& v) {
    return v.empty() ? tensor{} : be_.register_vector(std::span<const float>(v.data(), v.size()));
  };
  auto slice_mlp = [&](const mlp_weights& w, int part, int parts) -> mlp_matrices {
    if (!w.gate.m.data) return {};
    if (parts == 1) part = 0;  // whole (an expert that expert parallelism gives this rank whole)
    const std::int64_t i = w.gate.m.rows / parts;
    return {be_.register_weight(w.gate.m.row_slice(part * i, i)), be_.register_weight(w.up.m.row_slice(part * i, i)),
            be_.register_weight(w.down.m.col_slice(part * i, i))};
  };
  std::vector<float> row(static_cast<std::size_t>(r));
  for (std::size_t li = 0; li < model_.weights().layers.size(); ++li) {
    const auto& l = model_.weights().layers[li];
    layer_slice s;
    s.attn_norm = vec(l.attn_norm);
    s.ffn_norm = vec(l.ffn_norm);
    s.q_a_norm = vec(l.q_a_norm);
    s.kv_a_norm = vec(l.kv_a_norm);
    if (a.q_lora_rank > 0) s.wq_a = be_.register_weight(l.wq_a.m);
    s.wkv_a = be_.register_weight(l.wkv_a.m);
    const kernels::matrix kv_b = l.wkv_b.m.row_slice(h0 * per_head, n_heads_ * per_head);
    s.wq = be_.register_weight((a.q_lora_rank > 0 ? l.wq_b : l.wq).m.row_slice(h0 * qk, n_heads_ * qk));
    for (std::int64_t h = 0; h < n_heads_; ++h) {
      s.w_uk.push_back(be_.register_weight(kv_b.row_slice(h * per_head, nope)));
      s.w_uv.push_back(be_.register_weight(kv_b.row_slice(h * per_head + nope, vd)));
    }
    s.wo = be_.register_weight(l.wo.m.col_slice(h0 * vd, n_heads_ * vd));
    // W_uk of local head h is rows [h * per_head, h * per_head + nope) of kv_b; the absorbed
    // query multiplies by its transpose, built once here on the host and registered.
    for (std::int64_t h = 0; h < n_heads_; ++h) {
      std::vector<float> t(static_cast<std::size_t>(r * nope));
      for (std::int64_t i = 0; i < nope; ++i) {
        kernels::dequantize_row(kv_b, h * per_head + i, row.data());
        for (std::int64_t j = 0; j < r; ++j) t[j * nope + i] = row[j];
      }
      w_uk_t_host_.push_back(std::move(t));
      const auto& held = w_uk_t_host_.back();
      s.w_uk_t.push_back(be_.register_weight(kernels::matrix{held.data(), dtype::f32, r, nope, nope}));
    }
    s.is_moe = c.moe.is_moe_layer(static_cast<std::int64_t>(li));
    if (s.is_moe) {
      s.moe.router = be_.register_weight(l.router.m);
      s.moe.router_bias = vec(l.router_bias);
      const int expert_ways = shard_.mode == parallel_mode::tensor ? ways : 1;
      s.moe.experts.reserve(l.experts.size());
      for (std::size_t e = 0; e < l.experts.size(); ++e) {
        const auto id = static_cast<std::int64_t>(e);
        const bool owned = experts_.end < 0 || (id >= experts_.begin && id < experts_.end);
        // Experts another rank owns are never run here: nothing of them is registered.
        s.moe.experts.push_back(owned ? slice_mlp(l.experts[e], rank, expert_ways) : mlp_matrices{});
      }
      // Shared experts: column slices where heads are split; under expert parallelism alone rank 0
      // runs them whole.
      if (ways > 1 || shard_.rank == 0) s.moe.shared = slice_mlp(l.shared, rank, ways);
    } else {
      s.mlp = slice_mlp(mlp_weights{l.w_gate, l.w_up, l.w_down}, rank, ways);
    }
    layers_.push_back(std::move(s));
  }
}

tensor model_runner::gather(const tensor& t, const std::vector<std::int32_t>& toks, tensor& index) {
  index = scratch_.take(dtype::i32, 1, static_cast<std::int64_t>(toks.size()));
  be_.from_host(index, toks.data());
  bool all = static_cast<std::int64_t>(toks.size()) == t.rows;
  for (std::size_t i = 0; all && i < toks.size(); ++i) all = toks[i] == static_cast<std::int32_t>(i);
  if (all) return t;
  const tensor out = scratch_.take(t.type, static_cast<std::int64_t>(toks.size()), t.cols);
  be_.gather_rows(out, t, index);
  return out;
}

void model_runner::mla_attention(std::size_t li, const forward_batch& b, const step_inputs& in, const tensor& xn,
                                 const tensor& attn) {
  const auto& c = model_.config();
  const auto& a = c.mla;
  const auto& L = layers_[li];
  const std::int64_t n = xn.rows;
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd;
  const tensor q = scratch_.take(dtype::f32, n, nh * qk);  // [n, nh, qk]: q_nope then q_pe per head
  const tensor kva = scratch_.take(dtype::f32, n, lw);     // [n, r + rd]: latent then k_pe
  if (a.q_lora_rank > 0) {
    const tensor qa = scratch_.take(dtype::f32, n, a.q_lora_rank);
    const tensor qan = scratch_.take(dtype::f32, n, a.q_lora_rank);
    const kernels::matmul_job jobs[] = {{L.wq_a, qa}, {L.wkv_a, kva}};
    be_.matmul_multi(jobs, xn);
    be_.rmsnorm(qa, L.q_a_norm, c.rms_norm_eps, qan);
    be_.matmul(L.wq, qan, q);
  } else {
    const kernels::matmul_job jobs[] = {{L.wq, q}, {L.wkv_a, kva}};
    be_.matmul_multi(jobs, xn);
  }
  be_.rope(q.cols_view(nope, nh * qk - nope), in.positions, static_cast<std::int32_t>(nh),
           static_cast<std::int32_t>(qk), static_cast<std::int32_t>(rd), c.rope_style, inv_freq_,
           model_.rope_attn_factor());
  be_.rope(kva.cols_view(r, rd), in.positions, 1, static_cast<std::int32_t>(lw), static_cast<std::int32_t>(rd),
           c.rope_style, inv_freq_, model_.rope_attn_factor());
  // The cache row of a token: its normed latent, then its roped shared key.
  const tensor row = scratch_.take(dtype::f32, n, lw);
  be_.rmsnorm(kva.cols_view(0, r), L.kv_a_norm, c.rms_norm_eps, row.cols_view(0, r));
  be_.copy(row.cols_view(r, rd), kva.cols_view(r, rd));
  be_.store_kv(cache_.k(static_cast<std::int64_t>(li)), row, in.slots);

  // Sequences with several tokens in this step take the plain path (automatic), the rest are
  // batched through the absorbed path.
  std::vector<std::vector<std::int32_t>> by_seq(b.tables.size());
  for (std::int64_t t = 0; t < n; ++t) by_seq[static_cast<std::size_t>(b.seq_of_token[t])].push_back(static_cast<std::int32_t>(t));
  std::vector<std::int32_t> absorbed;
  for (const auto& toks : by_seq) {
    if (toks.empty()) continue;
    const bool plain = mla_path_ == mla_path::plain || (mla_path_ == mla_path::automatic && toks.size() > 1);
    if (plain) {
      attend_plain(li, q, b, toks, attn);
    } else {
      absorbed.insert(absorbed.end(), toks.begin(), toks.end());
    }
  }
  if (!absorbed.empty()) attend_absorbed(li, q, in, absorbed, attn);
}

// score(t, j) = q_nope . (W_uk c_j) + q_pe . k_pe_j = (W_uk^T q_nope) . c_j + q_pe . k_pe_j, and
// out = W_uv (sum_j p_j c_j): one attention with a single shared "head" of width r + rd over the
// cache rows themselves (keys and values both the row; the value's last rd dims are dropped).
void model_runner::attend_absorbed(std::size_t li, const tensor& q_all, const step_inputs& in,
                                   const std::vector<std::int32_t>& toks, const tensor& attn) {
  const auto& a = model_.config().mla;
  const auto& L = layers_[li];
  const std::int64_t m = static_cast<std::int64_t>(toks.size());
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd, vd = a.v_head_dim;
  tensor index;
  const tensor q = gather(q_all, toks, index);
  const bool in_place = q.data == q_all.data;
  const tensor positions = in_place ? in.positions : scratch_.take(dtype::i32, 1, m);
  const tensor seqs = in_place ? in.seq_of_token : scratch_.take(dtype::i32, 1, m);
  if (!in_place) {
    be_.gather_rows(positions.reshaped(m, 1), in.positions.reshaped(in.positions.cols, 1), index);
    be_.gather_rows(seqs.reshaped(m, 1), in.seq_of_token.reshaped(in.seq_of_token.cols, 1), index);
  }
  const tensor mq = scratch_.take(dtype::f32, m, nh * lw);
  const tensor mo = scratch_.take(dtype::f32, m, nh * lw);
  for (std::int64_t h = 0; h < nh; ++h) {
    be_.matmul(L.w_uk_t[static_cast<std::size_t>(h)], q.cols_view(h * qk, nope), mq.cols_view(h * lw, r));
    be_.copy(mq.cols_view(h * lw + r, rd), q.cols_view(h * qk + nope, rd));
  }
  kernels::attention_args args;
  args.q = mq;
  args.out = mo;
  args.k_cache = cache_.k(static_cast<std::int64_t>(li));
  args.v_cache = args.k_cache;
  args.positions = positions;
  args.block_tables = in.tables;
  args.seq_of_token = seqs;
  args.n_heads = static_cast<std::int32_t>(nh);
  args.n_kv_heads = 1;
  args.head_dim = static_cast<std::int32_t>(lw);
  args.block_size = cache_.block_size();
  args.scale = a.softmax_scale;
  be_.attention(args);
  const tensor out = in_place ? attn : scratch_.take(dtype::f32, m, nh * vd);
  for (std::int64_t h = 0; h < nh; ++h) {
    be_.matmul(L.w_uv[static_cast<std::size_t>(h)], mo.cols_view(h * lw, r), out.cols_view(h * vd, vd));
  }
  if (!in_place) be_.scatter_rows(attn, out, index);
}

// Keys and values of the sequence's whole context up-projected from its cached latents, then
// ordinary attention (zero-padded to one head width when qk and vd differ).
void model_runner::attend_plain(std::size_t li, const tensor& q_all, const forward_batch& b,
                                const std::vector<std::int32_t>& toks, const tensor& attn) {
  const auto& a = model_.config().mla;
  const auto& L = layers_[li];
  const std::int64_t m = static_cast<std::int64_t>(toks.size());
  const std::int64_t nh = n_heads_, nope = a.qk_nope_dim, rd = a.qk_rope_dim, qk = nope + rd;
  const std::int64_t r = a.kv_lora_rank, lw = r + rd, vd = a.v_head_dim, hw = std::max(qk, vd);
  const auto& table = b.tables[static_cast<std::size_t>(b.seq_of_token[toks[0]])];
  std::int32_t ctx = 0;
  for (auto t : toks) ctx = std::max(ctx, b.positions[t] + 1);
  const std::int32_t bs = cache_.block_size();
  // The context's cache rows, gathered by slot.
  std::vector<std::int32_t> slots(static_cast<std::size_t>(ctx));
  for (std::int32_t j = 0; j < ctx; ++j) slots[j] = table[static_cast<std::size_t>(j / bs)] * bs + j % bs;
  const tensor slot_index = scratch_.take(dtype::i32, 1, ctx);
  be_.from_host(slot_index, slots.data());
  const tensor lat = scratch_.take(dtype::f32, ctx, lw);
  be_.gather_rows(lat, cache_.k(static_cast<std::int64_t>(li)), slot_index);
  const tensor mk = scratch_.take(dtype::f32, ctx, nh * hw);
  const tensor mv = scratch_.take(dtype::f32, ctx, nh * hw);
  if (hw > qk) be_.fill(mk, 0.0f);
  if (hw > vd) be_.fill(mv, 0.0f);
  // Every head's keys and values up-projected from the latents in one call, straight into their
  // windows of mk and mv.
  std::vector<kernels::matmul_job> up;
  up.reserve(static_cast<std::size_t>(2 * nh));
  for (std::int64_t h = 0; h < nh; ++h) {
    up.push_back({L.w_uk[static_cast<std::size_t>(h)], mk.cols_view(h * hw, nope)});
    up.push_back({L.w_uv[static_cast<std::size_t>(h)], mv.cols_view(h * hw, vd)});
  }
  be_.matmul_multi(up, lat.cols_view(0, r));
  for (std::int64_t h = 0; h < nh; ++h) be_.copy(mk.cols_view(h * hw + nope, rd), lat.cols_view(r, rd));
  tensor index;
  const tensor q = gather(q_all, toks, index);
  const bool in_place = q.data == q_all.data;
  tensor mq = q;
  if (hw > qk) {
    mq = scratch_.take(dtype::f32, m, nh * hw);
    be_.fill(mq, 0.0f);
    for (std::int64_t h = 0; h < nh; ++h) be_.copy(mq.cols_view(h * hw, qk), q.cols_view(h * qk, qk));
  }
  const tensor mo = scratch_.take(dtype::f32, m, nh * hw);
  std::vector<std::int32_t> pos(static_cast<std::size_t>(m));
  for (std::int64_t i = 0; i < m; ++i) pos[i] = b.positions[toks[i]];
  const tensor positions = scratch_.take(dtype::i32, 1, m);
  be_.from_host(positions, pos.data());
  // The context above is one block of ctx slots, read by every token.
  const tensor whole = scratch_.take(dtype::i32, 1, 1);
  const tensor seqs = scratch_.take(dtype::i32, 1, m);
  const std::vector<std::int32_t> zeros(static_cast<std::size_t>(m), 0);
  be_.from_host(whole, zeros.data());
  be_.from_host(seqs, zeros.data());
  kernels::attention_args args;
  args.q = mq;
  args.out = mo;
  args.k_cache = mk;
  args.v_cache = mv;
  args.positions = positions;
  args.block_tables = whole;
  args.seq_of_token = seqs;
  args.n_heads = static_cast<std::int32_t>(nh);
  args.n_kv_heads = static_cast<std::int32_t>(nh);
  args.head_dim = static_cast<std::int32_t>(hw);
  args.block_size = ctx;
  args.scale = a.softmax_scale;
  be_.attention(args);
  const tensor out = in_place ? attn : scratch_.take(dtype::f32, m, nh * vd);
  for (std::int64_t h = 0; h < nh; ++h) be_.copy(out.cols_view(h * vd, vd), mo.cols_view(h * hw, vd));
  if (!in_place) be_.scatter_rows(attn, out, index);
}

}  // namespace shoal
