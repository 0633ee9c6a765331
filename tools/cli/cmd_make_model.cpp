// shoal make-model: a model with seeded random weights (normal, std 0.02) and a valid tokenizer,
// for benchmarks and for running the pipeline where no trained model is at hand.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <cstring>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf_convert.hpp"
#include "engine/model/gguf_writer.hpp"
#include "engine/model/safetensors.hpp"
#include "kernels/quantize.hpp"
#include "kernels/dtype.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct shape_spec {
  std::string architecture;
  std::int64_t hidden, intermediate, layers, heads, kv_heads, vocab, context;
  double rope_theta, eps;
  bool qkv_bias, tied;
};

std::map<std::string, shape_spec> known_shapes() {
  return {
      {"tiny", {"LlamaForCausalLM", 64, 172, 5, 8, 4, 512, 512, 10000.0, 1e-5, false, true}},
      // ~26M parameters: slow enough per token that tests can act while requests are in flight.
      {"small", {"LlamaForCausalLM", 512, 1408, 8, 8, 4, 2048, 2048, 10000.0, 1e-5, false, true}},
      {"tinyllama-1.1b", {"LlamaForCausalLM", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0, 1e-5, false, false}},
      {"qwen2-0.5b", {"Qwen2ForCausalLM", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, 1e-6, true, true}},
  };
}

// A SentencePiece-style BPE vocabulary: specials, 256 byte-fallback tokens, printable characters
// (with and without the "▁" word marker), then merges of existing tokens chosen by a seeded RNG
// until the vocabulary is full. Every merge joins two tokens already present, so it is valid BPE.
nlohmann::ordered_json make_tokenizer_json(std::int64_t vocab_size, std::uint64_t seed) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    tokens.push_back(buf);
  }
  const std::string marker = "\xe2\x96\x81";  // ▁
  std::vector<std::string> base = {marker};
  for (char c = 33; c < 127; ++c) base.push_back(std::string(1, c));
  for (auto& b : base) tokens.push_back(b);
  std::set<std::string> present(tokens.begin(), tokens.end());
  std::vector<std::pair<std::string, std::string>> merges;
  std::mt19937_64 rng(seed);
  // Word-start pieces first ("▁a", "▁b", ...) so ordinary text merges well.
  for (std::size_t i = 1; i < base.size() && static_cast<std::int64_t>(tokens.size()) < vocab_size; ++i) {
    std::string t = marker + base[i];
    merges.emplace_back(marker, base[i]);
    tokens.push_back(t);
    present.insert(t);
  }
  const std::size_t first_mergeable = 3 + 256;
  while (static_cast<std::int64_t>(tokens.size()) < vocab_size) {
    std::uniform_int_distribution<std::size_t> pick(first_mergeable, tokens.size() - 1);
    const std::string& a = tokens[pick(rng)];
    const std::string& b = tokens[pick(rng)];
    if (b.rfind(marker, 0) == 0 || a.size() + b.size() > 24) continue;  // "▁" only starts a token
    std::string t = a + b;
    if (!present.insert(t).second) continue;
    merges.emplace_back(a, b);
    tokens.push_back(t);
  }
  tokens.resize(vocab_size);
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (auto& [a, b] : merges) {
    if (present.count(a + b) && vocab.contains(a + b)) merge_list.push_back(a + " " + b);
  }
  auto special = [](int id, const char* s) {
    return nlohmann::ordered_json{{"id", id}, {"content", s}, {"single_word", false}, {"lstrip", false},
                                  {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = {special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")};
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", {{{"type", "Prepend"}, {"prepend", marker}},
                                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", marker}}}}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                     {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                         {"pair", nlohmann::ordered_json::array()},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", marker}}}, {"content", " "}},
                                {{"type", "ByteFallback"}},
                                {{"type", "Fuse"}},
                                {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                {"vocab", vocab}, {"merges", merge_list}};
  return j;
}

void write_json(const std::string& path, const nlohmann::ordered_json& j) {
  std::ofstream out(path);
  if (!out) throw error(errc::invalid_argument, path + ": cannot create");
  out << j.dump(2) << "\n";
}

