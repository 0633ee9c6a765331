// Matmul kernels for the integer and block-quantized weight types (Q8_0, Q4_0, Q4_K, Q6_K, I8, I4).
//
// `prepare` quantizes the activations once per call to int8 (per block of 32 for Q8_0/Q4_0/I4,
// per super-block of 256 with 16-element sums for Q4_K/Q6_K as ggml's q8_K does, per token row for
// I8); `run` computes integer dot products and applies the float scales once per block.
//
// Decode (one token) is bound by memory bandwidth: each thread streams its rows one after the
// other, a single sequential stream (on this Zen 4 a sequential read reaches ~25% more bandwidth
// than four interleaved rows), with a handful of instructions per block and two accumulators.
// Prefill (several tokens) is bound by arithmetic: register tiles of 4 rows x 4 tokens reuse each
// loaded and unpacked weight block for four tokens, and the next four tokens find the rows in
// L1/L2, so the weights come from memory once per call, not once per token.
//
// Measured (tools/bench/quant_kernel_bench.cpp, 2048 x 5632, one token, one thread, weights
// streamed from DRAM): Q8_0 ~22 GB/s, I8 ~23-27 GB/s, Q4_0 ~16 GB/s, I4 ~13 GB/s of weight bytes;
// 128 tokens: Q8_0/Q4_0 ~59 GMAC/s, I8 ~99 GMAC/s per thread.
//
// Integer dot products per level:
//  - avx512: VNNI `vpdpbusd` (u8 x s8, four products summed into an int32 lane). The unsigned
//    operand is the weight: Q4_0/Q4_K/I4 nibbles already are unsigned; Q8_0/I8 weights are offset
//    by 128 (w ^ 0x80) and the offset's contribution, 128 * sum(x), is subtracted through the
//    accumulator's start value, computed from the activations once in `prepare`. Exact for every
//    int8 weight, including -128.
//  - avx2: `vpmaddubsw` + `vpmaddwd`. maddubs saturates at 16 bits, so the offset trick would
//    overflow; instead |w| is the unsigned operand and sign(w) moves onto x (|x| <= 127, so
//    2 * 128 * 127 fits in int16).
//  - portable: plain int32 loops on the same prepared activations.
// Q4_K and Q6_K use the AVX2 code at the avx512 level as well.

// GCC 12 flags its own intrinsics headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/matmul_kernels.hpp"


namespace shoal::kernels::cpu {

namespace {

constexpr std::int64_t kRowTile = 4;    // weight rows streamed together
constexpr std::int64_t kTokenTile = 4;  // tokens sharing each unpacked weight block

float load_f16(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ---------------------------------------------------------------- prepared activations

// A view of the activations prepare_xq wrote (layout: xq_layout in matmul_kernels.hpp).
struct xq_view {
  std::int64_t ldq = 0, nb = 0, nbs = 0;
  const std::int8_t* q_ = nullptr;
  const float* d_ = nullptr;
  const std::int32_t* s_ = nullptr;
  const std::int16_t* bs_ = nullptr;

  xq_view(const prepared_input& p, std::int64_t block) {
    xq_layout l(p.n, p.cols, block);
    ldq = l.ldq;
    nb = l.nb;
    nbs = l.ldq / 16;
    const std::uint8_t* base = p.buf.data();
    q_ = reinterpret_cast<const std::int8_t*>(base + l.q_off);
    d_ = reinterpret_cast<const float*>(base + l.d_off);
    s_ = reinterpret_cast<const std::int32_t*>(base + l.s_off);
    bs_ = reinterpret_cast<const std::int16_t*>(base + l.bs_off);
  }
  const std::int8_t* q(std::int64_t t) const { return q_ + t * ldq; }
  const float* d(std::int64_t t) const { return d_ + t * nb; }
  const std::int32_t* s(std::int64_t t) const { return s_ + t * nb; }
  const std::int16_t* bs(std::int64_t t) const { return bs_ + t * nbs; }
};

// One block's int8 values at the default rounding (to nearest even, as nearbyint), returning
// their sum. The vector versions write the same bytes as the scalar one: the same x * id product
// per element and the same rounding; they exist because quantizing the activations runs on one
// thread before every quantized matmul (measured: the scalar loop, a libm nearbyint call per
// element, took about a tenth of Q4_0 prefill at 128 tokens).
std::int32_t quantize_block_scalar(const float* x, std::int64_t n, float id, std::int8_t* q) {
  std::int32_t sum = 0;
  for (std::int64_t c = 0; c < n; ++c) {
    q[c] = static_cast<std::int8_t>(std::nearbyint(x[c] * id));
    sum += q[c];
  }
  return sum;
}

float amax_scalar(const float* x, std::int64_t n) {
  float amax = 0.0f;
  for (std::int64_t c = 0; c < n; ++c) amax = std::max(amax, std::fabs(x[c]));
  return amax;
}

SHOAL_AVX512 float amax_avx512(const float* x, std::int64_t n) {
  __m512 m = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < n; c += 16) {
    const auto k = static_cast<__mmask16>(n - c >= 16 ? 0xFFFF : (1u << (n - c)) - 1);
    m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + c)));
  }
  return _mm512_reduce_max_ps(m);
}

