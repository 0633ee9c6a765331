#pragma once
// A loaded model: its configuration, its weights (views into memory-mapped files, no copy when the
// stored dtype is one the kernels use), and its tokenizer. Llama and Qwen2 families, HF or GGUF.

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

enum class model_family : std::uint8_t { llama, qwen2 };

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
  std::int64_t head_dim = 0;
  std::int64_t vocab_size = 0;       // rows of the embedding (may exceed the tokenizer's ids)
  std::int64_t max_positions = 0;    // context length
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  std::int64_t rope_dim = 0;         // rotated dims per head (== head_dim unless partial)
  rope_scaling_config rope_scaling;
  kernels::rope_style rope_style = kernels::rope_style::neox;
  bool qkv_bias = false;
  bool tied_embeddings = false;      // true when lm_head falls back to the embedding
  std::int32_t bos_id = -1;
  std::vector<std::int32_t> eos_ids;
};

/// A weight matrix as stored plus the name it had in its file (for messages).
struct weight {
  std::string name;
  kernels::matrix m;
};

struct layer_weights {
  std::vector<float> attn_norm;  // [hidden]
  weight wq;                     // [n_heads * head_dim, hidden]
  weight wk;                     // [n_kv_heads * head_dim, hidden]
  weight wv;                     // [n_kv_heads * head_dim, hidden]
  weight wo;                     // [hidden, n_heads * head_dim]
  std::vector<float> bq, bk, bv; // [n_heads * head_dim] / [n_kv_heads * head_dim]; empty if none
  std::vector<float> ffn_norm;   // [hidden]
  weight w_gate;                 // [intermediate, hidden]
  weight w_up;                   // [intermediate, hidden]
  weight w_down;                 // [hidden, intermediate]
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
  std::deque<std::vector<float>> owned_scales_;  // int8/int4 scales copied where unaligned
};

/// Inverse frequencies for RoPE with `scaling` applied (Hugging Face's rope init functions).
/// Returns the per-pair inverse frequency and sets `attn_factor` (YaRN's cos/sin magnitude).
std::vector<float> rope_inverse_frequencies(float theta, std::int64_t rope_dim,
                                            const rope_scaling_config& scaling, float& attn_factor);

}  // namespace shoal
