#pragma once
// A loaded model: its configuration, its weights (views into memory-mapped files, no copy when the
// stored dtype is one the kernels use), and its tokenizer. Llama and Qwen2 families, HF or GGUF;
// DeepSeek-V2/V3 (multi-head latent attention, mixture of experts) from the HF layout or GGUF
// `deepseek2`.

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.hpp"
#include "kernels/backend.hpp"

namespace shoal {

class gguf_file;
class safetensors_file;

enum class model_family : std::uint8_t { llama, qwen2, deepseek };

/// Multi-head latent attention (DeepSeek-V2/V3): queries through an optional low-rank bottleneck,
/// keys and values up-projected from a per-token latent, plus a RoPE key shared by all heads.
struct mla_config {
  std::int64_t q_lora_rank = 0;   // 0: q_proj straight from the hidden state (config null)
  std::int64_t kv_lora_rank = 0;  // latent width
  std::int64_t qk_nope_dim = 0;   // per-head query/key dims without position
  std::int64_t qk_rope_dim = 0;   // per-head query dims and shared key dims with RoPE
  std::int64_t v_head_dim = 0;
  float softmax_scale = 1.0f;     // (qk_nope + qk_rope)^-0.5, times YaRN's mscale(all_dim)^2
};

enum class moe_topk_method : std::uint8_t { greedy, group_limited_greedy, noaux_tc };
enum class moe_scoring : std::uint8_t { softmax, sigmoid };

/// DeepSeek mixture of experts. Layer i is an MoE layer when n_routed_experts > 0,
/// i >= first_k_dense_replace and i % moe_layer_freq == 0; the others use the dense MLP.
struct moe_config {
  std::int64_t n_routed_experts = 0;       // 0: no MoE layers
  std::int64_t n_shared_experts = 0;       // always-on experts, stored as one MLP
  std::int64_t experts_per_tok = 0;        // top-k
  std::int64_t expert_intermediate = 0;    // moe_intermediate_size
  std::int64_t first_k_dense_replace = 0;  // Default: 0
  std::int64_t layer_freq = 1;             // Default: 1
  std::int64_t n_group = 1;                // expert groups for grouped routing. Default: 1
  std::int64_t topk_group = 1;             // groups kept per token. Default: 1
  moe_topk_method topk_method = moe_topk_method::greedy;
  moe_scoring scoring = moe_scoring::softmax;
  bool norm_topk_prob = false;
  /// V3 scales the routed weights always; V2 only when it does not normalize them (as each
  /// architecture's Hugging Face modeling code does).
  bool scale_after_norm = true;
  float routed_scaling_factor = 1.0f;
  bool is_moe_layer(std::int64_t i) const {
    return n_routed_experts > 0 && i >= first_k_dense_replace && i % layer_freq == 0;
  }
};

/// RoPE frequency scaling as Hugging Face's `rope_scaling` describes it.
struct rope_scaling_config {
  std::string type = "none";           // none | linear | llama3 | yarn
  float factor = 1.0f;                 // Default: 1
  float low_freq_factor = 1.0f;        // llama3. Default: 1
  float high_freq_factor = 4.0f;       // llama3. Default: 4
  std::int64_t original_max_positions = 0;  // llama3/yarn
  float beta_fast = 32.0f;             // yarn. Default: 32
  float beta_slow = 1.0f;              // yarn. Default: 1
  std::optional<float> attention_factor;  // yarn. Default: 0.1 ln(factor) + 1
  std::optional<float> mscale;            // yarn (DeepSeek style)
  std::optional<float> mscale_all_dim;    // yarn (DeepSeek style)
};

struct model_config {
  std::string architecture;  // as named by the file: "LlamaForCausalLM", GGUF "llama", ...
  model_family family = model_family::llama;
  std::string format;        // "hf" | "gguf"
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t n_layers = 0;
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;
  std::int64_t head_dim = 0;         // deepseek: the query/key head dim, qk_nope + qk_rope
  std::int64_t vocab_size = 0;       // rows of the embedding (may exceed the tokenizer's ids)
  std::int64_t max_positions = 0;    // context length
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  std::int64_t rope_dim = 0;         // rotated dims per head (== head_dim unless partial)
  rope_scaling_config rope_scaling;
  kernels::rope_style rope_style = kernels::rope_style::neox;
  bool qkv_bias = false;
  bool tied_embeddings = false;      // true when lm_head falls back to the embedding
  mla_config mla;                    // family deepseek only
  moe_config moe;                    // family deepseek only
  std::int32_t bos_id = -1;
  std::vector<std::int32_t> eos_ids;
};

/// A weight matrix as stored plus the name it had in its file (for messages).
struct weight {
  std::string name;
  kernels::matrix m;
};

/// One gated MLP (a dense layer's, one routed expert's, or the shared experts').
struct mlp_weights {
  weight gate;  // [intermediate, hidden]
  weight up;    // [intermediate, hidden]
  weight down;  // [hidden, intermediate]
};

struct layer_weights {
  std::vector<float> attn_norm;  // [hidden]
  weight wq;                     // [n_heads * head_dim, hidden] (deepseek: q_proj when q_lora_rank is 0)
  weight wk;                     // [n_kv_heads * head_dim, hidden]
  weight wv;                     // [n_kv_heads * head_dim, hidden]
  weight wo;                     // [hidden, n_heads * head_dim]
  std::vector<float> bq, bk, bv; // [n_heads * head_dim] / [n_kv_heads * head_dim]; empty if none
  std::vector<float> ffn_norm;   // [hidden]
  weight w_gate;                 // [intermediate, hidden]
  weight w_up;                   // [intermediate, hidden]
  weight w_down;                 // [hidden, intermediate]

