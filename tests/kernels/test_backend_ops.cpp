// test_backend_ops: every op of kernels/backend.hpp, for every dtype it accepts, over representative
// shapes (odd sizes, tensor-parallel row and column windows, partial quantized blocks, strided head
// views, MLA and MoE shapes), run on each backend under test and on the reference backend with the
// same inputs, compared with a tolerance per op and dtype. A NaN or infinity in either result is a
// failure. One line per op x dtype x shape with the worst error; exit status 1 on any failure.
//
//   test_backend_ops [--backend NAME]... [--op NAME]... [--list]
//
// Backends: cpu-portable, cpu-avx2, cpu-avx512 (the fast CPU backend at each instruction level this
// CPU runs, 3 threads so row splits are uneven); default: all present. Inputs reach every backend
// through register_weight / from_host and results come back through to_host, so a device backend
// plugs in unchanged. (ggml's test-backend-ops is the model.)

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/common/error.hpp"
#include "kernels/backend.hpp"
#include "kernels/quantize.hpp"

namespace {

using namespace shoal;
using namespace shoal::kernels;

// Every op the interface declares; the run fails if one of them was not exercised.
const std::vector<std::string> kAllOps = {
    "matmul",  "matmul_multi", "embed",        "rmsnorm",          "rope",     "attention",
    "silu_mul", "add",         "copy",         "fill",             "gather_rows", "scatter_rows",
    "scatter_add_rows", "store_kv", "moe_route", "to_host/from_host", "register_weight/register_vector"};

struct backend_entry {
  std::string name;
  std::unique_ptr<backend> be;
};

// ---- inputs

std::vector<float> randn(std::int64_t n, std::uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

/// A host weight matrix of type `t` holding (an encoding of) random values, with its storage.
struct host_matrix {
  std::vector<std::uint8_t> bytes;
  std::vector<float> scales;
  matrix m;
};

void put_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

host_matrix make_matrix(dtype t, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  host_matrix out;
  const auto x = randn(rows * cols, seed, 0.5f);
  out.bytes.resize(static_cast<std::size_t>(rows * dtype_bytes(t, cols)));
  std::uint8_t* data = out.bytes.data();
  std::int64_t group = 0;
  switch (t) {
    case dtype::f32:
      std::memcpy(data, x.data(), x.size() * 4);
      break;
    case dtype::f16:
    case dtype::bf16:
      for (std::size_t i = 0; i < x.size(); ++i) {
        const std::uint16_t h = t == dtype::f16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        std::memcpy(data + 2 * i, &h, 2);
      }
      break;
    case dtype::q8_0:
    case dtype::q4_0:
      for (std::int64_t r = 0; r < rows; ++r) {
        auto* dst = data + r * dtype_bytes(t, cols);
        if (t == dtype::q8_0) quantize_row_q8_0(x.data() + r * cols, cols, dst);
        else quantize_row_q4_0(x.data() + r * cols, cols, dst);
      }
      break;
    case dtype::q4_k:
    case dtype::q6_k: {
      // No encoder here for the K-quants (the loader only reads them): random codes with sane
      // super-block scales, as the kernel tests use.
      std::mt19937_64 rng(seed);
      for (auto& b : out.bytes) b = static_cast<std::uint8_t>(rng());
      std::uniform_real_distribution<float> scale(0.002f, 0.05f);
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t b = 0; b < cols / 256; ++b) {
          std::uint8_t* blk = data + r * dtype_bytes(t, cols) + b * dtype_block_bytes(t);
          if (t == dtype::q4_k) {
            put_f16(blk, scale(rng) / 16);
            put_f16(blk + 2, scale(rng) / 16);
          } else {
            put_f16(blk + 208, scale(rng) / 64);
          }
        }
      }
      break;
    }
    case dtype::i8:
      out.scales.resize(static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r) {
        out.scales[r] = quantize_row_i8(x.data() + r * cols, cols, reinterpret_cast<std::int8_t*>(data + r * cols));
      }
      break;
    case dtype::i4:
      group = 32;
      out.scales.resize(static_cast<std::size_t>(rows * (cols / group)));
      for (std::int64_t r = 0; r < rows; ++r) {
        quantize_row_i4(x.data() + r * cols, cols, group, data + r * cols / 2, out.scales.data() + r * (cols / group));
      }
      break;
    case dtype::f8_e4m3: {
      // DeepSeek's layout: 128-column groups (the last one partial), one scale per group and row.
      group = 128;
      const std::int64_t groups = (cols + group - 1) / group;
      out.scales.resize(static_cast<std::size_t>(rows * groups));
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t g = 0; g < groups; ++g) {
          float amax = 0;
          for (std::int64_t c = g * group; c < std::min(cols, (g + 1) * group); ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
          const float s = amax > 0 ? amax / 448.0f : 1.0f;
          out.scales[r * groups + g] = s;
          for (std::int64_t c = g * group; c < std::min(cols, (g + 1) * group); ++c) data[r * cols + c] = f32_to_f8_e4m3(x[r * cols + c] / s);
        }
      }
      break;
    }
    case dtype::i32:
      throw error(errc::internal, "no I32 weights");
  }
  out.m = matrix{out.bytes.data(), t, rows, cols, cols};
  if (!out.scales.empty()) {
    out.m.scales = out.scales.data();
    out.m.scale_stride = t == dtype::i8 ? 1 : (cols + group - 1) / group;
    out.m.group_size = group;
  }
  return out;
}