SHOAL_AVX512 std::int32_t quantize_block_avx512(const float* x, std::int64_t n, float id, std::int8_t* q) {
  const __m512 vid = _mm512_set1_ps(id);
  __m512i sum = _mm512_setzero_si512();
  for (std::int64_t c = 0; c < n; c += 16) {
    const auto k = static_cast<__mmask16>(n - c >= 16 ? 0xFFFF : (1u << (n - c)) - 1);
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + c), vid));
    _mm_mask_storeu_epi8(q + c, k, _mm512_cvtsepi32_epi8(v));
    sum = _mm512_add_epi32(sum, v);  // masked-off lanes loaded 0
  }
  return _mm512_reduce_add_epi32(sum);
}

SHOAL_AVX2 float amax_avx2(const float* x, std::int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
  std::int64_t c = 0;
  for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + c), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float amax = amax_scalar(x + c, n - c);
  for (float v : lanes) amax = std::max(amax, v);
  return amax;
}

SHOAL_AVX2 std::int32_t quantize_block_avx2(const float* x, std::int64_t n, float id, std::int8_t* q) {
  const __m256 vid = _mm256_set1_ps(id);
  __m256i sum = _mm256_setzero_si256();
  std::int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c), vid));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + c), _mm_packs_epi16(w, w));
    sum = _mm256_add_epi32(sum, v);
  }
  alignas(32) std::int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  std::int32_t total = quantize_block_scalar(x + c, n - c, id, q + c);
  for (std::int32_t v : lanes) total += v;
  return total;
}

// Symmetric int8 per block: d = max|x| / 127, q = round-to-nearest-even(x / d), and
// s = -corr_scale * sum(q), the offset correction in the form the kernel adds it. With
// `interleave_pairs`, each 32-block is stored as its 16 even elements then its 16 odd ones, the
// order I4's nibbles come out of a byte in (low = even element, high = odd element). The int16
// sums per 16 elements are written when `block_sums` (the K-quants use them).
void prepare_xq(prepared_input& p, std::int64_t block, std::int32_t corr_scale, bool interleave_pairs,
                bool block_sums, isa level) {
  xq_layout l(p.n, p.cols, block);
  p.buf.assign(l.total, 0);
  auto* q = reinterpret_cast<std::int8_t*>(p.buf.data() + l.q_off);
  auto* d = reinterpret_cast<float*>(p.buf.data() + l.d_off);
  auto* s = reinterpret_cast<std::int32_t*>(p.buf.data() + l.s_off);
  auto* bs = reinterpret_cast<std::int16_t*>(p.buf.data() + l.bs_off);
  std::int8_t pairs[32];
  for (std::int64_t t = 0; t < p.n; ++t) {
    const float* x = p.x + t * p.cols;
    std::int8_t* qt = q + t * l.ldq;
    for (std::int64_t b = 0; b < l.nb; ++b) {
      const std::int64_t c0 = b * block, len = std::min(p.cols, c0 + block) - c0;
      const float amax = level == isa::avx512 ? amax_avx512(x + c0, len)
                         : level == isa::avx2 ? amax_avx2(x + c0, len)
                                              : amax_scalar(x + c0, len);
      const float db = amax / 127.0f;
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      std::int8_t* out = interleave_pairs ? pairs : qt + c0;
      const std::int32_t sum = level == isa::avx512 ? quantize_block_avx512(x + c0, len, id, out)
                               : level == isa::avx2 ? quantize_block_avx2(x + c0, len, id, out)
                                                    : quantize_block_scalar(x + c0, len, id, out);
      if (interleave_pairs) {
        for (std::int64_t k = 0; k < len; ++k) qt[c0 + (k % 2 == 0 ? k / 2 : 16 + k / 2)] = pairs[k];
      }
      d[t * l.nb + b] = db;
      s[t * l.nb + b] = -corr_scale * sum;
    }
    if (!block_sums) continue;
    for (std::int64_t k = 0; k < l.ldq / 16; ++k) {
      std::int32_t sum = 0;
      for (int j = 0; j < 16; ++j) sum += qt[16 * k + j];
      bs[t * (l.ldq / 16) + k] = static_cast<std::int16_t>(sum);
    }
  }
}

// Q8_0 (VNNI): weights offset by 128 add 128 * sum(x) to a block's dot; spread over 8 lanes, -16
// each.
void prepare_q8_0(prepared_input& p, isa level) {
  prepare_xq(p, 32, 16, false, false, level);
}
// Q4_0 / I4: nibbles are w + 8, so a block's dot is 8 * sum(x) too high; -1 per lane of 8.
void prepare_q4_0(prepared_input& p, isa level) {
  prepare_xq(p, 32, 1, false, false, level);
}
void prepare_i4(prepared_input& p, isa level) {
  prepare_xq(p, 32, 1, true, false, level);
}
void prepare_k(prepared_input& p, isa level) {
  prepare_xq(p, 256, 0, false, true, level);
}
// I8: one scale per token row (the whole row is one block); VNNI's weight offset adds 128 * sum(x).
void prepare_i8(prepared_input& p, isa level) {
  prepare_xq(p, std::max<std::int64_t>(p.cols, 1), 128, false, false, level);
}

