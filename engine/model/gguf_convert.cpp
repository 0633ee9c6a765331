#include "engine/model/gguf_convert.hpp"

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/tokenizer/bpe_tokenizer.hpp"

namespace shoal {

std::string gguf_architecture(const model_config& cfg) {
  if (cfg.family == model_family::llama) return "llama";
  if (cfg.family == model_family::qwen2) return "qwen2";
  if (cfg.family == model_family::deepseek) return "deepseek2";
  throw error(errc::unsupported,
              "architecture '" + cfg.architecture + "' has no GGUF mapping here");
}

namespace {

// deepseek2's MLA, MoE and YaRN keys as llama.cpp's converter writes them today: MLA as MQA over
// the latent (head_count_kv 1, key_length kv_lora_rank + rope, value_length kv_lora_rank) with the
// per-head sizes in key_length_mla/value_length_mla (the tensors then carry attn_k_b/attn_v_b).
void add_deepseek2_metadata(gguf_writer& w, const model_config& cfg) {
  const std::string a = "deepseek2";
  auto u32 = [](std::int64_t v) { return static_cast<std::uint32_t>(v); };
  const auto& m = cfg.mla;
  w.set_u32(a + ".attention.head_count_kv", 1);
  w.set_u32(a + ".attention.key_length", u32(m.kv_lora_rank + m.qk_rope_dim));
  w.set_u32(a + ".attention.value_length", u32(m.kv_lora_rank));
  w.set_u32(a + ".attention.key_length_mla", u32(m.qk_nope_dim + m.qk_rope_dim));
  w.set_u32(a + ".attention.value_length_mla", u32(m.v_head_dim));
  if (m.q_lora_rank > 0) w.set_u32(a + ".attention.q_lora_rank", u32(m.q_lora_rank));
  w.set_u32(a + ".attention.kv_lora_rank", u32(m.kv_lora_rank));
  const auto& e = cfg.moe;
  if (e.n_routed_experts > 0) {
    if (e.layer_freq != 1) {
      throw error(errc::unsupported, "moe_layer_freq " + std::to_string(e.layer_freq) + " cannot be written to GGUF deepseek2 "
                                     "(it has only leading_dense_block_count)");
    }
    w.set_u32(a + ".leading_dense_block_count", u32(e.first_k_dense_replace));
    w.set_u32(a + ".expert_feed_forward_length", u32(e.expert_intermediate));
    w.set_u32(a + ".expert_count", u32(e.n_routed_experts));
    w.set_u32(a + ".expert_used_count", u32(e.experts_per_tok));
    w.set_u32(a + ".expert_shared_count", u32(e.n_shared_experts));
    // llama.cpp scales after normalizing; V2's Hugging Face code scales only unnormalized weights.
    w.set_f32(a + ".expert_weights_scale", e.norm_topk_prob && !e.scale_after_norm ? 1.0f : e.routed_scaling_factor);
    if (e.norm_topk_prob) w.set_bool(a + ".expert_weights_norm", true);
    w.set_u32(a + ".expert_gating_func", e.scoring == moe_scoring::sigmoid ? 2 : 1);
    if (e.topk_method != moe_topk_method::greedy) {
      w.set_u32(a + ".expert_group_count", u32(e.n_group));
      w.set_u32(a + ".expert_group_used_count", u32(e.topk_group));
    }
  }
  const auto& rs = cfg.rope_scaling;
  if (rs.type == "yarn") {
    // llama.cpp keeps cos/sin unscaled and multiplies the softmax scale by
    // (1 + yarn_log_multiplier ln(factor))^2: DeepSeek's YaRN with mscale == mscale_all_dim.
    const float m_all = rs.mscale_all_dim.value_or(0.0f);
    if (rs.factor > 1.0f && rs.mscale.value_or(1.0f) != m_all) {
      throw error(errc::unsupported, "YaRN with mscale " + std::to_string(rs.mscale.value_or(1.0f)) +
                                         " != mscale_all_dim " + std::to_string(m_all) +
                                         " cannot be written to GGUF deepseek2 (llama.cpp assumes them equal)");
    }
    w.set_string(a + ".rope.scaling.type", "yarn");
    w.set_f32(a + ".rope.scaling.factor", rs.factor);
    w.set_u32(a + ".rope.scaling.original_context_length", u32(rs.original_max_positions));
    if (m_all != 0.0f) w.set_f32(a + ".rope.scaling.yarn_log_multiplier", 0.1f * m_all);
    if (rs.beta_fast != 32.0f) w.set_f32(a + ".rope.scaling.yarn_beta_fast", rs.beta_fast);
    if (rs.beta_slow != 1.0f) w.set_f32(a + ".rope.scaling.yarn_beta_slow", rs.beta_slow);
  } else if (rs.type != "none") {
    throw error(errc::unsupported, "RoPE scaling '" + rs.type + "' cannot be written to GGUF deepseek2");
  }
}

}  // namespace

void add_gguf_arch_metadata(gguf_writer& w, const model_config& cfg, const std::string& name,
                            std::uint32_t file_type) {
  const std::string a = gguf_architecture(cfg);
  auto u32 = [](std::int64_t v) { return static_cast<std::uint32_t>(v); };
  w.set_string("general.architecture", a);
  w.set_string("general.name", name);
  w.set_u32("general.file_type", file_type);
  w.set_u32("general.quantization_version", 2);
  w.set_u32(a + ".vocab_size", u32(cfg.vocab_size));
  w.set_u32(a + ".context_length", u32(cfg.max_positions));
  w.set_u32(a + ".embedding_length", u32(cfg.hidden_size));
  w.set_u32(a + ".block_count", u32(cfg.n_layers));
  w.set_u32(a + ".feed_forward_length", u32(cfg.intermediate_size));
  w.set_u32(a + ".attention.head_count", u32(cfg.n_heads));
  w.set_u32(a + ".attention.head_count_kv", u32(cfg.n_kv_heads));
  if (cfg.head_dim * cfg.n_heads != cfg.hidden_size) {
    w.set_u32(a + ".attention.key_length", u32(cfg.head_dim));
    w.set_u32(a + ".attention.value_length", u32(cfg.head_dim));
  }
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", cfg.rms_norm_eps);
  w.set_f32(a + ".rope.freq_base", cfg.rope_theta);
  w.set_u32(a + ".rope.dimension_count", u32(cfg.rope_dim));
  const auto& rs = cfg.rope_scaling;
  if (cfg.family == model_family::deepseek) {
    add_deepseek2_metadata(w, cfg);
    return;
  }
  if (rs.type == "linear") {
    w.set_string(a + ".rope.scaling.type", "linear");
    w.set_f32(a + ".rope.scaling.factor", rs.factor);
  } else if (rs.type == "yarn") {
    if (rs.beta_fast != 32.0f || rs.beta_slow != 1.0f || rs.mscale || rs.mscale_all_dim) {
      throw error(errc::unsupported,
                  "YaRN RoPE scaling with beta_fast/beta_slow/mscale other than the defaults "
                  "cannot be written to GGUF here");
    }
    w.set_string(a + ".rope.scaling.type", "yarn");
    w.set_f32(a + ".rope.scaling.factor", rs.factor);
    w.set_u32(a + ".rope.scaling.original_context_length", u32(rs.original_max_positions));
    if (rs.attention_factor) w.set_f32(a + ".rope.scaling.attn_factor", *rs.attention_factor);
  } else if (rs.type != "none" && rs.type != "llama3") {
    throw error(errc::unsupported, "RoPE scaling '" + rs.type + "' cannot be written to GGUF here");
  }
}

std::vector<float> gguf_rope_freq_factors(const model_config& cfg) {
  if (cfg.rope_scaling.type != "llama3") return {};
  float unused = 1.0f;
  const auto base =
      rope_inverse_frequencies(cfg.rope_theta, cfg.rope_dim, rope_scaling_config{}, unused);
  const auto scaled =
      rope_inverse_frequencies(cfg.rope_theta, cfg.rope_dim, cfg.rope_scaling, unused);
  std::vector<float> f(base.size());
  // The GGUF loader divides each inverse frequency by its factor.
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = base[i] / scaled[i];
  return f;
}

std::vector<std::int64_t> hf_to_gguf_rope_rows(std::int64_t n_heads, std::int64_t head_dim) {
  std::vector<std::int64_t> src(static_cast<std::size_t>(n_heads * head_dim));
  const std::int64_t half = head_dim / 2;
  for (std::int64_t h = 0; h < n_heads; ++h) {
    for (std::int64_t p = 0; p < half; ++p) {
      for (std::int64_t e = 0; e < 2; ++e)
        src[h * head_dim + 2 * p + e] = h * head_dim + e * half + p;
    }
  }
  return src;
}

namespace {

// Which tokenizer.ggml.pre names the byte-level pre-tokenizer of a tokenizer.json: the regexes of
// its Split steps identify the family (the GGUF reader rebuilds the steps from the name).
std::string gguf_pre_name(const nlohmann::json& tj) {
  std::vector<std::string> regexes;
  bool digits = false, byte_level_regex = false;
  auto visit = [&](const nlohmann::json& p, auto& self) -> void {
    if (!p.is_object()) return;
    const std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (const auto& s : p.value("pretokenizers", nlohmann::json::array())) self(s, self);
    } else if (type == "Split") {
      if (p.contains("pattern") && p["pattern"].contains("Regex"))
        regexes.push_back(p["pattern"]["Regex"].get<std::string>());
      else if (p.contains("pattern") && p["pattern"].contains("String"))
        regexes.push_back(p["pattern"]["String"].get<std::string>());
    } else if (type == "Digits") {
      digits = true;
    } else if (type == "ByteLevel") {
      byte_level_regex = p.value("use_regex", true);
    }
  };
  if (tj.contains("pre_tokenizer")) visit(tj["pre_tokenizer"], visit);
  auto has = [&](const std::string& needle) {
    for (auto& r : regexes) {
      if (r.find(needle) != std::string::npos) return true;
    }
    return false;
  };
  if (regexes.empty() && byte_level_regex && !digits) return "gpt2";
  if (regexes.size() == 4 && digits && regexes[0] == "[\r\n]" && regexes[1] == "\\s?\\p{L}+" &&
      regexes[2] == "\\s?\\p{P}+") {
    return "deepseek-coder";
  }
  if (!regexes.empty() && regexes[0] == "\\p{N}{1,3}" && has("[\\p{L}\\p{M}]+"))
    return "deepseek-v3";
  if (has("(?i:'s|'t|'re|'ve|'m|'ll|'d)") && has("\\p{N}{1,3}")) return "llama3";
  if (has("(?i:'s|'t|'re|'ve|'m|'ll|'d)") && has("\\p{N}|")) return "qwen2";
  throw error(errc::unsupported,
              "the tokenizer's byte-level pre-tokenizer is not one this build can name in GGUF "
              "(gpt2, deepseek-coder, deepseek-v3, llama3, qwen2)");
}

std::string merge_string(const nlohmann::json& m) {
  if (m.is_string()) return m.get<std::string>();
  if (m.is_array() && m.size() == 2) return m[0].get<std::string>() + " " + m[1].get<std::string>();
  throw error(errc::corrupt_file, "tokenizer.json: a merge is neither \"a b\" nor [\"a\", \"b\"]");
}

}  // namespace

