#include "engine/model/model.hpp"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <deque>
#include <functional>
#include <map>
#include <numbers>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/gguf.hpp"
#include "engine/model/safetensors.hpp"
#include "kernels/backend.hpp"

namespace fs = std::filesystem;

namespace shoal {

namespace {

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

std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::optional<dtype> kernel_dtype_from_safetensors(const std::string& d) {
  if (d == "F32") return dtype::f32;
  if (d == "F16") return dtype::f16;
  if (d == "BF16") return dtype::bf16;
  return std::nullopt;
}

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

constexpr const char* kSupportedGgufTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K";

// Weight-only quantization of an HF-layout directory written by `shoal quantize` (README,
// "Quantized formats"): config.json's quantization_config names the method.
struct hf_quantization {
  std::string method;          // "" (none), "shoal-int8", "shoal-int4", "fp8"
  std::int64_t group_size = 0; // shoal-int4: columns per scale
  std::int64_t fp8_block_rows = 128;  // fp8: weight_scale_inv blocks. Default: 128 x 128
  std::int64_t fp8_block_cols = 128;
};

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

std::vector<std::int32_t> json_ids(const nlohmann::json& v) {
  std::vector<std::int32_t> out;
  if (v.is_number_integer()) out.push_back(v.get<std::int32_t>());
  if (v.is_array()) {
    for (auto& x : v) if (x.is_number_integer()) out.push_back(x.get<std::int32_t>());
  }
  return out;
}

rope_scaling_config parse_rope_scaling_json(const nlohmann::json& rs, const std::string& file) {
  rope_scaling_config out;
  if (rs.is_null()) return out;
  if (!rs.is_object()) throw error(errc::corrupt_file, file + ": rope_scaling must be an object or null");
  std::string type;
  if (rs.contains("rope_type") && rs["rope_type"].is_string()) type = rs["rope_type"];
  else if (rs.contains("type") && rs["type"].is_string()) type = rs["type"];
  if (type.empty() || type == "default") return out;
  json_config c(rs, file + " rope_scaling");
  out.type = type;
  out.factor = static_cast<float>(c.get_float("factor", 1.0));
  if (type == "linear") {
    // factor only
  } else if (type == "llama3") {
    out.low_freq_factor = static_cast<float>(c.get_float("low_freq_factor", 1.0));
    out.high_freq_factor = static_cast<float>(c.get_float("high_freq_factor", 4.0));
    out.original_max_positions = c.get_int("original_max_position_embeddings");
  } else if (type == "yarn") {
    out.original_max_positions = c.get_int("original_max_position_embeddings", 0);
    out.beta_fast = static_cast<float>(c.get_float("beta_fast", 32.0));
    out.beta_slow = static_cast<float>(c.get_float("beta_slow", 1.0));
    if (c.has("attention_factor")) out.attention_factor = static_cast<float>(c.get_float("attention_factor", 1.0));
    if (c.has("mscale")) out.mscale = static_cast<float>(c.get_float("mscale", 1.0));
    if (c.has("mscale_all_dim")) out.mscale_all_dim = static_cast<float>(c.get_float("mscale_all_dim", 0.0));
  } else {
    throw error(errc::unsupported, file + ": rope_scaling type '" + type +
                                       "' is not supported (supported: linear, llama3, yarn)");
  }
  if (!(out.factor > 0.0f)) {
    throw error(errc::corrupt_file, file + ": rope_scaling factor must be positive");
  }
  return out;
}

std::vector<float> to_f32_vector(const tensor_ref& t) {
  std::int64_t n = 1;
  for (auto d : t.shape) n *= d;
  std::vector<float> out(n);
  if (!t.type) {
    throw error(errc::unsupported, t.file + ": tensor '" + t.name + "' has dtype " + t.dtype_name +
                                       ", which this build cannot read");
  }
  if (dtype_block_size(*t.type) > 1) {
    // A block-quantized vector (GGUF allows it; converters keep norms F32): one row.
    kernels::matrix m{t.data, *t.type, 1, n, n};
    kernels::dequantize_row(m, 0, out.data());
    return out;
  }
  // memcpy per element: a tensor in a safetensors file need not be aligned to its element size.
  const auto* p = static_cast<const std::uint8_t*>(t.data);
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint16_t h;
    switch (*t.type) {
      case dtype::f32: std::memcpy(&out[i], p + 4 * i, 4); break;
      case dtype::f16: std::memcpy(&h, p + 2 * i, 2); out[i] = f16_to_f32(h); break;
      case dtype::bf16: std::memcpy(&h, p + 2 * i, 2); out[i] = bf16_to_f32(h); break;
      default: break;  // block types returned above; i8/i4 never reach here (no dtype mapping)
    }
  }
  return out;
}

}  // namespace

