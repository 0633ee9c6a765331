// Interleaved (repacked) weight layouts and their matmul kernels. The fast CPU backend repacks a
// weight type that has a layout here when it registers the matrix (fast_backend.cpp), once, into
// memory it owns; rows past the last whole group keep the plain layout and the plain kernels.
//
// Why: the plain kernels read one row's blocks at a time, so every 32 weights pay a scale
// broadcast, a 256-bit integer dot product, a float scale-and-add, and each row ends with a
// horizontal sum; at 2 threads Q4_0 decode and prefill were bound by those instructions, not by
// memory (issue 17: 0.8x and 0.67x llama.cpp). Here one 512-bit integer dot product covers 16 rows.
//
// Q4_0 and Q8_0, groups of 16 rows. A plain block is {f16 d; q[...]}: Q4_0's 16 bytes hold element
// i (< 16) in the low nibble of q[i] and element i + 16 in its high nibble; Q8_0's 32 bytes are
// its 32 int8 elements. A group of 16 rows with nb blocks each is
//   scales [nb][16]        f16: block b's scale of every row, side by side
//   quants [nb][C][16][4]  bytes: for block b, bytes 4j..4j+3 of every row's q (chunk j < C;
//                          C = 4 for Q4_0, 8 for Q8_0)
// so a chunk's 64 bytes hold 4 elements of each of the 16 rows, one row per 32-bit lane (Q4_0:
// the low nibbles elements 4j..4j+3, the high nibbles 16+4j..16+4j+3). vpdpbusd of such a vector
// against the activation's matching 4 int8 values broadcast to all lanes adds 4 products to each
// row's lane: 8 per block, no shuffles, and the 16 lanes end as the 16 rows' outputs. The group
// takes exactly the bytes of its 16 plain rows, so the rows after the last group keep their plain
// addresses and a group starts where its first row would.
//
// vpdpbusd multiplies unsigned by signed bytes: Q4_0's nibbles are w + 8, Q8_0's int8 weights are
// made w + 128 (xor 0x80); the excess, 8 or 128 times sum(x) per block, starts the accumulator
// negated (prepare stored s = -sum(x) and -16 * sum(x), so 8 * s either way).
//
// Arithmetic matches the portable plain kernel bit for bit (test_backend_ops checks it): the same
// int8 activations, the exact integer dot per block, then acc += (d_w * d_x) * dot in the same
// order, with no fused multiply-add (this file is compiled with -ffp-contract=off, see
// kernels/CMakeLists.txt).

// GCC 12 flags its own intrinsics headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul_kernels.hpp"