// Q4_K's 8 scales and 8 mins (6 bits each) from its 12 packed bytes (ggml's get_scale_min_k4).
void unpack_q4_k_scales(const std::uint8_t* q, std::uint8_t* sc, std::uint8_t* m) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = q[j] & 63;
      m[j] = q[j + 4] & 63;
    } else {
      sc[j] = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
      m[j] = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
  }
}

// ---------------------------------------------------------------- portable

float dot_q8_0_portable(const std::uint8_t* w, const xq_view& x, std::int64_t t) {
  const std::int8_t* q = x.q(t);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < x.nb; ++b, w += 34, q += 32) {
    const auto* wq = reinterpret_cast<const std::int8_t*>(w + 2);
    std::int32_t sum = 0;
    for (int j = 0; j < 32; ++j) sum += wq[j] * q[j];
    acc += load_f16(w) * x.d(t)[b] * static_cast<float>(sum);
  }
  return acc;
}

float dot_q4_0_portable(const std::uint8_t* w, const xq_view& x, std::int64_t t) {
  const std::int8_t* q = x.q(t);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < x.nb; ++b, w += 18, q += 32) {
    std::int32_t sum = 0;
    for (int j = 0; j < 16; ++j) sum += (w[2 + j] & 0xF) * q[j] + (w[2 + j] >> 4) * q[j + 16];
    acc += load_f16(w) * x.d(t)[b] * static_cast<float>(sum + 8 * x.s(t)[b]);
  }
  return acc;
}

// I4 activations are stored pair-interleaved per 32-block (even elements first), matching the
// nibble order: byte j of a 32-block holds elements 2j (low) and 2j + 1 (high).
float dot_i4_portable(const std::uint8_t* w, const float* scales, std::int64_t group,
                      const xq_view& x, std::int64_t t) {
  const std::int8_t* q = x.q(t);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < x.nb; ++b, w += 16, q += 32) {
    std::int32_t sum = 0;
    for (int j = 0; j < 16; ++j) sum += (w[j] & 0xF) * q[j] + (w[j] >> 4) * q[j + 16];
    acc += scales[b * 32 / group] * x.d(t)[b] * static_cast<float>(sum + 8 * x.s(t)[b]);
  }
  return acc;
}

float dot_i8_portable(const std::uint8_t* w, float scale, std::int64_t cols, const xq_view& x,
                      std::int64_t t) {
  const auto* wq = reinterpret_cast<const std::int8_t*>(w);
  const std::int8_t* q = x.q(t);
  std::int32_t sum = 0;
  for (std::int64_t c = 0; c < cols; ++c) sum += wq[c] * q[c];
  return scale * x.d(t)[0] * static_cast<float>(sum);
}

float dot_q4_k_portable(const std::uint8_t* w, const xq_view& x, std::int64_t t) {
  const std::int8_t* q = x.q(t);
  const std::int16_t* bs = x.bs(t);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < x.nb; ++b, w += 144, q += 256, bs += 16) {
    std::uint8_t sc[8], m[8];
    unpack_q4_k_scales(w + 4, sc, m);
    const std::uint8_t* qs = w + 16;
    std::int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 4; ++j) {
      std::int32_t lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += (qs[32 * j + l] & 0xF) * q[64 * j + l];
        hi += (qs[32 * j + l] >> 4) * q[64 * j + 32 + l];
      }
      sumi += sc[2 * j] * lo + sc[2 * j + 1] * hi;
      summ +=
          m[2 * j] * (bs[4 * j] + bs[4 * j + 1]) + m[2 * j + 1] * (bs[4 * j + 2] + bs[4 * j + 3]);
    }
    const float dx = x.d(t)[b];
    acc += load_f16(w) * dx * static_cast<float>(sumi) -
           load_f16(w + 2) * dx * static_cast<float>(summ);
  }
  return acc;
}

float dot_q6_k_portable(const std::uint8_t* w, const xq_view& x, std::int64_t t) {
  const std::int8_t* q = x.q(t);
  const std::int16_t* bs = x.bs(t);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < x.nb; ++b, w += 210, q += 256, bs += 16) {
    const std::uint8_t* ql = w;
    const std::uint8_t* qh = w + 128;
    const auto* sc = reinterpret_cast<const std::int8_t*>(w + 192);
    std::int32_t sumi = 0;
    for (int h = 0; h < 2; ++h) {
      std::int32_t part[8] = {};
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const std::int8_t* qq = q + 128 * h;
        const std::uint8_t* L = ql + 64 * h;
        const std::uint8_t* H = qh + 32 * h;
        part[is + 0] += ((L[l] & 0xF) | (((H[l] >> 0) & 3) << 4)) * qq[l];
        part[is + 2] += ((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) * qq[l + 32];
        part[is + 4] += ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) * qq[l + 64];
        part[is + 6] += ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) * qq[l + 96];
      }
      for (int k = 0; k < 8; ++k) sumi += sc[8 * h + k] * (part[k] - 32 * bs[8 * h + k]);
    }
    acc += load_f16(w + 208) * x.d(t)[b] * static_cast<float>(sumi);
  }
  return acc;
}

