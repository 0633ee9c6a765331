#pragma once
// Weight quantizers: F32 rows to the storage formats of kernels/dtype.hpp (the encoders of GGUF
// blocks and of Shoal's int8/int4). Backend-neutral: `shoal quantize`, `shoal make-model` and the
// tests use them; every backend's matmul kernels only read what they write.
// Q8_0/Q4_0 follow ggml's reference quantizers (quantize_row_q8_0_ref / q4_0_ref) bit for bit, so a
// file written here is what llama.cpp would write for the same F32 row.

#include <cstdint>

namespace shoal::kernels {

/// ggml Q8_0: per block of 32, d = max|x| / 127, q = round(x / d). `out`: n / 32 blocks of 34
/// bytes.
void quantize_row_q8_0(const float* x, std::int64_t n, std::uint8_t* out);

/// ggml Q4_0: per block of 32, d = (the signed value of largest magnitude) / -8,
/// q = min(15, trunc(x / d + 8.5)). `out`: n / 32 blocks of 18 bytes.
void quantize_row_q4_0(const float* x, std::int64_t n, std::uint8_t* out);

/// Per-output-channel symmetric int8: scale = max|x| / 127, q = round(x / scale) in [-127, 127].
/// Returns the scale (0 for an all-zero row, whose q are all 0).
float quantize_row_i8(const float* x, std::int64_t n, std::int8_t* out);

/// Group-wise symmetric int4 (n a multiple of `group`, `group` even): per group, as Q4_0 does,
/// scale = (the signed value of largest magnitude) / -8 so that value maps to nibble 0 and the full
/// range [-8, 7] is used; nibble = clamp(round(x / scale) + 8, 0, 15). Two per byte, the element
/// with the lower index in the low nibble. `out`: n / 2 bytes; `scales`: n / group floats.
void quantize_row_i4(const float* x, std::int64_t n, std::int64_t group, std::uint8_t* out,
                     float* scales);

}  // namespace shoal::kernels
