// The fast CPU backend: per-type matmul kernels at one instruction level, rows split across a
// persistent thread pool; the small ops (norms, RoPE, activation) stay on the calling thread where
// they cost microseconds, attention runs in tiles of (tokens of one sequence, KV head) at the
// AVX-512 level (attention_kernels.cpp) and is split by (token, head) below it. Memory and data movement are the
// host backend's (host_backend.hpp), except weights of a type with an interleaved layout at this
// level, which register_weight repacks into memory the backend owns (interleaved_kernels.cpp).

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "engine/common/error.hpp"
#include "kernels/backend.hpp"
#include "kernels/cpu/attention_kernels.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/host_backend.hpp"
#include "kernels/cpu/matmul_kernels.hpp"
#include "kernels/cpu/thread_pool.hpp"

namespace shoal::kernels {

namespace {

using cpu::expect_host;
using cpu::isa;

class fast_backend final : public cpu::host_backend {
 public:
  fast_backend(int threads, isa level) : pool_(threads), level_(level) {
    name_ = std::string("cpu-") + cpu::to_string(level_) + "-x" + std::to_string(pool_.size());
  }
  ~fast_backend() override {
    for (void* p : owned_) deallocate(p);
  }
  fast_backend(const fast_backend&) = delete;
  fast_backend& operator=(const fast_backend&) = delete;

  const char* name() const override { return name_.c_str(); }

  matrix register_weight(const matrix& host) override {
    const std::int32_t group = cpu::interleave_for(host.type, level_);
    if (group == 0 || host.rows < group || host.interleave != 0 || host.device != device_kind::host) return host;
    const std::int64_t bytes = host.rows * dtype_bytes(host.type, host.cols);
    auto* dst = static_cast<std::uint8_t*>(allocate(bytes));
    owned_.emplace_back(dst);
    const std::int64_t groups = (host.rows + group - 1) / group;
    pool_.parallel_for(groups, 1, [&](int, std::int64_t g0, std::int64_t g1) {
      cpu::repack_interleaved(host, group, g0, g1, dst);
    });
    release_pages(host);
    matrix m = host;
    m.data = dst;
    m.row_stride = host.cols;
    m.interleave = group;
    return m;
  }

  void matmul(const matrix& w, const tensor& x, const tensor& y) override {
    matmul_job j{w, y};
    matmul_multi(std::span<const matmul_job>(&j, 1), x);
  }