template <class Dot>
void run_rows_portable(const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                       std::int64_t r1, Dot dot) {
  for (std::int64_t r = r0; r < r1; ++r) {
    for (std::int64_t t = 0; t < p.n; ++t) y[t * ldy + r] = dot(r, t);
  }
}

// ---------------------------------------------------------------- AVX2

SHOAL_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SHOAL_AVX2 inline std::int32_t hsum_epi32_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

SHOAL_AVX2 inline __m256 f16_broadcast_avx2(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

// 16 packed bytes -> 32 nibbles: bytes 0-15 the low nibbles, bytes 16-31 the high ones.
SHOAL_AVX2 inline __m256i nibbles_avx2(const std::uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

enum class wkind { q8_0, q4_0, i4 };

template <wkind K>
constexpr std::int64_t block_bytes() {
  return K == wkind::q8_0 ? 34 : K == wkind::q4_0 ? 18 : 16;
}

// sum over 32 elements of w * x as 8 int32 lanes; for the nibble kinds w is the raw nibble
// (0..15), the -8 is applied by the caller through the activation sums.
template <wkind K>
SHOAL_AVX2 inline __m256i block_dot_avx2(const std::uint8_t* blk, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (K == wkind::q8_0) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p, ones);
  } else {
    const __m256i w = nibbles_avx2(K == wkind::q4_0 ? blk + 2 : blk);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
  }
}

template <wkind K, int R>
SHOAL_AVX2 void tile32_avx2(const matrix& w, const xq_view& x, std::int64_t r, std::int64_t t,
                            float* y, std::int64_t ldy) {
  const std::int64_t nb = w.cols / 32;
  const std::uint8_t* rows[R];
  const float* sc[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    rows[i] = w.row(r + i);
    sc[i] = K == wkind::i4 ? w.scales + (r + i) * w.scale_stride : nullptr;
  }
  __m256 acc[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  const std::int8_t* xq = x.q(t);
  const float* xd = x.d(t);
  const std::int32_t* xs = x.s(t);
  for (std::int64_t b = 0; b < nb; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b));
    const __m256 dx = _mm256_set1_ps(xd[b]);
    // Nibble kinds: subtract 8 * sum(x) spread over the 8 lanes (lanes sum to -8 * s).
    const __m256i corr = _mm256_set1_epi32(xs[b]);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const std::uint8_t* blk = rows[i] + b * block_bytes<K>();
      __m256i dot = block_dot_avx2<K>(blk, xv);
      if constexpr (K != wkind::q8_0) dot = _mm256_add_epi32(dot, corr);
      __m256 dw;
      if constexpr (K == wkind::i4) {
        dw = _mm256_set1_ps(sc[i][b * 32 / w.group_size]);
      } else {
        dw = f16_broadcast_avx2(blk);
      }
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx), acc[i]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) y[t * ldy + r + i] = hsum_avx2(acc[i]);
}

template <wkind K>
SHOAL_AVX2 void run32_avx2(const matrix& w, const xq_view& x, std::int64_t n, float* y,
                           std::int64_t ldy, std::int64_t r0, std::int64_t r1) {
  std::int64_t r = r0;
  // Decode: row by row, one sequential stream (see row32_avx512).
  for (; n > 1 && r + kRowTile <= r1; r += kRowTile) {
    for (std::int64_t t = 0; t < n; ++t) tile32_avx2<K, kRowTile>(w, x, r, t, y, ldy);
  }
  for (; r < r1; ++r) {
    for (std::int64_t t = 0; t < n; ++t) tile32_avx2<K, 1>(w, x, r, t, y, ldy);
  }
}

template <int R>
SHOAL_AVX2 void tile_i8_avx2(const matrix& w, const xq_view& x, std::int64_t r, std::int64_t t,
                             float* y, std::int64_t ldy) {
  const std::int64_t full = w.cols / 32 * 32;
  const __m256i ones = _mm256_set1_epi16(1);
  const std::int8_t* rows[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const std::int8_t*>(w.row(r + i));
  __m256i acc[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_si256();
  const std::int8_t* xq = x.q(t);
  for (std::int64_t c = 0; c < full; c += 32) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c));
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + c));
      const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    std::int32_t sum = hsum_epi32_avx2(acc[i]);
    for (std::int64_t c = full; c < w.cols; ++c) sum += rows[i][c] * xq[c];
    y[t * ldy + r + i] = w.scales[(r + i) * w.scale_stride] * x.d(t)[0] * static_cast<float>(sum);
  }
}

SHOAL_AVX2 void run_i8_avx2(const matrix& w, const xq_view& x, std::int64_t n, float* y,
                            std::int64_t ldy, std::int64_t r0, std::int64_t r1) {
  std::int64_t r = r0;
  for (; n > 1 && r + kRowTile <= r1; r += kRowTile) {
    for (std::int64_t t = 0; t < n; ++t) tile_i8_avx2<kRowTile>(w, x, r, t, y, ldy);
  }
  for (; r < r1; ++r) {
    for (std::int64_t t = 0; t < n; ++t) tile_i8_avx2<1>(w, x, r, t, y, ldy);
  }
}

