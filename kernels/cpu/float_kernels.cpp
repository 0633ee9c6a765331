// Matmul kernels for F32, F16 and BF16 weights.
//
// Decode (few tokens) streams each weight row once and is bound by memory bandwidth: each thread
// reads its rows as one sequential stream, weights are widened to F32 in registers (never copied),
// and the activations stay F32 so the result matches the reference closely. Prefill (many tokens) is
// bound by arithmetic: at the avx512 level, F16/BF16 weights from 12 tokens on are widened to F32 a
// block at a time and multiplied by F32 FMAs with tokens across the lanes (see "prefill" below);
// from 5 to 11 tokens they use the AVX-512 BF16 dot-product instruction with the activations
// rounded to BF16 once per call, in register tiles of 4 rows x 6 tokens. F32 weights always use F32
// FMAs so an F32 model keeps reproducing its reference logits.

// GCC 12 flags its own intrinsics headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/matmul_kernels.hpp"

namespace shoal::kernels::cpu {

namespace {

constexpr std::int64_t kGemmMinTokens = 5;  // from here on the BF16 tile kernel pays off

// ---------------------------------------------------------------- portable
void run_portable(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                  std::int64_t r1) {
  std::vector<float> row(w.cols);
  for (std::int64_t r = r0; r < r1; ++r) {
    dequantize_row(w, r, row.data());
    for (std::int64_t t = 0; t < p.n; ++t) {
      const float* x = p.x + t * p.cols;
      float acc = 0.0f;
      for (std::int64_t c = 0; c < w.cols; ++c) acc += row[c] * x[c];
      y[t * ldy + r] = acc;
    }
  }
}

// ---------------------------------------------------------------- avx2

SHOAL_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
SHOAL_AVX2 inline __m256 load8(const std::uint16_t* p, dtype t) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (t == dtype::f16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

SHOAL_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SHOAL_AVX2 float scalar_at(const matrix& w, const std::uint8_t* row, std::int64_t c) {
  if (w.type == dtype::f32) {
    float v;
    std::memcpy(&v, row + 4 * c, 4);
    return v;
  }
  std::uint16_t h;
  std::memcpy(&h, row + 2 * c, 2);
  return w.type == dtype::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// Up to 4 rows x up to 4 tokens per pass; each weight vector loaded once for all tokens.
SHOAL_AVX2 void run_avx2(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                         std::int64_t r1) {
  const std::int64_t K = w.cols, K8 = K / 8 * 8;
  for (std::int64_t t0 = 0; t0 < p.n; t0 += 4) {
    const int nt = static_cast<int>(std::min<std::int64_t>(4, p.n - t0));
    for (std::int64_t r = r0; r < r1; r += 4) {
      const int nr = static_cast<int>(std::min<std::int64_t>(4, r1 - r));
      __m256 acc[4][4];
      for (auto& a : acc) for (auto& v : a) v = _mm256_setzero_ps();
      const std::uint8_t* rows[4];
      for (int i = 0; i < 4; ++i) rows[i] = w.row(r + std::min(i, nr - 1));
      for (std::int64_t k = 0; k < K8; k += 8) {
        __m256 wv[4];
        for (int i = 0; i < nr; ++i) {
          wv[i] = w.type == dtype::f32 ? load8(reinterpret_cast<const float*>(rows[i]) + k)
                                       : load8(reinterpret_cast<const std::uint16_t*>(rows[i]) + k, w.type);
        }
        for (int t = 0; t < nt; ++t) {
          __m256 xv = load8(p.x + (t0 + t) * p.cols + k);
          for (int i = 0; i < nr; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
        }
      }
      for (int i = 0; i < nr; ++i) {
        for (int t = 0; t < nt; ++t) {
          float s = hsum8(acc[i][t]);
          const float* x = p.x + (t0 + t) * p.cols;
          for (std::int64_t k = K8; k < K; ++k) s += scalar_at(w, rows[i], k) * x[k];
          y[(t0 + t) * ldy + r + i] = s;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- avx512

SHOAL_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
SHOAL_AVX512 inline __m512 load16(const std::uint16_t* p, dtype t, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  if (t == dtype::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
SHOAL_AVX512 inline __m512 load_w16(const matrix& w, const std::uint8_t* row, std::int64_t k, __mmask16 m) {
  return w.type == dtype::f32 ? load16(reinterpret_cast<const float*>(row) + k, m)
                              : load16(reinterpret_cast<const std::uint16_t*>(row) + k, w.type, m);
}

// A function, not a lambda: lambdas do not inherit the enclosing function's target attribute.
template <dtype T>
SHOAL_AVX512 inline __m512 load_typed(const std::uint8_t* row, std::int64_t k, __mmask16 m) {
  if constexpr (T == dtype::f32) return load16(reinterpret_cast<const float*>(row) + k, m);
  else return load16(reinterpret_cast<const std::uint16_t*>(row) + k, T, m);
}

// Software prefetch distance along a row, in elements (4 KiB for F16): a single stream needs
// several kilobytes in flight to cover DRAM latency.
constexpr std::int64_t kAheadElems = 2048;
// Decode (few tokens): rows one after another, so each thread reads one sequential stream (rows are
// contiguous), which the hardware prefetchers follow across pages; two accumulators per token hide
// the FMA latency. Measured here ~20% faster than interleaving four rows.
template <dtype T, int NT>
SHOAL_AVX512 void fma_seq_row(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r,
                              std::int64_t t0) {
  const std::int64_t K = w.cols;
  const std::uint8_t* row = w.row(r);
  constexpr std::int64_t esize = T == dtype::f32 ? 4 : 2;
  __m512 acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
  const float* xs[NT];
  for (int t = 0; t < NT; ++t) xs[t] = p.x + (t0 + t) * p.cols;
  std::int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(row + (k + kAheadElems) * esize), _MM_HINT_T0);
    const __m512 w0 = load_typed<T>(row, k, 0xffff);
    const __m512 w1 = load_typed<T>(row, k + 16, 0xffff);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[t] + k), acc0[t]);
      acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[t] + k + 16), acc1[t]);
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 w0 = load_typed<T>(row, k, m);
    for (int t = 0; t < NT; ++t) acc0[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, xs[t] + k), acc0[t]);
  }
  for (int t = 0; t < NT; ++t) y[(t0 + t) * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
}

template <dtype T, int NT>
SHOAL_AVX512 void fma_rows(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                           std::int64_t r1, std::int64_t t0) {
  for (std::int64_t r = r0; r < r1; ++r) fma_seq_row<T, NT>(w, p, y, ldy, r, t0);
}

template <dtype T>
SHOAL_AVX512 void fma_all(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                          std::int64_t r1) {
  std::int64_t t0 = 0;
  for (; t0 + 4 <= p.n; t0 += 4) fma_rows<T, 4>(w, p, y, ldy, r0, r1, t0);
  switch (p.n - t0) {
    case 3: fma_rows<T, 3>(w, p, y, ldy, r0, r1, t0); break;
    case 2: fma_rows<T, 2>(w, p, y, ldy, r0, r1, t0); break;
    case 1: fma_rows<T, 1>(w, p, y, ldy, r0, r1, t0); break;
    default: break;
  }
}

SHOAL_AVX512 void run_avx512_fma(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy,
                                 std::int64_t r0, std::int64_t r1) {
  switch (w.type) {
    case dtype::f32: fma_all<dtype::f32>(w, p, y, ldy, r0, r1); return;
    case dtype::f16: fma_all<dtype::f16>(w, p, y, ldy, r0, r1); return;
    case dtype::bf16: fma_all<dtype::bf16>(w, p, y, ldy, r0, r1); return;
    default: return;
  }
}

// BF16 activations for the tile kernel: [n, kp] with kp = cols rounded up to 32, zero padded.
SHOAL_AVX512 void prepare_bf16(prepared_input& p) {
  const std::int64_t kp = (p.cols + 31) / 32 * 32;
  p.buf.assign(static_cast<std::size_t>(p.n * kp * 2), 0);
  auto* out = reinterpret_cast<std::uint16_t*>(p.buf.data());
  for (std::int64_t t = 0; t < p.n; ++t) {
    const float* x = p.x + t * p.cols;
    std::uint16_t* o = out + t * kp;
    for (std::int64_t k = 0; k < kp; k += 32) {
      const auto rem = p.cols - k;
      const __mmask16 m0 = rem >= 16 ? __mmask16(0xffff) : rem <= 0 ? __mmask16(0) : __mmask16((1u << rem) - 1);
      const __mmask16 m1 = rem >= 32 ? __mmask16(0xffff) : rem <= 16 ? __mmask16(0) : __mmask16((1u << (rem - 16)) - 1);
      __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + k + 16), _mm512_maskz_loadu_ps(m0, x + k));
      _mm512_storeu_si512(o + k, (__m512i)v);
    }
  }
}

// One row block (up to kRows rows) of W converted to BF16 [kRows, kp] so the tile loop below reads
// one format; for BF16 weights this is a copy, for F16 a conversion; either way it is done once per
// row block and reused by every token.
constexpr int kRows = 5;
constexpr int kTok = 5;

SHOAL_AVX512 void pack_rows_bf16(const matrix& w, std::int64_t r, int nr, std::int64_t kp, std::uint16_t* out) {
  for (int i = 0; i < kRows; ++i) {
    const std::uint8_t* row = w.row(r + std::min(i, nr - 1));
    std::uint16_t* o = out + i * kp;
    for (std::int64_t k = 0; k < kp; k += 32) {
      const auto rem = w.cols - k;
      const __mmask16 m0 = rem >= 16 ? __mmask16(0xffff) : rem <= 0 ? __mmask16(0) : __mmask16((1u << rem) - 1);
      const __mmask16 m1 = rem >= 32 ? __mmask16(0xffff) : rem <= 16 ? __mmask16(0) : __mmask16((1u << (rem - 16)) - 1);
      if (w.type == dtype::bf16) {
        const auto* src = reinterpret_cast<const std::uint16_t*>(row) + k;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k), _mm256_maskz_loadu_epi16(m0, src));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k + 16), _mm256_maskz_loadu_epi16(m1, src + 16));
      } else {
        __m512bh v = _mm512_cvtne2ps_pbh(load_w16(w, row, k + 16, m1), load_w16(w, row, k, m0));
        _mm512_storeu_si512(o + k, (__m512i)v);
      }
    }
  }
}

