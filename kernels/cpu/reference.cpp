// Plain F32 reference kernels: one obvious loop per op, single-threaded. Every other backend is
// checked against these, op by op (build/bin/test_backend_ops).

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/common/error.hpp"
#include "kernels/backend.hpp"
#include "kernels/cpu/host_backend.hpp"

namespace shoal::kernels {

namespace {

using cpu::expect_host;

class reference_backend final : public cpu::host_backend {
 public:
  const char* name() const override { return "reference"; }

  void matmul(const matrix& w, const tensor& x, const tensor& y) override {
    expect_host(x, dtype::f32, "matmul x");
    expect_host(y, dtype::f32, "matmul y");
    if (x.cols != w.cols || y.cols != w.rows || y.rows != x.rows) {
      throw error(errc::internal, "matmul: x [" + std::to_string(x.rows) + ", " + std::to_string(x.cols) + "], w [" +
                                      std::to_string(w.rows) + ", " + std::to_string(w.cols) + "], y [" +
                                      std::to_string(y.rows) + ", " + std::to_string(y.cols) + "]");
    }
    std::vector<float> row(static_cast<std::size_t>(w.cols));
    for (std::int64_t r = 0; r < w.rows; ++r) {
      dequantize_row(w, r, row.data());
      for (std::int64_t t = 0; t < x.rows; ++t) {
        const float* xt = x.row<float>(t);
        float acc = 0.0f;
        for (std::int64_t c = 0; c < w.cols; ++c) acc += row[c] * xt[c];
        y.row<float>(t)[r] = acc;
      }
    }
  }

  void rope(const tensor& x, const tensor& positions, std::int32_t n_heads, std::int32_t head_dim,
            std::int32_t rot_dim, rope_style style, const tensor& inv_freq, float attn_factor) override {
    expect_host(x, dtype::f32, "rope");
    expect_host(positions, dtype::i32, "rope positions");
    const auto* pos = static_cast<const std::int32_t*>(positions.data);
    const float* freq = inv_freq.row<float>(0);
    const std::int32_t half = rot_dim / 2;
    for (std::int64_t t = 0; t < x.rows; ++t) {
      for (std::int32_t h = 0; h < n_heads; ++h) {
        float* v = x.row<float>(t) + static_cast<std::int64_t>(h) * head_dim;
        for (std::int32_t i = 0; i < half; ++i) {
          const float angle = static_cast<float>(pos[t]) * freq[i];
          const float c = std::cos(angle) * attn_factor;
          const float s = std::sin(angle) * attn_factor;
          const std::int32_t a = style == rope_style::neox ? i : 2 * i;
          const std::int32_t b = style == rope_style::neox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * c - x1 * s;
          v[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  void attention(const attention_args& a) override {
    const auto [pos, seq] = cpu::checked_attention(a);
    const std::int64_t n = a.q.rows;
    const std::int32_t group = a.n_heads / a.n_kv_heads;
    std::vector<float> scores;
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int32_t n_ctx = pos[t] + 1;
      const std::int32_t* table = a.block_tables.row<std::int32_t>(seq[t]);
      scores.resize(static_cast<std::size_t>(n_ctx));
      for (std::int32_t h = 0; h < a.n_heads; ++h) {
        const float* q = a.q.row<float>(t) + static_cast<std::int64_t>(h) * a.head_dim;
        const std::int32_t kvh = h / group;
        float max_score = -INFINITY;
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
          const float* k = a.k_cache.row<float>(slot) + static_cast<std::int64_t>(kvh) * a.head_dim;
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
        float* out = a.out.row<float>(t) + static_cast<std::int64_t>(h) * a.head_dim;
        std::memset(out, 0, static_cast<std::size_t>(a.head_dim) * sizeof(float));
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
          const float* v = a.v_cache.row<float>(slot) + static_cast<std::int64_t>(kvh) * a.head_dim;
          const float w = scores[p] / sum;
          for (std::int32_t i = 0; i < a.head_dim; ++i) out[i] += w * v[i];
        }
      }
    }
  }

};

}  // namespace

std::unique_ptr<backend> make_reference_backend() { return std::make_unique<reference_backend>(); }

}  // namespace shoal::kernels
