#pragma once
// UTF-8 helpers shared by the tokenizers: code point iteration, lossy repair (Rust's
// String::from_utf8_lossy rules, which Hugging Face's decoders use), and GPT-2's byte-to-unicode
// table.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shoal::utf8 {

inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Length of the well-formed sequence starting at `s[pos]`, or 0 when the bytes there are not one
/// (Unicode table 3-7: no overlongs, no surrogates, nothing past U+10FFFF).
std::size_t valid_sequence_length(std::string_view s, std::size_t pos);

/// Decodes the well-formed sequence at `pos` (caller checked it with valid_sequence_length).
char32_t decode_at(std::string_view s, std::size_t pos, std::size_t len);

/// Whether `s` is well-formed UTF-8 throughout.
bool is_valid(std::string_view s);

/// Unicode White_Space (what tokenizers' `\s` and Rust's char::is_whitespace mean).
inline bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

/// Replaces every maximal ill-formed subpart with U+FFFD (Unicode's recommended practice, which is
/// what Rust's from_utf8_lossy and therefore Hugging Face's decoders do).
std::string repair(std::string_view s);

/// Length of the incomplete-but-so-far-valid sequence at the end of `s` (0..3): bytes that a later
/// byte may still complete, so a streaming decoder must hold them back.
std::size_t incomplete_tail(std::string_view s);

/// GPT-2's reversible byte <-> printable code point map ("Ġ" is the space byte).
struct byte_table {
  std::array<char32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;  // to_cp as UTF-8
  // Reverse map for code points below 324 (the largest image is U+0143); -1 where none.
  std::array<std::int16_t, 324> from_cp{};
};
const byte_table& gpt2_bytes();

}  // namespace shoal::utf8