// ---- tensors on a backend

tensor_buffer upload(backend& be, const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  tensor_buffer b(be, dtype::f32, rows, cols);
  be.from_host(b, v.data());
  return b;
}

tensor_buffer upload_i32(backend& be, const std::vector<std::int32_t>& v, std::int64_t rows, std::int64_t cols) {
  tensor_buffer b(be, dtype::i32, rows, cols);
  be.from_host(b, v.data());
  return b;
}

std::vector<float> download(backend& be, const tensor& t) {
  if (t.type == dtype::i32) {
    std::vector<std::int32_t> i(static_cast<std::size_t>(t.elements()));
    be.to_host(t, i.data());
    return std::vector<float>(i.begin(), i.end());
  }
  std::vector<float> f(static_cast<std::size_t>(t.elements()));
  be.to_host(t, f.data());
  return f;
}

// ---- the harness

/// How far `got` may be from `want`: |got - want| / scale[i] <= tol (scale empty: 1 + |want|).
struct expectation {
  double tol = 1e-5;
  std::vector<double> scale;
};

class harness {
 public:
  harness(std::vector<backend_entry> under_test, std::set<std::string> ops)
      : tested_(std::move(under_test)),
        ops_(std::move(ops)),
        ref_(make_reference_backend()),
        portable_(make_cpu_backend(3, "portable")) {}

  bool wants(const std::string& op) const { return ops_.empty() || ops_.count(op); }

  /// Runs `f` (which builds inputs on a backend, calls the op and returns its output on the host)
  /// on the reference and on each backend under test, and compares.
  void check(const std::string& op, const std::string& type, const std::string& shape,
             const std::function<std::vector<float>(backend&)>& f,
             const std::function<expectation(const std::vector<float>& want)>& expect) {
    compare(*ref_, "reference", op, type, shape, f, expect);
  }

  /// The same against the fast backend's portable level instead of the reference, for kernels that
  /// must equal the portable plain kernel bit for bit (the interleaved layouts); backends other
  /// than the portable one are compared.
  void check_exact_vs_portable(const std::string& op, const std::string& type, const std::string& shape,
                               const std::function<std::vector<float>(backend&)>& f) {
    compare(*portable_, "cpu-portable", op, type, shape + " == portable", f,
            [](const std::vector<float>&) { return expectation{0.0, {}}; });
  }

  void mark_covered(const std::string& op) { covered_.insert(op); }
  backend& reference() { return *ref_; }
  int failures() const { return failures_; }
  int lines() const { return lines_; }
  const std::set<std::string>& covered() const { return covered_; }

 private:
  void compare(backend& yardstick, const std::string& yardstick_name, const std::string& op, const std::string& type,
               const std::string& shape, const std::function<std::vector<float>(backend&)>& f,
               const std::function<expectation(const std::vector<float>& want)>& expect) {
    if (!wants(op)) return;
    covered_.insert(op);
    std::vector<float> want;
    try {
      want = f(yardstick);
    } catch (const std::exception& e) {
      report(op, type, shape, yardstick_name, -1, 0, std::string("threw: ") + e.what());
      return;
    }
    const expectation ex = expect(want);
    for (auto& b : tested_) {
      if (&yardstick == portable_.get() && b.name == "cpu-portable") continue;
      std::vector<float> got;
      try {
        got = f(*b.be);
      } catch (const std::exception& e) {
        report(op, type, shape, b.name, -1, ex.tol, std::string("threw: ") + e.what());
        continue;
      }
      if (got.size() != want.size()) {
        report(op, type, shape, b.name, -1, ex.tol, "output has " + std::to_string(got.size()) + " values, want " +
                                                        std::to_string(want.size()));
        continue;
      }
      double worst = 0;
      std::string note;
      for (std::size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i]) || !std::isfinite(want[i])) {
          worst = INFINITY;
          note = "non-finite value at " + std::to_string(i) + " (got " + std::to_string(got[i]) + ", want " +
                 std::to_string(want[i]) + ")";
          break;
        }
        const double s = ex.scale.empty() ? 1.0 + std::fabs(want[i]) : std::max(ex.scale[i], 1e-30);
        const double e = std::fabs(double(got[i]) - want[i]) / s;
        if (e > worst) {
          worst = e;
          if (e > ex.tol) note = "at " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " + std::to_string(want[i]);
        }
      }
      report(op, type, shape, b.name, worst, ex.tol, note);
    }
  }

  void report(const std::string& op, const std::string& type, const std::string& shape, const std::string& be,
              double err, double tol, const std::string& note) {
    const bool ok = err >= 0 && err <= tol;
    if (!ok) ++failures_;
    ++lines_;
    std::printf("%-4s %-16s %-7s %-34s %-12s max_err %-11.3g tol %-8.2g%s%s\n", ok ? "OK" : "FAIL", op.c_str(),
                type.c_str(), shape.c_str(), be.c_str(), err < 0 ? NAN : err, tol, note.empty() ? "" : "  ",
                ok ? "" : note.c_str());
  }

  std::vector<backend_entry> tested_;
  std::set<std::string> ops_;
  std::unique_ptr<backend> ref_;
  std::unique_ptr<backend> portable_;
  std::set<std::string> covered_;
  int failures_ = 0;
  int lines_ = 0;
};