SHOAL_AVX512 void run_avx512_bf16_tiles(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy,
                                        std::int64_t r0, std::int64_t r1) {
  const std::int64_t kp = (p.cols + 31) / 32 * 32;
  const auto* xb = reinterpret_cast<const std::uint16_t*>(p.buf.data());
  thread_local std::vector<std::uint16_t> wbuf;
  wbuf.resize(static_cast<std::size_t>(kRows * kp));
  for (std::int64_t r = r0; r < r1; r += kRows) {
    const int nr = static_cast<int>(std::min<std::int64_t>(kRows, r1 - r));
    pack_rows_bf16(w, r, nr, kp, wbuf.data());
    const std::uint16_t* wr[kRows];
    for (int i = 0; i < kRows; ++i) wr[i] = wbuf.data() + i * kp;
    for (std::int64_t t0 = 0; t0 < p.n; t0 += kTok) {
      const int nt = static_cast<int>(std::min<std::int64_t>(kTok, p.n - t0));
      const std::uint16_t* xr[kTok];
      for (int t = 0; t < kTok; ++t) xr[t] = xb + (t0 + std::min(t, nt - 1)) * kp;
      __m512 acc[kRows][kTok];
      for (auto& a : acc) for (auto& v : a) v = _mm512_setzero_ps();
      for (std::int64_t k = 0; k < kp; k += 32) {
        __m512bh wv[kRows];
        for (int i = 0; i < kRows; ++i) wv[i] = (__m512bh)_mm512_loadu_si512(wr[i] + k);
        for (int t = 0; t < kTok; ++t) {
          __m512bh xv = (__m512bh)_mm512_loadu_si512(xr[t] + k);
          for (int i = 0; i < kRows; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv[i], xv);
        }
      }
      for (int i = 0; i < nr; ++i) {
        for (int t = 0; t < nt; ++t) y[(t0 + t) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]);
      }
    }
  }
}

