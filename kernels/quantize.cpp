// The weight encoders declared in kernels/quantize.hpp.

#include "kernels/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/dtype.hpp"

namespace shoal::kernels {

namespace {

void store_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

}  // namespace

void quantize_row_q8_0(const float* x, std::int64_t n, std::uint8_t* out) {
  for (std::int64_t i = 0; i < n / 32; ++i, x += 32, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    auto* q = reinterpret_cast<std::int8_t*>(out + 2);
    for (int j = 0; j < 32; ++j) q[j] = static_cast<std::int8_t>(std::round(x[j] * id));
  }
}

void quantize_row_q4_0(const float* x, std::int64_t n, std::uint8_t* out) {
  for (std::int64_t i = 0; i < n / 32; ++i, x += 32, out += 18) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(out, d);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<std::int8_t>(x[j] * id + 8.5f)));
      const int hi =
          std::min(15, static_cast<int>(static_cast<std::int8_t>(x[j + 16] * id + 8.5f)));
      out[2 + j] = static_cast<std::uint8_t>(lo | (hi << 4));
    }
  }
}

float quantize_row_i8(const float* x, std::int64_t n, std::int8_t* out) {
  float amax = 0.0f;
  for (std::int64_t c = 0; c < n; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float s = amax / 127.0f;
  const float inv = s != 0.0f ? 1.0f / s : 0.0f;
  for (std::int64_t c = 0; c < n; ++c) {
    out[c] = static_cast<std::int8_t>(std::clamp(std::round(x[c] * inv), -127.0f, 127.0f));
  }
  return s;
}

void quantize_row_i4(const float* x, std::int64_t n, std::int64_t group, std::uint8_t* out,
                     float* scales) {
  std::memset(out, 0, static_cast<std::size_t>(n / 2));
  for (std::int64_t g = 0; g < n / group; ++g) {
    const float* xg = x + g * group;
    float amax = 0.0f, max = 0.0f;
    for (std::int64_t j = 0; j < group; ++j) {
      if (amax < std::fabs(xg[j])) {
        amax = std::fabs(xg[j]);
        max = xg[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    scales[g] = d;
    for (std::int64_t j = 0; j < group; ++j) {
      // x * id lies in [-8, 8]: truncating x * id + 8.5 rounds half up, as ggml's Q4_0 does.
      const int q = std::clamp(static_cast<int>(xg[j] * id + 8.5f), 0, 15);
      const std::int64_t c = g * group + j;
      out[c / 2] |= static_cast<std::uint8_t>(c % 2 == 0 ? q : q << 4);
    }
  }
}

}  // namespace shoal::kernels
