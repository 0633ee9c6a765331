// DeepSeek-V2/V3: multi-head latent attention and mixture of experts. The config.json keys and
// their consistency checks (the GGUF path checks the same things under its metadata names), MLA's
// softmax scale under YaRN, the HF layer names, and GGUF `deepseek2` whole (metadata, routing,
// merged experts, kv_b_proj rebuilt from its split halves).

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/model/load_internal.hpp"
#include "kernels/backend.hpp"

namespace shoal {

namespace model_load {

void parse_deepseek_config(const json_config& c, const std::string& file, model_config& cfg) {
  const bool v3 = cfg.architecture == "DeepseekV3ForCausalLM";
  auto& a = cfg.mla;
  a.q_lora_rank = c.get_count("q_lora_rank", 0);
  a.kv_lora_rank = c.get_int("kv_lora_rank");
  a.qk_nope_dim = c.get_int("qk_nope_head_dim");
  a.qk_rope_dim = c.get_int("qk_rope_head_dim");
  a.v_head_dim = c.get_int("v_head_dim");
  cfg.head_dim = a.qk_nope_dim + a.qk_rope_dim;
  cfg.rope_dim = a.qk_rope_dim;
  cfg.n_kv_heads = cfg.n_heads;  // every head has its own up-projected key and value
  // q_pe/k_pe are stored as interleaved pairs; HF de-interleaves them before rotate_half, which
  // pairs the same two values as rotating (x[2i], x[2i+1]) in place.
  cfg.rope_style = kernels::rope_style::interleaved;
  apply_mla_scaling(cfg, file);

  auto& m = cfg.moe;
  m.n_routed_experts = c.get_count("n_routed_experts", 0);
  if (m.n_routed_experts == 0) return;
  m.n_shared_experts = c.get_count("n_shared_experts", 0);
  m.experts_per_tok = c.get_int("num_experts_per_tok");
  m.expert_intermediate = c.get_int("moe_intermediate_size");
  m.first_k_dense_replace = c.get_count("first_k_dense_replace", 0);
  m.layer_freq = c.get_int("moe_layer_freq", 1);
  m.n_group = c.get_int("n_group", 1);
  m.topk_group = c.get_int("topk_group", 1);
  m.norm_topk_prob = c.get_bool("norm_topk_prob", v3);
  m.scale_after_norm = v3;
  m.routed_scaling_factor = static_cast<float>(c.get_float("routed_scaling_factor", v3 ? 2.5 : 1.0));
  const std::string method = c.get_string("topk_method", v3 ? "noaux_tc" : "greedy");
  if (method == "greedy") m.topk_method = moe_topk_method::greedy;
  else if (method == "group_limited_greedy") m.topk_method = moe_topk_method::group_limited_greedy;
  else if (method == "noaux_tc") m.topk_method = moe_topk_method::noaux_tc;
  else throw error(errc::unsupported, file + ": topk_method '" + method + "' is not supported (greedy, group_limited_greedy, noaux_tc)");
  const std::string scoring = c.get_string("scoring_func", v3 ? "sigmoid" : "softmax");
  if (scoring == "sigmoid") m.scoring = moe_scoring::sigmoid;
  else if (scoring == "softmax") m.scoring = moe_scoring::softmax;
  else throw error(errc::unsupported, file + ": scoring_func '" + scoring + "' is not supported (sigmoid, softmax)");
  check_moe_config(m, file, moe_key_names{"num_experts_per_tok", "n_routed_experts", "topk_group", "n_group"});
}

void apply_mla_scaling(model_config& cfg, const std::string& file) {
  auto& a = cfg.mla;
  a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(cfg.head_dim));
  auto get_mscale = [](double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  auto& rs = cfg.rope_scaling;
  if (rs.type == "yarn") {
    // DeepSeek's YaRN: cos/sin scaled by mscale(mscale) / mscale(mscale_all_dim), defaults 1 and 0;
    // the softmax scale by mscale(mscale_all_dim)^2 when mscale_all_dim is set.
    const double m = rs.mscale.value_or(1.0f), m_all = rs.mscale_all_dim.value_or(0.0f);
    if (!rs.attention_factor) rs.attention_factor = static_cast<float>(get_mscale(rs.factor, m) / get_mscale(rs.factor, m_all));
    if (m_all != 0.0) {
      const double ms = get_mscale(rs.factor, m_all);
      a.softmax_scale = static_cast<float>(a.softmax_scale * ms * ms);
    }
  } else if (rs.type != "none") {
    throw error(errc::unsupported, file + ": rope_scaling type '" + rs.type + "' is not supported for " +
                                       cfg.architecture + " (yarn or none)");
  }
}

void check_moe_config(const moe_config& m, const std::string& file, const moe_key_names& k) {
  auto n = [](std::int64_t v) { return std::to_string(v); };
  if (m.experts_per_tok > m.n_routed_experts) {
    throw error(errc::corrupt_file, file + ": " + k.per_tok + " " + n(m.experts_per_tok) + " is larger than " +
                                        k.routed + " " + n(m.n_routed_experts));
  }
  if (m.topk_method != moe_topk_method::greedy) {
    if (m.topk_group > m.n_group) {
      throw error(errc::corrupt_file, file + ": " + k.topk_group + " " + n(m.topk_group) + " is larger than " + k.n_group +
                                          " " + n(m.n_group));
    }
    if (m.n_routed_experts % m.n_group != 0) {
      throw error(errc::corrupt_file, file + ": " + k.routed + " " + n(m.n_routed_experts) + " does not split into " +
                                          k.n_group + " " + n(m.n_group) + " equal groups");
    }
    if (m.topk_group * (m.n_routed_experts / m.n_group) < m.experts_per_tok) {
      throw error(errc::corrupt_file, file + ": " + k.topk_group + " " + n(m.topk_group) + " groups of " +
                                          n(m.n_routed_experts / m.n_group) + " experts cannot supply " + k.per_tok + " " +
                                          n(m.experts_per_tok));
    }
    if (m.topk_method == moe_topk_method::noaux_tc && m.n_routed_experts / m.n_group < 2) {
      throw error(errc::corrupt_file, file + ": noaux_tc scores a group by its top-2 experts, but " + k.n_group + " " +
                                          n(m.n_group) + " leaves " + n(m.n_routed_experts / m.n_group) + " per group");
    }
  }
}

void bind_deepseek_layer(const weight_binder& b, const std::map<std::string, tensor_ref>& tensors,
                         const model_config& cfg, std::int64_t i, const std::string& dir, layer_weights& l) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const auto& a = cfg.mla;
  const auto H = cfg.hidden_size, qk = cfg.head_dim, nh = cfg.n_heads;
  if (a.q_lora_rank > 0) {
    l.wq_a = b.matrix(p + "self_attn.q_a_proj.weight", a.q_lora_rank, H);
    l.q_a_norm = b.vector(p + "self_attn.q_a_layernorm.weight", a.q_lora_rank);
    l.wq_b = b.matrix(p + "self_attn.q_b_proj.weight", nh * qk, a.q_lora_rank);
  } else {
    l.wq = b.matrix(p + "self_attn.q_proj.weight", nh * qk, H);
  }
  l.wkv_a = b.matrix(p + "self_attn.kv_a_proj_with_mqa.weight", a.kv_lora_rank + a.qk_rope_dim, H);
  l.kv_a_norm = b.vector(p + "self_attn.kv_a_layernorm.weight", a.kv_lora_rank);
  l.wkv_b = b.matrix(p + "self_attn.kv_b_proj.weight", nh * (a.qk_nope_dim + a.v_head_dim), a.kv_lora_rank);
  l.wo = b.matrix(p + "self_attn.o_proj.weight", H, nh * a.v_head_dim);
  l.ffn_norm = b.vector(p + "post_attention_layernorm.weight", H);
  const auto& m = cfg.moe;
  if (!m.is_moe_layer(i)) {
    const auto I = cfg.intermediate_size;
    l.w_gate = b.matrix(p + "mlp.gate_proj.weight", I, H);
    l.w_up = b.matrix(p + "mlp.up_proj.weight", I, H);
    l.w_down = b.matrix(p + "mlp.down_proj.weight", H, I);
    return;
  }
  // Count the experts the file holds before binding them, so a mismatch with the config is reported
  // as such rather than as one missing tensor.
  const std::string ep = p + "mlp.experts.";
  std::set<std::int64_t> found;
  for (auto it = tensors.lower_bound(ep); it != tensors.end() && it->first.compare(0, ep.size(), ep) == 0; ++it) {
    found.insert(std::strtoll(it->first.c_str() + ep.size(), nullptr, 10));
  }
  const std::int64_t E = m.n_routed_experts;
  if (static_cast<std::int64_t>(found.size()) != E || (!found.empty() && (*found.begin() != 0 || *found.rbegin() != E - 1))) {
    throw error(errc::corrupt_file, dir + ": layer " + std::to_string(i) + " holds weights for " +
                                        std::to_string(found.size()) + " routed experts" +
                                        (found.empty() ? std::string() : " (ids " + std::to_string(*found.begin()) + ".." +
                                                                             std::to_string(*found.rbegin()) + ")") +
                                        " but config.json n_routed_experts is " + std::to_string(E));
  }
  const auto EI = m.expert_intermediate;
  l.router = b.matrix(p + "mlp.gate.weight", E, H);
  if (m.topk_method == moe_topk_method::noaux_tc) {
    l.router_bias = b.vector(p + "mlp.gate.e_score_correction_bias", E);
  }
  for (std::int64_t e = 0; e < E; ++e) {
    const std::string q = ep + std::to_string(e) + ".";
    l.experts.push_back({b.matrix(q + "gate_proj.weight", EI, H), b.matrix(q + "up_proj.weight", EI, H),
                         b.matrix(q + "down_proj.weight", H, EI)});
  }
  if (m.n_shared_experts > 0) {
    const auto SI = EI * m.n_shared_experts;
    const std::string q = p + "mlp.shared_experts.";
    l.shared = {b.matrix(q + "gate_proj.weight", SI, H), b.matrix(q + "up_proj.weight", SI, H),
                b.matrix(q + "down_proj.weight", H, SI)};
  }
}

}  // namespace model_load

