#pragma once
// Element types of weights and their scalar conversions (shared by the engine and the kernels).

#include <cstdint>
#include <cstring>
#include <string>

namespace shoal {

/// Element types of weight matrices as the kernels see them.
enum class dtype : std::uint8_t { f32, f16, bf16 };

inline const char* to_string(dtype t) {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
  }
  return "?";
}
inline std::size_t dtype_size(dtype t) { return t == dtype::f32 ? 4 : 2; }

inline float bf16_to_f32(std::uint16_t h) {
  std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Round-to-nearest-even, NaN kept quiet.
inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

inline float f16_to_f32(std::uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline std::uint16_t f32_to_f16(float f) {
  _Float16 v = static_cast<_Float16>(f);
  std::uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

}  // namespace shoal
