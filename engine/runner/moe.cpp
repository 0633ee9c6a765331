#include "engine/runner/moe.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

namespace shoal {

namespace {

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<std::int32_t> top_k(const std::vector<double>& v, std::int64_t k) {
  std::vector<std::int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) { return v[a] > v[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

}  // namespace

token_route route_token(const moe_config& c, const float* logits, const float* bias) {
  const std::int64_t E = c.n_routed_experts;
  std::vector<double> scores(E);
  if (c.scoring == moe_scoring::sigmoid) {
    for (std::int64_t e = 0; e < E; ++e) scores[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e])));
  } else {
    const double mx = *std::max_element(logits, logits + E);
    double sum = 0.0;
    for (std::int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(logits[e] - mx);
    for (auto& s : scores) s /= sum;
  }
  std::vector<double> choice = scores;
  if (c.topk_method == moe_topk_method::noaux_tc && bias) {
    for (std::int64_t e = 0; e < E; ++e) choice[e] += bias[e];
  }
  token_route r;
  if (c.topk_method != moe_topk_method::greedy) {
    const std::int64_t per = E / c.n_group;
    std::vector<double> group_score(c.n_group);
    for (std::int64_t g = 0; g < c.n_group; ++g) {
      std::vector<double> in(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      std::sort(in.begin(), in.end(), std::greater<>());
      group_score[g] = c.topk_method == moe_topk_method::noaux_tc ? in[0] + in[1] : in[0];
    }
    r.groups = top_k(group_score, c.topk_group);
    std::vector<bool> keep(c.n_group, false);
    for (auto g : r.groups) keep[g] = true;
    for (std::int64_t e = 0; e < E; ++e) {
      if (!keep[e / per]) choice[e] = -std::numeric_limits<double>::infinity();
    }
  }
  r.experts = top_k(choice, c.experts_per_tok);
  std::vector<double> w(r.experts.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = scores[r.experts[i]];
  const bool normalize = c.norm_topk_prob && c.experts_per_tok > 1;
  if (normalize) {
    const double sum = std::accumulate(w.begin(), w.end(), 0.0) + 1e-20;
    for (auto& x : w) x /= sum;
  }
  if (c.scale_after_norm || !normalize) {
    for (auto& x : w) x *= c.routed_scaling_factor;
  }
  r.weights.assign(w.begin(), w.end());
  return r;
}

void run_mlp(kernels::backend& be, const mlp_weights& w, const float* x, std::int64_t n, float* y,
             std::vector<float>& gate, std::vector<float>& up) {
  const std::int64_t I = w.gate.m.rows;
  gate.resize(static_cast<std::size_t>(n * I));
  up.resize(static_cast<std::size_t>(n * I));
  const kernels::matmul_job jobs[] = {{w.gate.m, gate.data()}, {w.up.m, up.data()}};
  be.matmul_multi(jobs, x, n);
  be.silu_mul(gate.data(), up.data(), n * I);
  be.matmul(w.down.m, gate.data(), n, y);
}

void moe_executor::forward(kernels::backend& be, const moe_config& c, const layer_weights& l,
                           const std::vector<mlp_weights>& experts, const mlp_weights* shared, const float* x,
                           std::int64_t n, std::int64_t hidden, expert_range owned, float* out) {
  const std::int64_t E = c.n_routed_experts;
  const std::int64_t begin = std::max<std::int64_t>(owned.begin, 0);
  const std::int64_t end = owned.end < 0 ? E : std::min(owned.end, E);
  logits_.resize(static_cast<std::size_t>(n * E));
  be.matmul(l.router.m, x, n, logits_.data());
  by_expert_.resize(static_cast<std::size_t>(E));
  for (auto& b : by_expert_) b.clear();
  const float* bias = l.router_bias.empty() ? nullptr : l.router_bias.data();
  for (std::int64_t t = 0; t < n; ++t) {
    const token_route r = route_token(c, logits_.data() + t * E, bias);
    for (std::size_t i = 0; i < r.experts.size(); ++i) {
      if (r.experts[i] >= begin && r.experts[i] < end) by_expert_[r.experts[i]].emplace_back(t, r.weights[i]);
    }
  }
  std::fill(out, out + n * hidden, 0.0f);
  // One gathered matmul per expert over all its tokens in this step, instead of one per token.
  for (std::int64_t e = begin; e < end; ++e) {
    const auto& toks = by_expert_[e];
    if (toks.empty()) continue;
    const std::int64_t m = static_cast<std::int64_t>(toks.size());
    xs_.resize(static_cast<std::size_t>(m * hidden));
    ys_.resize(static_cast<std::size_t>(m * hidden));
    for (std::int64_t i = 0; i < m; ++i) {
      std::memcpy(xs_.data() + i * hidden, x + toks[i].first * hidden, hidden * sizeof(float));
    }
    run_mlp(be, experts[e], xs_.data(), m, ys_.data(), gate_, up_);
    for (std::int64_t i = 0; i < m; ++i) {
      float* o = out + toks[i].first * hidden;
      const float* y = ys_.data() + i * hidden;
      const float w = toks[i].second;
      for (std::int64_t j = 0; j < hidden; ++j) o[j] += w * y[j];
    }
  }
  if (shared && shared->gate.m.data) {
    ys_.resize(static_cast<std::size_t>(n * hidden));
    run_mlp(be, *shared, x, n, ys_.data(), gate_, up_);
    be.add(out, ys_.data(), n * hidden);
  }
}

}  // namespace shoal
