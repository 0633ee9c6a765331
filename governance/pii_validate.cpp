// Check digits and address syntax: the validators that turn a regex candidate into a finding.

#include <arpa/inet.h>

#include <array>
#include <cstring>

#include "governance/pii.hpp"

namespace shoal::governance {
namespace {

bool all_digits(std::string_view s) {
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return !s.empty();
}

int number(std::string_view digits) {
  int v = 0;
  for (char c : digits) v = v * 10 + (c - '0');
  return v;
}

// GB/T 2260 province-level codes (the first two digits of a resident ID).
bool known_province(int code) {
  switch (code) {
    case 11:
    case 12:
    case 13:
    case 14:
    case 15:
    case 21:
    case 22:
    case 23:
    case 31:
    case 32:
    case 33:
    case 34:
    case 35:
    case 36:
    case 37:
    case 41:
    case 42:
    case 43:
    case 44:
    case 45:
    case 46:
    case 50:
    case 51:
    case 52:
    case 53:
    case 54:
    case 61:
    case 62:
    case 63:
    case 64:
    case 65:
    case 71:  // Taiwan
    case 81:
    case 82:  // Hong Kong, Macau residence permits
    case 83:  // Taiwan residents' residence permits
      return true;
    default:
      return false;
  }
}

// The 2023 foreign permanent resident ID starts with 9 followed by the province code.
bool known_region(std::string_view id) {
  if (id[0] == '9') return known_province(number(id.substr(1, 2)));
  return known_province(number(id.substr(0, 2)));
}

bool real_date(int year, int month, int day) {
  static constexpr std::array<int, 12> days{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12 || day < 1) return false;
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  int last = days[month - 1] + (month == 2 && leap ? 1 : 0);
  return day <= last;
}

}  // namespace

char prc_id_check_char(std::string_view first17) {
  if (first17.size() != 17 || !all_digits(first17)) return '\0';
  // ISO 7064 MOD 11-2: weight of position i (0-based from the left) is 2^(17-i) mod 11.
  static constexpr std::array<int, 17> weights{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
  int sum = 0;
  for (std::size_t i = 0; i < 17; ++i) sum += (first17[i] - '0') * weights[i];
  // The check value c makes (sum + c) == 1 (mod 11); c == 10 is written 'X'.
  static constexpr char codes[] = "10X98765432";
  return codes[sum % 11];
}

bool valid_prc_id(std::string_view id) {
  if (id.size() == 18) {
    if (!all_digits(id.substr(0, 17))) return false;
    char last = id[17] == 'x' ? 'X' : id[17];
    if (!((last >= '0' && last <= '9') || last == 'X')) return false;
    if (!known_region(id)) return false;
    int year = number(id.substr(6, 4));
    if (year < 1900 || year > 2099) return false;
    if (!real_date(year, number(id.substr(10, 2)), number(id.substr(12, 2)))) return false;
    return prc_id_check_char(id.substr(0, 17)) == last;
  }
  if (id.size() == 15) {
    if (!all_digits(id) || !known_region(id)) return false;
    return real_date(1900 + number(id.substr(6, 2)), number(id.substr(8, 2)),
                     number(id.substr(10, 2)));
  }
  return false;
}

bool luhn_valid(std::string_view digits) {
  if (!all_digits(digits)) return false;
  int sum = 0;
  bool twice = false;  // every second digit from the right is doubled
  for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
    int d = *it - '0';
    if (twice) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
    twice = !twice;
  }
  return sum % 10 == 0;
}

bool valid_ipv4(std::string_view text) {
  int parts = 0;
  std::size_t i = 0;
  while (true) {
    std::size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9' && i - start < 4) ++i;
    std::size_t len = i - start;
    if (len == 0 || len > 3) return false;
    if (len > 1 && text[start] == '0') return false;  // "010" reads as octal to some parsers
    if (number(text.substr(start, len)) > 255) return false;
    ++parts;
    if (i == text.size()) return parts == 4;
    if (text[i] != '.' || parts == 4) return false;
    ++i;
  }
}

bool valid_ipv6(std::string_view text) {
  // The longest textual form is 45 characters (six groups + an embedded dotted quad).
  if (text.size() < 2 || text.size() > 45) return false;
  char buffer[46];
  std::memcpy(buffer, text.data(), text.size());
  buffer[text.size()] = '\0';
  unsigned char address[16];
  if (inet_pton(AF_INET6, buffer, address) != 1) return false;
  static constexpr unsigned char zero[16] = {};
  return std::memcmp(address, zero, 16) != 0;
}

}  // namespace shoal::governance
