// Hugging Face config.json -> model_config: the architecture, the sizes, RoPE, the DeepSeek MLA/MoE
// keys (deepseek.cpp checks them), quantization_config, and the BOS/EOS ids (generation_config.json's
// eos list wins). Kept apart from the weights so a bad config fails before any shard is opened.

#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/load_internal.hpp"

namespace fs = std::filesystem;

namespace shoal::model_load {

namespace {

hf_quantization parse_quantization_config(const nlohmann::json& j, const std::string& file) {
  hf_quantization q;
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return q;
  const auto& qc = j["quantization_config"];
  if (!qc.is_object() || !qc.contains("quant_method") || !qc["quant_method"].is_string()) {
    throw error(errc::corrupt_file, file + ": quantization_config needs a string 'quant_method'");
  }
  q.method = qc["quant_method"].get<std::string>();
  if (q.method == "shoal-int8") return q;
  if (q.method == "shoal-int4") {
    if (!qc.contains("group_size") || !qc["group_size"].is_number_integer()) {
      throw error(errc::corrupt_file, file + ": quantization_config for shoal-int4 needs an integer 'group_size'");
    }
    q.group_size = qc["group_size"].get<std::int64_t>();
    if (q.group_size <= 0 || q.group_size % 32 != 0) {
      throw error(errc::corrupt_file, file + ": quantization_config group_size " + std::to_string(q.group_size) +
                                          " must be a positive multiple of 32");
    }
    return q;
  }
  if (q.method == "fp8") {
    // DeepSeek's published layout: float8_e4m3fn weights, F32 weight_scale_inv per block.
    if (qc.contains("fmt") && qc["fmt"] != "e4m3") {
      throw error(errc::unsupported, file + ": quantization_config fmt " + qc["fmt"].dump() + " is not supported (e4m3)");
    }
    if (qc.contains("weight_block_size")) {
      const auto& bs = qc["weight_block_size"];
      if (!bs.is_array() || bs.size() != 2 || !bs[0].is_number_integer() || !bs[1].is_number_integer() ||
          bs[0].get<std::int64_t>() <= 0 || bs[1].get<std::int64_t>() <= 0) {
        throw error(errc::corrupt_file, file + ": quantization_config weight_block_size must be two positive integers, got " + bs.dump());
      }
      q.fp8_block_rows = bs[0].get<std::int64_t>();
      q.fp8_block_cols = bs[1].get<std::int64_t>();
    }
    return q;
  }
  throw error(errc::unsupported, file + ": quantization_config quant_method '" + q.method +
                                     "' is not supported (shoal-int8, shoal-int4, fp8; or GGUF Q8_0/Q4_0/Q4_K/Q6_K files)");
}

std::vector<std::int32_t> json_ids(const nlohmann::json& v) {
  std::vector<std::int32_t> out;
  if (v.is_number_integer()) out.push_back(v.get<std::int32_t>());
  if (v.is_array()) {
    for (auto& x : v) if (x.is_number_integer()) out.push_back(x.get<std::int32_t>());
  }
  return out;
}

}  // namespace

hf_quantization read_hf_config(const std::string& dir, model_config& cfg) {
  const std::string config_path = dir + "/config.json";
  if (!fs::exists(config_path)) {
    throw error(errc::not_found, dir + ": no config.json here, so this is not a Hugging Face model directory");
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::corrupt_file, config_path + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw error(errc::corrupt_file, config_path + ": not a JSON object");
  json_config c(j, config_path);
  cfg.format = "hf";
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string()) {
    throw error(errc::corrupt_file, config_path + ": 'architectures' is missing or empty");
  }
  cfg.architecture = j["architectures"][0].get<std::string>();
  if (cfg.architecture == "LlamaForCausalLM") {
    cfg.family = model_family::llama;
    cfg.qkv_bias = c.get_bool("attention_bias", false);
  } else if (cfg.architecture == "Qwen2ForCausalLM") {
    cfg.family = model_family::qwen2;
    cfg.qkv_bias = true;
  } else if (cfg.architecture == "DeepseekV3ForCausalLM" || cfg.architecture == "DeepseekV2ForCausalLM") {
    cfg.family = model_family::deepseek;
  } else {
    throw error(errc::unsupported, config_path + ": architecture '" + cfg.architecture +
                                       "' is not supported (supported: LlamaForCausalLM, Qwen2ForCausalLM, "
                                       "DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)");
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    throw error(errc::unsupported, config_path + ": hidden_act " + j["hidden_act"].dump() + " is not supported (silu is)");
  }
  cfg.hidden_size = c.get_int("hidden_size");
  cfg.intermediate_size = c.get_int("intermediate_size");
  cfg.n_layers = c.get_int("num_hidden_layers");
  cfg.n_heads = c.get_int("num_attention_heads");
  cfg.n_kv_heads = c.get_int("num_key_value_heads", cfg.n_heads);
  cfg.head_dim = c.get_int("head_dim", cfg.hidden_size / cfg.n_heads);
  cfg.vocab_size = c.get_int("vocab_size");
  cfg.max_positions = c.get_int("max_position_embeddings", 2048);
  cfg.rms_norm_eps = static_cast<float>(c.get_float("rms_norm_eps", 1e-6));
  cfg.rope_theta = static_cast<float>(c.get_float("rope_theta", 10000.0));
  cfg.rope_dim = static_cast<std::int64_t>(cfg.head_dim * c.get_float("partial_rotary_factor", 1.0));
  cfg.rope_scaling = parse_rope_scaling_json(j.contains("rope_scaling") ? j["rope_scaling"] : nlohmann::json(), config_path);
  // Hugging Face converts Llama checkpoints with q/k rows permuted for rotate_half; Qwen2 is
  // trained that way. Either way the stored rows pair dims (i, i + d/2).
  cfg.rope_style = kernels::rope_style::neox;
  cfg.tied_embeddings = c.get_bool("tie_word_embeddings", false);
  if (cfg.family == model_family::deepseek) parse_deepseek_config(c, config_path, cfg);
  const hf_quantization quant = parse_quantization_config(j, config_path);
  if (j.contains("bos_token_id")) {
    auto ids = json_ids(j["bos_token_id"]);
    if (!ids.empty()) cfg.bos_id = ids[0];
  }
  if (j.contains("eos_token_id")) cfg.eos_ids = json_ids(j["eos_token_id"]);
  // generation_config.json's eos list wins where present (Llama-3 lists several).
  const std::string gen_path = dir + "/generation_config.json";
  if (fs::exists(gen_path)) {
    try {
      auto g = nlohmann::json::parse(read_text_file(gen_path));
      if (g.is_object() && g.contains("eos_token_id")) {
        auto ids = json_ids(g["eos_token_id"]);
        if (!ids.empty()) cfg.eos_ids = ids;
      }
    } catch (const nlohmann::json::exception& e) {
      throw error(errc::corrupt_file, gen_path + ": invalid JSON: " + e.what());
    }
  }
  return quant;
}

}  // namespace shoal::model_load