using namespace model_load;

// GGUF `deepseek2` as llama.cpp's converter writes it. Two MLA layouts: current files store
// head_count_kv 1, key_length kv_lora_rank + rope, value_length kv_lora_rank, the per-head sizes in
// key_length_mla/value_length_mla, and kv_b_proj split into attn_k_b [heads, kv_lora_rank, nope]
// (transposed) and attn_v_b [heads, v_head_dim, kv_lora_rank]; older files store head_count_kv =
// heads, key_length/value_length per head and attn_kv_b whole. MoE: routed experts merged into
// [experts, rows, cols] tensors; the routing method follows from what the file holds (expert groups
// and the exp_probs_b correction bias), with llama.cpp's semantics: weights normalized when
// expert_weights_norm, then scaled by expert_weights_scale; gating softmax unless expert_gating_func
// says sigmoid (2).
void model::load_gguf_deepseek2(const std::string& file) {
  const auto& g = *gguf_;
  auto& cfg = config_;
  const std::string a = "deepseek2.";
  cfg.family = model_family::deepseek;
  cfg.rope_style = kernels::rope_style::interleaved;  // q_pe/k_pe as stored (llama.cpp rope type NORM)
  auto num = [&](const std::string& key) {
    double v = g.get_number(a + key);
    if (!(v > 0) || v > 1e12 || v != std::floor(v)) {
      throw error(errc::corrupt_file, file + ": metadata '" + a + key + "' must be a positive integer");
    }
    return static_cast<std::int64_t>(v);
  };
  auto count = [&](const std::string& key, std::int64_t fallback) {
    auto v = g.get_number_opt(a + key);
    if (!v) return fallback;
    if (*v < 0 || *v > 1e12 || *v != std::floor(*v)) {
      throw error(errc::corrupt_file, file + ": metadata '" + a + key + "' must be a non-negative integer");
    }
    return static_cast<std::int64_t>(*v);
  };
  cfg.hidden_size = num("embedding_length");
  cfg.intermediate_size = num("feed_forward_length");
  cfg.n_layers = num("block_count");
  cfg.n_heads = num("attention.head_count");
  cfg.n_kv_heads = cfg.n_heads;
  cfg.max_positions = num("context_length");
  cfg.rms_norm_eps = static_cast<float>(g.get_number_opt(a + "attention.layer_norm_rms_epsilon").value_or(1e-6));
  cfg.rope_theta = static_cast<float>(g.get_number_opt(a + "rope.freq_base").value_or(10000.0));
  auto& m = cfg.mla;
  m.q_lora_rank = count("attention.q_lora_rank", 0);
  m.kv_lora_rank = num("attention.kv_lora_rank");
  m.qk_rope_dim = num("rope.dimension_count");
  const bool split_kv_b = g.find(a + "attention.key_length_mla") != nullptr;
  const std::int64_t qk = split_kv_b ? num("attention.key_length_mla") : num("attention.key_length");
  m.v_head_dim = split_kv_b ? num("attention.value_length_mla") : num("attention.value_length");
  if (qk <= m.qk_rope_dim) {
    throw error(errc::corrupt_file, file + ": query/key head size " + std::to_string(qk) +
                                        " leaves no room beside rope.dimension_count " + std::to_string(m.qk_rope_dim));
  }
  m.qk_nope_dim = qk - m.qk_rope_dim;
  cfg.head_dim = qk;
  cfg.rope_dim = m.qk_rope_dim;
  if (auto type = g.get_string_opt(a + "rope.scaling.type"); type && *type != "none") {
    if (*type != "yarn") {
      throw error(errc::unsupported, file + ": rope scaling type '" + *type + "' is not supported for deepseek2 (yarn)");
    }
    auto& rs = cfg.rope_scaling;
    rs.type = "yarn";
    rs.factor = static_cast<float>(g.get_number_opt(a + "rope.scaling.factor").value_or(1.0));
    rs.original_max_positions = count("rope.scaling.original_context_length", 0);
    rs.beta_fast = static_cast<float>(g.get_number_opt(a + "rope.scaling.yarn_beta_fast").value_or(32.0));
    rs.beta_slow = static_cast<float>(g.get_number_opt(a + "rope.scaling.yarn_beta_slow").value_or(1.0));
    // llama.cpp: softmax scale times (1 + yarn_log_multiplier ln(factor))^2, cos/sin unscaled. In
    // DeepSeek's terms: mscale = mscale_all_dim = yarn_log_multiplier / 0.1.
    const double mul = g.get_number_opt(a + "rope.scaling.yarn_log_multiplier").value_or(0.0);
    rs.mscale = rs.mscale_all_dim = static_cast<float>(mul / 0.1);
    rs.attention_factor = 1.0f;
  }
  apply_mla_scaling(cfg, file);
  read_gguf_special_ids(g, cfg);

  std::map<std::string, tensor_ref> tensors = gguf_tensor_refs(g, tensors_);
  weight_binder b(tensors, file, true);

  auto& e = cfg.moe;
  e.n_routed_experts = count("expert_count", 0);
  if (e.n_routed_experts > 0) {
    e.n_shared_experts = count("expert_shared_count", 0);
    e.experts_per_tok = num("expert_used_count");
    e.expert_intermediate = num("expert_feed_forward_length");
    e.first_k_dense_replace = count("leading_dense_block_count", 0);
    e.layer_freq = 1;
    e.n_group = std::max<std::int64_t>(count("expert_group_count", 1), 1);
    e.topk_group = std::max<std::int64_t>(count("expert_group_used_count", 1), 1);
    e.norm_topk_prob = g.get_number_opt(a + "expert_weights_norm").value_or(0.0) != 0.0;
    e.scale_after_norm = true;
    e.routed_scaling_factor = static_cast<float>(g.get_number_opt(a + "expert_weights_scale").value_or(1.0));
    const double gating = g.get_number_opt(a + "expert_gating_func").value_or(1.0);
    if (gating == 1.0) e.scoring = moe_scoring::softmax;
    else if (gating == 2.0) e.scoring = moe_scoring::sigmoid;
    else throw error(errc::unsupported, file + ": " + a + "expert_gating_func " + std::to_string(gating) + " is not supported (1 softmax, 2 sigmoid)");
    // The correction bias of the first MoE layer says whether selection is bias-corrected.
    const bool bias = b.find("blk." + std::to_string(e.first_k_dense_replace) + ".exp_probs_b.bias") != nullptr;
    e.topk_method = bias ? moe_topk_method::noaux_tc
                         : e.n_group > 1 ? moe_topk_method::group_limited_greedy : moe_topk_method::greedy;
    check_moe_config(e, file, moe_key_names{a + "expert_used_count", a + "expert_count", a + "expert_group_used_count",
                                             a + "expert_group_count"});
  }

  bind_gguf_ends(b, file, cfg, weights_);
  const auto H = cfg.hidden_size, nh = cfg.n_heads;
  const auto r = m.kv_lora_rank, nope = m.qk_nope_dim, vd = m.v_head_dim, per_head = nope + vd;
  std::vector<float> row;
  for (std::int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    layer_weights l;
    l.attn_norm = b.vector(p + "attn_norm.weight", H);
    if (m.q_lora_rank > 0) {
      l.wq_a = b.matrix(p + "attn_q_a.weight", m.q_lora_rank, H);
      l.q_a_norm = b.vector(p + "attn_q_a_norm.weight", m.q_lora_rank);
      l.wq_b = b.matrix(p + "attn_q_b.weight", nh * qk, m.q_lora_rank);
    } else {
      l.wq = b.matrix(p + "attn_q.weight", nh * qk, H);
    }
    l.wkv_a = b.matrix(p + "attn_kv_a_mqa.weight", r + m.qk_rope_dim, H);
    l.kv_a_norm = b.vector(p + "attn_kv_a_norm.weight", r);
    if (b.find(p + "attn_kv_b.weight")) {
      l.wkv_b = b.matrix(p + "attn_kv_b.weight", nh * per_head, r);
    } else {
      // kv_b_proj rebuilt (F32) from the split halves: head h's key rows are attn_k_b[h] transposed,
      // its value rows attn_v_b[h].
      owned_f32_.emplace_back(static_cast<std::size_t>(nh * per_head * r));
      float* kv_b = owned_f32_.back().data();
      for (std::int64_t h = 0; h < nh; ++h) {
        const weight kb = b.stacked(p + "attn_k_b.weight", nh, h, r, nope);
        const weight vb = b.stacked(p + "attn_v_b.weight", nh, h, vd, r);
        row.resize(static_cast<std::size_t>(std::max(r, nope)));
        for (std::int64_t j = 0; j < r; ++j) {
          kernels::dequantize_row(kb.m, j, row.data());
          for (std::int64_t k = 0; k < nope; ++k) kv_b[(h * per_head + k) * r + j] = row[k];
        }
        for (std::int64_t v = 0; v < vd; ++v) kernels::dequantize_row(vb.m, v, kv_b + (h * per_head + nope + v) * r);
      }
      l.wkv_b = weight{p + "attn_kv_b (from attn_k_b, attn_v_b)", kernels::matrix{kv_b, dtype::f32, nh * per_head, r, r}};
    }
    l.wo = b.matrix(p + "attn_output.weight", H, nh * vd);
    l.ffn_norm = b.vector(p + "ffn_norm.weight", H);
    if (!e.is_moe_layer(i)) {
      const auto I = cfg.intermediate_size;
      l.w_gate = b.matrix(p + "ffn_gate.weight", I, H);
      l.w_up = b.matrix(p + "ffn_up.weight", I, H);
      l.w_down = b.matrix(p + "ffn_down.weight", H, I);
      weights_.layers.push_back(std::move(l));
      continue;
    }
    const std::int64_t E = e.n_routed_experts, EI = e.expert_intermediate;
    // The merged expert tensors' outer dimension is the number of experts the file holds.
    for (const char* t : {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}) {
      const auto& ref = b.require(p + t + ".weight");
      if (ref.shape.size() != 3 || ref.shape[0] != E) {
        throw error(errc::corrupt_file, file + ": layer " + std::to_string(i) + " tensor '" + ref.name + "' holds " +
                                            (ref.shape.size() == 3 ? std::to_string(ref.shape[0]) + " routed experts"
                                                                   : "shape " + shape_string(ref.shape)) +
                                            " but " + a + "expert_count is " + std::to_string(E));
      }
    }
    l.router = b.matrix(p + "ffn_gate_inp.weight", E, H);
    if (e.topk_method == moe_topk_method::noaux_tc) l.router_bias = b.vector(p + "exp_probs_b.bias", E);
    for (std::int64_t x = 0; x < E; ++x) {
      l.experts.push_back({b.stacked(p + "ffn_gate_exps.weight", E, x, EI, H), b.stacked(p + "ffn_up_exps.weight", E, x, EI, H),
                           b.stacked(p + "ffn_down_exps.weight", E, x, H, EI)});
    }
    if (e.n_shared_experts > 0) {
      const auto SI = EI * e.n_shared_experts;
      l.shared = {b.matrix(p + "ffn_gate_shexp.weight", SI, H), b.matrix(p + "ffn_up_shexp.weight", SI, H),
                  b.matrix(p + "ffn_down_shexp.weight", H, SI)};
    }
    weights_.layers.push_back(std::move(l));
  }
}

}  // namespace shoal
