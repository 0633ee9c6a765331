#pragma once
// Element types of weight matrices and their scalar conversions (shared by the engine and the
// kernels). Block-quantized types store `block_size` elements in `block_bytes` bytes, row by row;
// a row never shares a block with the next.

#include <cstdint>
#include <cstring>
#include <string>

namespace shoal {

enum class dtype : std::uint8_t {
  f32,
  f16,
  bf16,
  q8_0,  // GGUF: blocks of 32 = {f16 d; int8 q[32]}, x = d * q
  q4_0,  // GGUF: blocks of 32 = {f16 d; uint8 q[16]}, x = d * (nibble - 8); low nibbles first
  q4_k,  // GGUF: super-blocks of 256 (144 bytes), 8 sub-blocks with 6-bit scales and mins
  q6_k,  // GGUF: super-blocks of 256 (210 bytes), 16 sub-blocks with int8 scales
  i8,    // per-output-channel symmetric int8: x = scale[row] * q (scales in matrix::scales)
  i4,    // group-wise symmetric int4, two per byte (low nibble first), x = scale[row, g] * (nibble - 8)
  f8_e4m3,  // float8_e4m3fn, one per byte, x = scale[row, col / group_size] * fp8 (DeepSeek's
            // 128x128 weight_scale_inv blocks, expanded to per-row scales when loaded)
  i32,      // int32 indices in backend tensors (token ids, positions, block tables, slots)
};

inline const char* to_string(dtype t) {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::q8_0: return "Q8_0";
    case dtype::q4_0: return "Q4_0";
    case dtype::q4_k: return "Q4_K";
    case dtype::q6_k: return "Q6_K";
    case dtype::i8: return "I8";
    case dtype::i4: return "I4";
    case dtype::f8_e4m3: return "F8_E4M3";
    case dtype::i32: return "I32";
  }
  return "?";
}

/// Elements per storage block (1 for plain types; i4 packs 2 per byte).
inline std::int64_t dtype_block_size(dtype t) {
  switch (t) {
    case dtype::q8_0: case dtype::q4_0: return 32;
    case dtype::q4_k: case dtype::q6_k: return 256;
    case dtype::i4: return 2;
    default: return 1;
  }
}

/// Bytes per storage block.
inline std::int64_t dtype_block_bytes(dtype t) {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16: case dtype::bf16: return 2;
    case dtype::q8_0: return 34;
    case dtype::q4_0: return 18;
    case dtype::q4_k: return 144;
    case dtype::q6_k: return 210;
    case dtype::i8: return 1;
    case dtype::i4: return 1;
    case dtype::f8_e4m3: return 1;
    case dtype::i32: return 4;
  }
  return 0;
}

/// Bytes taken by `n` consecutive elements (n a multiple of the block size).
inline std::int64_t dtype_bytes(dtype t, std::int64_t n) { return n / dtype_block_size(t) * dtype_block_bytes(t); }

/// Whether the matrix carries its scales outside the data (matrix::scales).
inline bool dtype_has_external_scales(dtype t) {
  return t == dtype::i8 || t == dtype::i4 || t == dtype::f8_e4m3;
}

// Kept for call sites that only deal with plain floating types.
inline std::size_t dtype_size(dtype t) { return static_cast<std::size_t>(dtype_block_bytes(t)); }

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

/// float8_e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, S.1111.111
/// is NaN; largest finite 448).
inline float f8_e4m3_to_f32(std::uint8_t b) {
  const int exp = (b >> 3) & 0xF, man = b & 0x7;
  float v;
  if ((b & 0x7F) == 0x7F) {
    v = __builtin_nanf("");
  } else if (exp == 0) {
    v = static_cast<float>(man) * 0x1p-9f;  // subnormal: man/8 * 2^-6
  } else {
    v = __builtin_ldexpf(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  }
  return (b & 0x80) ? -v : v;
}

/// Round to nearest even, saturating at +-448 (the scale is chosen so nothing should saturate).
inline std::uint8_t f32_to_f8_e4m3(float f) {
  std::uint8_t sign = 0;
  if (f < 0.0f) {
    sign = 0x80;
    f = -f;
  }
  if (!(f == f)) return 0x7F;
  if (f >= 448.0f) return static_cast<std::uint8_t>(sign | 0x7E);
  if (f < 0x1p-6f) {  // subnormals (and zero): steps of 2^-9; 8 steps is the smallest normal
    const float q = __builtin_nearbyintf(f * 512.0f);  // default rounding mode: ties to even
    return static_cast<std::uint8_t>(sign | static_cast<int>(q));
  }
  int e = 0;
  const float m = __builtin_frexpf(f, &e);  // f = m * 2^e, m in [0.5, 1)
  int exp = e - 1;                          // f = (2m) * 2^exp, 2m in [1, 2)
  int man = static_cast<int>(__builtin_nearbyintf((2.0f * m - 1.0f) * 8.0f));
  if (man == 8) {
    man = 0;
    ++exp;
  }
  const int code = ((exp + 7) << 3) | man;
  return static_cast<std::uint8_t>(sign | (code > 0x7E ? 0x7E : code));
}

}  // namespace shoal