struct make_model_args {
  std::string shape = "tiny";
  std::string dtype = "f32";
  std::string out;
  std::string format = "hf";
  std::uint64_t seed = 1234;
  bool force = false;
};

nlohmann::ordered_json make_tokenizer_config(const shape_spec& s) {
  return {{"add_bos_token", true}, {"add_eos_token", false}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
          {"unk_token", "<unk>"}, {"model_max_length", s.context}, {"tokenizer_class", "LlamaTokenizer"},
          {"chat_template",
           "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"}};
}

// The same model as the HF layout (shape, tokenizer, N(0, 0.02) weights, unit norms) as one GGUF
// file: llama.cpp tensor names, the tokenizer converted to tokenizer.ggml.* metadata. Matrices are
// `dtype`; with q8_0/q4_0 one whose columns are not a multiple of 32 (tiny's 172-wide ffn_down) is
// F16, llama.cpp's last-resort fallback.
int write_gguf_model(const make_model_args& a, const shape_spec& s) {
  namespace fs = std::filesystem;
  dtype target;
  std::uint32_t file_type;
  if (a.dtype == "f32") target = dtype::f32, file_type = 0;
  else if (a.dtype == "f16") target = dtype::f16, file_type = 1;
  else if (a.dtype == "bf16") target = dtype::bf16, file_type = 32;
  else if (a.dtype == "q8_0") target = dtype::q8_0, file_type = 7;
  else if (a.dtype == "q4_0") target = dtype::q4_0, file_type = 2;
  else throw error(errc::invalid_argument, "unknown --dtype '" + a.dtype + "' (f32, f16, bf16, q8_0, q4_0)");
  if (fs::exists(a.out) && !a.force) throw error(errc::invalid_argument, a.out + ": already exists (pass --force to overwrite)");
  if (fs::is_directory(a.out)) throw error(errc::invalid_argument, a.out + ": is a directory; --format gguf writes one file");

  const std::int64_t hd = s.hidden / s.heads;
  model_config cfg;
  cfg.architecture = s.architecture;
  cfg.family = s.architecture == "Qwen2ForCausalLM" ? model_family::qwen2 : model_family::llama;
  cfg.hidden_size = s.hidden;
  cfg.intermediate_size = s.intermediate;
  cfg.n_layers = s.layers;
  cfg.n_heads = s.heads;
  cfg.n_kv_heads = s.kv_heads;
  cfg.head_dim = hd;
  cfg.vocab_size = s.vocab;
  cfg.max_positions = s.context;
  cfg.rms_norm_eps = static_cast<float>(s.eps);
  cfg.rope_theta = static_cast<float>(s.rope_theta);
  cfg.rope_dim = hd;
  gguf_writer w;
  add_gguf_arch_metadata(w, cfg, "shoal-random-" + a.shape, file_type);
  w.set_bool("shoal.random_weights", true);
  w.set_u32("shoal.seed", static_cast<std::uint32_t>(a.seed));
  {
    // The tokenizer goes through the HF loader (for BOS/EOS/add_bos/template) from a scratch dir.
    const fs::path tmp = fs::temp_directory_path() / ("shoal-make-model-" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    const auto tj = make_tokenizer_json(s.vocab, a.seed);
    write_json((tmp / "tokenizer.json").string(), tj);
    write_json((tmp / "tokenizer_config.json").string(), make_tokenizer_config(s));
    std::unique_ptr<tokenizer> tok;
    try {
      tok = tokenizer::from_hf_dir(tmp.string());
    } catch (...) {
      fs::remove_all(tmp);
      throw;
    }
    fs::remove_all(tmp);
    add_gguf_tokenizer_metadata(w, nlohmann::json::parse(tj.dump()), *tok, 1, {2});
  }

  struct spec {
    std::int64_t rows, cols;
    dtype type;
    bool norm;
  };
  std::vector<spec> specs;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, bool norm) {
    const std::int64_t rows = shape.size() == 2 ? shape[0] : 1, cols = shape.back();
    dtype t = shape.size() == 1 ? dtype::f32 : target;
    if (dtype_block_size(t) > 1 && cols % dtype_block_size(t) != 0) t = dtype::f16;
    w.add_tensor(name, t == dtype::f32 ? ggml_type::f32 : t == dtype::f16 ? ggml_type::f16 : t == dtype::bf16 ? ggml_type::bf16
                       : t == dtype::q8_0 ? ggml_type::q8_0 : ggml_type::q4_0, std::move(shape));
    specs.push_back({rows, cols, t, norm});
  };
  add("token_embd.weight", {s.vocab, s.hidden}, false);
  add("output_norm.weight", {s.hidden}, true);
  if (!s.tied) add("output.weight", {s.vocab, s.hidden}, false);
  for (std::int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {s.hidden}, true);
    add(p + "attn_q.weight", {s.heads * hd, s.hidden}, false);
    add(p + "attn_k.weight", {s.kv_heads * hd, s.hidden}, false);
    add(p + "attn_v.weight", {s.kv_heads * hd, s.hidden}, false);
    if (s.qkv_bias) {
      add(p + "attn_q.bias", {s.heads * hd}, false);
      add(p + "attn_k.bias", {s.kv_heads * hd}, false);
      add(p + "attn_v.bias", {s.kv_heads * hd}, false);
    }
    add(p + "attn_output.weight", {s.hidden, s.heads * hd}, false);
    add(p + "ffn_norm.weight", {s.hidden}, true);
    add(p + "ffn_gate.weight", {s.intermediate, s.hidden}, false);
    add(p + "ffn_up.weight", {s.intermediate, s.hidden}, false);
    add(p + "ffn_down.weight", {s.hidden, s.intermediate}, false);
  }
  std::mt19937_64 rng(a.seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  w.write(a.out, [&](std::size_t i, std::vector<std::uint8_t>& out) {
    const auto& sp = specs[i];
    const std::int64_t rb = dtype_bytes(sp.type, sp.cols);
    out.resize(static_cast<std::size_t>(sp.rows * rb));
    std::vector<float> row(static_cast<std::size_t>(sp.cols));
    for (std::int64_t r = 0; r < sp.rows; ++r) {
      for (auto& v : row) v = sp.norm ? 1.0f : normal(rng);
      std::uint8_t* dst = out.data() + r * rb;
      switch (sp.type) {
        case dtype::f32: std::memcpy(dst, row.data(), row.size() * 4); break;
        case dtype::f16: case dtype::bf16:
          for (std::int64_t c = 0; c < sp.cols; ++c) {
            const std::uint16_t h = sp.type == dtype::f16 ? f32_to_f16(row[c]) : f32_to_bf16(row[c]);
            std::memcpy(dst + 2 * c, &h, 2);
          }
          break;
        case dtype::q8_0: kernels::quantize_row_q8_0(row.data(), sp.cols, dst); break;
        default: kernels::quantize_row_q4_0(row.data(), sp.cols, dst); break;
      }
    }
  });
  std::cout << "wrote " << a.out << "\n";
  return 0;
}

