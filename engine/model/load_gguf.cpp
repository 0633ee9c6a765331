// Loading a GGUF file: llama and qwen2 metadata and tensors here, `deepseek2` in deepseek.cpp; what
// every GGUF architecture shares (special token ids, the tensor list, embedding, final norm and
// output head) is here for both.

#include <algorithm>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/model/load_internal.hpp"

namespace shoal {

namespace model_load {

namespace {

std::optional<dtype> kernel_dtype_from_ggml(ggml_type t) {
  switch (t) {
    case ggml_type::f32: return dtype::f32;
    case ggml_type::f16: return dtype::f16;
    case ggml_type::bf16: return dtype::bf16;
    case ggml_type::q8_0: return dtype::q8_0;
    case ggml_type::q4_0: return dtype::q4_0;
    case ggml_type::q4_k: return dtype::q4_k;
    case ggml_type::q6_k: return dtype::q6_k;
    default: return std::nullopt;
  }
}

}  // namespace

void read_gguf_special_ids(const gguf_file& g, model_config& cfg) {
  if (auto v = g.get_number_opt("tokenizer.ggml.bos_token_id")) cfg.bos_id = static_cast<std::int32_t>(*v);
  if (auto v = g.get_number_opt("tokenizer.ggml.eos_token_id")) cfg.eos_ids = {static_cast<std::int32_t>(*v)};
  if (auto v = g.get_number_opt("tokenizer.ggml.eot_token_id")) {
    auto id = static_cast<std::int32_t>(*v);
    if (std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), id) == cfg.eos_ids.end()) cfg.eos_ids.push_back(id);
  }
}

std::map<std::string, tensor_ref> gguf_tensor_refs(const gguf_file& g, std::vector<tensor_summary>& summary) {
  std::map<std::string, tensor_ref> tensors;
  for (auto& t : g.tensors()) {
    std::vector<std::int64_t> shape(t.ne.rbegin(), t.ne.rend());
    std::string type_name = to_string(t.type);
    if (type_name == "unknown") type_name = "unknown (ggml type " + std::to_string(static_cast<std::uint32_t>(t.type)) + ")";
    tensors.emplace(t.name, tensor_ref{t.name, g.path(), type_name, kernel_dtype_from_ggml(t.type), shape, t.data, t.nbytes});
    summary.push_back({t.name, type_name, shape});
  }
  return tensors;
}

void bind_gguf_ends(const weight_binder& b, const std::string& file, model_config& cfg, model_weights& w) {
  const auto* embd = b.find("token_embd.weight");
  if (!embd) throw error(errc::corrupt_file, file + ": tensor 'token_embd.weight' is missing");
  if (embd->shape.size() != 2) throw error(errc::corrupt_file, file + ": token_embd.weight is not a matrix");
  cfg.vocab_size = embd->shape[0];
  const auto H = cfg.hidden_size, V = cfg.vocab_size;
  w.tok_embd = b.matrix("token_embd.weight", V, H);
  w.out_norm = b.vector("output_norm.weight", H);
  if (b.find("output.weight")) {
    w.lm_head = b.matrix("output.weight", V, H);
  } else {
    w.lm_head = w.tok_embd;
    cfg.tied_embeddings = true;
  }
}

}  // namespace model_load

using namespace model_load;

