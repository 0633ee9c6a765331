#include "engine/tokenizer/utf8.hpp"

namespace shoal::utf8 {

namespace {

// Allowed range of the second byte after lead byte `b0` (table 3-7); {0, 0} marks an invalid lead.
struct second_range {
  unsigned char lo, hi;
  std::size_t len;
};

second_range lead_info(unsigned char b0) {
  if (b0 >= 0xC2 && b0 <= 0xDF) return {0x80, 0xBF, 2};
  if (b0 == 0xE0) return {0xA0, 0xBF, 3};
  if (b0 == 0xED) return {0x80, 0x9F, 3};
  if (b0 >= 0xE1 && b0 <= 0xEF) return {0x80, 0xBF, 3};
  if (b0 == 0xF0) return {0x90, 0xBF, 4};
  if (b0 >= 0xF1 && b0 <= 0xF3) return {0x80, 0xBF, 4};
  if (b0 == 0xF4) return {0x80, 0x8F, 4};
  return {0, 0, 0};
}

// How many bytes from `pos` form a valid prefix of a sequence (at least 1 for a lead byte), and the
// sequence's full length; {0, 0} when s[pos] cannot start one.
std::pair<std::size_t, std::size_t> valid_prefix(std::string_view s, std::size_t pos) {
  auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return {1, 1};
  auto info = lead_info(b0);
  if (info.len == 0) return {0, 0};
  std::size_t n = 1;
  while (n < info.len && pos + n < s.size()) {
    auto b = static_cast<unsigned char>(s[pos + n]);
    bool ok = n == 1 ? (b >= info.lo && b <= info.hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
    ++n;
  }
  return {n, info.len};
}

}  // namespace

std::size_t valid_sequence_length(std::string_view s, std::size_t pos) {
  auto [n, len] = valid_prefix(s, pos);
  return n == len ? n : 0;
}

char32_t decode_at(std::string_view s, std::size_t pos, std::size_t len) {
  auto b = [&](std::size_t i) {
    return static_cast<char32_t>(static_cast<unsigned char>(s[pos + i]));
  };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

bool is_valid(std::string_view s) {
  std::size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    std::size_t n = valid_sequence_length(s, pos);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (pos < s.size()) {
    auto [n, len] = valid_prefix(s, pos);
    if (n != 0 && n == len) {
      out.append(s.substr(pos, n));
      pos += n;
    } else {
      // One U+FFFD per maximal subpart: a lone invalid byte, or a lead with its valid
      // continuations.
      out += "\xEF\xBF\xBD";
      pos += n == 0 ? 1 : n;
    }
  }
  return out;
}

std::size_t incomplete_tail(std::string_view s) {
  // A held-back tail starts at a lead byte at most 3 bytes from the end.
  std::size_t start = s.size();
  for (std::size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    auto b = static_cast<unsigned char>(s[s.size() - back]);
    if ((b & 0xC0) != 0x80) {  // not a continuation byte: the candidate lead
      start = s.size() - back;
      break;
    }
  }
  if (start == s.size()) return 0;
  auto [n, len] = valid_prefix(s, start);
  if (n == 0 || n == len) return 0;     // invalid lead, or complete
  if (start + n != s.size()) return 0;  // broken before the end: already settled as U+FFFD
  return n;
}

const byte_table& gpt2_bytes() {
  static const byte_table table = [] {
    byte_table t;
    t.from_cp.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t.to_cp[b] = printable ? static_cast<char32_t>(b) : next++;
      append(t.to_utf8[b], t.to_cp[b]);
      t.from_cp[t.to_cp[b]] = static_cast<std::int16_t>(b);
    }
    return t;
  }();
  return table;
}

}  // namespace shoal::utf8
