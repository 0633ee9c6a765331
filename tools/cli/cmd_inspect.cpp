// shoal inspect: what a model is, without running it.

#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "engine/model/model.hpp"
#include "engine/runner/model_runner.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

const char* family_name(model_family f) {
  switch (f) {
    case model_family::llama: return "llama";
    case model_family::qwen2: return "qwen2";
    case model_family::deepseek: return "deepseek";
  }
  return "?";
}

nlohmann::ordered_json describe(const model& m) {
  const auto& c = m.config();
  nlohmann::ordered_json j;
  j["path"] = m.path();
  j["format"] = c.format;
  j["architecture"] = c.architecture;
  j["family"] = family_name(c.family);
  j["parameters"] = m.parameter_count();
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["layers"] = c.n_layers;
  j["attention_heads"] = c.n_heads;
  j["kv_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["context_length"] = c.max_positions;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope"] = {{"theta", c.rope_theta},
               {"dim", c.rope_dim},
               {"style", c.rope_style == kernels::rope_style::neox ? "neox (rotate_half)" : "interleaved"},
               {"scaling", c.rope_scaling.type},
               {"factor", c.rope_scaling.factor}};
  j["qkv_bias"] = c.qkv_bias;
  j["tied_embeddings"] = c.tied_embeddings;
  if (c.family == model_family::deepseek) {
    const auto& a = c.mla;
    j["mla"] = {{"q_lora_rank", a.q_lora_rank}, {"kv_lora_rank", a.kv_lora_rank},
                {"qk_nope_head_dim", a.qk_nope_dim}, {"qk_rope_head_dim", a.qk_rope_dim},
                {"v_head_dim", a.v_head_dim}, {"softmax_scale", a.softmax_scale},
                {"kv_cache", "latent + shared rope key per token"}};
    const auto& e = c.moe;
    if (e.n_routed_experts > 0) {
      const char* methods[] = {"greedy", "group_limited_greedy", "noaux_tc"};
      j["moe"] = {{"routed_experts", e.n_routed_experts}, {"shared_experts", e.n_shared_experts},
                  {"experts_per_token", e.experts_per_tok}, {"expert_intermediate", e.expert_intermediate},
                  {"first_k_dense_replace", e.first_k_dense_replace}, {"layer_freq", e.layer_freq},
                  {"n_group", e.n_group}, {"topk_group", e.topk_group},
                  {"topk_method", methods[static_cast<int>(e.topk_method)]},
                  {"scoring", e.scoring == moe_scoring::sigmoid ? "sigmoid" : "softmax"},
                  {"norm_topk_prob", e.norm_topk_prob}, {"routed_scaling_factor", e.routed_scaling_factor}};
    }
  }
  // F32, every layer: what one token of context costs in this runtime's cache (K and V, or MLA's
  // latent plus shared RoPE key).
  j["kv_bytes_per_token"] = kv_bytes_per_token(c);
  std::map<std::string, std::int64_t> dtypes;
  for (auto& t : m.tensors()) ++dtypes[t.dtype];
  j["tensor_dtypes"] = dtypes;
  j["tokenizer"] = {{"kind", m.tok().kind()},
                    {"vocab_size", m.tok().vocab_size()},
                    {"bos_id", m.tok().bos_id()},
                    {"eos_ids", c.eos_ids},
                    {"add_bos", m.tok().add_bos()},
                    {"chat_template", m.tok().chat_template().has_value()}};
  auto& ts = j["tensors"] = nlohmann::ordered_json::array();
  for (auto& t : m.tensors()) ts.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
  return j;
}

}  // namespace

runner_fn add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto tensors = std::make_shared<bool>(false);
  app.add_option("--model", *path, "HF model directory or .gguf file")->required();
  app.add_flag("--json", *json, "Print JSON");
  app.add_flag("--tensors", *tensors, "List every tensor (always included with --json)");
  return [path, json, tensors] {
    auto m = model::load(*path);
    auto j = describe(*m);
    if (*json) {
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    for (auto& [k, v] : j.items()) {
      if (k == "tensors") continue;
      std::cout << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
    }
    if (*tensors) {
      for (auto& t : m->tensors()) {
        std::cout << "  " << t.name << " " << t.dtype << " " << nlohmann::json(t.shape).dump() << "\n";
      }
    }
    return 0;
  };
}

}  // namespace shoal::cli