// Q4_K, one row against T tokens: the row's nibbles are unpacked once per super-block and used
// for every token of the tile.
template <int T>
SHOAL_AVX2 void row_q4_k_avx2(const std::uint8_t* w, std::int64_t nb, const xq_view& x,
                              std::int64_t t0, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[T];
  float mins[T];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    mins[t] = 0.0f;
  }
  for (std::int64_t b = 0; b < nb; ++b, w += 144) {
    std::uint8_t sc[8], m[8];
    unpack_q4_k_scales(w + 4, sc, m);
    const float d = load_f16(w), dmin = load_f16(w + 2);
    __m256i sumi[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i q4 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 + 32 * j));
      const __m256i lo = _mm256_and_si256(q4, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low4);
      const __m256i s_lo = _mm256_set1_epi16(sc[2 * j]);
      const __m256i s_hi = _mm256_set1_epi16(sc[2 * j + 1]);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const std::int8_t* q = x.q(t0 + t) + 256 * b + 64 * j;
        const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
        const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x_lo), s_lo);
        const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x_hi), s_hi);
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const float dx = x.d(t0 + t)[b];
      const std::int16_t* bs = x.bs(t0 + t) + 16 * b;
      std::int32_t summ = 0;
      for (int j = 0; j < 8; ++j) summ += m[j] * (bs[2 * j] + bs[2 * j + 1]);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(d * dx), acc[t]);
      mins[t] += dmin * dx * static_cast<float>(summ);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) out[t] = hsum_avx2(acc[t]) - mins[t];
}

// Q6_K, one row against T tokens.
template <int T>
SHOAL_AVX2 void row_q6_k_avx2(const std::uint8_t* w, std::int64_t nb, const xq_view& x,
                              std::int64_t t0, float* out) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  __m256 acc[T];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < nb; ++b, w += 210) {
    const auto* sc = reinterpret_cast<const std::int8_t*>(w + 192);
    const float d = load_f16(w + 208);
    __m256i sumi[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const std::uint8_t* ql = w + 64 * h;
      const std::uint8_t* qh = w + 128 + 32 * h;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                             _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(hb, m30));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
      __m256i s[4];
      for (int k = 0; k < 4; ++k) {
        // Elements 0-15 of q[k] use scale 2k, elements 16-31 scale 2k + 1 (of this half's 8).
        s[k] = _mm256_set_m128i(_mm_set1_epi16(sc[8 * h + 2 * k + 1]),
                                _mm_set1_epi16(sc[8 * h + 2 * k]));
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const std::int8_t* xq = x.q(t0 + t) + 256 * b + 128 * h;
        for (int k = 0; k < 4; ++k) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * k));
          sumi[t] =
              _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), s[k]));
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      // The stored 6-bit values are q + 32: take 32 * sum_k scale_k * sum(x over sub-block k).
      const std::int16_t* bs = x.bs(t0 + t) + 16 * b;
      std::int32_t off = 0;
      for (int k = 0; k < 16; ++k) off += sc[k] * bs[k];
      const __m256i fix = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, -32 * off);
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sumi[t], fix)),
                               _mm256_set1_ps(d * x.d(t0 + t)[b]), acc[t]);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) out[t] = hsum_avx2(acc[t]);
}

template <bool Q4K>
SHOAL_AVX2 void run_k_avx2(const matrix& w, const xq_view& x, std::int64_t n, float* y,
                           std::int64_t ldy, std::int64_t r0, std::int64_t r1) {
  const std::int64_t nb = w.cols / 256;
  float out[kTokenTile];
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::uint8_t* row = w.row(r);
    std::int64_t t = 0;
    for (; t + kTokenTile <= n; t += kTokenTile) {
      if constexpr (Q4K)
        row_q4_k_avx2<kTokenTile>(row, nb, x, t, out);
      else
        row_q6_k_avx2<kTokenTile>(row, nb, x, t, out);
#pragma GCC unroll 4
      for (int k = 0; k < kTokenTile; ++k) y[(t + k) * ldy + r] = out[k];
    }
    for (; t < n; ++t) {
      if constexpr (Q4K)
        row_q4_k_avx2<1>(row, nb, x, t, out);
      else
        row_q6_k_avx2<1>(row, nb, x, t, out);
      y[t * ldy + r] = out[0];
    }
  }
}

// ---------------------------------------------------------------- AVX-512 (VNNI)

SHOAL_AVX512 inline __m256i nibbles_avx512(const std::uint8_t* p) {
  // Both 128-bit halves get the same 16 bytes; the upper half is shifted right by 4 in its
  // 64-bit lanes, then the mask keeps one nibble per byte.
  const __m256i v =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i sh = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
  return _mm256_and_si256(sh, _mm256_set1_epi8(0x0F));
}

