#pragma once
// DeepSeek mixture of experts on a backend: the router (each token's experts and weights, the
// backend's moe_route op) and the batched execution of a layer's experts: the step's tokens are
// gathered per expert, each expert runs one matmul over all of its tokens, and the results are
// scattered back weighted (gather_rows / scatter_add_rows). Only the routing decisions (token ->
// expert ids) come to the host, to know which expert gets how many rows.

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

/// One gated MLP's matrices on this shard, registered with its backend.
struct mlp_matrices {
  kernels::matrix gate;  // [intermediate, hidden]
  kernels::matrix up;    // [intermediate, hidden]
  kernels::matrix down;  // [hidden, intermediate]
  bool empty() const { return gate.data == nullptr; }
};

/// y = down(silu(gate(x)) * up(x)) on the rows of x; temporaries come from `scratch`.
void run_mlp(kernels::backend& be, kernels::scratch_arena& scratch, const mlp_matrices& w, const kernels::tensor& x,
             const kernels::tensor& y);

/// One MoE layer's weights on this shard.
struct moe_layer {
  kernels::matrix router;             // [n_routed_experts, hidden]: every rank routes every token
  kernels::tensor router_bias;        // [1, n_routed_experts] e_score_correction_bias; empty if none
  std::vector<mlp_matrices> experts;  // [n_routed_experts]: whole, or column slices (tensor parallel)
  mlp_matrices shared;                // the shared experts' MLP; empty where this rank runs none
};

/// The model's routing settings as the backend's moe_route op takes them.
kernels::moe_routing routing_of(const moe_config& c);

/// Runs the MoE part of one layer for a batch; keeps the host-side bookkeeping between steps.
class moe_executor {
 public:
  /// out[t, :] = sum over the routed experts of token t that lie in `owned` of weight * expert(x[t])
  /// plus the shared experts' MLP of x[t] when this shard runs them. x, out: [n, hidden].
  void forward(kernels::backend& be, kernels::scratch_arena& scratch, const kernels::moe_routing& r,
               const moe_layer& layer, const kernels::tensor& x, expert_range owned, const kernels::tensor& out);

 private:
  std::vector<std::int32_t> chosen_;              // [n, top_k] expert ids, from the backend
  std::vector<std::int32_t> rows_, picks_;        // per expert, grouped: token rows, their [t * k + i]
  std::vector<std::int64_t> begin_, count_;       // [n_experts]: where each expert's rows start, how many
};

}  // namespace shoal
