// Tiled attention for the AVX-512 level (see attention_kernels.hpp).
//
// The per-(token, head) loop before it read every key and value row once per query and head with
// scalar dot products: at a 1,000-token prompt that was as much time as all the matmuls. Here a
// tile holds up to 16 consecutive tokens of one sequence and the query heads of one KV head (GQA's
// group: TinyLlama's 8), and walks the keys 16 positions at a time:
//  - the 16 key rows are transposed once into kt [head_dim][16], so one query's 16 scores are
//    head_dim FMAs of a broadcast query value against a row of kt (no horizontal sums);
//  - each query keeps a running maximum m, a running sum l and an unnormalised output row acc;
//    a new maximum rescales acc and l by exp(m_old - m_new) (the online softmax), then
//    acc += exp(s_j - m) * v_j for the tile's keys; the output is acc / l at the end;
//  - a query sees only positions <= its own (the causal mask), keys past it are masked out.
// Every key and value row of the context is read once per tile instead of once per query and head.

// GCC 12 flags its own intrinsics headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "kernels/cpu/attention_kernels.hpp"
#include "kernels/cpu/cpu_features.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>


namespace shoal::kernels::cpu {

namespace {

constexpr std::int32_t kKeys = 16;          // key positions per key tile: one vector of scores
constexpr std::int64_t kMaxTokens = 16;     // tokens per query tile
constexpr std::int64_t kAccFloats = 65536;  // a tile's accumulators: 256 KB, within L2

// e^x for x <= 0 (scores minus their running maximum), rel. error ~2e-7: x = n ln2 + r with
// |r| <= ln2/2, e^r by its Taylor series to degree 6, scaled by 2^n. Below -87.3 the result is
// ~1e-38 instead of 0, which a sum of terms where at least one is 1 never notices.
SHOAL_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 16 scores of one query against the transposed key tile: four chains cover the FMA latency.
SHOAL_AVX512 inline __m512 scores_of(const float* q, const float* kt, std::int32_t hd) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (std::int32_t i = 0; i < hd; i += 4) {
    s0 = _mm512_fmadd_ps(_mm512_set1_ps(q[i]), _mm512_loadu_ps(kt + kKeys * i), s0);
    s1 = _mm512_fmadd_ps(_mm512_set1_ps(q[i + 1]), _mm512_loadu_ps(kt + kKeys * (i + 1)), s1);
    s2 = _mm512_fmadd_ps(_mm512_set1_ps(q[i + 2]), _mm512_loadu_ps(kt + kKeys * (i + 2)), s2);
    s3 = _mm512_fmadd_ps(_mm512_set1_ps(q[i + 3]), _mm512_loadu_ps(kt + kKeys * (i + 3)), s3);
  }
  return _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
}

// acc[0, hd) = acc * scale + sum over j < n of p[j] * v[j][0, hd), 64 columns at a time in registers.
SHOAL_AVX512 inline void accumulate_values(float* acc, float scale, const float* p, const float* const* v,
                                           std::int32_t n, std::int32_t hd) {
  const __m512 sc = _mm512_set1_ps(scale);
  std::int32_t d = 0;
  for (; d + 64 <= hd; d += 64) {
    __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(acc + d), sc), a1 = _mm512_mul_ps(_mm512_loadu_ps(acc + d + 16), sc);
    __m512 a2 = _mm512_mul_ps(_mm512_loadu_ps(acc + d + 32), sc), a3 = _mm512_mul_ps(_mm512_loadu_ps(acc + d + 48), sc);
    for (std::int32_t j = 0; j < n; ++j) {
      const __m512 pj = _mm512_set1_ps(p[j]);
      a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v[j] + d), a0);
      a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v[j] + d + 16), a1);
      a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v[j] + d + 32), a2);
      a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v[j] + d + 48), a3);
    }
    _mm512_storeu_ps(acc + d, a0);
    _mm512_storeu_ps(acc + d + 16, a1);
    _mm512_storeu_ps(acc + d + 32, a2);
    _mm512_storeu_ps(acc + d + 48, a3);
  }
  for (; d < hd; d += 16) {
    __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(acc + d), sc);
    for (std::int32_t j = 0; j < n; ++j) a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_loadu_ps(v[j] + d), a0);
    _mm512_storeu_ps(acc + d, a0);
  }
}