std::vector<float> rope_inverse_frequencies(float theta, std::int64_t rope_dim,
                                            const rope_scaling_config& s, float& attn_factor) {
  const std::int64_t half = rope_dim / 2;
  std::vector<float> inv(half);
  // Computed in float like the reference implementations (llama2.c, PyTorch float32 init).
  for (std::int64_t i = 0; i < half; ++i) {
    inv[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(rope_dim));
  }
  attn_factor = 1.0f;
  if (s.type == "linear") {
    for (auto& f : inv) f /= s.factor;
  } else if (s.type == "llama3") {
    const double old_ctx = static_cast<double>(s.original_max_positions);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else {
        const double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1.0 - smooth) * f / s.factor + smooth * f);
      }
    }
  } else if (s.type == "yarn") {
    auto get_mscale = [](double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    if (s.attention_factor) {
      attn_factor = *s.attention_factor;
    } else if (s.mscale && s.mscale_all_dim && *s.mscale != 0.0f && *s.mscale_all_dim != 0.0f) {
      attn_factor = static_cast<float>(get_mscale(s.factor, *s.mscale) / get_mscale(s.factor, *s.mscale_all_dim));
    } else {
      attn_factor = static_cast<float>(get_mscale(s.factor, 1.0));
    }
    const double dim = static_cast<double>(rope_dim);
    const double orig = static_cast<double>(s.original_max_positions);
    auto correction_dim = [&](double rotations) {
      return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(static_cast<double>(theta)));
    };
    double low = std::max(std::floor(correction_dim(s.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(s.beta_slow)), dim - 1.0);
    if (low == high) high += 0.001;
    for (std::int64_t i = 0; i < half; ++i) {
      const float extrap = inv[i];
      const float interp = inv[i] / s.factor;
      float ramp = static_cast<float>((static_cast<double>(i) - low) / (high - low));
      ramp = std::clamp(ramp, 0.0f, 1.0f);
      const float extrap_factor = 1.0f - ramp;
      inv[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
    }
  }
  return inv;
}

model::~model() = default;

std::unique_ptr<model> model::load(const std::string& path, const load_options& opts) {
  std::unique_ptr<model> m(new model());
  m->path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw error(errc::not_found, path + ": no such file or directory");
  if (fs::is_directory(path, ec)) {
    m->load_hf(path);
    std::string tok_dir = opts.tokenizer_dir.empty() ? path : opts.tokenizer_dir;
    m->tokenizer_ = tokenizer::from_hf_dir(tok_dir);
  } else {
    m->load_gguf(path);
    if (!opts.tokenizer_dir.empty()) {
      m->tokenizer_ = tokenizer::from_hf_dir(opts.tokenizer_dir);
    } else {
      m->tokenizer_ = tokenizer::from_gguf(*m->gguf_);
    }
  }
  m->finish();
  return m;
}

namespace {

// Checks shapes and builds the weight views shared by both formats.
class weight_binder {
 public:
  weight_binder(std::map<std::string, tensor_ref>& tensors, std::string where, bool gguf,
                hf_quantization quant = {}, std::deque<std::vector<float>>* owned = nullptr)
      : tensors_(tensors), where_(std::move(where)), gguf_(gguf), quant_(std::move(quant)), owned_(owned) {}

  const tensor_ref* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

  const tensor_ref& require(const std::string& name) const {
    auto* t = find(name);
    if (!t) throw error(errc::corrupt_file, where_ + ": tensor '" + name + "' is missing");
    return *t;
  }

  void check_shape(const tensor_ref& t, std::vector<std::int64_t> want) const {
    if (t.shape != want) {
      throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' has shape " +
                                          shape_string(t.shape) + " but the config needs " +
                                          shape_string(want));
    }
  }

  weight matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    const auto& t = require(name);
    if (!quant_.method.empty() && (t.dtype_name == "I8" || t.dtype_name == "U8")) {
      return hf_quantized(t, rows, cols);
    }
    if (t.dtype_name == "F8_E4M3") return fp8(t, rows, cols);
    check_shape(t, {rows, cols});
    if (!t.type) {
      const bool gguf = gguf_;
      throw error(errc::unsupported,
                  t.file + ": tensor '" + name + "' has " + (gguf ? "type " : "dtype ") + t.dtype_name +
                      ", which this build does not support (" +
                      (gguf ? kSupportedGgufTypes
                            : "F32, F16, BF16; I8/U8 with a shoal-int8/int4 quantization_config") +
                      ")");
    }
    if (dtype_block_size(*t.type) > 1 && cols % dtype_block_size(*t.type) != 0) {
      throw error(errc::corrupt_file, t.file + ": tensor '" + name + "' of type " + t.dtype_name + " has " +
                                          std::to_string(cols) + " columns, not a whole number of " +
                                          std::to_string(dtype_block_size(*t.type)) + "-element blocks");
    }
    const std::uint64_t want = static_cast<std::uint64_t>(rows * dtype_bytes(*t.type, cols));
    if (t.nbytes != want) {
      throw error(errc::corrupt_file, t.file + ": tensor '" + name + "' holds " + std::to_string(t.nbytes) +
                                          " bytes but " + std::to_string(rows) + " rows of " + std::to_string(cols) +
                                          " " + t.dtype_name + " elements need " + std::to_string(want));
    }
    return weight{name, kernels::matrix{t.data, *t.type, rows, cols, cols}};
  }

  // shoal-int8: `name` I8 [rows, cols] + `name`_scale F32 [rows]; shoal-int4: `name` U8
  // [rows, cols / 2] (two 4-bit values per byte, low nibble first) + `name`_scale F32
  // [rows, cols / group_size].
  weight hf_quantized(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const {
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

  // float8_e4m3fn [rows, cols] + `name`_scale_inv F32 [ceil(rows / br), ceil(cols / bc)], the
  // multiplier of each br x bc block (edge blocks partial). Expanded here to one scale per row and
  // column block so a row slice of the matrix is still a matrix.
  weight fp8(const tensor_ref& t, std::int64_t rows, std::int64_t cols) const {
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

  // Matrix `index` of a stacked tensor [count, rows, cols] (GGUF's merged experts, per-head MLA
  // projections): a view at index * rows rows into the data.
  weight stacked(const std::string& name, std::int64_t count, std::int64_t index, std::int64_t rows,
                 std::int64_t cols) const {
    const auto& t = require(name);
    check_shape(t, {count, rows, cols});
    if (!t.type) {
      throw error(errc::unsupported, t.file + ": tensor '" + name + "' has type " + t.dtype_name +
                                         ", which this build does not support (" + kSupportedGgufTypes + ")");
    }
    if (dtype_block_size(*t.type) > 1 && cols % dtype_block_size(*t.type) != 0) {
      throw error(errc::corrupt_file, t.file + ": tensor '" + name + "' of type " + t.dtype_name + " has " +
                                          std::to_string(cols) + " columns, not a whole number of " +
                                          std::to_string(dtype_block_size(*t.type)) + "-element blocks");
    }
    const std::uint64_t row_bytes = static_cast<std::uint64_t>(dtype_bytes(*t.type, cols));
    if (t.nbytes != static_cast<std::uint64_t>(count * rows) * row_bytes) {
      throw error(errc::corrupt_file, t.file + ": tensor '" + name + "' holds " + std::to_string(t.nbytes) +
                                          " bytes, not " + std::to_string(count) + " x " + std::to_string(rows) +
                                          " rows of " + std::to_string(row_bytes));
    }
    const auto* base = static_cast<const std::uint8_t*>(t.data) + static_cast<std::uint64_t>(index * rows) * row_bytes;
    return weight{name + "[" + std::to_string(index) + "]", kernels::matrix{base, *t.type, rows, cols, cols}};
  }

  std::vector<float> vector(const std::string& name, std::int64_t n) const {
    const auto& t = require(name);
    check_shape(t, {n});
    return to_f32_vector(t);
  }

  std::vector<float> optional_vector(const std::string& name, std::int64_t n) const {
    if (!find(name)) return {};
    return vector(name, n);
  }

 private:
  std::map<std::string, tensor_ref>& tensors_;
  std::string where_;
  bool gguf_;
  hf_quantization quant_;
  std::deque<std::vector<float>>* owned_;
};

// What a file calls the MoE counts, for messages (config.json keys or GGUF metadata keys).
struct moe_key_names {
  std::string per_tok, routed, topk_group, n_group;
};

// MLA's softmax scale and DeepSeek's YaRN magnitudes from cfg.head_dim and cfg.rope_scaling.
void apply_mla_scaling(model_config& cfg, const std::string& file);
// Consistency of the MoE counts, so a bad file fails at load, naming the keys, not mid-forward.
void check_moe_config(const moe_config& m, const std::string& file, const moe_key_names& k);

// DeepSeek-V2/V3 config.json keys (defaults as each architecture's Hugging Face config class has
// them), checked for consistency so a bad file fails here, naming the keys, not mid-forward.
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

}  // namespace

void model::load_hf(const std::string& dir) {
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
  auto& cfg = config_;
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
  hf_quant_method_ = quant.method;
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

namespace {

void read_gguf_special_ids(const gguf_file& g, model_config& cfg) {
  if (auto v = g.get_number_opt("tokenizer.ggml.bos_token_id")) cfg.bos_id = static_cast<std::int32_t>(*v);
  if (auto v = g.get_number_opt("tokenizer.ggml.eos_token_id")) cfg.eos_ids = {static_cast<std::int32_t>(*v)};
  if (auto v = g.get_number_opt("tokenizer.ggml.eot_token_id")) {
    auto id = static_cast<std::int32_t>(*v);
    if (std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), id) == cfg.eos_ids.end()) cfg.eos_ids.push_back(id);
  }
}

// The file's tensors by name, shapes outermost first; each also listed in `summary`.
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

// The vocabulary size (token_embd's rows), the embedding, the final norm and the output head
// (the embedding when output.weight is absent): the same in every GGUF architecture.
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

}  // namespace

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

void model::finish() {
  auto& cfg = config_;
  const std::string where = path_;
  if (cfg.n_heads % cfg.n_kv_heads != 0) {
    throw error(errc::corrupt_file, where + ": " + std::to_string(cfg.n_heads) + " attention heads are not a multiple of " +
                                        std::to_string(cfg.n_kv_heads) + " key/value heads");
  }
  if (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2 != 0) {
    throw error(errc::corrupt_file, where + ": rotary dimension " + std::to_string(cfg.rope_dim) +
                                        " does not fit head_dim " + std::to_string(cfg.head_dim));
  }
  if ((cfg.rope_scaling.type == "llama3" || cfg.rope_scaling.type == "yarn") &&
      cfg.rope_scaling.original_max_positions <= 0) {
    cfg.rope_scaling.original_max_positions = cfg.max_positions;
  }
  rope_inv_freq_ = rope_inverse_frequencies(cfg.rope_theta, cfg.rope_dim, cfg.rope_scaling, rope_attn_factor_);
  if (!weights_.rope_freq_factors.empty()) {
    for (std::size_t i = 0; i < rope_inv_freq_.size(); ++i) rope_inv_freq_[i] /= weights_.rope_freq_factors[i];
  }
  if (cfg.bos_id < 0) cfg.bos_id = tokenizer_->bos_id();
  if (cfg.eos_ids.empty() && tokenizer_->eos_id() >= 0) cfg.eos_ids.push_back(tokenizer_->eos_id());
  if (tokenizer_->vocab_size() > cfg.vocab_size) {
    throw error(errc::corrupt_file, where + ": the tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                                        " ids but the embedding only " + std::to_string(cfg.vocab_size) + " rows");
  }
  parameter_count_ = 0;
  for (auto& t : tensors_) {
    const bool scale = !hf_quant_method_.empty() && t.name.size() > 6 &&
                       t.name.compare(t.name.size() - 6, 6, "_scale") == 0;
    const bool scale_inv = t.name.size() > 10 && t.name.compare(t.name.size() - 10, 10, "_scale_inv") == 0;
    if (scale || scale_inv) continue;  // quantization metadata, not parameters
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    if (hf_quant_method_ == "shoal-int4" && t.dtype == "U8") n *= 2;  // two 4-bit values per byte
    parameter_count_ += n;
  }
}

}  // namespace shoal
