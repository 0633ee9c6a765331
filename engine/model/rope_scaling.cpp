// RoPE frequency scaling: config.json's rope_scaling (linear, llama3, yarn) and the inverse
// frequencies each implies, after Hugging Face's rope init functions. The GGUF loaders read their own
// rope.scaling.* metadata into the same rope_scaling_config; model::finish computes the frequencies.

#include <algorithm>
#include <cmath>
#include <numbers>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/load_internal.hpp"
#include "engine/model/model.hpp"

namespace shoal {

namespace model_load {

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

}  // namespace model_load

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

}  // namespace shoal