namespace shoal::kernels::cpu {

namespace {

constexpr std::int32_t kGroup = 16;        // rows per interleaved group: one per 32-bit lane
constexpr std::int64_t kTokenTile512 = 8;  // tokens sharing each unpacked block (32 zmm registers)
constexpr std::int64_t kTokenTile256 = 4;  // the same with 16 ymm registers

enum class kind { q4_0, q8_0 };

// 4-byte chunks of quants per row and block, and the plain block's size.
template <kind K>
constexpr int kChunks = K == kind::q4_0 ? 4 : 8;
template <kind K>
constexpr std::int64_t kBlockBytes = 2 + 4 * kChunks<K>;

// ---------------------------------------------------------------- repacking

// Group g of `src` (rows [16g, 16g + 16)) into `dst` in the layout above.
template <kind K>
void pack_group(const matrix& src, std::int64_t g, std::uint8_t* dst) {
  const std::int64_t nb = src.cols / 32;
  auto* sc = dst;
  auto* qs = dst + nb * 2 * kGroup;
  for (int i = 0; i < kGroup; ++i) {
    const std::uint8_t* row = src.row(g * kGroup + i);
    for (std::int64_t b = 0; b < nb; ++b) {
      const std::uint8_t* blk = row + b * kBlockBytes<K>;
      std::memcpy(sc + (b * kGroup + i) * 2, blk, 2);
      for (int j = 0; j < kChunks<K>; ++j) {
        std::memcpy(qs + (b * kChunks<K> + j) * 64 + i * 4, blk + 2 + 4 * j, 4);
      }
    }
  }
}

template <kind K>
void unpack_row(const std::uint8_t* group, std::int64_t cols, int i, std::uint8_t* out) {
  const std::int64_t nb = cols / 32;
  const std::uint8_t* sc = group;
  const std::uint8_t* qs = group + nb * 2 * kGroup;
  for (std::int64_t b = 0; b < nb; ++b) {
    std::uint8_t* blk = out + b * kBlockBytes<K>;
    std::memcpy(blk, sc + (b * kGroup + i) * 2, 2);
    for (int j = 0; j < kChunks<K>; ++j) std::memcpy(blk + 2 + 4 * j, qs + (b * kChunks<K> + j) * 64 + i * 4, 4);
  }
}

// ---------------------------------------------------------------- the prepared activations

// The int8 activations prepare_q4_0 wrote (quant_kernels.cpp): per token, q [ldq] int8, then
// per 32-block a float scale d and s = -sum(q).
struct xq32 {
  std::int64_t ldq, nb;
  const std::int8_t* q;
  const float* d;
  const std::int32_t* s;
  explicit xq32(const prepared_input& p) {
    const xq_layout l(p.n, p.cols, 32);
    ldq = l.ldq;
    nb = l.nb;
    q = reinterpret_cast<const std::int8_t*>(p.buf.data() + l.q_off);
    d = reinterpret_cast<const float*>(p.buf.data() + l.d_off);
    s = reinterpret_cast<const std::int32_t*>(p.buf.data() + l.s_off);
  }
};

inline std::int32_t load_i32(const std::int8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------- AVX-512 VNNI

// Block b's 8 weight vectors as vpdpbusd's unsigned operand: w[k] holds elements 4k..4k+3 of the 16
// rows.
template <kind K>
SHOAL_AVX512 inline void load_block_avx512(const std::uint8_t* q, __m512i* w) {
  if constexpr (K == kind::q4_0) {
    const __m512i low = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(q + 64 * j);
      w[j] = _mm512_and_si512(v, low);
      w[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
  } else {
    const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) w[j] = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * j), offset);
  }
}

// One group (16 rows) against tokens t0..t0+T-1: y[(t0 + t) * ldy + 0..15].
template <kind K, int T>
SHOAL_AVX512 void group_avx512(const std::uint8_t* group, std::int64_t nb, const xq32& x, std::int64_t t0, float* y,
                               std::int64_t ldy) {
  const auto* sc = group;
  const auto* qs = group + nb * 2 * kGroup;
  __m512 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (std::int64_t b = 0; b < nb; ++b) {
    __m512i w[8];
    load_block_avx512<K>(qs + b * kChunks<K> * 64, w);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + b * 32)));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const std::int64_t tok = t0 + t;
      const std::int8_t* xb = x.q + tok * x.ldq + 32 * b;
      __m512i dot = _mm512_set1_epi32(8 * x.s[tok * x.nb + b]);
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) dot = _mm512_dpbusd_epi32(dot, w[k], _mm512_set1_epi32(load_i32(xb + 4 * k)));
      const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[tok * x.nb + b]));
      acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + (t0 + t) * ldy, acc[t]);
}

template <kind K>
SHOAL_AVX512 void run_group_avx512(const std::uint8_t* group, std::int64_t nb, const xq32& x, std::int64_t n,
                                   float* y, std::int64_t ldy) {
  std::int64_t t = 0;
  for (; t + kTokenTile512 <= n; t += kTokenTile512) group_avx512<K, kTokenTile512>(group, nb, x, t, y, ldy);
  switch (n - t) {
    case 7: group_avx512<K, 7>(group, nb, x, t, y, ldy); break;
    case 6: group_avx512<K, 6>(group, nb, x, t, y, ldy); break;
    case 5: group_avx512<K, 5>(group, nb, x, t, y, ldy); break;
    case 4: group_avx512<K, 4>(group, nb, x, t, y, ldy); break;
    case 3: group_avx512<K, 3>(group, nb, x, t, y, ldy); break;
    case 2: group_avx512<K, 2>(group, nb, x, t, y, ldy); break;
    case 1: group_avx512<K, 1>(group, nb, x, t, y, ldy); break;
    default: break;
  }
}

// ---------------------------------------------------------------- AVX2

// Half a group (8 rows: 32 bytes of each 64-byte chunk) against T tokens, without VNNI.
// Q4_0: vpmaddubsw (unsigned nibbles x signed int8, pairs summed to int16; at most 2 * 15 * 127 =
// 3810 a pair, so all 8 chunks' pairs still fit int16: 30480), then one vpmaddwd to int32 per
// token and block. Q8_0: |w| x sign(w) * x (the plain AVX2 kernel's trick), pairs up to
// 2 * 128 * 127, so each chunk goes to int32 on its own.
template <kind K, int T>
SHOAL_AVX2 void half_avx2(const std::uint8_t* group, std::int64_t nb, int half, const xq32& x, std::int64_t t0,
                          float* y, std::int64_t ldy) {
  const auto* sc = group;
  const auto* qs = group + nb * 2 * kGroup;
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[T];
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::uint8_t* q = qs + b * kChunks<K> * 64 + 32 * half;
    __m256i w[8];
    if constexpr (K == kind::q4_0) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j));
        w[j] = _mm256_and_si256(v, low);
        w[4 + j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      }
    } else {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) w[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + b * 32 + 16 * half)));
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const std::int64_t tok = t0 + t;
      const std::int8_t* xb = x.q + tok * x.ldq + 32 * b;
      __m256i dot;
      if constexpr (K == kind::q4_0) {
        __m256i pairs = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(load_i32(xb)));
