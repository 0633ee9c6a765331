// The checks every format's weights go through before the forward pass sees them: a tensor is
// present, has the shape the config implies, a dtype the kernels read, and as many bytes as that
// takes; then a weight view into the mapped file (no copy). HF's quantized formats (int8/int4/fp8
// scales) are in load_hf.cpp.

#include <cstring>

#include "engine/common/error.hpp"
#include "engine/model/load_internal.hpp"
#include "kernels/backend.hpp"

namespace shoal::model_load {

namespace {

constexpr const char* kSupportedGgufTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K";

}  // namespace

std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
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

const tensor_ref& weight_binder::require(const std::string& name) const {
  auto* t = find(name);
  if (!t) throw error(errc::corrupt_file, where_ + ": tensor '" + name + "' is missing");
  return *t;
}

void weight_binder::check_shape(const tensor_ref& t, std::vector<std::int64_t> want) const {
  if (t.shape != want) {
    throw error(errc::corrupt_file, t.file + ": tensor '" + t.name + "' has shape " +
                                        shape_string(t.shape) + " but the config needs " +
                                        shape_string(want));
  }
}

weight weight_binder::matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
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

weight weight_binder::stacked(const std::string& name, std::int64_t count, std::int64_t index, std::int64_t rows,
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

std::vector<float> weight_binder::vector(const std::string& name, std::int64_t n) const {
  const auto& t = require(name);
  check_shape(t, {n});
  return to_f32_vector(t);
}

std::vector<float> weight_binder::optional_vector(const std::string& name, std::int64_t n) const {
  if (!find(name)) return {};
  return vector(name, n);
}

}  // namespace shoal::model_load