// A register tile of R rows x T tokens over blocks of 32. The accumulator of each (row, token)
// starts every block at the activation-side correction (lanes summing to -128 * sum(x) for Q8_0's
// offset weights, -8 * sum(x) for the nibble kinds), so vpdpbusd leaves the exact signed dot.
template <wkind K, int R, int T>
SHOAL_AVX512 void tile32_avx512(const matrix& w, const xq_view& x, std::int64_t r, std::int64_t t0,
                                float* y, std::int64_t ldy) {
  const std::int64_t nb = w.cols / 32;
  const std::uint8_t* rows[R];
  const float* sc[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    rows[i] = w.row(r + i);
    sc[i] = K == wkind::i4 ? w.scales + (r + i) * w.scale_stride : nullptr;
  }
  const std::int8_t* xq[T];
  const float* xd[T];
  const std::int32_t* xs[T];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    xq[t] = x.q(t0 + t);
    xd[t] = x.d(t0 + t);
    xs[t] = x.s(t0 + t);
  }
  const std::int64_t group = w.group_size;
  __m256 acc[R][T];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < nb; ++b) {
    __m256i xv[T], init[T];
    __m256 dx[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b));
      init[t] = _mm256_set1_epi32(xs[t][b]);
      dx[t] = _mm256_set1_ps(xd[t][b]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const std::uint8_t* blk = rows[i] + b * block_bytes<K>();
      __m256i wv;
      __m256 dw;
      if constexpr (K == wkind::q8_0) {
        wv = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)),
                              _mm256_set1_epi8(static_cast<char>(0x80)));
      } else {
        wv = nibbles_avx512(K == wkind::q4_0 ? blk + 2 : blk);
      }
      if constexpr (K == wkind::i4) {
        dw = _mm256_set1_ps(sc[i][b * 32 / group]);
      } else {
        dw = f16_broadcast_avx2(blk);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i dot = _mm256_dpbusd_epi32(init[t], wv, xv[t]);
        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx[t]), acc[i][t]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) y[(t0 + t) * ldy + r + i] = hsum_avx2(acc[i][t]);
}

// Decode: one row at a time, so each thread reads one sequential stream (four interleaved rows
// measured ~40% slower here: the hardware prefetcher follows one stream per core best). Two
// accumulators break the FMA dependency chain. (Two blocks per 512-bit vector measured slower on
// this Zen 4, which splits 512-bit operations in two anyway: building the per-half scales costs
// more than it saves.)
template <wkind K>
SHOAL_AVX512 inline __m256 block32_avx512(const std::uint8_t* row, std::int64_t b, const xq_view& x,
                                          __m256 dw, __m256 acc) {
  const std::uint8_t* blk = row + b * block_bytes<K>();
  __m256i wv;
  if constexpr (K == wkind::q8_0) {
    wv = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)),
                          _mm256_set1_epi8(static_cast<char>(0x80)));
  } else {
    wv = nibbles_avx512(K == wkind::q4_0 ? blk + 2 : blk);
  }
  if constexpr (K != wkind::i4) dw = f16_broadcast_avx2(blk);
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q_ + 32 * b));
  const __m256i dot = _mm256_dpbusd_epi32(_mm256_set1_epi32(x.s_[b]), wv, xv);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(x.d_[b])), acc);
}

template <wkind K>
SHOAL_AVX512 float row32_avx512(const std::uint8_t* row, const float* sc, std::int64_t group,
                                const xq_view& x, std::int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  if constexpr (K == wkind::i4) {
    const std::int64_t per_group = group / 32;
    std::int64_t b = 0;
    for (std::int64_t g = 0; g < nb / per_group; ++g) {
      const __m256 dw = _mm256_set1_ps(sc[g]);
      std::int64_t k = 0;
      for (; k + 2 <= per_group; k += 2, b += 2) {
        acc0 = block32_avx512<K>(row, b, x, dw, acc0);
        acc1 = block32_avx512<K>(row, b + 1, x, dw, acc1);
      }
      if (k < per_group) acc0 = block32_avx512<K>(row, b++, x, dw, acc0);
    }
  } else {
    const __m256 unused = _mm256_setzero_ps();
    std::int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      acc0 = block32_avx512<K>(row, b, x, unused, acc0);
      acc1 = block32_avx512<K>(row, b + 1, x, unused, acc1);
    }
    if (b < nb) acc0 = block32_avx512<K>(row, b, x, unused, acc0);
  }
  return hsum_avx2(_mm256_add_ps(acc0, acc1));
}

template <wkind K, int R>
SHOAL_AVX512 void tokens32_avx512(const matrix& w, const xq_view& x, std::int64_t n, std::int64_t r,
                                  float* y, std::int64_t ldy) {
  std::int64_t t = 0;
  for (; t + kTokenTile <= n; t += kTokenTile) tile32_avx512<K, R, kTokenTile>(w, x, r, t, y, ldy);
  switch (n - t) {
    case 3:
      tile32_avx512<K, R, 3>(w, x, r, t, y, ldy);
      break;
    case 2:
      tile32_avx512<K, R, 2>(w, x, r, t, y, ldy);
      break;
    case 1:
      tile32_avx512<K, R, 1>(w, x, r, t, y, ldy);
      break;
    default:
      break;
  }
}

