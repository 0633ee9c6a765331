// The fast CPU backend: per-type matmul kernels at the best instruction level, rows split across a
// persistent thread pool; the small ops (norms, RoPE, activation) stay on the calling thread where
// they cost microseconds, attention is split by (token, head).

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/backend.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/matmul_kernels.hpp"
#include "kernels/cpu/thread_pool.hpp"

namespace shoal::kernels {

namespace {

using cpu::isa;

class fast_backend final : public backend {
 public:
  explicit fast_backend(int threads) : pool_(threads), level_(cpu::best_isa()) {
    name_ = std::string("cpu-") + cpu::to_string(level_) + "-x" + std::to_string(pool_.size());
  }

  const char* name() const override { return name_.c_str(); }

  void matmul(const matrix& w, const float* x, std::int64_t n, float* y) override {
    matmul_job j{w, y};
    matmul_multi(std::span<const matmul_job>(&j, 1), x, n);
  }

  void matmul_multi(std::span<const matmul_job> jobs, const float* x, std::int64_t n) override {
    if (jobs.empty() || n == 0) return;
    // Activations are prepared once per weight type; jobs of the same type share it.
    prepared_.resize(jobs.size());
    kernels_.resize(jobs.size());
    prep_of_.assign(jobs.size(), -1);
    std::int64_t total = 0;
    std::int64_t granule = 1;
    offsets_.resize(jobs.size() + 1);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      kernels_[i] = &cpu::matmul_kernel_for(jobs[i].w.type);
      granule = std::max(granule, kernels_[i]->row_granule);
    }
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        if (kernels_[j] == kernels_[i] && jobs[j].w.type == jobs[i].w.type && jobs[j].w.cols == jobs[i].w.cols) {
          prep_of_[i] = prep_of_[j];
          break;
        }
      }
      if (prep_of_[i] < 0) {
        prep_of_[i] = static_cast<int>(i);
        auto& p = prepared_[i];
        p.x = x;
        p.n = n;
        p.cols = jobs[i].w.cols;
        p.buf.clear();
        if (kernels_[i]->prepare) kernels_[i]->prepare(p, level_);
      }
      offsets_[i] = total;
      // Round each matrix up to the granule so no slice straddles two matrices mid-granule.
      total += (jobs[i].w.rows + granule - 1) / granule * granule;
    }
    offsets_[jobs.size()] = total;
    pool_.parallel_for(total, granule, [&](int, std::int64_t begin, std::int64_t end) {
      for (std::size_t i = 0; i < jobs.size(); ++i) {
        const std::int64_t lo = std::max(begin, offsets_[i]);
        const std::int64_t hi = std::min({end, offsets_[i + 1], offsets_[i] + jobs[i].w.rows});
        if (lo >= hi) continue;
        kernels_[i]->run(jobs[i].w, prepared_[prep_of_[i]], jobs[i].y, jobs[i].w.rows, lo - offsets_[i],
                         hi - offsets_[i], level_);
      }
    });
  }

  void embed(const matrix& table, std::span<const std::int32_t> ids, float* out) override {
    for (std::size_t t = 0; t < ids.size(); ++t) dequantize_row(table, ids[t], out + t * table.cols);
  }

  void rmsnorm(const float* x, const float* weight, float eps, std::int64_t n, std::int64_t dim, float* y) override {
    for (std::int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * dim;
      float ss = 0.0f;
      for (std::int64_t i = 0; i < dim; ++i) ss += xt[i] * xt[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      float* yt = y + t * dim;
      for (std::int64_t i = 0; i < dim; ++i) yt[i] = xt[i] * inv * weight[i];
    }
  }

  void rope(float* x, std::span<const std::int32_t> positions, std::int32_t n_heads, std::int32_t head_dim,
            std::int32_t rot_dim, rope_style style, const float* inv_freq, float attn_factor) override {
    const std::int32_t half = rot_dim / 2;
    cos_.resize(half);
    sin_.resize(half);
    for (std::size_t t = 0; t < positions.size(); ++t) {
      for (std::int32_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        cos_[i] = std::cos(angle) * attn_factor;
        sin_[i] = std::sin(angle) * attn_factor;
      }
      for (std::int32_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim;
        for (std::int32_t i = 0; i < half; ++i) {
          const std::int32_t a = style == rope_style::neox ? i : 2 * i;
          const std::int32_t b = style == rope_style::neox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * cos_[i] - x1 * sin_[i];
          v[b] = x0 * sin_[i] + x1 * cos_[i];
        }
      }
    }
  }

  void attention(const attention_args& a) override {
    const std::int64_t n_tokens = static_cast<std::int64_t>(a.positions.size());
    const std::int32_t group = a.n_heads / a.n_kv_heads;
    const std::int64_t token_stride = static_cast<std::int64_t>(a.n_kv_heads) * a.head_dim;
    scores_.resize(static_cast<std::size_t>(pool_.size()));
    pool_.parallel_for(n_tokens * a.n_heads, 1, [&](int thread, std::int64_t begin, std::int64_t end) {
      auto& scores = scores_[thread];
      for (std::int64_t job = begin; job < end; ++job) {
        const std::int64_t t = job / a.n_heads;
        const std::int32_t h = static_cast<std::int32_t>(job % a.n_heads);
        const std::int32_t n_ctx = a.positions[t] + 1;
        const std::int32_t* table = a.block_tables[t];
        scores.resize(n_ctx);
        const float* q = a.q + (t * a.n_heads + h) * a.head_dim;
        const std::int32_t kvh = h / group;
        float max_score = -INFINITY;
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
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
        const float inv = 1.0f / sum;
        float* out = a.out + (t * a.n_heads + h) * a.head_dim;
        std::memset(out, 0, a.head_dim * sizeof(float));
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
          const float* v = a.v_cache + slot * token_stride + kvh * a.head_dim;
          const float wgt = scores[p] * inv;
          for (std::int32_t i = 0; i < a.head_dim; ++i) out[i] += wgt * v[i];
        }
      }
    });
  }

  void silu_mul(float* gate, const float* up, std::int64_t n) override {
    for (std::int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }

  void add(float* y, const float* x, std::int64_t n) override {
    for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void idle() override { pool_.park(); }

 private:
  cpu::thread_pool pool_;
  isa level_;
  std::string name_;
  std::vector<cpu::prepared_input> prepared_;
  std::vector<const cpu::matmul_kernel*> kernels_;
  std::vector<int> prep_of_;
  std::vector<std::int64_t> offsets_;
  std::vector<std::vector<float>> scores_;
  std::vector<float> cos_, sin_;
};

}  // namespace

std::unique_ptr<backend> make_cpu_backend(int threads) { return std::make_unique<fast_backend>(std::max(threads, 1)); }

}  // namespace shoal::kernels