#pragma GCC unroll 8
        for (int k = 1; k < 8; ++k) {
          pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(w[k], _mm256_set1_epi32(load_i32(xb + 4 * k))));
        }
        dot = _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), _mm256_set1_epi32(8 * x.s[tok * x.nb + b]));
      } else {
        dot = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) {
          const __m256i xv = _mm256_set1_epi32(load_i32(xb + 4 * k));
          const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w[k], w[k]), _mm256_sign_epi8(xv, w[k]));
          dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
        }
      }
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d[tok * x.nb + b]));
      acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + (t0 + t) * ldy + 8 * half, acc[t]);
}

template <kind K>
SHOAL_AVX2 void run_group_avx2(const std::uint8_t* group, std::int64_t nb, const xq32& x, std::int64_t n, float* y,
                               std::int64_t ldy) {
  for (int half = 0; half < 2; ++half) {
    std::int64_t t = 0;
    for (; t + kTokenTile256 <= n; t += kTokenTile256) half_avx2<K, kTokenTile256>(group, nb, half, x, t, y, ldy);
    switch (n - t) {
      case 3: half_avx2<K, 3>(group, nb, half, x, t, y, ldy); break;
      case 2: half_avx2<K, 2>(group, nb, half, x, t, y, ldy); break;
      case 1: half_avx2<K, 1>(group, nb, half, x, t, y, ldy); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------- dispatch

// Rows [r0, r1) of an interleaved matrix; r0 starts a group (the kernel's row granule). Whole
// groups run here, the plain rows after the last group through the type's plain kernel.
template <kind K>
void run_interleaved(const matrix& w, const prepared_input& p, float* y, std::int64_t ldy, std::int64_t r0,
                     std::int64_t r1, isa level) {
  const std::int64_t grouped = w.rows / kGroup * kGroup;
  const std::int64_t nb = w.cols / 32;
  const xq32 x(p);
  for (std::int64_t r = r0; r < std::min(r1, grouped); r += kGroup) {
    if (level == isa::avx512) {
      run_group_avx512<K>(w.row(r), nb, x, p.n, y + r, ldy);
    } else {
      run_group_avx2<K>(w.row(r), nb, x, p.n, y + r, ldy);
    }
  }
  if (r1 > grouped) quant_matmul_kernel(w.type)->run(w, p, y, ldy, std::max(r0, grouped), r1, level);
}

}  // namespace

std::int32_t interleave_for(dtype t, isa level) {
  // The portable level keeps plain rows: it is the yardstick the interleaved kernels must equal.
  if (level == isa::portable) return 0;
  return t == dtype::q4_0 || t == dtype::q8_0 ? kGroup : 0;
}

void repack_interleaved(const matrix& src, std::int32_t group, std::int64_t g0, std::int64_t g1, std::uint8_t* dst) {
  const std::int64_t row_bytes = dtype_bytes(src.type, src.cols);
  for (std::int64_t g = g0; g < g1; ++g) {
    if ((g + 1) * group > src.rows) {
      for (std::int64_t r = g * group; r < src.rows; ++r) std::memcpy(dst + r * row_bytes, src.row(r), row_bytes);
    } else if (src.type == dtype::q4_0) {
      pack_group<kind::q4_0>(src, g, dst + g * group * row_bytes);
    } else {
      pack_group<kind::q8_0>(src, g, dst + g * group * row_bytes);
    }
  }
}

void deinterleave_row(const matrix& m, std::int64_t r, std::uint8_t* out) {
  const std::int64_t g = m.interleave;
  const std::uint8_t* group = m.row(r / g * g);
  const int i = static_cast<int>(r % g);
  if (m.type == dtype::q4_0) unpack_row<kind::q4_0>(group, m.cols, i, out);
  else unpack_row<kind::q8_0>(group, m.cols, i, out);
}

const matmul_kernel* interleaved_matmul_kernel(dtype t) {
  // The same activations as the plain kernels, so matmul_multi prepares them once for both.
  static const matmul_kernel q4_0{quant_matmul_kernel(dtype::q4_0)->prepare, run_interleaved<kind::q4_0>, kGroup};
  static const matmul_kernel q8_0{quant_matmul_kernel(dtype::q8_0)->prepare, run_interleaved<kind::q8_0>, kGroup};
  switch (t) {
    case dtype::q4_0: return &q4_0;
    case dtype::q8_0: return &q8_0;
    default: return nullptr;
  }
}

}  // namespace shoal::kernels::cpu