template <wkind K>
SHOAL_AVX512 void run32_avx512(const matrix& w, const xq_view& x, std::int64_t n, float* y,
                               std::int64_t ldy, std::int64_t r0, std::int64_t r1) {
  if (n == 1) {
    const std::int64_t nb = w.cols / 32;
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* sc = K == wkind::i4 ? w.scales + r * w.scale_stride : nullptr;
      y[r] = row32_avx512<K>(w.row(r), sc, w.group_size, x, nb);
    }
    return;
  }
  std::int64_t r = r0;
  for (; r + kRowTile <= r1; r += kRowTile) tokens32_avx512<K, kRowTile>(w, x, n, r, y, ldy);
  for (; r < r1; ++r) tokens32_avx512<K, 1>(w, x, n, r, y, ldy);
}

// Once per row: through memory, because GCC 12's 512-to-256-bit casts and reductions trip
// -Wuninitialized inside its own headers.
SHOAL_AVX512 inline std::int32_t hsum_epi32_avx512(__m512i v) {
  alignas(64) std::int32_t lanes[16];
  _mm512_store_si512(lanes, v);
  std::int32_t s = 0;
  for (int k = 0; k < 16; ++k) s += lanes[k];
  return s;
}

// I8 with one activation scale per token: the whole row is one integer dot product, 64 weights per
// vpdpbusd, and the float scales are applied once at the end.
template <int R, int T>
SHOAL_AVX512 void tile_i8_avx512(const matrix& w, const xq_view& x, std::int64_t r, std::int64_t t0,
                                 float* y, std::int64_t ldy) {
  const std::int64_t cols = w.cols;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  const std::uint8_t* rows[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) rows[i] = w.row(r + i);
  const std::int8_t* xq[T];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) xq[t] = x.q(t0 + t);
  __m512i acc[R][T];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_si512();
  // (No lambda for the step: GCC then keeps the accumulators in memory.)
  for (std::int64_t c = 0; c < cols; c += 64) {
    // Masked-off weight bytes of the last step load as 0 (-> 128 after the offset) against x
    // padding of 0; every other step loads all 64.
    const __mmask64 mask = cols - c >= 64 ? ~__mmask64{0} : (__mmask64{1} << (cols - c)) - 1;
    __m512i xv[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_si512(xq[t] + c);  // zero-padded to 64
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, rows[i] + c), offset);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], wv, xv[t]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    const float sw = w.scales[(r + i) * w.scale_stride];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      // (w + 128) . x = w . x + 128 * sum(x)
      const std::int32_t dot = hsum_epi32_avx512(acc[i][t]) + x.s(t0 + t)[0];
      y[(t0 + t) * ldy + r + i] = sw * x.d(t0 + t)[0] * static_cast<float>(dot);
    }
  }
}

// Decode: one row, one sequential stream, 128 weights per step in four 256-bit accumulators
// (256-bit loads measured faster than 512-bit ones here: rows need not start on a cache line, and
// a misaligned 64-byte load always splits across two).
SHOAL_AVX512 std::int32_t row_i8_avx512(const std::uint8_t* row, std::int64_t cols,
                                        const std::int8_t* xq) {
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                    _mm256_setzero_si256()};
  auto load_w = [&](std::int64_t c) SHOAL_AVX512 {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c)), offset);
  };
  auto load_x = [&](std::int64_t c) SHOAL_AVX512 {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c));
  };
  std::int64_t c = 0;
  for (; c + 128 <= cols; c += 128) {
    acc[0] = _mm256_dpbusd_epi32(acc[0], load_w(c), load_x(c));
    acc[1] = _mm256_dpbusd_epi32(acc[1], load_w(c + 32), load_x(c + 32));
    acc[2] = _mm256_dpbusd_epi32(acc[2], load_w(c + 64), load_x(c + 64));
    acc[3] = _mm256_dpbusd_epi32(acc[3], load_w(c + 96), load_x(c + 96));
  }
  for (; c < cols; c += 32) {
    // Masked-off weight bytes load as 0 (-> 128 after the offset) against x padding of 0.
    const __mmask32 mask = cols - c >= 32 ? ~__mmask32{0} : (__mmask32{1} << (cols - c)) - 1;
    const __m256i wv = _mm256_xor_si256(_mm256_maskz_loadu_epi8(mask, row + c), offset);
    acc[0] = _mm256_dpbusd_epi32(acc[0], wv, load_x(c));
  }
  return hsum_epi32_avx2(
      _mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3])));
}

template <int R>
SHOAL_AVX512 void tokens_i8_avx512(const matrix& w, const xq_view& x, std::int64_t n,
                                   std::int64_t r, float* y, std::int64_t ldy) {
  std::int64_t t = 0;
  for (; t + kTokenTile <= n; t += kTokenTile) tile_i8_avx512<R, kTokenTile>(w, x, r, t, y, ldy);
  switch (n - t) {
    case 3:
      tile_i8_avx512<R, 3>(w, x, r, t, y, ldy);
      break;
    case 2:
      tile_i8_avx512<R, 2>(w, x, r, t, y, ldy);
      break;
    case 1:
      tile_i8_avx512<R, 1>(w, x, r, t, y, ldy);
      break;
    default:
      break;
  }
}

