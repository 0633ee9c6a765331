#pragma once
// Weight-only post-training quantization of a whole model (what `shoal quantize` runs):
//   int8 | int4 -> a Hugging Face directory in Shoal's shoal-int8 / shoal-int4 layout
//   q8_0 | q4_0 -> one GGUF file with ggml's Q8_0 / Q4_0 blocks
//   fp8         -> a Hugging Face directory in DeepSeek's float8_e4m3fn + 128x128 weight_scale_inv layout
// See README "Quantized formats" for the layouts and what stays unquantized.

#include <cstdint>
#include <string>
#include <vector>

namespace shoal {

struct quantize_options {
  std::string type;              // int8 | int4 | q8_0 | q4_0 | fp8
  std::int64_t group_size = 64;  // int4: columns per scale, a multiple of 32. Default: 64
  bool force = false;            // replace an existing output. Default: false
};

struct quantize_report {
  std::int64_t quantized = 0;      // matrices written in the target type
  std::int64_t kept = 0;           // matrices left in their source type (shape not divisible)
  std::vector<std::string> notes;  // one line per kept matrix
};

/// Reads the model at `model_path` (HF directory or GGUF; int8/int4 need an HF source) and writes
/// `out` (a directory for int8/int4, a file for q8_0/q4_0). Throws shoal::error: invalid_argument
/// for bad options or an existing `out` without `force`, unsupported for a source it cannot
/// convert, and whatever model::load throws for a bad source.
quantize_report quantize_model(const std::string& model_path, const std::string& out,
                               const quantize_options& opts);

}  // namespace shoal
