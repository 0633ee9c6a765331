// Fast F32/F16/BF16 matmul kernels against the reference, at every instruction level this CPU
// has, for odd shapes (172 columns, 1 and 7 rows, token counts on both sides of the GEMM switch),
// through the thread pool and the fused multi-matmul.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <random>

#include "kernels/backend.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/matmul_kernels.hpp"
#include "tests/support/compare.hpp"

using namespace shoal;
using namespace shoal::kernels;

namespace {

struct test_matrix {
  std::vector<std::uint8_t> bytes;
  matrix m;
};

test_matrix make_matrix(dtype t, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  test_matrix out;
  out.bytes.resize(static_cast<std::size_t>(rows * cols * dtype_size(t)));
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    float v = d(rng);
    if (t == dtype::f32) std::memcpy(out.bytes.data() + 4 * i, &v, 4);
    else {
      std::uint16_t h = t == dtype::f16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(out.bytes.data() + 2 * i, &h, 2);
    }
  }
  out.m = matrix{out.bytes.data(), t, rows, cols, cols};
  return out;
}

std::vector<float> make_x(std::int64_t n, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n * cols));
  for (auto& v : x) v = d(rng);
  return x;
}

// Relative to the magnitude of the terms: sum |w||x| bounds how far rounding can move a dot product.
void check_close(const matrix& w, const std::vector<float>& x, std::int64_t n, const std::vector<float>& got,
                 const std::vector<float>& want, float rel_tol, const std::string& what) {
  std::vector<float> row(w.cols);
  float worst = 0;
  for (std::int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w, r, row.data());
    for (std::int64_t t = 0; t < n; ++t) {
      float mag = 0;
      for (std::int64_t c = 0; c < w.cols; ++c) mag += std::fabs(row[c] * x[t * w.cols + c]);
      const float err = std::fabs(got[t * w.rows + r] - want[t * w.rows + r]) / std::max(mag, 1e-6f);
      worst = shoal::test::worse(worst, err);
    }
  }
  BOOST_TEST(worst <= rel_tol, what << ": worst relative error " << worst);
}