SHOAL_AVX512 void run_tile_avx512(const attention_args& a, const std::int32_t* pos, const std::int32_t* seq,
                                  const attention_tile& tile, std::vector<float>& work) {
  const std::int32_t hd = a.head_dim, group = a.n_heads / a.n_kv_heads, kvh = tile.kv_head;
  const std::int64_t nt = tile.t1 - tile.t0, nq = nt * group;
  work.resize(static_cast<std::size_t>(nq * hd + 2 * nq + static_cast<std::int64_t>(hd) * kKeys + kKeys));
  float* acc = work.data();
  float* m = acc + nq * hd;
  float* l = m + nq;
  float* kt = l + nq;
  float* p = kt + static_cast<std::int64_t>(hd) * kKeys;
  std::fill(acc, acc + nq * hd, 0.0f);
  std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
  std::fill(l, l + nq, 0.0f);
  std::int32_t last = 0;
  for (std::int64_t t = tile.t0; t < tile.t1; ++t) last = std::max(last, pos[t]);
  const std::int32_t* table = a.block_tables.row<std::int32_t>(seq[tile.t0]);
  const float* v[kKeys];
  const __m512 scale = _mm512_set1_ps(a.scale), neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::int32_t k0 = 0; k0 <= last; k0 += kKeys) {
    const std::int32_t kn = std::min(kKeys, last + 1 - k0);
    for (std::int32_t j = 0; j < kKeys; ++j) {
      if (j >= kn) {
        for (std::int32_t i = 0; i < hd; ++i) kt[i * kKeys + j] = 0.0f;
        continue;
      }
      const std::int32_t position = k0 + j;
      const std::int64_t slot = static_cast<std::int64_t>(table[position / a.block_size]) * a.block_size +
                                position % a.block_size;
      const float* k = a.k_cache.row<float>(slot) + static_cast<std::int64_t>(kvh) * hd;
      v[j] = a.v_cache.row<float>(slot) + static_cast<std::int64_t>(kvh) * hd;
      for (std::int32_t i = 0; i < hd; ++i) kt[i * kKeys + j] = k[i];
    }
    for (std::int64_t ti = 0; ti < nt; ++ti) {
      const std::int64_t t = tile.t0 + ti;
      if (k0 > pos[t]) continue;  // every key of this tile is in this query's future
      const std::int32_t valid = std::min(kn, pos[t] - k0 + 1);
      const __mmask16 mask = valid >= kKeys ? __mmask16(0xffff) : static_cast<__mmask16>((1u << valid) - 1);
      for (std::int32_t g = 0; g < group; ++g) {
        const std::int64_t r = ti * group + g;
        const float* q = a.q.row<float>(t) + static_cast<std::int64_t>(kvh * group + g) * hd;
        const __m512 s = _mm512_mask_mov_ps(neg_inf, mask, _mm512_mul_ps(scores_of(q, kt, hd), scale));
        const float m_new = std::max(m[r], _mm512_reduce_max_ps(s));
        const float rescale = m_new > m[r] ? std::exp(m[r] - m_new) : 1.0f;  // exp(-inf) = 0 at the start
        m[r] = m_new;
        const __m512 e = _mm512_maskz_mov_ps(mask, exp_nonpositive(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
        l[r] = l[r] * rescale + _mm512_reduce_add_ps(e);
        _mm512_storeu_ps(p, e);
        accumulate_values(acc + r * hd, rescale, p, v, valid, hd);
      }
    }
  }
  for (std::int64_t ti = 0; ti < nt; ++ti) {
    for (std::int32_t g = 0; g < group; ++g) {
      const std::int64_t r = ti * group + g;
      float* out = a.out.row<float>(tile.t0 + ti) + static_cast<std::int64_t>(kvh * group + g) * hd;
      const float inv = 1.0f / l[r];
      for (std::int32_t i = 0; i < hd; ++i) out[i] = acc[r * hd + i] * inv;
    }
  }
}

}  // namespace

bool tiled_attention_fits(const attention_args& a) { return a.head_dim > 0 && a.head_dim % 16 == 0; }

std::vector<attention_tile> plan_attention_tiles(const attention_args& a, const std::int32_t* pos,
                                                 const std::int32_t* seq) {
  const std::int64_t n = a.q.rows, group = a.n_heads / a.n_kv_heads;
  const std::int64_t max_tokens = std::clamp<std::int64_t>(kAccFloats / (group * a.head_dim), 1, kMaxTokens);
  struct run {
    std::int64_t t0, t1;
    std::int32_t last;
  };
  std::vector<run> runs;
  for (std::int64_t t = 0; t < n;) {
    run r{t, t, pos[t]};
    while (r.t1 < n && seq[r.t1] == seq[t] && r.t1 - t < max_tokens) r.last = std::max(r.last, pos[r.t1++]);
    runs.push_back(r);
    t = r.t1;
  }
  std::stable_sort(runs.begin(), runs.end(), [](const run& x, const run& y) { return x.last > y.last; });
  std::vector<attention_tile> tiles;
  tiles.reserve(runs.size() * static_cast<std::size_t>(a.n_kv_heads));
  for (const auto& r : runs) {
    for (std::int32_t h = 0; h < a.n_kv_heads; ++h) tiles.push_back({r.t0, r.t1, h});
  }
  return tiles;
}

void run_attention_tile(const attention_args& a, const std::int32_t* pos, const std::int32_t* seq,
                        const attention_tile& tile, std::vector<float>& work) {
  run_tile_avx512(a, pos, seq, tile, work);
}

}  // namespace shoal::kernels::cpu
