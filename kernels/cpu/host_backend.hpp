#pragma once
// What both CPU backends (the reference and the fast one) share: host memory (aligned allocation,
// weights and vectors registered as zero-copy views), copies to and from the host, and the ops that
// cost microseconds per step and have no faster CPU form here (embedding lookup, RMSNorm, SiLU-mul,
// add, data movement, the KV store, MoE routing), written once as plain loops. The backends differ
// where threads and vector units pay: matmul, attention and RoPE.

#include "kernels/backend.hpp"

namespace shoal::kernels::cpu {

class host_backend : public backend {
 public:
  device_kind device() const override { return device_kind::host; }

  void* allocate(std::int64_t bytes) override;
  void deallocate(void* p) override;
  matrix register_weight(const matrix& host) override { return host; }
  tensor register_vector(std::span<const float> host) override;
  void to_host(const tensor& src, void* dst) override;
  void from_host(const tensor& dst, const void* src) override;

  void embed(const matrix& table, const tensor& ids, const tensor& out) override;
  void rmsnorm(const tensor& x, const tensor& weight, float eps, const tensor& y) override;
  void silu_mul(const tensor& gate, const tensor& up) override;
  void add(const tensor& y, const tensor& x, float scale) override;
  void copy(const tensor& dst, const tensor& src) override;
  void fill(const tensor& dst, float value) override;
  void gather_rows(const tensor& dst, const tensor& src, const tensor& index) override;
  void scatter_rows(const tensor& dst, const tensor& src, const tensor& index) override;
  void scatter_add_rows(const tensor& dst, const tensor& src, const tensor& index, const tensor& weight) override;
  void store_kv(const tensor& cache, const tensor& src, const tensor& slots) override;
  void moe_route(const tensor& logits, const tensor& bias, const moe_routing& r, const tensor& experts,
                 const tensor& weights) override;
};

/// Throws shoal::error (internal) unless `t` is a host tensor of `type`: the CPU backends'
/// precondition on every op argument.
void expect_host(const tensor& t, dtype type, const char* what);

/// The rows of an index tensor (i32 [1, n]) checked against `limit`: an index out of range is a
/// caller's bug and throws shoal::error (internal) instead of touching memory it does not own.
const std::int32_t* checked_index(const tensor& index, std::int64_t n, std::int64_t limit, const char* what);

/// An attention call's arguments checked as every CPU backend needs them (host F32 q, out and
/// caches, i32 tables), with each token's position and block-table row.
struct attention_indices {
  const std::int32_t* pos;
  const std::int32_t* seq;
};
attention_indices checked_attention(const attention_args& a);

}  // namespace shoal::kernels::cpu