void model::load_gguf(const std::string& file) {
  gguf_ = std::make_unique<gguf_file>(file);
  const auto& g = *gguf_;
  auto& cfg = config_;
  cfg.format = "gguf";
  cfg.architecture = g.get_string("general.architecture");
  const std::string a = cfg.architecture;
  if (a == "deepseek2") {
    load_gguf_deepseek2(file);
    return;
  }
  if (a == "llama") {
    cfg.family = model_family::llama;
    // GGUF keeps Meta's original interleaved-pair layout (llama.cpp's rope type NORM).
    cfg.rope_style = kernels::rope_style::interleaved;
  } else if (a == "qwen2") {
    cfg.family = model_family::qwen2;
    cfg.rope_style = kernels::rope_style::neox;
    cfg.qkv_bias = true;
  } else {
    throw error(errc::unsupported, file + ": GGUF architecture '" + a + "' is not supported (supported: llama, qwen2, deepseek2)");
  }
  auto num = [&](const std::string& key) {
    double v = g.get_number(a + "." + key);
    if (!(v > 0) || v > 1e12) throw error(errc::corrupt_file, file + ": metadata '" + a + "." + key + "' must be positive");
    return static_cast<std::int64_t>(v);
  };
  cfg.hidden_size = num("embedding_length");
  cfg.intermediate_size = num("feed_forward_length");
  cfg.n_layers = num("block_count");
  cfg.n_heads = num("attention.head_count");
  cfg.n_kv_heads = g.find(a + ".attention.head_count_kv") ? num("attention.head_count_kv") : cfg.n_heads;
  cfg.head_dim = g.find(a + ".attention.key_length") ? num("attention.key_length") : cfg.hidden_size / cfg.n_heads;
  cfg.max_positions = num("context_length");
  cfg.rms_norm_eps = static_cast<float>(g.get_number_opt(a + ".attention.layer_norm_rms_epsilon").value_or(1e-5));
  cfg.rope_theta = static_cast<float>(g.get_number_opt(a + ".rope.freq_base").value_or(10000.0));
  cfg.rope_dim = g.find(a + ".rope.dimension_count") ? num("rope.dimension_count") : cfg.head_dim;
  if (auto type = g.get_string_opt(a + ".rope.scaling.type"); type && *type != "none") {
    auto& rs = cfg.rope_scaling;
    rs.type = *type;
    rs.factor = static_cast<float>(g.get_number_opt(a + ".rope.scaling.factor").value_or(1.0));
    rs.original_max_positions = static_cast<std::int64_t>(
        g.get_number_opt(a + ".rope.scaling.original_context_length").value_or(0.0));
    if (rs.type == "yarn") {
      if (auto f = g.get_number_opt(a + ".rope.scaling.attn_factor")) rs.attention_factor = static_cast<float>(*f);
    } else if (rs.type != "linear") {
      throw error(errc::unsupported, file + ": rope scaling type '" + rs.type + "' is not supported (linear, yarn)");
    }
  }
  read_gguf_special_ids(g, cfg);
  std::map<std::string, tensor_ref> tensors = gguf_tensor_refs(g, tensors_);
  weight_binder b(tensors, file, true);
  bind_gguf_ends(b, file, cfg, weights_);
  const auto H = cfg.hidden_size, I = cfg.intermediate_size;
  const auto QD = cfg.n_heads * cfg.head_dim, KD = cfg.n_kv_heads * cfg.head_dim;
  weights_.rope_freq_factors = b.optional_vector("rope_freqs.weight", cfg.rope_dim / 2);
  for (std::int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    layer_weights l;
    l.attn_norm = b.vector(p + "attn_norm.weight", H);
    l.wq = b.matrix(p + "attn_q.weight", QD, H);
    l.wk = b.matrix(p + "attn_k.weight", KD, H);
    l.wv = b.matrix(p + "attn_v.weight", KD, H);
    l.wo = b.matrix(p + "attn_output.weight", H, QD);
    if (cfg.qkv_bias) {
      l.bq = b.vector(p + "attn_q.bias", QD);
      l.bk = b.vector(p + "attn_k.bias", KD);
      l.bv = b.vector(p + "attn_v.bias", KD);
    }
    l.ffn_norm = b.vector(p + "ffn_norm.weight", H);
    l.w_gate = b.matrix(p + "ffn_gate.weight", I, H);
    l.w_up = b.matrix(p + "ffn_up.weight", I, H);
    l.w_down = b.matrix(p + "ffn_down.weight", H, I);
    weights_.layers.push_back(std::move(l));
  }
}

}  // namespace shoal