std::vector<cpu::isa> levels() {
  std::vector<cpu::isa> out = {cpu::isa::portable};
  if (cpu::best_isa() >= cpu::isa::avx2) out.push_back(cpu::isa::avx2);
  if (cpu::best_isa() >= cpu::isa::avx512) out.push_back(cpu::isa::avx512);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(float_kernels)

BOOST_AUTO_TEST_CASE(each_level_matches_reference) {
  auto ref = make_reference_backend();
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
    for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1, 172}, {7, 172}, {33, 64}, {5, 1000}, {16, 2048}}) {
      auto w = make_matrix(t, rows, cols, rows * 131 + cols);
      for (std::int64_t n : {1, 3, 4, 5, 7, 13}) {
        auto x = make_x(n, cols, n);
        std::vector<float> want(n * rows);
        ref->matmul(w.m, host_tensor(x.data(), n, w.m.cols), host_tensor(want.data(), n, w.m.rows));
        for (auto level : levels()) {
          const auto& k = cpu::matmul_kernel_for(t);
          cpu::prepared_input p{x.data(), n, cols, {}};
          if (k.prepare) k.prepare(p, level);
          std::vector<float> got(n * rows, NAN);
          // Split rows in two uneven ranges on the granule, as the pool would.
          const std::int64_t mid = std::min(rows, k.row_granule * ((rows / 2 + k.row_granule - 1) / k.row_granule));
          k.run(w.m, p, got.data(), rows, 0, mid, level);
          if (mid < rows) k.run(w.m, p, got.data(), rows, mid, rows, level);
          // F32 FMAs: reassociation only. BF16 tiles (F16/BF16 weights, n >= 5 at avx512) round
          // activations (and F16 weights) to 8-bit mantissas: ~2^-9 per term.
          const bool bf16_tiles = level == cpu::isa::avx512 && t != dtype::f32 && n >= 5;
          const float tol = bf16_tiles ? 8e-3f : 1e-5f;
          check_close(w.m, x, n, got, want, tol,
                      std::string(to_string(t)) + " " + cpu::to_string(level) + " rows " + std::to_string(rows) +
                          " cols " + std::to_string(cols) + " n " + std::to_string(n));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(column_windows_and_row_slices) {
  // Tensor-parallel slices: a column window must read only its columns with the full row stride.
  auto ref = make_reference_backend();
  auto fast = make_cpu_backend(2);
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
    auto w = make_matrix(t, 9, 200, 5);
    auto win = w.m.col_slice(40, 86).row_slice(2, 6);
    for (std::int64_t n : {1, 6}) {
      auto x = make_x(n, 86, 3);
      std::vector<float> want(n * 6), got(n * 6);
      ref->matmul(win, host_tensor(x.data(), n, win.cols), host_tensor(want.data(), n, win.rows));
      fast->matmul(win, host_tensor(x.data(), n, win.cols), host_tensor(got.data(), n, win.rows));
      check_close(win, x, n, got, want, n >= 5 && t != dtype::f32 ? 8e-3f : 1e-5f, to_string(t));
    }
  }
}

BOOST_AUTO_TEST_CASE(fused_multi_matmul_through_the_pool) {
  auto ref = make_reference_backend();
  for (int threads : {1, 2, 3}) {
    auto fast = make_cpu_backend(threads);
    auto a = make_matrix(dtype::f16, 37, 96, 1), b = make_matrix(dtype::f16, 5, 96, 2), c = make_matrix(dtype::f32, 11, 96, 3);
    for (std::int64_t n : {1, 9}) {
      auto x = make_x(n, 96, 4);
      std::vector<float> ya(n * 37), yb(n * 5), yc(n * 11);
      const matmul_job jobs[] = {{a.m, host_tensor(ya.data(), n, a.m.rows)},
                                 {b.m, host_tensor(yb.data(), n, b.m.rows)},
                                 {c.m, host_tensor(yc.data(), n, c.m.rows)}};
      fast->matmul_multi(jobs, host_tensor(x.data(), n, 96));
      for (auto* tm : {&a, &b, &c}) {
        std::vector<float> want(n * tm->m.rows);
        ref->matmul(tm->m, host_tensor(x.data(), n, 96), host_tensor(want.data(), n, tm->m.rows));
        const auto& got = tm == &a ? ya : tm == &b ? yb : yc;
        const bool tiles = cpu::best_isa() == cpu::isa::avx512 && tm->m.type != dtype::f32 && n >= 5;
        check_close(tm->m, x, n, got, want, tiles ? 8e-3f : 1e-5f, "threads " + std::to_string(threads));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(other_ops_match_reference) {
  auto ref = make_reference_backend();
  auto fast = make_cpu_backend(2);
  auto x = make_x(3, 64, 7), w = make_x(1, 64, 8);
  std::vector<float> a(3 * 64), b(3 * 64);
  ref->rmsnorm(host_tensor(x.data(), 3, 64), host_tensor(w.data(), 1, 64), 1e-5f, host_tensor(a.data(), 3, 64));
  fast->rmsnorm(host_tensor(x.data(), 3, 64), host_tensor(w.data(), 1, 64), 1e-5f, host_tensor(b.data(), 3, 64));
  for (std::size_t i = 0; i < a.size(); ++i) BOOST_TEST(std::fabs(a[i] - b[i]) <= 1e-5f * (1 + std::fabs(a[i])));
  std::vector<float> inv = {1.0f, 0.1f, 0.01f, 0.001f};
  std::vector<std::int32_t> pos = {0, 5, 300};
  for (auto style : {rope_style::neox, rope_style::interleaved}) {
    auto q1 = make_x(3, 2 * 8, 9), q2 = q1;
    ref->rope(host_tensor(q1.data(), 3, 16), host_tensor(pos.data(), 1, 3), 2, 8, 8, style, host_tensor(inv.data(), 1, 4), 1.0f);
    fast->rope(host_tensor(q2.data(), 3, 16), host_tensor(pos.data(), 1, 3), 2, 8, 8, style, host_tensor(inv.data(), 1, 4), 1.0f);
    for (std::size_t i = 0; i < q1.size(); ++i) BOOST_TEST(std::fabs(q1[i] - q2[i]) <= 1e-5f);
  }
}

BOOST_AUTO_TEST_SUITE_END()
