// Quantized weights: the reference dequantization against blocks built by hand from known values,
// quantize -> dequantize error bounds, and every quantized matmul kernel at every instruction level
// this CPU has against the reference (dequantize, then an F32 dot product in double) for odd
// shapes.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/backend.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/matmul_kernels.hpp"
#include "kernels/quantize.hpp"
#include "tests/support/compare.hpp"

using namespace shoal;
using namespace shoal::kernels;

namespace {

void put_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

std::vector<cpu::isa> levels() {
  std::vector<cpu::isa> out = {cpu::isa::portable};
  if (cpu::best_isa() >= cpu::isa::avx2) out.push_back(cpu::isa::avx2);
  if (cpu::best_isa() >= cpu::isa::avx512) out.push_back(cpu::isa::avx512);
  return out;
}

// A quantized matrix with random contents over each format's full range (every int8 including
// -128, every nibble, every 6-bit scale/min, negative Q6_K scales and I4 scales).
struct test_matrix {
  std::vector<std::uint8_t> bytes;
  std::vector<float> scales;
  matrix m;
};

test_matrix random_matrix(dtype t, std::int64_t rows, std::int64_t cols, std::int64_t group,
                          std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  test_matrix out;
  const std::int64_t row_bytes = dtype_bytes(t, cols);
  out.bytes.resize(static_cast<std::size_t>(rows * row_bytes));
  for (auto& b : out.bytes) b = static_cast<std::uint8_t>(byte(rng));
  const std::int64_t bb = dtype_block_bytes(t);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint8_t* row = out.bytes.data() + r * row_bytes;
    for (std::int64_t b = 0; b < cols / dtype_block_size(t); ++b) {
      std::uint8_t* blk = row + b * bb;
      switch (t) {
        case dtype::q8_0:
        case dtype::q4_0:
          put_f16(blk, scale(rng));
          break;
        case dtype::q4_k:
          put_f16(blk, scale(rng) / 16);
          put_f16(blk + 2, scale(rng) / 16);
          break;
        case dtype::q6_k:
          put_f16(blk + 208, scale(rng) / 64);
          break;
        default:
          break;
      }
    }
  }
  out.m = matrix{out.bytes.data(), t, rows, cols, cols};
  if (t == dtype::i8) {
    out.scales.resize(rows);
    out.m.scale_stride = 1;
  } else if (t == dtype::i4) {
    out.scales.resize(rows * (cols / group));
    out.m.scale_stride = cols / group;
    out.m.group_size = group;
  }
  for (auto& s : out.scales) s = (byte(rng) % 2 ? 1.0f : -1.0f) * scale(rng);
  out.m.scales = out.scales.empty() ? nullptr : out.scales.data();
  return out;
}

std::vector<float> make_x(std::int64_t n, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n * cols));
  for (auto& v : x) v = d(rng);
  // A few outliers, as real activations have: they set their block's quantization step.
  for (std::size_t i = 0; i < x.size(); i += 97) x[i] *= 8.0f;
  return x;
}

// Elements per activation-quantization block in each kernel's `prepare` (the whole row for I8).
std::int64_t activation_block(dtype t, std::int64_t cols) {
  switch (t) {
    case dtype::q4_k:
    case dtype::q6_k:
      return 256;
    case dtype::i8:
      return cols;
    default:
      return 32;
  }
}

// Runs kernel `t` at `level` in two row ranges split on its granule, as the thread pool would.
std::vector<float> run_kernel(const matrix& w, const std::vector<float>& x, std::int64_t n,
                              cpu::isa level) {
  const auto* k = cpu::quant_matmul_kernel(w.type);
  BOOST_REQUIRE(k != nullptr);
  cpu::prepared_input p{x.data(), n, w.cols, {}};
  if (k->prepare) k->prepare(p, level);
  std::vector<float> y(static_cast<std::size_t>(n * w.rows), NAN);
  const std::int64_t g = k->row_granule;
  const std::int64_t mid = std::min(w.rows, g * ((w.rows / 2 + g - 1) / g));
  k->run(w, p, y.data(), w.rows, 0, mid, level);
  if (mid < w.rows) k->run(w, p, y.data(), w.rows, mid, w.rows, level);
  return y;
}