// ---- prefill: F32 FMAs with tokens across the lanes
//
// Measured on this machine's cores (a hot loop of independent chains): a 512-bit F32 FMA issues
// about twice per cycle, a 512-bit BF16 dot product (vdpbf16ps, two multiply-adds per lane) about
// once every two, so F32 FMAs do twice the multiply-adds per second, and without rounding the
// activations to BF16. The activations are transposed once per call to xT [cols][np] (np = tokens
// rounded up to 16, zero padded) so one vector holds 16 tokens' values of one column; a block of
// kLaneRows weight rows is widened to F32 once and reused by every token; the tile is kLaneRows
// rows x (16 * TV) tokens, each weight broadcast from the F32 block to one FMA per token vector.
// 24 accumulators cover the FMA latency; no horizontal sums. Measured with shoal_quant_bench
// (2048 x 5632, one thread, hot): at 128 tokens the BF16 tiles reach ~38 GMAC/s, these ~64; at 10
// tokens the BF16 tiles still win (31 vs 28: 16-token vectors are mostly padding), from 12 on these
// do (33 vs 26 at 12, 46 vs 23 at 16).
constexpr std::int64_t kLaneMinTokens = 12;

constexpr std::int64_t kLaneRows = 12;  // x 2 token vectors = 24 accumulators
// Columns per pass: a row block's weights for one pass (2 x 12 x 512 floats, 48 KB) and the
// activations' slice (np x 512 floats, 256 KB at 128 tokens) stay in L1/L2 while every token tile
// runs over them; the partial sums wait in a per-block yT.
constexpr std::int64_t kLaneCols = 512;
// Rows per block: each activation slice read from L3 serves this many rows (the tiles re-read it
// from L2). Not tuned beyond this first choice.
constexpr std::int64_t kLaneBlock = 4 * kLaneRows;

