// Loading a Hugging Face directory's weights: the safetensors shards (a sharded index or every
// *.safetensors), the Llama/Qwen2 layer names (DeepSeek's in deepseek.cpp), and the weight-only
// quantized layouts `shoal quantize` and DeepSeek publish: int8/int4 with F32 scales, fp8 with block
// scales. config.json is read first (hf_config.cpp).

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/load_internal.hpp"
#include "engine/model/safetensors.hpp"

namespace fs = std::filesystem;

namespace shoal {

namespace model_load {

namespace {

std::optional<dtype> kernel_dtype_from_safetensors(const std::string& d) {
  if (d == "F32") return dtype::f32;
  if (d == "F16") return dtype::f16;
  if (d == "BF16") return dtype::bf16;
  return std::nullopt;
}

}  // namespace

weight weight_binder::hf_quantized(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const {
  const bool int4 = quant_.method == "shoal-int4";
  if (int4 != (t.dtype_name == "U8")) {
    throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' has dtype " + t.dtype_name + " but " +
                                        quant_.method + " stores weights as " + (int4 ? "U8" : "I8"));
  }
  if (int4 && (cols % quant_.group_size != 0)) {
    throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' has " + std::to_string(cols) +
                                        " columns, not a multiple of group_size " +
                                        std::to_string(quant_.group_size));
  }
  check_shape(t, {rows, int4 ? cols / 2 : cols});
  const std::string scale_name = t.name + "_scale";
  const auto& s = require(scale_name);
  const std::int64_t per_row = int4 ? cols / quant_.group_size : 1;
  check_shape(s, int4 ? std::vector<std::int64_t>{rows, per_row} : std::vector<std::int64_t>{rows});
  if (s.dtype_name != "F32") {
    throw error(errc::corrupt_file, s.file + ": tensor '" + scale_name + "' has dtype " + s.dtype_name +
                                        " (quantization scales are F32)");
  }
  const float* scales = static_cast<const float*>(s.data);
  if (reinterpret_cast<std::uintptr_t>(s.data) % alignof(float) != 0) {
    // safetensors does not align tensors; the kernels read scales as floats.
    owned_->emplace_back(static_cast<std::size_t>(rows * per_row));
    std::memcpy(owned_->back().data(), s.data, s.nbytes);
    scales = owned_->back().data();
  }
  kernels::matrix m{t.data, int4 ? dtype::i4 : dtype::i8, rows, cols, cols, scales, per_row,
                    int4 ? quant_.group_size : 0};
  return weight{t.name, m};
}

weight weight_binder::fp8(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const {
  check_shape(t, {rows, cols});
  if (t.nbytes != static_cast<std::uint64_t>(rows * cols)) {
    throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' holds " + std::to_string(t.nbytes) +
                                        " bytes, not one per element");
  }
  const std::string scale_name = t.name + "_scale_inv";
  const tensor_ref* s = find(scale_name);
  if (!s) {
    throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' is float8_e4m3fn but its block scales '" +
                                        scale_name + "' are missing");
  }
  const std::int64_t br = quant_.fp8_block_rows, bc = quant_.fp8_block_cols;
  const std::int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
  check_shape(*s, {sr, sc});
  const std::vector<float> blocks = to_f32_vector(*s);
  owned_->emplace_back(static_cast<std::size_t>(rows * sc));
  auto& per_row = owned_->back();
  for (std::int64_t r = 0; r < rows; ++r) {
    std::memcpy(per_row.data() + r * sc, blocks.data() + (r / br) * sc, static_cast<std::size_t>(sc) * 4);
  }
  kernels::matrix m{t.data, dtype::f8_e4m3, rows, cols, cols, per_row.data(), sc, bc};
  return weight{t.name, m};
}

}  // namespace model_load

using namespace model_load;