// The kernels differ from the reference by rounding the activations to int8 (round to nearest,
// step d = max|x over the block| / 127, so each x moves by at most d/2) and by float summation
// order. Hence the bound per output: sum_c |w_c| * d_block(c) / 2 (times 1.01 for the rounding of
// d itself) plus 2e-5 * sum_c |w_c x_c| for the float arithmetic (a few dozen block partial sums,
// each rounded at 2^-24). A wrong block, scale or offset misses by O(sum |w x|), far outside it.
void check_against_reference(const matrix& w, const std::vector<float>& x, std::int64_t n,
                             const std::vector<float>& got, const std::string& what) {
  const std::int64_t blk = activation_block(w.type, w.cols);
  std::vector<float> row(w.cols);
  double worst = 0;
  for (std::int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w, r, row.data());
    for (std::int64_t t = 0; t < n; ++t) {
      const float* xt = x.data() + t * w.cols;
      double want = 0, mag = 0, bound = 0;
      for (std::int64_t b0 = 0; b0 < w.cols; b0 += blk) {
        const std::int64_t b1 = std::min(w.cols, b0 + blk);
        double amax = 0;
        for (std::int64_t c = b0; c < b1; ++c) amax = std::max(amax, std::fabs(double(xt[c])));
        const double half_step = amax / 127.0 / 2.0 * 1.01;
        for (std::int64_t c = b0; c < b1; ++c) {
          want += double(row[c]) * xt[c];
          mag += std::fabs(double(row[c]) * xt[c]);
          bound += std::fabs(double(row[c])) * half_step;
        }
      }
      bound += 2e-5 * mag + 1e-7;
      const double err = std::fabs(double(got[t * w.rows + r]) - want);
      worst = shoal::test::worse(worst, err / bound);
      if (!(err <= bound)) {
        BOOST_ERROR(what << ": row " << r << " token " << t << " got " << got[t * w.rows + r]
                         << " want " << want << " (bound " << bound << ")");
        return;
      }
    }
  }
  BOOST_TEST_MESSAGE(what << ": worst error / bound " << worst);
}

void check_kernel(const matrix& w, const std::vector<float>& x, std::int64_t n, cpu::isa level,
                  const std::string& what) {
  check_against_reference(w, x, n, run_kernel(w, x, n, level), what);
}

std::string label(dtype t, cpu::isa level, std::int64_t rows, std::int64_t cols, std::int64_t n) {
  return std::string(to_string(t)) + " " + cpu::to_string(level) + " rows " + std::to_string(rows) +
         " cols " + std::to_string(cols) + " n " + std::to_string(n);
}

// Inverse of ggml's get_scale_min_k4: packs 8 six-bit scales and mins into Q4_K's 12 bytes.
void pack_q4_k_scales(const int* sc, const int* m, std::uint8_t* q) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 4; ++j) {
    q[j] = static_cast<std::uint8_t>(sc[j] & 63);
    q[j + 4] = static_cast<std::uint8_t>(m[j] & 63);
  }
  for (int j = 4; j < 8; ++j) {
    q[j + 4] = static_cast<std::uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
    q[j - 4] |= static_cast<std::uint8_t>((sc[j] >> 4) << 6);
    q[j] |= static_cast<std::uint8_t>((m[j] >> 4) << 6);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quant_kernels)