void add_gguf_tokenizer_metadata(gguf_writer& w, const nlohmann::json& tj, const tokenizer& tok,
                                 std::int32_t bos_id, const std::vector<std::int32_t>& eos_ids) {
  const auto& model = tj.at("model");
  const auto& vocab = model.at("vocab");
  const auto added = parse_hf_added_tokens(tj);
  std::int32_t n = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    n = std::max(n, it.value().get<std::int32_t>() + 1);
  for (auto& a : added) n = std::max(n, a.id + 1);
  std::vector<std::string> tokens(static_cast<std::size_t>(n));
  std::vector<std::int32_t> types(static_cast<std::size_t>(n),
                                  static_cast<std::int32_t>(gguf_token_type::unused));
  for (std::int32_t i = 0; i < n; ++i) tokens[i] = "[PAD" + std::to_string(i) + "]";  // holes
  std::map<std::string, std::int32_t> id_of;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = it.value().get<std::int32_t>();
    tokens[id] = it.key();
    types[id] = static_cast<std::int32_t>(gguf_token_type::normal);
    id_of[it.key()] = id;
  }
  for (auto& a : added) {
    tokens[a.id] = a.content;
    types[a.id] = static_cast<std::int32_t>(a.special ? gguf_token_type::control
                                                      : gguf_token_type::user_defined);
  }
  const auto merges = model.contains("merges") && model["merges"].is_array()
                          ? model["merges"]
                          : nlohmann::json::array();
  const bool byte_level = hf_is_byte_level(tj);
  if (byte_level) {
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", gguf_pre_name(tj));
    std::vector<std::string> ms;
    ms.reserve(merges.size());
    for (const auto& m : merges) ms.push_back(merge_string(m));
    w.set_strings("tokenizer.ggml.tokens", tokens);
    w.set_i32s("tokenizer.ggml.token_type", types);
    w.set_strings("tokenizer.ggml.merges", std::move(ms));
  } else {
    // SentencePiece-style BPE: GGUF ranks merges by the merged token's score.
    std::vector<float> scores(static_cast<std::size_t>(n), 0.0f);
    std::vector<bool> scored(static_cast<std::size_t>(n), false);
    for (std::size_t k = 0; k < merges.size(); ++k) {
      const std::string m = merge_string(merges[k]);
      const auto sp = m.find(' ');
      if (sp == std::string::npos) continue;
      auto it = id_of.find(m.substr(0, sp) + m.substr(sp + 1));
      if (it == id_of.end() || scored[it->second]) continue;
      scores[it->second] = -static_cast<float>(k);
      scored[it->second] = true;
    }
    // Tokens no merge produces rank after every merge (they are never formed by merging in HF).
    for (std::int32_t i = 0; i < n; ++i) {
      if (!scored[i]) scores[i] = -static_cast<float>(merges.size() + static_cast<std::size_t>(i));
    }
    const std::string unk = model.contains("unk_token") && model["unk_token"].is_string()
                                ? model["unk_token"].get<std::string>()
                                : "";
    const bool byte_fallback = model.value("byte_fallback", false);
    for (std::int32_t i = 0; i < n; ++i) {
      const auto& t = tokens[i];
      if (!unk.empty() && t == unk)
        types[i] = static_cast<std::int32_t>(gguf_token_type::unknown);
      else if (byte_fallback && t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>')
        types[i] = static_cast<std::int32_t>(gguf_token_type::byte);
    }
    if (auto it = id_of.find(unk); it != id_of.end())
      w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(it->second));
    // The space prefix: a Prepend("▁") normalizer or a Metaspace pre-tokenizer that prepends.
    bool prefix = false;
    auto visit = [&](const nlohmann::json& j, auto& self) -> void {
      if (!j.is_object()) return;
      const std::string type = j.value("type", "");
      if (type == "Sequence") {
        for (const auto& s : j.value("normalizers", nlohmann::json::array())) self(s, self);
        for (const auto& s : j.value("pretokenizers", nlohmann::json::array())) self(s, self);
      } else if (type == "Prepend") {
        prefix = true;
      } else if (type == "Metaspace") {
        const std::string scheme =
            j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never");
        prefix = prefix || scheme != "never";
      }
    };
    if (tj.contains("normalizer")) visit(tj["normalizer"], visit);
    if (tj.contains("pre_tokenizer")) visit(tj["pre_tokenizer"], visit);
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_strings("tokenizer.ggml.tokens", tokens);
    w.set_f32s("tokenizer.ggml.scores", scores);
    w.set_i32s("tokenizer.ggml.token_type", types);
    w.set_bool("tokenizer.ggml.add_space_prefix", prefix);
  }
  const std::int32_t bos = bos_id >= 0 ? bos_id : tok.bos_id();
  const std::int32_t eos = !eos_ids.empty() ? eos_ids[0] : tok.eos_id();
  if (bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(bos));
  if (eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(eos));
  if (eos_ids.size() > 1)
    w.set_u32("tokenizer.ggml.eot_token_id", static_cast<std::uint32_t>(eos_ids[1]));
  w.set_bool("tokenizer.ggml.add_bos_token", tok.add_bos());
  w.set_bool("tokenizer.ggml.add_eos_token", tok.add_eos());
  if (tok.chat_template()) w.set_string("tokenizer.chat_template", *tok.chat_template());
}

}  // namespace shoal