std::int64_t lane_tokens(std::int64_t n) { return (n + 15) / 16 * 16; }
std::int64_t lane_cols(std::int64_t k) { return (k + kLaneCols - 1) / kLaneCols * kLaneCols; }

// xT in token tiles: tile j holds tokens [32j, 32j + 32) (the last tile 16 wide when np is an odd
// multiple of 16) as [lane_cols(cols)][width], so a tile reads one sequential stream.
std::int64_t tile_width(std::int64_t np, std::int64_t t0) { return np - t0 >= 32 ? 32 : 16; }

void prepare_transposed(prepared_input& p) {
  const std::int64_t np = lane_tokens(p.n), kp = lane_cols(p.cols);
  p.buf.assign(static_cast<std::size_t>(kp * np * 4), 0);
  auto* xt = reinterpret_cast<float*>(p.buf.data());
  for (std::int64_t t0 = 0; t0 < np; t0 += 32) {
    const std::int64_t width = tile_width(np, t0);
    float* tile = xt + t0 * kp;
    // 64 columns at a time: the 64 rows of the tile being written stay in L1 while tokens go by.
    for (std::int64_t c0 = 0; c0 < p.cols; c0 += 64) {
      const std::int64_t c1 = std::min(p.cols, c0 + 64);
      for (std::int64_t t = t0; t < std::min(p.n, t0 + width); ++t) {
        const float* x = p.x + t * p.cols;
        for (std::int64_t c = c0; c < c1; ++c) tile[c * width + (t - t0)] = x[c];
      }
    }
  }
}

// Columns [k0, k0 + kLaneCols) of rows [r, r + nr) of w widened to F32 into `out`
// [rows][kLaneCols]; columns past the matrix and rows past nr are zero.
template <dtype T>
SHOAL_AVX512 void widen_rows(const matrix& w, std::int64_t r, std::int64_t nr, std::int64_t rows, std::int64_t k0,
                             float* out) {
  const std::int64_t kc = std::min(kLaneCols, w.cols - k0);
  for (std::int64_t i = 0; i < rows; ++i) {
    float* o = out + i * kLaneCols;
    const std::uint8_t* row = w.row(r + std::min(i, nr - 1));
    for (std::int64_t k = 0; k < kLaneCols; k += 16) {
      const std::int64_t left = i < nr ? kc - k : 0;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_storeu_ps(o + k, load_typed<T>(row, k0 + k, m));
    }
  }
}

// yt[i][t0 ..] (+)= sum over kc columns of wf[i][k] * xt[k][..] for R rows x 16 * TV tokens
// (xt: this tile's [kLaneCols][16 * TV] slice). Lanes are tokens, so yt rows are plain
// vector loads and stores.
template <int R, int TV>
SHOAL_AVX512 void lane_tile(const float* wf, const float* xt, std::int64_t kc, std::int64_t np, std::int64_t t0,
                            float* yt, bool accumulate) {
  __m512 acc[R][TV];
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) {
      acc[i][v] = accumulate ? _mm512_loadu_ps(yt + i * np + t0 + 16 * v) : _mm512_setzero_ps();
    }
  const float* x = xt;
  for (std::int64_t k = 0; k < kc; ++k, x += 16 * TV) {
    __m512 xv[TV];
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) xv[v] = _mm512_loadu_ps(x + 16 * v);
#pragma GCC unroll 24
    for (int i = 0; i < R; ++i) {
      const __m512 wb = _mm512_set1_ps(wf[i * kLaneCols + k]);
#pragma GCC unroll 2
      for (int v = 0; v < TV; ++v) acc[i][v] = _mm512_fmadd_ps(wb, xv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) _mm512_storeu_ps(yt + i * np + t0 + 16 * v, acc[i][v]);
}

