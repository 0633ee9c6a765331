#include "kernels/cpu/host_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "engine/common/error.hpp"

namespace shoal::kernels::cpu {

void expect_host(const tensor& t, dtype type, const char* what) {
  if (t.device != device_kind::host || t.type != type) {
    throw error(errc::internal, std::string(what) + ": a CPU backend needs a host " + to_string(type) +
                                    " tensor, got a " + to_string(t.device) + " " + to_string(t.type) + " one");
  }
}

const std::int32_t* checked_index(const tensor& index, std::int64_t n, std::int64_t limit, const char* what) {
  expect_host(index, dtype::i32, what);
  if (index.elements() < n) {
    throw error(errc::internal, std::string(what) + ": " + std::to_string(n) + " rows but only " +
                                    std::to_string(index.elements()) + " indices");
  }
  const auto* ix = static_cast<const std::int32_t*>(index.data);
  for (std::int64_t i = 0; i < n; ++i) {
    if (ix[i] < 0 || ix[i] >= limit) {
      throw error(errc::internal, std::string(what) + ": index " + std::to_string(ix[i]) + " is outside [0, " +
                                      std::to_string(limit) + ")");
    }
  }
  return ix;
}

attention_indices checked_attention(const attention_args& a) {
  expect_host(a.q, dtype::f32, "attention q");
  expect_host(a.out, dtype::f32, "attention out");
  expect_host(a.k_cache, dtype::f32, "attention k_cache");
  expect_host(a.v_cache, dtype::f32, "attention v_cache");
  expect_host(a.block_tables, dtype::i32, "attention block tables");
  const std::int64_t n = a.q.rows;
  return {checked_index(a.positions, n, std::numeric_limits<std::int32_t>::max(), "attention positions"),
          checked_index(a.seq_of_token, n, a.block_tables.rows, "attention sequences")};
}

namespace {

void expect_same_shape(const tensor& a, const tensor& b, const char* what) {
  if (a.rows != b.rows || a.cols != b.cols) {
    throw error(errc::internal, std::string(what) + ": shapes [" + std::to_string(a.rows) + ", " +
                                    std::to_string(a.cols) + "] and [" + std::to_string(b.rows) + ", " +
                                    std::to_string(b.cols) + "] differ");
  }
}

std::int64_t row_bytes(const tensor& t) { return dtype_bytes(t.type, t.cols); }

const std::uint8_t* row_ptr(const tensor& t, std::int64_t r) {
  return static_cast<const std::uint8_t*>(t.data) + dtype_bytes(t.type, r * t.row_stride);
}

std::uint8_t* row_ptr_mut(const tensor& t, std::int64_t r) {
  return static_cast<std::uint8_t*>(t.data) + dtype_bytes(t.type, r * t.row_stride);
}

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<std::int32_t> top_k(const std::vector<double>& v, std::int64_t k) {
  std::vector<std::int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) { return v[a] > v[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

// One token's routing, in double precision, as the published definition does it.
void route_one(const moe_routing& c, const float* logits, const float* bias, std::int32_t* experts, float* weights) {
  const std::int64_t E = c.n_experts;
  std::vector<double> scores(static_cast<std::size_t>(E));
  if (c.score == moe_routing::scoring::sigmoid) {
    for (std::int64_t e = 0; e < E; ++e) scores[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e])));
  } else {
    const double mx = *std::max_element(logits, logits + E);
    double sum = 0.0;
    for (std::int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(logits[e] - mx);
    for (auto& s : scores) s /= sum;
  }
  std::vector<double> choice = scores;
  if (c.select == moe_routing::method::noaux_tc && bias) {
    for (std::int64_t e = 0; e < E; ++e) choice[e] += bias[e];
  }
  if (c.select != moe_routing::method::greedy) {
    const std::int64_t per = E / c.n_group;
    std::vector<double> group_score(static_cast<std::size_t>(c.n_group));
    for (std::int64_t g = 0; g < c.n_group; ++g) {
      std::vector<double> in(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      std::sort(in.begin(), in.end(), std::greater<>());
      group_score[g] = c.select == moe_routing::method::noaux_tc ? in[0] + in[1] : in[0];
    }
    std::vector<bool> keep(static_cast<std::size_t>(c.n_group), false);
    for (auto g : top_k(group_score, c.topk_group)) keep[g] = true;
    for (std::int64_t e = 0; e < E; ++e) {
      if (!keep[e / per]) choice[e] = -std::numeric_limits<double>::infinity();
    }
  }
  const auto chosen = top_k(choice, c.top_k);
  std::vector<double> w(chosen.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = scores[chosen[i]];
  const bool normalize = c.norm_topk_prob && c.top_k > 1;
  if (normalize) {
    const double sum = std::accumulate(w.begin(), w.end(), 0.0) + 1e-20;
    for (auto& x : w) x /= sum;
  }
  if (c.scale_after_norm || !normalize) {
    for (auto& x : w) x *= c.routed_scaling_factor;
  }
  for (std::size_t i = 0; i < w.size(); ++i) {
    experts[i] = chosen[i];
    weights[i] = static_cast<float>(w[i]);
  }
}

}  // namespace

void* host_backend::allocate(std::int64_t bytes) {
  const auto size = static_cast<std::size_t>((std::max<std::int64_t>(bytes, 1) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, size);
  if (!p) throw error(errc::out_of_range, "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  return p;
}

void host_backend::deallocate(void* p) { std::free(p); }

tensor host_backend::register_vector(std::span<const float> host) {
  tensor t;
  t.data = const_cast<float*>(host.data());  // read-only by contract: registered data is never written
  t.type = dtype::f32;
  t.rows = 1;
  t.cols = static_cast<std::int64_t>(host.size());
  t.row_stride = t.cols;
  return t;
}

void host_backend::to_host(const tensor& src, void* dst) {
  if (src.device != device_kind::host) throw error(errc::internal, "to_host: not a host tensor");
  auto* out = static_cast<std::uint8_t*>(dst);
  const std::int64_t rb = row_bytes(src);
  for (std::int64_t r = 0; r < src.rows; ++r) std::memcpy(out + r * rb, row_ptr(src, r), static_cast<std::size_t>(rb));
}

void host_backend::from_host(const tensor& dst, const void* src) {
  if (dst.device != device_kind::host) throw error(errc::internal, "from_host: not a host tensor");
  const auto* in = static_cast<const std::uint8_t*>(src);
  const std::int64_t rb = row_bytes(dst);
  for (std::int64_t r = 0; r < dst.rows; ++r) std::memcpy(row_ptr_mut(dst, r), in + r * rb, static_cast<std::size_t>(rb));
}

void host_backend::embed(const matrix& table, const tensor& ids, const tensor& out) {
  const auto* ix = cpu::checked_index(ids, out.rows, table.rows, "embed");
  expect_host(out, dtype::f32, "embed");
  for (std::int64_t t = 0; t < out.rows; ++t) dequantize_row(table, ix[t], out.row<float>(t));
}

void host_backend::rmsnorm(const tensor& x, const tensor& weight, float eps, const tensor& y) {
  expect_host(x, dtype::f32, "rmsnorm x");
  expect_host(y, dtype::f32, "rmsnorm y");
  const float* w = weight.row<float>(0);
  for (std::int64_t t = 0; t < x.rows; ++t) {
    const float* xt = x.row<float>(t);
    float ss = 0.0f;
    for (std::int64_t i = 0; i < x.cols; ++i) ss += xt[i] * xt[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(x.cols) + eps);
    float* yt = y.row<float>(t);
    for (std::int64_t i = 0; i < x.cols; ++i) yt[i] = xt[i] * inv * w[i];
  }
}

void host_backend::silu_mul(const tensor& gate, const tensor& up) {
  expect_host(gate, dtype::f32, "silu_mul gate");
  expect_host(up, dtype::f32, "silu_mul up");
  for (std::int64_t t = 0; t < gate.rows; ++t) {
    float* g = gate.row<float>(t);
    const float* u = up.row<float>(t);
    for (std::int64_t i = 0; i < gate.cols; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void host_backend::add(const tensor& y, const tensor& x, float scale) {
  expect_host(y, dtype::f32, "add y");
  expect_host(x, dtype::f32, "add x");
  for (std::int64_t t = 0; t < y.rows; ++t) {
    float* yt = y.row<float>(t);
    const float* xt = x.row<float>(x.rows == 1 ? 0 : t);
    for (std::int64_t i = 0; i < y.cols; ++i) yt[i] += scale * xt[i];
  }
}

void host_backend::copy(const tensor& dst, const tensor& src) {
  expect_same_shape(dst, src, "copy");
  if (dst.type != src.type) throw error(errc::internal, "copy: dtypes differ");
  const std::int64_t rb = row_bytes(src);
  for (std::int64_t r = 0; r < src.rows; ++r) std::memmove(row_ptr_mut(dst, r), row_ptr(src, r), static_cast<std::size_t>(rb));
}

void host_backend::fill(const tensor& dst, float value) {
  expect_host(dst, dtype::f32, "fill");
  for (std::int64_t r = 0; r < dst.rows; ++r) std::fill_n(dst.row<float>(r), dst.cols, value);
}

void host_backend::gather_rows(const tensor& dst, const tensor& src, const tensor& index) {
  if (dst.cols != src.cols || dst.type != src.type) throw error(errc::internal, "gather_rows: row shapes differ");
  const auto* ix = checked_index(index, dst.rows, src.rows, "gather_rows");
  const std::int64_t rb = row_bytes(src);
  for (std::int64_t i = 0; i < dst.rows; ++i) std::memcpy(row_ptr_mut(dst, i), row_ptr(src, ix[i]), static_cast<std::size_t>(rb));
}

void host_backend::scatter_rows(const tensor& dst, const tensor& src, const tensor& index) {
  if (dst.cols != src.cols || dst.type != src.type) throw error(errc::internal, "scatter_rows: row shapes differ");
  const auto* ix = checked_index(index, src.rows, dst.rows, "scatter_rows");
  const std::int64_t rb = row_bytes(src);
  for (std::int64_t i = 0; i < src.rows; ++i) std::memcpy(row_ptr_mut(dst, ix[i]), row_ptr(src, i), static_cast<std::size_t>(rb));
}

void host_backend::scatter_add_rows(const tensor& dst, const tensor& src, const tensor& index, const tensor& weight) {
  expect_host(dst, dtype::f32, "scatter_add_rows");
  expect_host(src, dtype::f32, "scatter_add_rows");
  expect_host(weight, dtype::f32, "scatter_add_rows");
  if (dst.cols != src.cols || weight.rows != src.rows) throw error(errc::internal, "scatter_add_rows: shapes differ");
  const auto* ix = checked_index(index, src.rows, dst.rows, "scatter_add_rows");
  for (std::int64_t i = 0; i < src.rows; ++i) {
    float* o = dst.row<float>(ix[i]);
    const float* s = src.row<float>(i);
    const float w = *weight.row<float>(i);
    for (std::int64_t j = 0; j < src.cols; ++j) o[j] += w * s[j];
  }
}

void host_backend::store_kv(const tensor& cache, const tensor& src, const tensor& slots) {
  expect_host(src, dtype::f32, "store_kv");
  if (cache.type != dtype::f32) {
    throw error(errc::unsupported, std::string("a ") + to_string(cache.type) + " KV cache (the CPU backends store F32)");
  }
  scatter_rows(cache, src, slots);
}

void host_backend::moe_route(const tensor& logits, const tensor& bias, const moe_routing& r, const tensor& experts,
                             const tensor& weights) {
  expect_host(logits, dtype::f32, "moe_route");
  expect_host(experts, dtype::i32, "moe_route");
  expect_host(weights, dtype::f32, "moe_route");
  if (logits.cols != r.n_experts || experts.cols != r.top_k || weights.cols != r.top_k ||
      experts.rows != logits.rows || weights.rows != logits.rows) {
    throw error(errc::internal, "moe_route: shapes do not match the routing");
  }
  const float* b = bias.empty() ? nullptr : static_cast<const float*>(bias.data);
  for (std::int64_t t = 0; t < logits.rows; ++t) {
    route_one(r, logits.row<float>(t), b, experts.row<std::int32_t>(t), weights.row<float>(t));
  }
}

}  // namespace shoal::kernels::cpu
