#pragma once
// What the model loaders share and nothing outside engine/model/ should include: a tensor as found
// in a file, the weight binder that checks it against the config and builds the weight views, typed
// config.json access, and the helpers one format's loader borrows from another (DeepSeek's config
// checks from both the HF and GGUF paths, GGUF's ends from both GGUF architectures). The loader, one
// file per concern:
//   model.cpp          the public class glue: pick the format, load the tokenizer, finish()
//   hf_config.cpp      config.json / generation_config.json -> model_config, quantization_config
//   rope_scaling.cpp   rope_scaling parsing and the inverse frequencies it implies
//   weight_binder.cpp  shape/size checks and weight views common to every format
//   load_hf.cpp        safetensors shards and the HF layer names; int8/int4/fp8 scales
//   load_gguf.cpp      GGUF llama/qwen2 metadata and tensors
//   deepseek.cpp       DeepSeek-V2/V3: MLA/MoE config checks, HF layers, GGUF deepseek2

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/model.hpp"

namespace shoal {

class gguf_file;

namespace model_load {

// One tensor found in a file, in PyTorch (outermost-first) shape order.
struct tensor_ref {
  std::string name;
  std::string file;
  std::string dtype_name;
  std::optional<dtype> type;  // set when the kernels can use it as stored
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::uint64_t nbytes = 0;
};

/// "[a, b, c]", for messages.
std::string shape_string(const std::vector<std::int64_t>& s);

/// The tensor's elements as F32 (any dtype the kernels read, block-quantized included).
std::vector<float> to_f32_vector(const tensor_ref& t);

// Weight-only quantization of an HF-layout directory written by `shoal quantize` (README,
// "Quantized formats"): config.json's quantization_config names the method.
struct hf_quantization {
  std::string method;          // "" (none), "shoal-int8", "shoal-int4", "fp8"
  std::int64_t group_size = 0; // shoal-int4: columns per scale
  std::int64_t fp8_block_rows = 128;  // fp8: weight_scale_inv blocks. Default: 128 x 128
  std::int64_t fp8_block_cols = 128;
};

// Typed access to config.json values with messages that name the file and key.
class json_config {
 public:
  json_config(const nlohmann::json& j, std::string file) : j_(j), file_(std::move(file)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  std::int64_t get_int(const std::string& key, std::optional<std::int64_t> fallback = {}) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw error(errc::corrupt_file, file_ + ": required key '" + key + "' is missing");
    }
    const auto& v = j_[key];
    if (!v.is_number_integer()) {
      throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be an integer, got " + v.dump());
    }
    auto x = v.get<std::int64_t>();
    if (x <= 0) throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be positive, got " + v.dump());
    return x;
  }

  /// A non-negative integer where 0 (or null) means "none" (DeepSeek's q_lora_rank, n_shared_experts).
  std::int64_t get_count(const std::string& key, std::int64_t fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_[key];
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0) {
      throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be a non-negative integer, got " + v.dump());
    }
    return v.get<std::int64_t>();
  }

  std::string get_string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be a string, got " + j_[key].dump());
    return j_[key].get<std::string>();
  }

  double get_float(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_[key];
    if (!v.is_number()) {
      throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be a number, got " + v.dump());
    }
    return v.get<double>();
  }

  bool get_bool(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) {
      throw error(errc::corrupt_file, file_ + ": key '" + key + "' must be true or false");
    }
    return j_[key].get<bool>();
  }

 private:
  const nlohmann::json& j_;
  std::string file_;
};

// Checks shapes and builds the weight views shared by both formats (weight_binder.cpp; the HF
// quantized formats, hf_quantized and fp8, in load_hf.cpp).
class weight_binder {
 public:
  weight_binder(std::map<std::string, tensor_ref>& tensors, std::string where, bool gguf,
                hf_quantization quant = {}, std::deque<std::vector<float>>* owned = nullptr)
      : tensors_(tensors), where_(std::move(where)), gguf_(gguf), quant_(std::move(quant)), owned_(owned) {}

  const tensor_ref* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

  const tensor_ref& require(const std::string& name) const;
  void check_shape(const tensor_ref& t, std::vector<std::int64_t> want) const;
  weight matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const;

  // shoal-int8: `name` I8 [rows, cols] + `name`_scale F32 [rows]; shoal-int4: `name` U8
  // [rows, cols / 2] (two 4-bit values per byte, low nibble first) + `name`_scale F32
  // [rows, cols / group_size].
  weight hf_quantized(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const;

  // float8_e4m3fn [rows, cols] + `name`_scale_inv F32 [ceil(rows / br), ceil(cols / bc)], the
  // multiplier of each br x bc block (edge blocks partial). Expanded here to one scale per row and
  // column block so a row slice of the matrix is still a matrix.
  weight fp8(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const;

  // Matrix `index` of a stacked tensor [count, rows, cols] (GGUF's merged experts, per-head MLA
  // projections): a view at index * rows rows into the data.
  weight stacked(const std::string& name, std::int64_t count, std::int64_t index, std::int64_t rows,
                 std::int64_t cols) const;

  std::vector<float> vector(const std::string& name, std::int64_t n) const;
  std::vector<float> optional_vector(const std::string& name, std::int64_t n) const;

 private:
  std::map<std::string, tensor_ref>& tensors_;
  std::string where_;
  bool gguf_;
  hf_quantization quant_;
  std::deque<std::vector<float>>* owned_;  // hf_quantized/fp8 scales that could not stay views
};

// hf_config.cpp

/// config.json (and generation_config.json's eos list) in `dir` into `cfg`; returns its
/// quantization_config. Throws when the directory is not a model this build can run.
hf_quantization read_hf_config(const std::string& dir, model_config& cfg);

// rope_scaling.cpp

/// config.json's `rope_scaling` (an object or null) as a rope_scaling_config.
rope_scaling_config parse_rope_scaling_json(const nlohmann::json& rs, const std::string& file);

// load_gguf.cpp: what every GGUF architecture shares.

void read_gguf_special_ids(const gguf_file& g, model_config& cfg);
// The file's tensors by name, shapes outermost first; each also listed in `summary`.
std::map<std::string, tensor_ref> gguf_tensor_refs(const gguf_file& g, std::vector<tensor_summary>& summary);
// The vocabulary size (token_embd's rows), the embedding, the final norm and the output head
// (the embedding when output.weight is absent): the same in every GGUF architecture.
void bind_gguf_ends(const weight_binder& b, const std::string& file, model_config& cfg, model_weights& w);

// deepseek.cpp

// What a file calls the MoE counts, for messages (config.json keys or GGUF metadata keys).
struct moe_key_names {
  std::string per_tok, routed, topk_group, n_group;
};

// DeepSeek-V2/V3 config.json keys (defaults as each architecture's Hugging Face config class has
// them), checked for consistency so a bad file fails here, naming the keys, not mid-forward.
void parse_deepseek_config(const json_config& c, const std::string& file, model_config& cfg);
// MLA's softmax scale and DeepSeek's YaRN magnitudes from cfg.head_dim and cfg.rope_scaling.
void apply_mla_scaling(model_config& cfg, const std::string& file);
// Consistency of the MoE counts, so a bad file fails at load, naming the keys, not mid-forward.
void check_moe_config(const moe_config& m, const std::string& file, const moe_key_names& k);
// Layer i's MLA attention and its dense MLP or experts, HF names (the caller binds input_layernorm).
void bind_deepseek_layer(const weight_binder& b, const std::map<std::string, tensor_ref>& tensors,
                         const model_config& cfg, std::int64_t i, const std::string& dir, layer_weights& l);

}  // namespace model_load
}  // namespace shoal