  void matmul_multi(std::span<const matmul_job> jobs, const tensor& x_in) override {
    const std::int64_t n = x_in.rows;
    if (jobs.empty() || n == 0) return;
    expect_host(x_in, dtype::f32, "matmul x");
    // The kernels read x as [n, cols] rows back to back: a strided view (one head of a wider
    // activation) is packed first.
    const float* x = static_cast<const float*>(x_in.data);
    if (!x_in.contiguous()) {
      packed_.resize(static_cast<std::size_t>(n * x_in.cols));
      for (std::int64_t t = 0; t < n; ++t) {
        std::memcpy(packed_.data() + t * x_in.cols, x_in.row<float>(t), static_cast<std::size_t>(x_in.cols) * 4);
      }
      x = packed_.data();
    }
    for (const auto& j : jobs) {
      expect_host(j.y, dtype::f32, "matmul y");
      if (j.w.cols != x_in.cols || j.y.cols != j.w.rows || j.y.rows != n) {
        throw error(errc::internal, "matmul: x [" + std::to_string(n) + ", " + std::to_string(x_in.cols) + "], w [" +
                                        std::to_string(j.w.rows) + ", " + std::to_string(j.w.cols) + "], y [" +
                                        std::to_string(j.y.rows) + ", " + std::to_string(j.y.cols) + "]");
      }
    }
    // Activations are prepared once per weight type; jobs of the same type share it.
    prepared_.resize(jobs.size());
    kernels_.resize(jobs.size());
    prep_of_.assign(jobs.size(), -1);
    std::int64_t total = 0;
    std::int64_t granule = 1;
    offsets_.resize(jobs.size() + 1);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      kernels_[i] = &cpu::matmul_kernel_for(jobs[i].w);
      granule = std::max(granule, kernels_[i]->row_granule);
    }
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        // The prepared activations depend only on the prepare function and the width (an
        // interleaved kernel shares its plain twin's).
        if (kernels_[j]->prepare == kernels_[i]->prepare && jobs[j].w.cols == jobs[i].w.cols) {
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
        kernels_[i]->run(jobs[i].w, prepared_[prep_of_[i]], static_cast<float*>(jobs[i].y.data), jobs[i].y.row_stride,
                         lo - offsets_[i], hi - offsets_[i], level_);
      }
    });
  }

  void rope(const tensor& x, const tensor& positions, std::int32_t n_heads, std::int32_t head_dim,
            std::int32_t rot_dim, rope_style style, const tensor& inv_freq, float attn_factor) override {
    expect_host(x, dtype::f32, "rope");
    expect_host(positions, dtype::i32, "rope positions");
    const auto* pos = static_cast<const std::int32_t*>(positions.data);
    const float* freq = inv_freq.row<float>(0);
    const std::int32_t half = rot_dim / 2;
    cos_.resize(static_cast<std::size_t>(half));
    sin_.resize(static_cast<std::size_t>(half));
    for (std::int64_t t = 0; t < x.rows; ++t) {
      for (std::int32_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[t]) * freq[i];
        cos_[i] = std::cos(angle) * attn_factor;
        sin_[i] = std::sin(angle) * attn_factor;
      }
      for (std::int32_t h = 0; h < n_heads; ++h) {
        float* v = x.row<float>(t) + static_cast<std::int64_t>(h) * head_dim;
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
    const auto [pos, seq] = cpu::checked_attention(a);
    const std::int64_t n_tokens = a.q.rows;
    const std::int32_t group = a.n_heads / a.n_kv_heads;
    if (level_ == isa::avx512 && cpu::tiled_attention_fits(a)) {
      const auto tiles = cpu::plan_attention_tiles(a, pos, seq);
      tile_work_.resize(static_cast<std::size_t>(pool_.size()));
      pool_.parallel_for(static_cast<std::int64_t>(tiles.size()), 1, [&](int thread, std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) cpu::run_attention_tile(a, pos, seq, tiles[i], tile_work_[thread]);
      });
      return;
    }
    scores_.resize(static_cast<std::size_t>(pool_.size()));
    pool_.parallel_for(n_tokens * a.n_heads, 1, [&](int thread, std::int64_t begin, std::int64_t end) {
      auto& scores = scores_[thread];
      for (std::int64_t job = begin; job < end; ++job) {
        const std::int64_t t = job / a.n_heads;
        const std::int32_t h = static_cast<std::int32_t>(job % a.n_heads);
        const std::int32_t n_ctx = pos[t] + 1;
        const std::int32_t* table = a.block_tables.row<std::int32_t>(seq[t]);
        scores.resize(static_cast<std::size_t>(n_ctx));
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
        const float inv = 1.0f / sum;
        float* out = a.out.row<float>(t) + static_cast<std::int64_t>(h) * a.head_dim;
        std::memset(out, 0, static_cast<std::size_t>(a.head_dim) * sizeof(float));
        for (std::int32_t p = 0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[p / a.block_size]) * a.block_size + p % a.block_size;
          const float* v = a.v_cache.row<float>(slot) + static_cast<std::int64_t>(kvh) * a.head_dim;
          const float wgt = scores[p] * inv;
          for (std::int32_t i = 0; i < a.head_dim; ++i) out[i] += wgt * v[i];
        }
      }
    });
  }

  void idle() override { pool_.park(); }

 private:
  // Once a weight is repacked its source pages are not read again by this backend: ask the kernel
  // to reclaim them so a memory-mapped file does not stay resident next to the copy. PAGEOUT (not
  // DONTNEED) because it never loses data: file pages are re-read if something touches them again,
  // and anonymous memory (a test's vectors) stays as it is without swap. A hint; errors ignored.
  static void release_pages(const matrix& host) {
#ifdef MADV_PAGEOUT
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(host.row(0));
    const auto end = reinterpret_cast<std::uintptr_t>(host.row(host.rows - 1)) +
                     static_cast<std::uintptr_t>(dtype_bytes(host.type, host.cols));
    const std::uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT);
#else
    (void)host;
#endif
  }

  cpu::thread_pool pool_;
  isa level_;
  std::string name_;
  std::vector<cpu::prepared_input> prepared_;
  std::vector<const cpu::matmul_kernel*> kernels_;
  std::vector<int> prep_of_;
  std::vector<std::int64_t> offsets_;
  std::vector<float> packed_;
  std::vector<std::vector<float>> scores_;
  std::vector<std::vector<float>> tile_work_;
  std::vector<float> cos_, sin_;
  std::vector<void*> owned_;  // repacked weights, freed with the backend
};

}  // namespace

std::unique_ptr<backend> make_cpu_backend(int threads) {
  return std::make_unique<fast_backend>(std::max(threads, 1), cpu::best_isa());
}

std::unique_ptr<backend> make_cpu_backend(int threads, const std::string& level) {
  for (auto l : {isa::portable, isa::avx2, isa::avx512}) {
    if (level != cpu::to_string(l)) continue;
    if (l > cpu::best_isa()) {
      throw error(errc::unsupported, "this CPU cannot run the " + level + " kernels (best: " +
                                         cpu::to_string(cpu::best_isa()) + ")");
    }
    return std::make_unique<fast_backend>(std::max(threads, 1), l);
  }
  throw error(errc::invalid_argument, "unknown CPU kernel level '" + level + "' (portable, avx2, avx512)");
}

std::vector<std::string> cpu_levels() {
  std::vector<std::string> out;
  for (auto l : {isa::portable, isa::avx2, isa::avx512}) {
    if (l <= cpu::best_isa()) out.push_back(cpu::to_string(l));
  }
  return out;
}

}  // namespace shoal::kernels
