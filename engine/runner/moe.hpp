#pragma once
// DeepSeek mixture of experts: the router (which routed experts each token goes to, with what
// weight) and the batched execution of a layer's experts (a step's tokens grouped by expert).

#include <cstdint>
#include <vector>

#include "engine/model/model.hpp"
#include "kernels/backend.hpp"

namespace shoal {

/// Routed experts [begin, end) that one shard computes. Default: all of them. Each shard's output
/// is a partial sum; summing the shards' outputs (a communicator all-reduce) gives the layer's.
struct expert_range {
  std::int64_t begin = 0;  // Default: 0
  std::int64_t end = -1;   // Default: -1 (n_routed_experts)
};

/// One token's routing decision: experts in selection order and their combine weights.
struct token_route {
  std::vector<std::int32_t> experts;  // [experts_per_tok]
  std::vector<float> weights;         // [experts_per_tok]
  std::vector<std::int32_t> groups;   // the groups kept (grouped methods), best first
};

/// Routes one token from the router's outputs `logits` [n_routed_experts], as the published
/// definition does: scores = sigmoid or softmax of the logits; `bias` (e_score_correction_bias,
/// noaux_tc only, may be null) is added only to choose; grouped methods keep the topk_group groups
/// with the best group score (noaux_tc: sum of the group's top-2 biased scores; group_limited_greedy:
/// its best score), then take the top experts_per_tok there; the weights are the unbiased scores,
/// normalized when norm_topk_prob, scaled by routed_scaling_factor.
token_route route_token(const moe_config& c, const float* logits, const float* bias);

/// Runs the MoE part of one layer for a batch.
class moe_executor {
 public:
  /// out[t, :] = sum over the routed experts of token t that lie in `owned` of weight * expert(x[t])
  /// plus, when `shared` is not null, the shared experts' MLP of x[t]. The router (`l.router`,
  /// `l.router_bias`) sees every expert; `experts` [n_routed_experts] are the MLPs this shard runs
  /// (whole, or column slices under tensor parallelism). x, out: [n, hidden].
  void forward(kernels::backend& be, const moe_config& c, const layer_weights& l,
               const std::vector<mlp_weights>& experts, const mlp_weights* shared, const float* x,
               std::int64_t n, std::int64_t hidden, expert_range owned, float* out);

 private:
  std::vector<float> logits_, xs_, gate_, up_, ys_;
  std::vector<std::vector<std::pair<std::int64_t, float>>> by_expert_;  // [expert] -> (token, weight)
};

/// gate/up/down MLP on n rows: y = down(silu(gate(x)) * up(x)). `gate`/`up` are scratch.
void run_mlp(kernels::backend& be, const mlp_weights& w, const float* x, std::int64_t n, float* y,
             std::vector<float>& gate, std::vector<float>& up);

}  // namespace shoal