template <dtype T>
SHOAL_AVX512 void run_avx512_lanes(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy,
                                   std::int64_t r0, std::int64_t r1) {
  constexpr std::int64_t rows = kLaneBlock;
  const std::int64_t K = w.cols, np = lane_tokens(p.n), kp = lane_cols(K);
  const auto* xt = reinterpret_cast<const float*>(p.buf.data());
  thread_local std::vector<float> wbuf, yt;
  wbuf.resize(static_cast<std::size_t>(rows * kLaneCols));
  yt.resize(static_cast<std::size_t>(rows * np));
  for (std::int64_t r = r0; r < r1; r += rows) {
    const std::int64_t nr = std::min(rows, r1 - r);
    for (std::int64_t k0 = 0; k0 < K; k0 += kLaneCols) {
      widen_rows<T>(w, r, nr, rows, k0, wbuf.data());
      // The last pass runs only the columns the matrix has (Qwen2-0.5B's 896 would otherwise pay
      // for 1024), and a partial block only the tiles that hold its rows.
      const std::int64_t kc = std::min(kLaneCols, K - k0);
      // The next slice's weights (this block's next columns, or the next block's first ones) come
      // from DRAM while the tiles below compute.
      const std::int64_t nk = k0 + kLaneCols < K ? k0 + kLaneCols : 0, nrow = nk ? r : r + rows;
      for (std::int64_t i = nrow; i < std::min(nrow + rows, r1); ++i) {
        const std::uint8_t* row = w.row(i) + dtype_bytes(w.type, nk);
        const std::int64_t bytes = dtype_bytes(w.type, std::min(kLaneCols, K - nk));
        for (std::int64_t b = 0; b < bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(row + b), _MM_HINT_T1);
      }
      std::int64_t t0 = 0;
      for (; t0 + 32 <= np; t0 += 32) {
        const float* xk = xt + t0 * kp + k0 * 32;
        for (std::int64_t i = 0; i < nr; i += kLaneRows) {
          lane_tile<kLaneRows, 2>(wbuf.data() + i * kLaneCols, xk, kc, np, t0, yt.data() + i * np, k0 > 0);
        }
      }
      // 16 tokens left: one token vector, 24 rows at a time.
      for (std::int64_t i = 0; t0 < np && i < nr; i += 2 * kLaneRows) {
        lane_tile<2 * kLaneRows, 1>(wbuf.data() + i * kLaneCols, xt + t0 * kp + k0 * 16, kc, np, t0, yt.data() + i * np,
                                    k0 > 0);
      }
    }
    for (std::int64_t t = 0; t < p.n; ++t) {
      for (std::int64_t i = 0; i < nr; ++i) y[t * ldy + r + i] = yt[i * np + t];
    }
  }
}

// ---------------------------------------------------------------- dispatch
void prepare_float(prepared_input& p, isa level) {
  if (level == isa::avx512 && p.n >= kLaneMinTokens) prepare_transposed(p);
  else if (level == isa::avx512 && p.n >= kGemmMinTokens) prepare_bf16(p);
}

void run_float(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
               std::int64_t r1, isa level) {
  switch (level) {
    case isa::avx512:
      if (w.type != dtype::f32 && p.n >= kLaneMinTokens && !p.buf.empty()) {
        if (w.type == dtype::f16) run_avx512_lanes<dtype::f16>(w, p, y, ldy, r0, r1);
        else run_avx512_lanes<dtype::bf16>(w, p, y, ldy, r0, r1);
      } else if (w.type != dtype::f32 && p.n >= kGemmMinTokens && !p.buf.empty()) {
        run_avx512_bf16_tiles(w, p, y, ldy, r0, r1);
      } else {
        run_avx512_fma(w, p, y, ldy, r0, r1);
      }
      return;
    case isa::avx2:
      run_avx2(w, p, y, ldy, r0, r1);
      return;
    case isa::portable:
      run_portable(w, p, y, ldy, r0, r1);
      return;
  }
}

const matmul_kernel kFloatKernel{prepare_float, run_float, 4};

}  // namespace

const matmul_kernel* float_matmul_kernel(dtype t) {
  if (t == dtype::f32 || t == dtype::f16 || t == dtype::bf16) return &kFloatKernel;
  return nullptr;
}

const matmul_kernel& matmul_kernel_for(dtype t) {
  if (auto* k = float_matmul_kernel(t)) return *k;
  return *quant_matmul_kernel(t);
}

const matmul_kernel& matmul_kernel_for(const matrix& w) {
  if (w.interleave > 0) return *interleaved_matmul_kernel(w.type);
  return matmul_kernel_for(w.type);
}

}  // namespace shoal::kernels::cpu

