#pragma once
// What this CPU can run, read once with cpuid. Fast kernels are compiled per instruction level
// with target attributes and picked at run time, so one binary runs on any x86-64.

#include <cstdint>
#include <string>

namespace shoal::kernels::cpu {

struct cpu_info {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false, avx_vnni = false;
};

/// Instruction levels the kernels are written for, lowest first.
enum class isa : std::uint8_t {
  portable,  // plain C++ (the compiler's baseline)
  avx2,      // AVX2 + FMA + F16C
  avx512,    // AVX-512 F/BW/VL/DQ + BF16 + VNNI
};

/// Function attributes that compile a kernel for a level: exactly the features best_isa() requires
/// of that level, so code under them runs wherever the level is picked.
#define SHOAL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SHOAL_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma,f16c")))

const cpu_info& detect_cpu();
/// The best level this CPU supports; SHOAL_ISA=portable|avx2|avx512 caps it (for tests/benchmarks).
isa best_isa();
const char* to_string(isa level);
/// One line for logs and `shoal bench`: the CPU's features that matter here.
std::string describe_cpu();

}  // namespace shoal::kernels::cpu
