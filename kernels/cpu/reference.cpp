// Plain F32 reference kernels: one obvious loop per op. Fast kernels are tested against these.

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/cpu/matmul_kernels.hpp"

#include <stdexcept>
#include <string>

namespace shoal::kernels {

matrix matrix::row_slice(std::int64_t begin, std::int64_t count) const {
  matrix m = *this;
  m.data = row(begin);
  m.rows = count;
  if (scales) m.scales = scales + begin * scale_stride;
  return m;
}

matrix matrix::col_slice(std::int64_t begin, std::int64_t count) const {
  const std::int64_t granule =
      (type == dtype::i4 || type == dtype::f8_e4m3) ? group_size : dtype_block_size(type);
  // A window starts on a block and ends on one, or at the last column (a partial last block).
  if (begin % granule != 0 || (count % granule != 0 && begin + count != cols)) {
    throw std::invalid_argument(std::string("column window [") + std::to_string(begin) + ", " +
                                std::to_string(begin + count) + ") of a " + to_string(type) +
                                " matrix does not fall on its " + std::to_string(granule) +
                                "-element blocks");
  }
  matrix m = *this;
  m.data = static_cast<const std::uint8_t*>(data) + dtype_bytes(type, begin);
  m.cols = count;
  if (type == dtype::i4 || type == dtype::f8_e4m3) m.scales = scales + begin / group_size;
  return m;
}

std::int64_t matrix::bytes() const {
  std::int64_t b = rows * dtype_bytes(type, cols);
  if (type == dtype::i8) b += rows * 4;
  if (type == dtype::i4) b += rows * (cols / group_size) * 4;
  if (type == dtype::f8_e4m3) b += rows * ((cols + group_size - 1) / group_size) * 4;
  return b;
}

void dequantize_row(const matrix& w, std::int64_t r, float* out) {
  const std::uint8_t* base = w.row(r);
  switch (w.type) {
    case dtype::f32:
      std::memcpy(out, base, w.cols * sizeof(float));
      return;
    case dtype::f16:
      for (std::int64_t c = 0; c < w.cols; ++c) {
        std::uint16_t h;
        std::memcpy(&h, base + 2 * c, 2);
        out[c] = f16_to_f32(h);
      }
      return;
    case dtype::bf16:
      for (std::int64_t c = 0; c < w.cols; ++c) {
        std::uint16_t h;
        std::memcpy(&h, base + 2 * c, 2);
        out[c] = bf16_to_f32(h);
      }
      return;
    default:
      cpu::dequantize_quantized_row(w, r, out);
      return;
  }
}

namespace {

class reference_backend final : public backend {
 public:
  const char* name() const override { return "cpu-reference"; }

  void matmul(const matrix& w, const float* x, std::int64_t n, float* y) override {
    std::vector<float> row(w.cols);
    for (std::int64_t r = 0; r < w.rows; ++r) {
      dequantize_row(w, r, row.data());
      for (std::int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * w.cols;
        float acc = 0.0f;
        for (std::int64_t c = 0; c < w.cols; ++c) acc += row[c] * xt[c];
        y[t * w.rows + r] = acc;
      }
    }
  }

  void embed(const matrix& table, std::span<const std::int32_t> ids, float* out) override {
    for (std::size_t t = 0; t < ids.size(); ++t) dequantize_row(table, ids[t], out + t * table.cols);
  }

  void rmsnorm(const float* x, const float* weight, float eps, std::int64_t n, std::int64_t dim,
               float* y) override {
    for (std::int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * dim;
      float ss = 0.0f;
      for (std::int64_t i = 0; i < dim; ++i) ss += xt[i] * xt[i];
      float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      for (std::int64_t i = 0; i < dim; ++i) y[t * dim + i] = xt[i] * inv * weight[i];
    }
  }

  void rope(float* x, std::span<const std::int32_t> positions, std::int32_t n_heads,
            std::int32_t head_dim, std::int32_t rot_dim, rope_style style, const float* inv_freq,
            float attn_factor) override {
    const std::int32_t half = rot_dim / 2;
    for (std::size_t t = 0; t < positions.size(); ++t) {
      for (std::int32_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim;
        for (std::int32_t i = 0; i < half; ++i) {
          float angle = static_cast<float>(positions[t]) * inv_freq[i];
          float c = std::cos(angle) * attn_factor;
          float s = std::sin(angle) * attn_factor;
          std::int32_t a = style == rope_style::neox ? i : 2 * i;
          std::int32_t b = style == rope_style::neox ? i + half : 2 * i + 1;
          float x0 = v[a], x1 = v[b];
          v[a] = x0 * c - x1 * s;
          v[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  void attention(const attention_args& a) override {
    const std::int32_t group = a.n_heads / a.n_kv_heads;
    const std::int64_t token_stride = static_cast<std::int64_t>(a.n_kv_heads) * a.head_dim;
    std::vector<float> scores;
    for (std::size_t t = 0; t < a.positions.size(); ++t) {
      const std::int32_t n_ctx = a.positions[t] + 1;
      const std::int32_t* table = a.block_tables[t];
      scores.resize(n_ctx);
      for (std::int32_t h = 0; h < a.n_heads; ++h) {
        const float* q = a.q + (t * a.n_heads + h) * a.head_dim;
        const std::int32_t kvh = h / group;
        float max_score = -INFINITY;
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size +
                              p % a.block_size;
          const float* k = a.k_cache + slot * token_stride + kvh * a.head_dim;
          float dot = 0.0f;
          for (std::int32_t i = 0; i < a.head_dim; ++i) dot += q[i] * k[i];
          scores[p] = dot * a.scale;
          max_score = std::max(max_score, scores[p]);
        }
        float sum = 0.0f;
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          scores[p] = std::exp(scores[p] - max_score);
          sum += scores[p];
        }
        float* out = a.out + (t * a.n_heads + h) * a.head_dim;
        std::memset(out, 0, a.head_dim * sizeof(float));
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size +
                              p % a.block_size;
          const float* v = a.v_cache + slot * token_stride + kvh * a.head_dim;
          float w = scores[p] / sum;
          for (std::int32_t i = 0; i < a.head_dim; ++i) out[i] += w * v[i];
        }
      }
    }
  }

  void silu_mul(float* gate, const float* up, std::int64_t n) override {
    for (std::int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }

  void add(float* y, const float* x, std::int64_t n) override {
    for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
  }
};

}  // namespace

std::unique_ptr<backend> make_reference_backend() { return std::make_unique<reference_backend>(); }

}  // namespace shoal::kernels