std::string dims(std::int64_t a, std::int64_t b) { return "[" + std::to_string(a) + "," + std::to_string(b) + "]"; }

// ---- matmul

// Per output: what the result's error is measured against. Float weights: sum |w| |x| (rounding
// moves a dot product in proportion to its terms); quantized weights: the fast kernels quantize the
// activations to int8 per block, so half a step of each activation block times |w|, plus rounding.
std::vector<double> matmul_scale(const matrix& w, const std::vector<float>& x, std::int64_t n) {
  const bool quant = w.type != dtype::f32 && w.type != dtype::f16 && w.type != dtype::bf16 && w.type != dtype::f8_e4m3;
  const std::int64_t blk = w.type == dtype::q4_k || w.type == dtype::q6_k ? 256 : w.type == dtype::i8 ? w.cols : 32;
  std::vector<float> row(static_cast<std::size_t>(w.cols));
  std::vector<double> s(static_cast<std::size_t>(n * w.rows));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w, r, row.data());
    for (std::int64_t t = 0; t < n; ++t) {
      const float* xt = x.data() + t * w.cols;
      double mag = 0, bound = 0;
      for (std::int64_t b0 = 0; b0 < w.cols; b0 += blk) {
        const std::int64_t b1 = std::min(w.cols, b0 + blk);
        double amax = 0;
        for (std::int64_t c = b0; c < b1; ++c) amax = std::max(amax, std::fabs(double(xt[c])));
        for (std::int64_t c = b0; c < b1; ++c) {
          mag += std::fabs(double(row[c]) * xt[c]);
          bound += std::fabs(double(row[c])) * amax / 254.0 * 1.01;
        }
      }
      s[t * w.rows + r] = quant ? bound + 2e-5 * mag + 1e-7 : std::max(mag, 1e-6);
    }
  }
  return s;
}

// Types the fast backend repacks into interleaved groups of kInterleave rows at its avx2 and avx512
// levels (kernels/cpu/interleaved_kernels.cpp); expect_interleaved fails a check whose registered
// matrix did not come back interleaved, so the exact comparison cannot pass by comparing plain
// kernels with each other.
constexpr std::int64_t kInterleave = 16;
bool interleaved(dtype t) { return t == dtype::q4_0 || t == dtype::q8_0; }

void expect_interleaved(backend& be, const matrix& registered) {
  const std::string name = be.name();
  if (name.rfind("cpu-portable", 0) == 0) return;
  if (registered.interleave != kInterleave) {
    throw error(errc::internal, std::string(be.name()) + " registered the matrix with interleave " +
                                    std::to_string(registered.interleave) + ", expected " + std::to_string(kInterleave));
  }
}

// Columns [0, keep) of each of the n rows of y [n, cols].
std::vector<float> columns(const std::vector<float>& y, std::int64_t n, std::int64_t cols, std::int64_t keep) {
  std::vector<float> out;
  for (std::int64_t t = 0; t < n; ++t) out.insert(out.end(), y.begin() + t * cols, y.begin() + t * cols + keep);
  return out;
}

double matmul_tol(dtype t) {
  switch (t) {
    case dtype::f32: return 1e-5;
    case dtype::f8_e4m3: return 1e-5;
    // F16/BF16 weights may run on AVX-512 BF16 tiles, which round activations to 8-bit mantissas.
    case dtype::f16: case dtype::bf16: return 8e-3;
    default: return 1.0;  // against the half-step bound above
  }
}

