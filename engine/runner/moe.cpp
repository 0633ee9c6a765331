#include "engine/runner/moe.hpp"

#include <algorithm>

namespace shoal {

using kernels::tensor;

kernels::moe_routing routing_of(const moe_config& c) {
  kernels::moe_routing r;
  r.n_experts = c.n_routed_experts;
  r.top_k = c.experts_per_tok;
  r.n_group = c.n_group;
  r.topk_group = c.topk_group;
  switch (c.topk_method) {
    case moe_topk_method::greedy: r.select = kernels::moe_routing::method::greedy; break;
    case moe_topk_method::group_limited_greedy: r.select = kernels::moe_routing::method::group_limited_greedy; break;
    case moe_topk_method::noaux_tc: r.select = kernels::moe_routing::method::noaux_tc; break;
  }
  r.score = c.scoring == moe_scoring::sigmoid ? kernels::moe_routing::scoring::sigmoid
                                              : kernels::moe_routing::scoring::softmax;
  r.norm_topk_prob = c.norm_topk_prob;
  r.scale_after_norm = c.scale_after_norm;
  r.routed_scaling_factor = c.routed_scaling_factor;
  return r;
}

void run_mlp(kernels::backend& be, kernels::scratch_arena& scratch, const mlp_matrices& w, const tensor& x,
             const tensor& y) {
  const std::int64_t n = x.rows, inter = w.gate.rows;
  const tensor gate = scratch.take(dtype::f32, n, inter);
  const tensor up = scratch.take(dtype::f32, n, inter);
  const kernels::matmul_job jobs[] = {{w.gate, gate}, {w.up, up}};
  be.matmul_multi(jobs, x);
  be.silu_mul(gate, up);
  be.matmul(w.down, gate, y);
}

void moe_executor::forward(kernels::backend& be, kernels::scratch_arena& scratch, const kernels::moe_routing& r,
                           const moe_layer& layer, const tensor& x, expert_range owned, const tensor& out) {
  const std::int64_t n = x.rows, hidden = x.cols, E = r.n_experts, k = r.top_k;
  const std::int64_t first = std::max<std::int64_t>(owned.begin, 0);
  const std::int64_t last = owned.end < 0 ? E : std::min(owned.end, E);
  const tensor logits = scratch.take(dtype::f32, n, E);
  be.matmul(layer.router, x, logits);
  const tensor chosen = scratch.take(dtype::i32, n, k);
  const tensor weights = scratch.take(dtype::f32, n, k);
  be.moe_route(logits, layer.router_bias, r, chosen, weights);

  // Which rows each owned expert takes: the only thing the host needs to know, to size each
  // expert's matmul. Rows keep token order within an expert.
  chosen_.resize(static_cast<std::size_t>(n * k));
  be.to_host(chosen, chosen_.data());
  begin_.assign(static_cast<std::size_t>(E), 0);
  count_.assign(static_cast<std::size_t>(E), 0);
  for (auto e : chosen_) {
    if (e >= first && e < last) ++count_[e];
  }
  std::int64_t total = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    begin_[e] = total;
    total += count_[e];
  }
  rows_.resize(static_cast<std::size_t>(total));
  picks_.resize(static_cast<std::size_t>(total));
  std::vector<std::int64_t> fill = begin_;
  for (std::int64_t t = 0; t < n; ++t) {
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int32_t e = chosen_[t * k + i];
      if (e < first || e >= last) continue;
      rows_[fill[e]] = static_cast<std::int32_t>(t);
      picks_[fill[e]++] = static_cast<std::int32_t>(t * k + i);
    }
  }
  be.fill(out, 0.0f);
  if (total > 0) {
    const tensor rows = scratch.take(dtype::i32, 1, total);
    const tensor picks = scratch.take(dtype::i32, 1, total);
    be.from_host(rows, rows_.data());
    be.from_host(picks, picks_.data());
    const tensor flat_weights = weights.reshaped(n * k, 1);
    // One gathered matmul per expert over all its tokens in this step, instead of one per token.
    for (std::int64_t e = first; e < last; ++e) {
      const std::int64_t m = count_[e];
      if (m == 0) continue;
      const tensor idx = rows.cols_view(begin_[e], m);
      const tensor xs = scratch.take(dtype::f32, m, hidden);
      const tensor ys = scratch.take(dtype::f32, m, hidden);
      const tensor w = scratch.take(dtype::f32, m, 1);
      be.gather_rows(xs, x, idx);
      run_mlp(be, scratch, layer.experts[e], xs, ys);
      be.gather_rows(w, flat_weights, picks.cols_view(begin_[e], m));
      be.scatter_add_rows(out, ys, idx, w);
    }
  }
  if (!layer.shared.empty()) {
    const tensor ys = scratch.take(dtype::f32, n, hidden);
    run_mlp(be, scratch, layer.shared, x, ys);
    be.add(out, ys);
  }
}

}  // namespace shoal