void model::load_hf(const std::string& dir) {
  auto& cfg = config_;
  const hf_quantization quant = read_hf_config(dir, cfg);
  hf_quant_method_ = quant.method;

  // Weight files: a sharded index, or every *.safetensors in the directory.
  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (fs::exists(index_path)) {
    nlohmann::json idx;
    try {
      idx = nlohmann::json::parse(read_text_file(index_path));
    } catch (const nlohmann::json::exception& e) {
      throw error(errc::corrupt_file, index_path + ": invalid JSON: " + e.what());
    }
    if (!idx.contains("weight_map") || !idx["weight_map"].is_object()) {
      throw error(errc::corrupt_file, index_path + ": 'weight_map' is missing");
    }
    std::set<std::string> names;
    for (auto& [k, v] : idx["weight_map"].items()) {
      if (!v.is_string()) throw error(errc::corrupt_file, index_path + ": weight_map['" + k + "'] is not a file name");
      auto f = v.get<std::string>();
      if (f.find('/') != std::string::npos) throw error(errc::corrupt_file, index_path + ": weight_map names a path outside the directory: " + f);
      names.insert(f);
    }
    for (auto& f : names) files.push_back(dir + "/" + f);
  } else {
    for (auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) throw error(errc::not_found, dir + ": no *.safetensors weight files");

  std::map<std::string, tensor_ref> tensors;
  for (auto& f : files) {
    if (!fs::exists(f)) throw error(errc::not_found, f + ": listed in model.safetensors.index.json but missing");
    auto st = std::make_unique<safetensors_file>(f);
    for (auto& [name, t] : st->tensors()) {
      tensor_ref r{name, f, t.dtype, kernel_dtype_from_safetensors(t.dtype), t.shape, t.data, t.nbytes};
      if (!tensors.emplace(name, r).second) {
        throw error(errc::corrupt_file, f + ": tensor '" + name + "' appears in more than one file");
      }
    }
    st_files_.push_back(std::move(st));
  }
  for (auto& [name, t] : tensors) tensors_.push_back({name, t.dtype_name, t.shape});

  weight_binder b(tensors, dir, false, quant, &owned_scales_);
  const auto H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  const auto QD = cfg.n_heads * cfg.head_dim, KD = cfg.n_kv_heads * cfg.head_dim;
  weights_.tok_embd = b.matrix("model.embed_tokens.weight", V, H);
  weights_.out_norm = b.vector("model.norm.weight", H);
  if (b.find("lm_head.weight")) {
    weights_.lm_head = b.matrix("lm_head.weight", V, H);
  } else {
    weights_.lm_head = weights_.tok_embd;
    cfg.tied_embeddings = true;
  }
  for (std::int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    layer_weights l;
    l.attn_norm = b.vector(p + "input_layernorm.weight", H);
    if (cfg.family == model_family::deepseek) {
      bind_deepseek_layer(b, tensors, cfg, i, dir, l);
      weights_.layers.push_back(std::move(l));
      continue;
    }
    l.wq = b.matrix(p + "self_attn.q_proj.weight", QD, H);
    l.wk = b.matrix(p + "self_attn.k_proj.weight", KD, H);
    l.wv = b.matrix(p + "self_attn.v_proj.weight", KD, H);
    l.wo = b.matrix(p + "self_attn.o_proj.weight", H, QD);
    if (cfg.qkv_bias) {
      l.bq = b.vector(p + "self_attn.q_proj.bias", QD);
      l.bk = b.vector(p + "self_attn.k_proj.bias", KD);
      l.bv = b.vector(p + "self_attn.v_proj.bias", KD);
    }
    l.ffn_norm = b.vector(p + "post_attention_layernorm.weight", H);
    l.w_gate = b.matrix(p + "mlp.gate_proj.weight", I, H);
    l.w_up = b.matrix(p + "mlp.up_proj.weight", I, H);
    l.w_down = b.matrix(p + "mlp.down_proj.weight", H, I);
    weights_.layers.push_back(std::move(l));
  }
}

}  // namespace shoal