void check_matmuls(harness& h) {
  struct shape {
    dtype t;
    std::int64_t rows, cols, n;
    std::int64_t win_row0 = 0, win_rows = 0, win_col0 = 0, win_cols = 0;  // a window of the matrix
    const char* what = "";
  };
  std::vector<shape> shapes;
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0, dtype::q4_k, dtype::q6_k, dtype::i8,
                  dtype::i4, dtype::f8_e4m3}) {
    const bool k = t == dtype::q4_k || t == dtype::q6_k;
    const std::int64_t cols = k ? 512 : t == dtype::f8_e4m3 ? 200 : 192;  // f8: a partial 72-column group
    for (std::int64_t n : {1, 3, 7, 16}) shapes.push_back({t, 37, cols, n, 0, 0, 0, 0, "odd rows"});
    // A tensor-parallel column window (on block boundaries) and row window of a wider matrix.
    const std::int64_t block = k ? 256 : t == dtype::f8_e4m3 ? 128 : t == dtype::i4 ? 32 : 32;
    shapes.push_back({t, 40, cols + block, 5, 8, 24, block, cols, "TP window"});
    if (t == dtype::f32 || t == dtype::f16 || t == dtype::bf16) {
      shapes.push_back({t, 9, 173, 4, 0, 0, 0, 0, "odd cols"});
      shapes.push_back({t, 64, 172, 2, 0, 0, 0, 0, "172 cols"});  // stories260K's ffn_down width
      // Prefill tiles: 53 rows (a 48-row block and 5), 1100 columns (three 512-column passes, the
      // last partial), 40 tokens (a 32-token tile and a 16-token one, 8 of them padding).
      shapes.push_back({t, 53, 1100, 40, 0, 0, 0, 0, "prefill tiles"});
    }
    if (interleaved(t)) {
      // The 37 rows above are 2 groups and 5 plain rows; the TP window's 24 rows 1 and 8. Here:
      // groups only (and token counts around the kernels' 8-token tile), one block per row, fewer
      // rows than a group, and a TP window starting on a group.
      for (std::int64_t n : {1, 9, 20}) shapes.push_back({t, 48, 256, n, 0, 0, 0, 0, "whole groups"});
      for (std::int64_t n : {1, 5}) shapes.push_back({t, 50, 32, n, 0, 0, 0, 0, "one block per row"});
      shapes.push_back({t, 7, 64, 3, 0, 0, 0, 0, "fewer rows than a group"});
      shapes.push_back({t, 80, cols + 64, 6, 32, 32, 64, cols, "TP window on a group"});
      // Several groups per call, and one call spanning the last group and the plain tail: the
      // 3-thread pool hands out 48-row chunks for 74 granules, so the chunk at row 1152 covers
      // group [1152, 1168) and plain rows [1168, 1173). Token counts 2 and 8 + 2 (the 2-token tile).
      for (std::int64_t n : {2, 10}) shapes.push_back({t, 1173, 64, n, 0, 0, 0, 0, "groups and tail in one call"});
    }
  }
  for (const auto& s : shapes) {
    auto w = make_matrix(s.t, s.rows, s.cols, static_cast<std::uint64_t>(s.rows * 131 + s.cols + s.n));
    matrix m = w.m;
    std::string label = dims(s.rows, s.cols) + " n" + std::to_string(s.n);
    if (s.win_rows > 0) {
      m = m.row_slice(s.win_row0, s.win_rows).col_slice(s.win_col0, s.win_cols);
      label += " win" + dims(s.win_rows, s.win_cols);
    }
    const auto x = randn(s.n * m.cols, static_cast<std::uint64_t>(s.n * 7 + m.cols));
    const auto scale = matmul_scale(m, x, s.n);
    h.check("matmul", to_string(s.t), label + " " + s.what, [&](backend& be) {
      const matrix dw = be.register_weight(m);
      auto xb = upload(be, x, s.n, m.cols);
      tensor_buffer y(be, dtype::f32, s.n, m.rows);
      be.matmul(dw, xb, y);
      return download(be, y);
    }, [&](const std::vector<float>&) { return expectation{matmul_tol(s.t), scale}; });
    const std::int64_t grouped = m.rows / kInterleave * kInterleave;
    if (!interleaved(s.t) || grouped == 0) continue;
    // The interleaved kernels against the portable plain kernel on the rows in groups: equal.
    h.check_exact_vs_portable("matmul", to_string(s.t), label + " " + s.what, [&](backend& be) {
      const matrix dw = be.register_weight(m);
      expect_interleaved(be, dw);
      auto xb = upload(be, x, s.n, m.cols);
      tensor_buffer y(be, dtype::f32, s.n, m.rows);
      be.matmul(dw, xb, y);
      return columns(download(be, y), s.n, m.rows, grouped);
    });
  }
  // Rows [16, 48) of a registered interleaved matrix (MLA takes per-head row ranges of kv_b that
  // way), against the same rows of the host matrix.
  for (dtype t : {dtype::q4_0, dtype::q8_0}) {
    auto w = make_matrix(t, 53, 96, 21);
    const matrix part = w.m.row_slice(16, 32);
    const auto x = randn(3 * 96, 22);
    const auto scale = matmul_scale(part, x, 3);
    h.check("matmul", to_string(t), "rows [16,48) of a registered [53,96] n3", [&](backend& be) {
      const matrix dw = be.register_weight(w.m).row_slice(16, 32);
      auto xb = upload(be, x, 3, 96);
      tensor_buffer y(be, dtype::f32, 3, 32);
      be.matmul(dw, xb, y);
      return download(be, y);
    }, [&](const std::vector<float>&) { return expectation{matmul_tol(t), scale}; });
  }
  // Strided views in and out: one MLA head of [n, heads * width] times W_uk^T into its window of
  // the absorbed query, as attend_absorbed does.
  for (dtype t : {dtype::f32, dtype::bf16}) {
    const std::int64_t n = 5, heads = 3, qk = 24, nope = 16, r = 20, lw = 28;
    auto w = make_matrix(t, r, nope, 9);
    const auto q = randn(n * heads * qk, 10);
    std::vector<float> x(static_cast<std::size_t>(n * nope));
    const std::int64_t h0 = 1;
    for (std::int64_t i = 0; i < n; ++i) std::copy_n(q.data() + i * heads * qk + h0 * qk, nope, x.data() + i * nope);
    auto scale = matmul_scale(w.m, x, n);
    h.check("matmul", to_string(t), "MLA head view " + dims(r, nope) + " n5", [&](backend& be) {
      const matrix dw = be.register_weight(w.m);
      auto qb = upload(be, q, n, heads * qk);
      tensor_buffer out(be, dtype::f32, n, heads * lw);
      be.fill(out, 0.0f);
      be.matmul(dw, qb.get().cols_view(h0 * qk, nope), out.get().cols_view(h0 * lw, r));
      auto all = download(be, out);
      std::vector<float> win;
      for (std::int64_t i = 0; i < n; ++i) win.insert(win.end(), all.begin() + i * heads * lw + h0 * lw, all.begin() + i * heads * lw + h0 * lw + r);
      return win;
    }, [&](const std::vector<float>&) { return expectation{matmul_tol(t), scale}; });
  }
  // Fused: q/k/v of different types and widths over one input.
  {
    const std::int64_t n = 6, cols = 96;
    auto a = make_matrix(dtype::f16, 37, cols, 1), b = make_matrix(dtype::q8_0, 5, cols, 2), c = make_matrix(dtype::f32, 11, cols, 3);
    const auto x = randn(n * cols, 4);
    std::vector<double> scale;
    for (auto* w : {&a.m, &b.m, &c.m}) {
      auto s = matmul_scale(*w, x, n);
      for (auto& v : s) v /= matmul_tol(w->type);  // one tolerance (1) for the three
      scale.insert(scale.end(), s.begin(), s.end());
    }
    h.check("matmul_multi", "F16+Q8_0+F32", "37+5+11 rows x 96 n6", [&](backend& be) {
      const matrix wa = be.register_weight(a.m), wb = be.register_weight(b.m), wc = be.register_weight(c.m);
      auto xb = upload(be, x, n, cols);
      tensor_buffer ya(be, dtype::f32, n, 37), yb(be, dtype::f32, n, 5), yc(be, dtype::f32, n, 11);
      const matmul_job jobs[] = {{wa, ya}, {wb, yb}, {wc, yc}};
      be.matmul_multi(jobs, xb);
      auto out = download(be, ya);
      for (auto* y : {&yb, &yc}) {
        auto v = download(be, *y);
        out.insert(out.end(), v.begin(), v.end());
      }
      return out;
    }, [&](const std::vector<float>&) { return expectation{1.0, scale}; });
  }
  h.mark_covered("register_weight/register_vector");
}