  // DeepSeek MLA (wk/wv/biases stay empty). r = kv_lora_rank, qk = qk_nope + qk_rope.
  weight wq_a;                    // [q_lora_rank, hidden]; empty when q_lora_rank is 0
  std::vector<float> q_a_norm;    // [q_lora_rank]
  weight wq_b;                    // [n_heads * qk, q_lora_rank]
  weight wkv_a;                   // [r + qk_rope, hidden]: latent, then the shared RoPE key
  std::vector<float> kv_a_norm;   // [r]
  weight wkv_b;                   // [n_heads * (qk_nope + v_head_dim), r]: per head k_nope, then v
  // DeepSeek MoE layers (the dense w_gate/w_up/w_down stay empty there).
  weight router;                  // [n_routed_experts, hidden]
  std::vector<float> router_bias; // [n_routed_experts] e_score_correction_bias; empty if none
  std::vector<mlp_weights> experts;  // [n_routed_experts]
  mlp_weights shared;             // intermediate = expert_intermediate * n_shared_experts; empty if none
};

struct model_weights {
  weight tok_embd;                   // [vocab, hidden]
  std::vector<layer_weights> layers; // [n_layers]
  std::vector<float> out_norm;       // [hidden]
  weight lm_head;                    // [vocab, hidden] (the embedding when tied)
  std::vector<float> rope_freq_factors;  // [rope_dim / 2] from GGUF rope_freqs.weight; empty if none
};

/// One tensor as listed by `shoal inspect`.
struct tensor_summary {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
};

struct load_options {
  /// Tokenizer literal-special handling is chosen per encode call; nothing here yet but kept so
  /// call sites do not change when loading grows options (e.g. a separate tokenizer directory).
  std::string tokenizer_dir;  // Default: "" (the model's own)
};

class model {
 public:
  /// Loads an HF directory or a .gguf file. Throws shoal::error whose message names the file and
  /// the problem (missing file, corrupt header, unsupported architecture/dtype, wrong shapes).
  static std::unique_ptr<model> load(const std::string& path, const load_options& opts = {});
  ~model();

  const model_config& config() const { return config_; }
  const model_weights& weights() const { return weights_; }
  const tokenizer& tok() const { return *tokenizer_; }
  const std::string& path() const { return path_; }
  const std::vector<tensor_summary>& tensors() const { return tensors_; }
  std::int64_t parameter_count() const { return parameter_count_; }
  /// Inverse RoPE frequencies for dims [0, rope_dim/2) with the configured scaling applied.
  const std::vector<float>& rope_inv_freq() const { return rope_inv_freq_; }
  /// Magnitude factor applied to cos/sin (YaRN); 1 otherwise.
  float rope_attn_factor() const { return rope_attn_factor_; }

 private:
  model() = default;
  void load_hf(const std::string& dir);
  void load_gguf(const std::string& file);
  void load_gguf_deepseek2(const std::string& file);
  void finish();

  std::string path_;
  model_config config_;
  model_weights weights_;
  std::unique_ptr<tokenizer> tokenizer_;
  std::vector<std::unique_ptr<safetensors_file>> st_files_;
  std::unique_ptr<gguf_file> gguf_;
  std::vector<tensor_summary> tensors_;
  std::int64_t parameter_count_ = 0;
  std::vector<float> rope_inv_freq_;
  float rope_attn_factor_ = 1.0f;
  std::string hf_quant_method_;                // config.json quantization_config.quant_method
  std::deque<std::vector<float>> owned_scales_;  // int8/int4 scales copied where unaligned; fp8 per-row scales
  std::deque<std::vector<float>> owned_f32_;     // weights rebuilt at load (GGUF deepseek2: kv_b from k_b, v_b)
};

/// Inverse frequencies for RoPE with `scaling` applied (Hugging Face's rope init functions).
/// Returns the per-pair inverse frequency and sets `attn_factor` (YaRN's cos/sin magnitude).
std::vector<float> rope_inverse_frequencies(float theta, std::int64_t rope_dim,
                                            const rope_scaling_config& scaling, float& attn_factor);

}  // namespace shoal
