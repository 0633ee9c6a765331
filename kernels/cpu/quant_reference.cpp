// Reference dequantization of the integer/quantized weight types (plain scalar code: the yardstick
// every quantized matmul kernel is tested against). The quantizers that write them are in
// kernels/quantize.cpp.
// Q4_K and Q6_K follow ggml's dequantize_row_q4_K / dequantize_row_q6_K exactly.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cpu/matmul_kernels.hpp"

namespace shoal::kernels::cpu {

namespace {

float load_f16(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ggml's get_scale_min_k4: the j-th (of 8) 6-bit scale and min packed in Q4_K's 12 scale bytes.
// Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; scales/mins 4-7 take their low 4
// bits from bytes 8-11 and their top 2 bits from the spare top bits of bytes 0-7.
void scale_min_k4(int j, const std::uint8_t* q, std::uint8_t& d, std::uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

void dequant_q8_0(const std::uint8_t* b, std::int64_t nb, float* y) {
  for (std::int64_t i = 0; i < nb; ++i, b += 34) {
    const float d = load_f16(b);
    const auto* q = reinterpret_cast<const std::int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) *y++ = d * static_cast<float>(q[j]);
  }
}

void dequant_q4_0(const std::uint8_t* b, std::int64_t nb, float* y) {
  for (std::int64_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = load_f16(b);
    const std::uint8_t* q = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>((q[j] & 0xF) - 8);
      y[j + 16] = d * static_cast<float>((q[j] >> 4) - 8);
    }
  }
}

void dequant_q4_k(const std::uint8_t* b, std::int64_t nb, float* y) {
  for (std::int64_t i = 0; i < nb; ++i, b += 144) {
    const float d = load_f16(b);
    const float dmin = load_f16(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* q = b + 16;
    int is = 0;
    for (int j = 0; j < 256; j += 64, q += 32, is += 2) {
      std::uint8_t sc, m;
      scale_min_k4(is + 0, scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(is + 1, scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequant_q6_k(const std::uint8_t* b, std::int64_t nb, float* y) {
  for (std::int64_t i = 0; i < nb; ++i, b += 210) {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = load_f16(b + 208);
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * static_cast<float>(q1);
        y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
        y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
        y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

void dequantize_quantized_row(const matrix& m, std::int64_t r, float* out) {
  const std::uint8_t* row = m.row(r);
  const std::int64_t nb = m.cols / dtype_block_size(m.type);
  switch (m.type) {
    case dtype::q8_0:
      dequant_q8_0(row, nb, out);
      return;
    case dtype::q4_0:
      dequant_q4_0(row, nb, out);
      return;
    case dtype::q4_k:
      dequant_q4_k(row, nb, out);
      return;
    case dtype::q6_k:
      dequant_q6_k(row, nb, out);
      return;
    case dtype::i8: {
      const float s = m.scales[r * m.scale_stride];
      const auto* q = reinterpret_cast<const std::int8_t*>(row);
      for (std::int64_t c = 0; c < m.cols; ++c) out[c] = s * static_cast<float>(q[c]);
      return;
    }
    case dtype::i4: {
      const float* s = m.scales + r * m.scale_stride;
      for (std::int64_t c = 0; c < m.cols; ++c) {
        const std::uint8_t byte = row[c / 2];
        const int nibble = c % 2 == 0 ? byte & 0xF : byte >> 4;
        out[c] = s[c / m.group_size] * static_cast<float>(nibble - 8);
      }
      return;
    }
    case dtype::f8_e4m3: {
      const float* s = m.scales + r * m.scale_stride;
      for (std::int64_t c = 0; c < m.cols; ++c) out[c] = s[c / m.group_size] * f8_e4m3_to_f32(row[c]);
      return;
    }
    default:
      throw std::logic_error(std::string("dequantize_quantized_row: ") + to_string(m.type) +
                             " is not a quantized type");
  }
}

}  // namespace shoal::kernels::cpu