// ---- elementwise and row ops

void check_small_ops(harness& h) {
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0, dtype::q4_k, dtype::q6_k, dtype::i8,
                  dtype::i4, dtype::f8_e4m3}) {
    const bool k = t == dtype::q4_k || t == dtype::q6_k;
    const std::int64_t vocab = 50, hidden = k ? 256 : 64;
    auto table = make_matrix(t, vocab, hidden, 77);
    const std::vector<std::int32_t> ids = {0, 49, 7, 7, 13};
    h.check("embed", to_string(t), dims(vocab, hidden) + " 5 ids", [&](backend& be) {
      const matrix tb = be.register_weight(table.m);
      auto ib = upload_i32(be, ids, 1, 5);
      tensor_buffer out(be, dtype::f32, 5, hidden);
      be.embed(tb, ib, out);
      return download(be, out);
    }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  }
  for (auto [n, dim] : {std::pair<std::int64_t, std::int64_t>{3, 64}, {7, 173}, {1, 2048}}) {
    const auto x = randn(n * dim, static_cast<std::uint64_t>(dim)), w = randn(dim, 5);
    h.check("rmsnorm", "F32", dims(n, dim), [&](backend& be) {
      auto xb = upload(be, x, n, dim);
      const tensor wb = be.register_vector(w);
      tensor_buffer y(be, dtype::f32, n, dim);
      be.rmsnorm(xb, wb, 1e-5f, y);
      return download(be, y);
    }, [](const std::vector<float>&) { return expectation{1e-5, {}}; });
  }
  {
    // MLA: the latent's first r columns of [n, r + rd], normed into a window of the cache row.
    const std::int64_t n = 4, r = 16, rd = 8;
    const auto x = randn(n * (r + rd), 3), w = randn(r, 4);
    h.check("rmsnorm", "F32", "view [4,16] of [4,24]", [&](backend& be) {
      auto xb = upload(be, x, n, r + rd);
      const tensor wb = be.register_vector(w);
      tensor_buffer y(be, dtype::f32, n, r + rd);
      be.fill(y, 0.0f);
      be.rmsnorm(xb.get().cols_view(0, r), wb, 1e-6f, y.get().cols_view(0, r));
      return download(be, y);
    }, [](const std::vector<float>&) { return expectation{1e-5, {}}; });
  }
  for (auto style : {rope_style::neox, rope_style::interleaved}) {
    const char* sn = style == rope_style::neox ? "neox" : "interleaved";
    struct rope_case {
      std::int64_t n, heads, head_dim, rot, col0, row_cols;
      float factor;
      const char* what;
    };
    for (const auto& c : {rope_case{3, 4, 16, 16, 0, 64, 1.0f, "full"}, rope_case{5, 2, 24, 8, 16, 48, 1.0f, "partial rot, MLA q_pe"},
                          rope_case{2, 1, 24, 8, 16, 24, 1.3f, "k_pe, YaRN factor"}}) {
      const auto x = randn(c.n * c.row_cols, 8);
      std::vector<std::int32_t> pos;
      for (std::int64_t i = 0; i < c.n; ++i) pos.push_back(static_cast<std::int32_t>(i * 97 + 3));
      std::vector<float> inv(static_cast<std::size_t>(c.rot / 2));
      for (std::size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(c.rot));
      h.check("rope", "F32", std::string(sn) + " " + c.what, [&](backend& be) {
        auto xb = upload(be, x, c.n, c.row_cols);
        auto pb = upload_i32(be, pos, 1, c.n);
        const tensor fb = be.register_vector(inv);
        be.rope(xb.get().cols_view(c.col0, c.row_cols - c.col0), pb, static_cast<std::int32_t>(c.heads),
                static_cast<std::int32_t>(c.head_dim), static_cast<std::int32_t>(c.rot), style, fb, c.factor);
        return download(be, xb);
      }, [](const std::vector<float>&) { return expectation{1e-5, {}}; });
    }
  }
  for (auto [n, cols] : {std::pair<std::int64_t, std::int64_t>{1, 172}, {6, 1000}}) {
    const auto g = randn(n * cols, 1, 3.0f), u = randn(n * cols, 2);
    h.check("silu_mul", "F32", dims(n, cols), [&](backend& be) {
      auto gb = upload(be, g, n, cols);
      auto ub = upload(be, u, n, cols);
      be.silu_mul(gb, ub);
      return download(be, gb);
    }, [](const std::vector<float>&) { return expectation{1e-6, {}}; });
  }
  for (auto [rows_x, scale] : {std::pair<std::int64_t, float>{5, 1.0f}, {1, 1.0f}, {5, -0.25f}}) {
    const std::int64_t n = 5, cols = 33;
    const auto y = randn(n * cols, 1), x = randn(rows_x * cols, 2);
    h.check("add", "F32", dims(n, cols) + (rows_x == 1 ? " bias row" : "") + " scale " + std::to_string(scale),
            [&](backend& be) {
              auto yb = upload(be, y, n, cols);
              auto xb = upload(be, x, rows_x, cols);
              be.add(yb, xb, scale);
              return download(be, yb);
            },
            [](const std::vector<float>&) { return expectation{1e-6, {}}; });
  }
}