BOOST_AUTO_TEST_CASE(dequantize_hand_built_blocks) {
  // Q8_0: d = 0.5, q[j] = j - 16.
  {
    std::uint8_t b[34];
    put_f16(b, 0.5f);
    for (int j = 0; j < 32; ++j)
      b[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(j - 16));
    std::vector<float> y(32);
    dequantize_row(matrix{b, dtype::q8_0, 1, 32, 32}, 0, y.data());
    for (int j = 0; j < 32; ++j) BOOST_TEST(y[j] == 0.5f * (j - 16));
  }
  // Q4_0: d = 0.25; byte j holds element j (low nibble) and element j + 16 (high nibble).
  {
    std::uint8_t b[18];
    put_f16(b, 0.25f);
    for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
    std::vector<float> y(32);
    dequantize_row(matrix{b, dtype::q4_0, 1, 32, 32}, 0, y.data());
    for (int j = 0; j < 16; ++j) {
      BOOST_TEST(y[j] == 0.25f * (j - 8));
      BOOST_TEST(y[j + 16] == 0.25f * ((15 - j) - 8));
    }
  }
  // Q4_K: x = d * scale[s] * q - dmin * min[s] for sub-block s = element / 32, where chunk
  // element / 64 holds sub-block 2k in its 32 bytes' low nibbles and 2k + 1 in the high ones.
  // Scales and mins above 15 exercise the packed top bits.
  {
    const int sc[8] = {1, 17, 63, 5, 32, 47, 0, 60};
    const int mn[8] = {3, 0, 63, 40, 16, 9, 62, 1};
    std::uint8_t b[144];
    put_f16(b, 0.5f);
    put_f16(b + 2, 0.25f);
    pack_q4_k_scales(sc, mn, b + 4);
    int q[256];
    for (int e = 0; e < 256; ++e) q[e] = (e * 7 + 3) % 16;
    for (int e = 0; e < 256; ++e) {
      const int chunk = e / 64, k = e % 64;
      std::uint8_t& byte = b[16 + chunk * 32 + k % 32];
      if (k < 32)
        byte = static_cast<std::uint8_t>((byte & 0xF0) | q[e]);
      else
        byte = static_cast<std::uint8_t>((byte & 0x0F) | (q[e] << 4));
    }
    std::vector<float> y(256);
    dequantize_row(matrix{b, dtype::q4_k, 1, 256, 256}, 0, y.data());
    for (int e = 0; e < 256; ++e) {
      const int s = e / 32;
      BOOST_TEST(y[e] == 0.5f * sc[s] * q[e] - 0.25f * mn[s], "Q4_K element " << e);
    }
  }
  // Q6_K: x = d * scale[e / 16] * (q - 32), q 6 bits: its low 4 in ql, its top 2 in qh.
  // Element e = 128h + 32g + l (g = 0..3): ql byte 64h + 32(g % 2) + l, low nibble for g < 2;
  // qh byte 32h + l, bits 2g..2g+1.
  {
    std::uint8_t b[210] = {};
    int q[256];
    std::int8_t sc[16];
    for (int e = 0; e < 256; ++e) q[e] = (e * 13 + 5) % 64;
    for (int s = 0; s < 16; ++s) sc[s] = static_cast<std::int8_t>(s * 17 - 128);
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, g = (e % 128) / 32, l = e % 32;
      std::uint8_t& lo = b[64 * h + 32 * (g % 2) + l];
      if (g < 2)
        lo = static_cast<std::uint8_t>((lo & 0xF0) | (q[e] & 0xF));
      else
        lo = static_cast<std::uint8_t>((lo & 0x0F) | ((q[e] & 0xF) << 4));
      b[128 + 32 * h + l] |= static_cast<std::uint8_t>((q[e] >> 4) << (2 * g));
    }
    std::memcpy(b + 192, sc, 16);
    put_f16(b + 208, 0.125f);
    std::vector<float> y(256);
    dequantize_row(matrix{b, dtype::q6_k, 1, 256, 256}, 0, y.data());
    for (int e = 0; e < 256; ++e) {
      BOOST_TEST(y[e] == 0.125f * sc[e / 16] * (q[e] - 32), "Q6_K element " << e);
    }
  }
  // I8: one scale per row; I4: one per group, low nibble = the even element.
  {
    const std::int8_t q[2][3] = {{-128, 0, 127}, {1, -1, 5}};
    const float s[2] = {0.5f, -2.0f};
    matrix m{q, dtype::i8, 2, 3, 3, s, 1, 0};
    std::vector<float> y(3);
    dequantize_row(m, 1, y.data());
    BOOST_TEST(y[0] == -2.0f);
    BOOST_TEST(y[1] == 2.0f);
    BOOST_TEST(y[2] == -10.0f);
    dequantize_row(m, 0, y.data());
    BOOST_TEST(y[0] == -64.0f);
  }
  {
    const std::uint8_t q[4] = {0x80, 0xF0, 0x3C, 0x12};  // elements 0,8, 0,15, 12,3, 2,1
    const float s[2] = {0.5f, 2.0f};                     // group size 4
    matrix m{q, dtype::i4, 1, 8, 8, s, 2, 4};
    std::vector<float> y(8);
    dequantize_row(m, 0, y.data());
    const float want[8] = {-4.0f, 0.0f, -4.0f, 3.5f, 8.0f, -10.0f, -12.0f, -14.0f};
    for (int j = 0; j < 8; ++j) BOOST_TEST(y[j] == want[j], "I4 element " << j);
  }
}