// DeepSeek-shaped models (HF layout only): multi-head latent attention, YaRN, a dense first layer,
// then mixture-of-experts layers. v3 routes like DeepSeek-V3 (sigmoid scores, correction bias,
// noaux_tc grouped top-k, normalized weights scaled by 2.5); v2 like DeepSeek-V2 (softmax scores,
// group_limited_greedy, q_proj without a low-rank bottleneck, unnormalized weights scaled). Weights
// are N(0, 1/fan_in) so logits are far from ties and greedy ids are a meaningful comparison.
int write_deepseek_model(const make_model_args& a) {
  const bool v3 = a.shape == "deepseek-v3-tiny";
  if (a.format != "hf") throw error(errc::invalid_argument, "--shape " + a.shape + " is written in the HF layout only (--format hf)");
  if (a.dtype != "f32" && a.dtype != "bf16") throw error(errc::invalid_argument, "--shape " + a.shape + " takes --dtype f32 or bf16 (then `shoal quantize --type fp8`)");
  namespace fs = std::filesystem;
  if (fs::exists(a.out) && !a.force) throw error(errc::invalid_argument, a.out + ": already exists (pass --force to overwrite)");
  fs::create_directories(a.out);
  const std::int64_t H = 64, I = 128, L = 3, nh = 4, vocab = 512, ctx = 1024;
  // V2's latent (24) differs from its nope width (16) and v_head_dim (12), so layouts that
  // transpose or split kv_b (GGUF attn_k_b/attn_v_b) are tested on unequal sizes.
  const std::int64_t q_lora = v3 ? 32 : 0, r = v3 ? 16 : 24, nope = 16, rd = 8, vd = v3 ? 16 : 12;
  const std::int64_t E = 8, shared = v3 ? 1 : 2, k = v3 ? 2 : 3, EI = v3 ? 32 : 16;
  nlohmann::ordered_json cfg = {
      {"architectures", {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"}},
      {"model_type", v3 ? "deepseek_v3" : "deepseek_v2"},
      {"hidden_size", H}, {"intermediate_size", I}, {"num_hidden_layers", L},
      {"num_attention_heads", nh}, {"num_key_value_heads", nh}, {"hidden_act", "silu"},
      {"q_lora_rank", q_lora > 0 ? nlohmann::ordered_json(q_lora) : nlohmann::ordered_json(nullptr)},
      {"kv_lora_rank", r}, {"qk_nope_head_dim", nope}, {"qk_rope_head_dim", rd}, {"v_head_dim", vd},
      {"n_routed_experts", E}, {"n_shared_experts", shared}, {"num_experts_per_tok", k},
      {"moe_intermediate_size", EI}, {"first_k_dense_replace", 1}, {"moe_layer_freq", 1},
      {"n_group", 4}, {"topk_group", 2},
      {"topk_method", v3 ? "noaux_tc" : "group_limited_greedy"},
      {"scoring_func", v3 ? "sigmoid" : "softmax"},
      {"norm_topk_prob", v3}, {"routed_scaling_factor", v3 ? 2.5 : 1.5},
      {"vocab_size", vocab}, {"max_position_embeddings", ctx}, {"rms_norm_eps", 1e-6},
      {"rope_theta", 10000.0},
      {"rope_scaling", v3 ? nlohmann::ordered_json{{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 256},
                                                   {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}
                          : nlohmann::ordered_json{{"type", "yarn"}, {"factor", 2.0}, {"original_max_position_embeddings", 128},
                                                   {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 0.707}, {"mscale_all_dim", 0.707}}},
      {"attention_bias", false}, {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2},
      {"torch_dtype", a.dtype == "f32" ? "float32" : "bfloat16"},
      {"shoal_random_weights", true}, {"shoal_seed", a.seed}};
  shape_spec tok_shape{cfg["architectures"][0], H, I, L, nh, nh, vocab, ctx, 10000.0, 1e-6, false, false};
  write_json(a.out + "/config.json", cfg);
  write_json(a.out + "/generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
  write_json(a.out + "/tokenizer.json", make_tokenizer_json(vocab, a.seed));
  write_json(a.out + "/tokenizer_config.json", make_tokenizer_config(tok_shape));

  safetensors_writer w;
  struct spec {
    std::int64_t count;
    float mean, std;
    bool f32;
  };
  std::vector<spec> specs;
  const std::string st = a.dtype == "f32" ? "F32" : "BF16";
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float mean, float std) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    // Router biases and norms stay F32 as DeepSeek publishes them.
    const bool f32 = shape.size() == 1 || st == "F32";
    w.add(name, f32 ? "F32" : st, std::move(shape));
    specs.push_back({n, mean, std, f32});
  };
  auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
    add(name, {rows, cols}, 0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  };
  auto norm = [&](const std::string& name, std::int64_t n) { add(name, {n}, 1.0f, 0.1f); };
  auto mlp = [&](const std::string& p, std::int64_t inter) {
    matrix(p + "gate_proj.weight", inter, H);
    matrix(p + "up_proj.weight", inter, H);
    matrix(p + "down_proj.weight", H, inter);
  };
  add("model.embed_tokens.weight", {vocab, H}, 0.0f, 1.0f);
  for (std::int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "input_layernorm.weight", H);
    if (q_lora > 0) {
      matrix(p + "self_attn.q_a_proj.weight", q_lora, H);
      norm(p + "self_attn.q_a_layernorm.weight", q_lora);
      matrix(p + "self_attn.q_b_proj.weight", nh * (nope + rd), q_lora);
    } else {
      matrix(p + "self_attn.q_proj.weight", nh * (nope + rd), H);
    }
    matrix(p + "self_attn.kv_a_proj_with_mqa.weight", r + rd, H);
    norm(p + "self_attn.kv_a_layernorm.weight", r);
    matrix(p + "self_attn.kv_b_proj.weight", nh * (nope + vd), r);
    matrix(p + "self_attn.o_proj.weight", H, nh * vd);
    norm(p + "post_attention_layernorm.weight", H);
    if (l < 1) {
      mlp(p + "mlp.", I);
      continue;
    }
    matrix(p + "mlp.gate.weight", E, H);
    if (v3) add(p + "mlp.gate.e_score_correction_bias", {E}, 0.0f, 0.1f);
    for (std::int64_t e = 0; e < E; ++e) mlp(p + "mlp.experts." + std::to_string(e) + ".", EI);
    mlp(p + "mlp.shared_experts.", EI * shared);
  }
  norm("model.norm.weight", H);
  matrix("lm_head.weight", vocab, H);
  w.set_metadata("format", "pt");
  std::mt19937_64 rng(a.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  w.write(a.out + "/model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) {
    const auto n = static_cast<std::size_t>(specs[i].count);
    const bool f32 = specs[i].f32;
    out.resize(n * (f32 ? 4 : 2));
    for (std::size_t j = 0; j < n; ++j) {
      const float v = specs[i].mean + specs[i].std * normal(rng);
      if (f32) {
        std::memcpy(out.data() + 4 * j, &v, 4);
      } else {
        const std::uint16_t h = f32_to_bf16(v);
        std::memcpy(out.data() + 2 * j, &h, 2);
      }
    }
  });
  std::cout << "wrote " << a.out << "\n";
  return 0;
}

int run_make_model(const make_model_args& a) {
  if (a.shape == "deepseek-v3-tiny" || a.shape == "deepseek-v2-tiny") return write_deepseek_model(a);
  auto shapes = known_shapes();
  auto it = shapes.find(a.shape);
  if (it == shapes.end()) throw error(errc::invalid_argument, "unknown --shape '" + a.shape + "' (tiny, small, tinyllama-1.1b, qwen2-0.5b, deepseek-v3-tiny, deepseek-v2-tiny)");
  const auto& s = it->second;
  if (a.format == "gguf") return write_gguf_model(a, s);
  if (a.format != "hf") throw error(errc::invalid_argument, "unknown --format '" + a.format + "' (hf, gguf)");
  std::string st_dtype;
  if (a.dtype == "f32") st_dtype = "F32";
  else if (a.dtype == "f16") st_dtype = "F16";
  else if (a.dtype == "bf16") st_dtype = "BF16";
  else if (a.dtype == "q8_0" || a.dtype == "q4_0") throw error(errc::invalid_argument, "--dtype " + a.dtype + " needs --format gguf (HF layouts hold f32, f16, bf16; see shoal quantize for int8/int4)");
  else throw error(errc::invalid_argument, "unknown --dtype '" + a.dtype + "' (f32, f16, bf16; q8_0, q4_0 with --format gguf)");
  namespace fs = std::filesystem;
  if (fs::exists(a.out)) {
    if (!a.force) throw error(errc::invalid_argument, a.out + ": already exists (pass --force to overwrite)");
  }
  fs::create_directories(a.out);

  const std::int64_t hd = s.hidden / s.heads;
  nlohmann::ordered_json cfg = {
      {"architectures", {s.architecture}},
      {"model_type", s.architecture == "Qwen2ForCausalLM" ? "qwen2" : "llama"},
      {"hidden_size", s.hidden}, {"intermediate_size", s.intermediate},
      {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads}, {"head_dim", hd}, {"hidden_act", "silu"},
      {"vocab_size", s.vocab}, {"max_position_embeddings", s.context},
      {"rms_norm_eps", s.eps}, {"rope_theta", s.rope_theta}, {"rope_scaling", nullptr},
      {"tie_word_embeddings", s.tied}, {"bos_token_id", 1}, {"eos_token_id", 2},
      {"torch_dtype", a.dtype == "f32" ? "float32" : a.dtype == "f16" ? "float16" : "bfloat16"},
      {"shoal_random_weights", true}, {"shoal_seed", a.seed}};
  write_json(a.out + "/config.json", cfg);
  write_json(a.out + "/generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
  write_json(a.out + "/tokenizer.json", make_tokenizer_json(s.vocab, a.seed));
  write_json(a.out + "/tokenizer_config.json", make_tokenizer_config(s));

  safetensors_writer w;
  struct spec {
    std::int64_t count;
    bool norm;
  };
  std::vector<spec> specs;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, bool norm) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    w.add(name, st_dtype, std::move(shape));
    specs.push_back({n, norm});
  };
  add("model.embed_tokens.weight", {s.vocab, s.hidden}, false);
  for (std::int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.hidden}, true);
    add(p + "self_attn.q_proj.weight", {s.heads * hd, s.hidden}, false);
    add(p + "self_attn.k_proj.weight", {s.kv_heads * hd, s.hidden}, false);
    add(p + "self_attn.v_proj.weight", {s.kv_heads * hd, s.hidden}, false);
    if (s.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {s.heads * hd}, false);
      add(p + "self_attn.k_proj.bias", {s.kv_heads * hd}, false);
      add(p + "self_attn.v_proj.bias", {s.kv_heads * hd}, false);
    }
    add(p + "self_attn.o_proj.weight", {s.hidden, s.heads * hd}, false);
    add(p + "post_attention_layernorm.weight", {s.hidden}, true);
    add(p + "mlp.gate_proj.weight", {s.intermediate, s.hidden}, false);
    add(p + "mlp.up_proj.weight", {s.intermediate, s.hidden}, false);
    add(p + "mlp.down_proj.weight", {s.hidden, s.intermediate}, false);
  }
  add("model.norm.weight", {s.hidden}, true);
  if (!s.tied) add("lm_head.weight", {s.vocab, s.hidden}, false);
  w.set_metadata("format", "pt");

  std::mt19937_64 rng(a.seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const std::size_t elem = st_dtype == "F32" ? 4 : 2;
  w.write(a.out + "/model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) {
    const auto n = static_cast<std::size_t>(specs[i].count);
    out.resize(n * elem);
    for (std::size_t k = 0; k < n; ++k) {
      // Norm weights are 1 (as initialized in training); everything else N(0, 0.02).
      const float v = specs[i].norm ? 1.0f : normal(rng);
      if (elem == 4) {
        std::memcpy(out.data() + 4 * k, &v, 4);
      } else {
        const std::uint16_t h = st_dtype == "F16" ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(out.data() + 2 * k, &h, 2);
      }
    }
  });
  std::cout << "wrote " << a.out << "\n";
  return 0;
}

}  // namespace

runner_fn add_make_model(CLI::App& app) {
  auto a = std::make_shared<make_model_args>();
  app.add_option("--shape", a->shape, "tiny | small | tinyllama-1.1b | qwen2-0.5b | deepseek-v3-tiny | deepseek-v2-tiny (default tiny)");
  app.add_option("--dtype", a->dtype, "f32 | f16 | bf16 | q8_0 | q4_0 (q8_0/q4_0 with --format gguf; default f32)");
  app.add_option("--out", a->out, "Output directory (hf) or .gguf file (gguf)")->required();
  app.add_option("--format", a->format, "hf (default) | gguf");
  app.add_option("--seed", a->seed, "RNG seed (default 1234)");
  app.add_flag("--force", a->force, "Overwrite an existing --out");
  return [a] { return run_make_model(*a); };
}

}  // namespace shoal::cli