void check_data_movement(harness& h) {
  const std::int64_t n = 6, cols = 40;
  const auto src = randn(n * cols, 1);
  h.check("copy", "F32", "window [6,12] into a strided view", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    tensor_buffer d(be, dtype::f32, n, 30);
    be.fill(d, -1.0f);
    be.copy(d.get().cols_view(5, 12), sb.get().cols_view(20, 12));
    return download(be, d);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  h.check("fill", "F32", "view [3,7] of [6,40]", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    be.fill(sb.get().rows_view(2, 3).cols_view(9, 7), 0.5f);
    return download(be, sb);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  const std::vector<std::int32_t> idx = {5, 0, 3, 3};
  h.check("gather_rows", "F32", "4 of [6,40], repeats", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    auto ib = upload_i32(be, idx, 1, 4);
    tensor_buffer d(be, dtype::f32, 4, cols);
    be.gather_rows(d, sb, ib);
    return download(be, d);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  h.check("gather_rows", "I32", "positions by token", [&](backend& be) {
    std::vector<std::int32_t> p = {10, 11, 12, 13, 14, 15};
    auto pb = upload_i32(be, p, 6, 1);
    auto ib = upload_i32(be, idx, 1, 4);
    tensor_buffer d(be, dtype::i32, 4, 1);
    be.gather_rows(d, pb, ib);
    return download(be, d);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  const std::vector<std::int32_t> perm = {4, 1, 5, 0};
  h.check("scatter_rows", "F32", "4 rows into [6,40]", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    auto ib = upload_i32(be, perm, 1, 4);
    tensor_buffer d(be, dtype::f32, n, cols);
    be.fill(d, 0.0f);
    be.scatter_rows(d, sb.get().rows_view(0, 4), ib);
    return download(be, d);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  const auto wts = randn(5, 9);
  const std::vector<std::int32_t> tokens = {2, 0, 2, 5, 2};
  h.check("scatter_add_rows", "F32", "MoE combine, repeated rows", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    auto ib = upload_i32(be, tokens, 1, 5);
    auto wb = upload(be, wts, 5, 1);
    tensor_buffer d(be, dtype::f32, n, cols);
    be.fill(d, 1.0f);
    be.scatter_add_rows(d, sb.get().rows_view(0, 5), ib, wb);
    return download(be, d);
  }, [](const std::vector<float>&) { return expectation{1e-6, {}}; });
  const std::vector<std::int32_t> slots = {17, 3, 8};
  h.check("store_kv", "F32", "3 tokens into 20 slots", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    tensor_buffer cache(be, dtype::f32, 20, cols);
    be.fill(cache, 0.0f);
    auto ib = upload_i32(be, slots, 1, 3);
    be.store_kv(cache, sb.get().rows_view(1, 3), ib);
    return download(be, cache);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
  h.check("to_host/from_host", "F32", "strided view round trip", [&](backend& be) {
    auto sb = upload(be, src, n, cols);
    std::vector<float> part(static_cast<std::size_t>(n * 9));
    be.to_host(sb.get().cols_view(30, 9), part.data());
    for (auto& v : part) v *= 2;
    be.from_host(sb.get().cols_view(1, 9), part.data());
    return download(be, sb);
  }, [](const std::vector<float>&) { return expectation{0.0, {}}; });
}

// ---- attention

void check_attention(harness& h) {
  struct case_t {
    std::int32_t heads, kv_heads, head_dim, block_size;
    std::vector<std::vector<std::int32_t>> tables;  // per sequence
    std::vector<std::pair<std::int32_t, std::int32_t>> tokens;  // (sequence, position)
    std::int64_t q_stride_extra;  // extra columns around q (a strided view)
    const char* what;
  };
  std::vector<case_t> cases = {
      {8, 4, 8, 4, {{3, 0, 7, 1}, {5, 2}}, {{0, 0}, {0, 1}, {0, 2}, {0, 9}, {1, 6}}, 0, "GQA 8/4, 2 sequences, blocks of 4"},
      {4, 4, 16, 16, {{0, 1}}, {{0, 20}}, 0, "decode at 20"},
      {4, 1, 24, 4, {{2, 6, 1}, {0}}, {{0, 10}, {1, 3}}, 8, "MLA absorbed: 1 latent head of 24, strided q"},
      {3, 3, 40, 13, {{0}}, {{0, 10}, {0, 11}, {0, 12}}, 0, "MLA plain: one block of the context"},
      // The AVX-512 tiled kernel (head_dim a multiple of 16): query tiles of 16 tokens of one
      // sequence, key tiles of 16 positions, the causal mask inside a tile.
      {8, 2, 64, 8, {{4, 9, 0, 7, 2}, {3, 8, 1}}, {}, 0, "tiled: prefill 40 + 16 tokens of 2 sequences, GQA 8/2"},
      {8, 2, 32, 4, {{5, 0, 11, 2, 9, 3, 7, 1, 10, 6, 4, 8, 12, 13}, {14}, {15, 16, 17, 18, 19}},
       {{0, 50}, {1, 3}, {2, 17}, {0, 51}}, 0, "tiled: decode of 3 sequences, one token each (and a 2nd)"},
      {16, 1, 80, 16, {{1, 0}}, {}, 6, "tiled: MLA absorbed, 16 heads on one latent head of 80, strided q"},
      {4, 4, 128, 16, {{}}, {}, 0, "tiled: 17 tokens at 280-296 and one at 300 of a long context"},
  };
  for (std::int32_t p = 0; p < 40; ++p) cases[4].tokens.push_back({0, p});
  for (std::int32_t p = 5; p < 21; ++p) cases[4].tokens.push_back({1, p});
  for (std::int32_t p = 0; p < 12; ++p) cases[6].tokens.push_back({0, p});
  for (std::int32_t b = 0; b < 19; ++b) cases[7].tables[0].push_back(18 - b);
  for (std::int32_t p = 280; p < 297; ++p) cases[7].tokens.push_back({0, p});
  cases[7].tokens.push_back({0, 300});
  for (const auto& c : cases) {
    std::int32_t n_blocks = 0;
    std::size_t width = 0;
    for (const auto& t : c.tables) {
      width = std::max(width, t.size());
      for (auto b : t) n_blocks = std::max(n_blocks, b + 1);
    }
    const std::int64_t n = static_cast<std::int64_t>(c.tokens.size());
    const std::int64_t qw = static_cast<std::int64_t>(c.heads) * c.head_dim, kw = static_cast<std::int64_t>(c.kv_heads) * c.head_dim;
    const std::int64_t slots = static_cast<std::int64_t>(n_blocks) * c.block_size;
    const auto q = randn(n * (qw + c.q_stride_extra), 1), k = randn(slots * kw, 2), v = randn(slots * kw, 3);
    std::vector<std::int32_t> tables(c.tables.size() * width, 0), pos, seq;
    for (std::size_t s = 0; s < c.tables.size(); ++s) std::copy(c.tables[s].begin(), c.tables[s].end(), tables.begin() + static_cast<std::ptrdiff_t>(s * width));
    for (auto [s, p] : c.tokens) {
      seq.push_back(s);
      pos.push_back(p);
    }
    const bool shared_kv = c.kv_heads == 1;  // MLA: the latent cache is both
    h.check("attention", "F32", c.what, [&](backend& be) {
      auto qb = upload(be, q, n, qw + c.q_stride_extra);
      auto kb = upload(be, k, slots, kw);
      auto vb = upload(be, v, slots, kw);
      auto tb = upload_i32(be, tables, static_cast<std::int64_t>(c.tables.size()), static_cast<std::int64_t>(width));
      auto pb = upload_i32(be, pos, 1, n);
      auto sb = upload_i32(be, seq, 1, n);
      tensor_buffer out(be, dtype::f32, n, qw);
      attention_args a;
      a.q = qb.get().cols_view(c.q_stride_extra / 2, qw);
      a.out = out;
      a.k_cache = kb;
      a.v_cache = shared_kv ? kb.get() : vb.get();
      a.positions = pb;
      a.block_tables = tb;
      a.seq_of_token = sb;
      a.n_heads = c.heads;
      a.n_kv_heads = c.kv_heads;
      a.head_dim = c.head_dim;
      a.block_size = c.block_size;
      a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      be.attention(a);
      return download(be, out);
    }, [](const std::vector<float>&) { return expectation{2e-5, {}}; });
  }
}

// ---- MoE routing

void check_moe_route(harness& h) {
  struct case_t {
    moe_routing r;
    bool bias;
    const char* what;
  };
  std::vector<case_t> cases;
  {
    moe_routing r;
    r.n_experts = 8;
    r.top_k = 2;
    cases.push_back({r, false, "softmax greedy 8 top2 (Mixtral-like)"});
  }
  {
    moe_routing r;
    r.n_experts = 16;
    r.top_k = 3;
    r.n_group = 4;
    r.topk_group = 2;
    r.select = moe_routing::method::group_limited_greedy;
    r.scale_after_norm = false;
    r.routed_scaling_factor = 16.0f;
    cases.push_back({r, false, "softmax group-limited 16/4 top3 (V2)"});
  }
  {
    moe_routing r;
    r.n_experts = 32;
    r.top_k = 4;
    r.n_group = 8;
    r.topk_group = 3;
    r.select = moe_routing::method::noaux_tc;
    r.score = moe_routing::scoring::sigmoid;
    r.norm_topk_prob = true;
    r.routed_scaling_factor = 2.5f;
    cases.push_back({r, true, "sigmoid noaux_tc 32/8 top4 bias (V3)"});
  }
  for (const auto& c : cases) {
    const std::int64_t n = 9;
    const auto logits = randn(n * c.r.n_experts, 5, 2.0f), bias = randn(c.r.n_experts, 6, 0.1f);
    h.check("moe_route", "F32+I32", c.what, [&](backend& be) {
      auto lb = upload(be, logits, n, c.r.n_experts);
      const tensor bb = c.bias ? be.register_vector(bias) : tensor{};
      tensor_buffer ex(be, dtype::i32, n, c.r.top_k), w(be, dtype::f32, n, c.r.top_k);
      be.moe_route(lb, bb, c.r, ex, w);
      auto out = download(be, ex);  // the experts must agree exactly (ids as floats)
      auto wv = download(be, w);
      out.insert(out.end(), wv.begin(), wv.end());
      return out;
    }, [](const std::vector<float>&) { return expectation{1e-6, {}}; });
  }
}

int usage() {
  std::fprintf(stderr, "usage: test_backend_ops [--backend NAME]... [--op NAME]... [--list]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> want_backends;
  std::set<std::string> ops;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--backend" && i + 1 < argc) want_backends.push_back(argv[++i]);
    else if (a == "--op" && i + 1 < argc) ops.insert(argv[++i]);
    else if (a == "--list") list = true;
    else return usage();
  }
  std::vector<std::string> present;
  for (const auto& l : cpu_levels()) present.push_back("cpu-" + l);
  if (list) {
    std::printf("backends: reference (the yardstick)");
    for (const auto& p : present) std::printf(", %s", p.c_str());
    std::printf("\nops:");
    for (const auto& o : kAllOps) std::printf(" %s", o.c_str());
    std::printf("\n");
    return 0;
  }
  if (want_backends.empty()) want_backends = present;
  std::vector<backend_entry> tested;
  for (const auto& name : want_backends) {
    if (std::find(present.begin(), present.end(), name) == present.end()) {
      std::fprintf(stderr, "test_backend_ops: no backend '%s' here (present:", name.c_str());
      for (const auto& p : present) std::fprintf(stderr, " %s", p.c_str());
      std::fprintf(stderr, ")\n");
      return 2;
    }
    tested.push_back({name, make_cpu_backend(3, name.substr(4))});
  }
  for (const auto& o : ops) {
    if (std::find(kAllOps.begin(), kAllOps.end(), o) == kAllOps.end()) {
      std::fprintf(stderr, "test_backend_ops: unknown op '%s' (--list names them)\n", o.c_str());
      return 2;
    }
  }
  std::printf("test_backend_ops: backends");
  for (const auto& t : tested) std::printf(" %s", t.be->name());
  std::printf(" against %s\n", make_reference_backend()->name());
  harness h(std::move(tested), ops);
  check_matmuls(h);
  check_small_ops(h);
  check_data_movement(h);
  check_attention(h);
  check_moe_route(h);
  std::printf("ops covered (%zu of %zu):", h.covered().size(), kAllOps.size());
  for (const auto& o : kAllOps) std::printf(" %s%s", o.c_str(), h.covered().count(o) ? "" : "(NOT COVERED)");
  std::printf("\n");
  int missing = 0;
  if (ops.empty()) {
    for (const auto& o : kAllOps) missing += h.covered().count(o) ? 0 : 1;
  }
  std::printf("%d checks, %d failed%s\n", h.lines(), h.failures(), missing ? ", some ops not covered" : "");
  return h.failures() == 0 && missing == 0 ? 0 : 1;
}