BOOST_AUTO_TEST_CASE(quantize_round_trip_error_bounds) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  const std::int64_t n = 2048;
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = nd(rng);
  x[5] = 0.3f;  // an outlier sets its block's scale
  x[700] = -0.4f;
  for (int j = 64; j < 96; ++j) x[j] = 0.0f;  // an all-zero block must come back as zeros

  // Q8_0: step d = max|x| / 127 stored as F16; error <= d/2 + 127 * d * 2^-11 (the F16 rounding of
  // d).
  std::vector<std::uint8_t> q8(n / 32 * 34);
  shoal::kernels::quantize_row_q8_0(x.data(), n, q8.data());
  dequantize_row(matrix{q8.data(), dtype::q8_0, 1, n, n}, 0, y.data());
  for (std::int64_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    const float d = amax / 127;
    for (int j = 0; j < 32; ++j)
      BOOST_TEST(std::fabs(y[32 * b + j] - x[32 * b + j]) <= d * 0.57f + 1e-9f);
  }
  // Q4_0: step |d| = max|x| / 8; every value within d/2, except the largest positive one when
  // the extreme is negative, which clamps at nibble 15 (one step).
  std::vector<std::uint8_t> q4(n / 32 * 18);
  shoal::kernels::quantize_row_q4_0(x.data(), n, q4.data());
  dequantize_row(matrix{q4.data(), dtype::q4_0, 1, n, n}, 0, y.data());
  for (std::int64_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    for (int j = 0; j < 32; ++j)
      BOOST_TEST(std::fabs(y[32 * b + j] - x[32 * b + j]) <= amax / 8 * 1.01f + 1e-9f);
  }
  // I8 per row: step max|x| / 127, error <= step / 2.
  std::vector<std::int8_t> i8(n);
  const float s8 = shoal::kernels::quantize_row_i8(x.data(), n, i8.data());
  BOOST_TEST(s8 == 0.4f / 127);
  dequantize_row(matrix{i8.data(), dtype::i8, 1, n, n, &s8, 1, 0}, 0, y.data());
  for (std::int64_t c = 0; c < n; ++c) BOOST_TEST(std::fabs(y[c] - x[c]) <= s8 * 0.5001f);
  // I4 groups of 64: as Q4_0 with F32 scales.
  for (std::int64_t g : {32, 64, 128}) {
    std::vector<std::uint8_t> i4(n / 2);
    std::vector<float> s4(n / g);
    shoal::kernels::quantize_row_i4(x.data(), n, g, i4.data(), s4.data());
    dequantize_row(matrix{i4.data(), dtype::i4, 1, n, n, s4.data(), n / g, g}, 0, y.data());
    for (std::int64_t k = 0; k < n / g; ++k) {
      float amax = 0;
      for (std::int64_t j = 0; j < g; ++j) amax = std::max(amax, std::fabs(x[g * k + j]));
      for (std::int64_t j = 0; j < g; ++j) {
        BOOST_TEST(std::fabs(y[g * k + j] - x[g * k + j]) <= amax / 8 * 1.0001f + 1e-9f);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(block32_kernels_match_reference) {
  for (dtype t : {dtype::q8_0, dtype::q4_0}) {
    for (std::int64_t rows : {1, 7, 33}) {
      for (std::int64_t cols : {32, 64, 96, 160, 2048}) {
        auto w = random_matrix(t, rows, cols, 0, rows * 1000 + cols);
        for (std::int64_t n : {1, 3, 8, 13}) {
          auto x = make_x(n, cols, n * 7 + cols);
          for (auto level : levels())
            check_kernel(w.m, x, n, level, label(t, level, rows, cols, n));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(k_quant_kernels_match_reference) {
  for (dtype t : {dtype::q4_k, dtype::q6_k}) {
    for (std::int64_t rows : {1, 7, 33}) {
      for (std::int64_t cols : {256, 512, 2048}) {
        auto w = random_matrix(t, rows, cols, 0, rows * 1000 + cols);
        for (std::int64_t n : {1, 3, 8, 13}) {
          auto x = make_x(n, cols, n * 7 + cols);
          for (auto level : levels())
            check_kernel(w.m, x, n, level, label(t, level, rows, cols, n));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(i8_kernels_match_reference) {
  for (std::int64_t rows : {1, 7, 33}) {
    for (std::int64_t cols : {1, 7, 32, 63, 64, 65, 172, 2048}) {
      auto w = random_matrix(dtype::i8, rows, cols, 0, rows * 1000 + cols);
      for (std::int64_t n : {1, 3, 8, 13}) {
        auto x = make_x(n, cols, n * 7 + cols);
        for (auto level : levels())
          check_kernel(w.m, x, n, level, label(dtype::i8, level, rows, cols, n));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(i4_kernels_match_reference) {
  for (auto [cols, group] : {std::pair<std::int64_t, std::int64_t>{32, 32},
                             {96, 32},
                             {128, 64},
                             {256, 128},
                             {2048, 64}}) {
    for (std::int64_t rows : {1, 7, 33}) {
      auto w = random_matrix(dtype::i4, rows, cols, group, rows * 1000 + cols);
      for (std::int64_t n : {1, 3, 8, 13}) {
        auto x = make_x(n, cols, n * 7 + cols);
        for (auto level : levels()) {
          check_kernel(w.m, x, n, level,
                       label(dtype::i4, level, rows, cols, n) + " group " + std::to_string(group));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(column_windows_and_row_slices) {
  // Tensor-parallel slices: a column window reads only its blocks (and, for I4, its scale groups)
  // with the full row stride.
  for (dtype t : {dtype::q8_0, dtype::q4_0, dtype::q4_k, dtype::q6_k, dtype::i8, dtype::i4}) {
    const std::int64_t unit = t == dtype::q4_k || t == dtype::q6_k ? 256 : 64;
    auto w = random_matrix(t, 11, 4 * unit, 32, 99);
    const matrix win = w.m.col_slice(unit, 2 * unit).row_slice(3, 6);
    for (std::int64_t n : {1, 5}) {
      auto x = make_x(n, win.cols, 3);
      for (auto level : levels())
        check_kernel(win, x, n, level, std::string("window ") + label(t, level, 6, win.cols, n));
    }
  }
}

BOOST_AUTO_TEST_CASE(f8_windows_end_on_a_block_or_at_the_last_column) {
  // FP8 matrices narrower than their 128-column scale block (small models): the whole width is a
  // valid window (a tensor-parallel world of one); a window that cuts a block is refused by name.
  std::vector<std::uint8_t> bytes(5 * 64, 0x38);  // 1.0 in E4M3
  std::vector<float> scales(5, 0.5f);
  matrix w{bytes.data(), dtype::f8_e4m3, 5, 64, 64};
  w.scales = scales.data();
  w.scale_stride = 1;
  w.group_size = 128;
  const matrix all = w.col_slice(0, 64);
  BOOST_TEST(all.cols == 64);
  std::vector<float> row(64);
  dequantize_row(all, 4, row.data());
  BOOST_TEST(row[63] == 0.5f);
  BOOST_CHECK_THROW(w.col_slice(0, 32), std::invalid_argument);
  BOOST_CHECK_THROW(w.col_slice(32, 32), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(through_the_fast_backend) {
  // The backend picks the kernel for each weight type and splits rows across its threads.
  for (int threads : {1, 2, 3}) {
    auto fast = make_cpu_backend(threads);
    for (dtype t : {dtype::q8_0, dtype::q4_0, dtype::q4_k, dtype::q6_k, dtype::i8, dtype::i4}) {
      const std::int64_t cols = t == dtype::q4_k || t == dtype::q6_k ? 512 : 192;
      auto w = random_matrix(t, 37, cols, 64, 5);
      for (std::int64_t n : {1, 6}) {
        auto x = make_x(n, cols, 11);
        std::vector<float> got(n * 37, NAN);
        fast->matmul(w.m, host_tensor(x.data(), n, w.m.cols), host_tensor(got.data(), n, w.m.rows));
        check_against_reference(w.m, x, n, got,
                                std::string("backend ") + to_string(t) + " threads " +
                                    std::to_string(threads) + " n " + std::to_string(n));
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