SHOAL_AVX512 void run_i8_avx512(const matrix& w, const xq_view& x, std::int64_t n, float* y,
                                std::int64_t ldy, std::int64_t r0, std::int64_t r1) {
  if (n == 1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int32_t dot = row_i8_avx512(w.row(r), w.cols, x.q_) + x.s_[0];
      y[r] = w.scales[r * w.scale_stride] * x.d_[0] * static_cast<float>(dot);
    }
    return;
  }
  std::int64_t r = r0;
  for (; r + kRowTile <= r1; r += kRowTile) tokens_i8_avx512<kRowTile>(w, x, n, r, y, ldy);
  for (; r < r1; ++r) tokens_i8_avx512<1>(w, x, n, r, y, ldy);
}

// ---------------------------------------------------------------- dispatch

void run_q8_0(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
              std::int64_t r1, isa level) {
  const xq_view x(p, 32);
  if (level == isa::avx512) return run32_avx512<wkind::q8_0>(w, x, p.n, y, ldy, r0, r1);
  if (level == isa::avx2) return run32_avx2<wkind::q8_0>(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_q8_0_portable(w.row(r), x, t);
  });
}

void run_q4_0(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
              std::int64_t r1, isa level) {
  const xq_view x(p, 32);
  if (level == isa::avx512) return run32_avx512<wkind::q4_0>(w, x, p.n, y, ldy, r0, r1);
  if (level == isa::avx2) return run32_avx2<wkind::q4_0>(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_q4_0_portable(w.row(r), x, t);
  });
}

void run_i4(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
            std::int64_t r1, isa level) {
  const xq_view x(p, 32);
  if (level == isa::avx512) return run32_avx512<wkind::i4>(w, x, p.n, y, ldy, r0, r1);
  if (level == isa::avx2) return run32_avx2<wkind::i4>(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_i4_portable(w.row(r), w.scales + r * w.scale_stride, w.group_size, x, t);
  });
}

void run_i8(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
            std::int64_t r1, isa level) {
  const xq_view x(p, std::max<std::int64_t>(p.cols, 1));
  if (level == isa::avx512) return run_i8_avx512(w, x, p.n, y, ldy, r0, r1);
  if (level == isa::avx2) return run_i8_avx2(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_i8_portable(w.row(r), w.scales[r * w.scale_stride], w.cols, x, t);
  });
}

void run_q4_k(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
              std::int64_t r1, isa level) {
  const xq_view x(p, 256);
  if (level != isa::portable) return run_k_avx2<true>(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_q4_k_portable(w.row(r), x, t);
  });
}

void run_q6_k(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
              std::int64_t r1, isa level) {
  const xq_view x(p, 256);
  if (level != isa::portable) return run_k_avx2<false>(w, x, p.n, y, ldy, r0, r1);
  run_rows_portable(p, y, ldy, r0, r1, [&](std::int64_t r, std::int64_t t) {
    return dot_q6_k_portable(w.row(r), x, t);
  });
}

// FP8 block-scaled weights (DeepSeek checkpoints): each row is dequantized once into a per-thread
// scratch row and dotted with every activation row. Not a tuned kernel: it keeps FP8 checkpoints
// runnable on CPU at the weights' memory size.
void run_f8_e4m3(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                 std::int64_t r1, isa) {
  thread_local std::vector<float> row;
  row.resize(static_cast<std::size_t>(w.cols));
  for (std::int64_t r = r0; r < r1; ++r) {
    dequantize_quantized_row(w, r, row.data());
    for (std::int64_t t = 0; t < p.n; ++t) {
      const float* x = p.x + t * p.cols;
      float acc[8] = {};
      std::int64_t c = 0;
      for (; c + 8 <= w.cols; c += 8) {
        for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
      }
      float sum = 0.0f;
      for (; c < w.cols; ++c) sum += row[c] * x[c];
      for (float a : acc) sum += a;
      y[t * ldy + r] = sum;
    }
  }
}

const matmul_kernel kQ8_0{prepare_q8_0, run_q8_0, kRowTile};
const matmul_kernel kQ4_0{prepare_q4_0, run_q4_0, kRowTile};
const matmul_kernel kQ4_K{prepare_k, run_q4_k, 1};
const matmul_kernel kQ6_K{prepare_k, run_q6_k, 1};
const matmul_kernel kI8{prepare_i8, run_i8, kRowTile};
const matmul_kernel kI4{prepare_i4, run_i4, kRowTile};
const matmul_kernel kF8{nullptr, run_f8_e4m3, 1};

}  // namespace

const matmul_kernel* quant_matmul_kernel(dtype t) {
  switch (t) {
    case dtype::q8_0:
      return &kQ8_0;
    case dtype::q4_0:
      return &kQ4_0;
    case dtype::q4_k:
      return &kQ4_K;
    case dtype::q6_k:
      return &kQ6_K;
    case dtype::i8:
      return &kI8;
    case dtype::i4:
      return &kI4;
    case dtype::f8_e4m3:
      return &kF8;
    default:
      return nullptr;
  }
}

}  // namespace shoal::kernels::cpu
