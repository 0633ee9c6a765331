#include "kernels/cpu/cpu_features.hpp"
#include "kernels/host.hpp"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

namespace shoal::kernels::cpu {

namespace {

std::uint64_t xgetbv0() {
  std::uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

cpu_info read_cpu() {
  cpu_info c;
  unsigned a, b, cx, d;
  if (!__get_cpuid(1, &a, &b, &cx, &d)) return c;
  const bool osxsave = cx & (1u << 27);
  const bool avx = cx & (1u << 28);
  c.fma = cx & (1u << 12);
  c.f16c = cx & (1u << 29);
  if (!osxsave || !avx) return c;
  const std::uint64_t xcr0 = xgetbv0();
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;
  const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;
  if (!ymm_ok) return c;
  __cpuid_count(7, 0, a, b, cx, d);
  c.avx2 = b & (1u << 5);
  if (zmm_ok) {
    c.avx512f = b & (1u << 16);
    c.avx512dq = b & (1u << 17);
    c.avx512bw = b & (1u << 30);
    c.avx512vl = b & (1u << 31);
    c.avx512_vnni = cx & (1u << 11);
  }
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  c.avx_vnni = a1 & (1u << 4);
  if (zmm_ok) c.avx512_bf16 = a1 & (1u << 5);
  return c;
}

}  // namespace

const cpu_info& detect_cpu() {
  static const cpu_info info = read_cpu();
  return info;
}

isa best_isa() {
  static const isa level = [] {
    const auto& c = detect_cpu();
    isa best = isa::portable;
    if (c.avx2 && c.fma && c.f16c) best = isa::avx2;
    if (best == isa::avx2 && c.avx512f && c.avx512bw && c.avx512vl && c.avx512dq && c.avx512_bf16 && c.avx512_vnni) {
      best = isa::avx512;
    }
    // An operator (or a test) may cap the level, never raise it above what the CPU has.
    if (const char* cap = std::getenv("SHOAL_ISA")) {
      if (std::strcmp(cap, "portable") == 0) best = isa::portable;
      else if (std::strcmp(cap, "avx2") == 0 && best == isa::avx512) best = isa::avx2;
    }
    return best;
  }();
  return level;
}

const char* to_string(isa level) {
  switch (level) {
    case isa::portable: return "portable";
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
  }
  return "?";
}

std::string describe_cpu() {
  const auto& c = detect_cpu();
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(c.avx2, "avx2");
  add(c.fma, "fma");
  add(c.f16c, "f16c");
  add(c.avx512f, "avx512f");
  add(c.avx512bw, "avx512bw");
  add(c.avx512vl, "avx512vl");
  add(c.avx512_bf16, "avx512_bf16");
  add(c.avx512_vnni, "avx512_vnni");
  add(c.avx_vnni, "avx_vnni");
  return s;
}

}  // namespace shoal::kernels::cpu

namespace shoal::kernels {

std::string describe_host_cpu() { return cpu::describe_cpu(); }

}  // namespace shoal::kernels
