#pragma once
// PII masking: finds Chinese mobile numbers, PRC resident ID numbers, bank card numbers, emails,
// IPv4/IPv6 addresses and operator-defined patterns in UTF-8 text (Chinese or English, full-width
// digits and punctuation included) and replaces them with typed placeholders. Applied to everything
// before it is persisted or logged (audit store, cache keys, logs).
//
// How it decides (the same rules the corpus in tests/data/pii_corpus.jsonl is labelled by):
// - Candidates come from RE2 patterns; a candidate counts only if its check passes: MOD 11-2 check
//   digit, province code and a real birth date for IDs, Luhn for cards (16-19 digits, not starting
//   with 0, not one repeated digit), octets 0-255 without leading zeros for IPv4, inet_pton for
//   IPv6.
// - Written forms: phones 1[3-9]x-xxxx-xxxx in 3-4-4 groups separated by nothing, ' ', '-' or '.',
//   optionally after +86, 0086, 86 or (+86); IDs as 18 or 15 digits or 6-8-4 groups; cards as one
//   run or 4-digit groups separated by ' ' or '-'; emails with an ASCII local part and a
//   letters-only TLD; IPv4 dotted quads; IPv6 in any inet_pton form (the address only: no zone id,
//   port, prefix).
// - A number never starts or ends inside a longer run: the neighbours of a candidate may not be
//   ASCII letters, digits or '_', nor a '.' or '-' that continues with a digit, nor (for numbers
//   written in space-separated groups) a space that continues with a digit; a '+' before a bare
//   number means another country's code ("+13125550123" is not a Chinese mobile).
// - Overlaps: the longest span wins; equal spans go to the more specific type in the order
//   id_card, bank_card, phone, email, ipv6, ipv4, then custom patterns in configuration order.
//   So an 18-digit number that is a valid ID and also Luhn-valid is an ID (its birth date and check
//   digit are far stronger evidence than Luhn's one in ten), and an email whose local part is a
//   phone number is one email.
// - Full-width forms (U+FF01..U+FF5E, U+3000, U+00A0, U+2010..U+2015) are read as their ASCII
//   twins for the built-in types; spans and placeholders refer to the original bytes.
// - Invalid UTF-8 is never an error: its bytes are simply not part of any match.
//
// Thread safety: a masker is immutable after construction; one instance may be used from any number
// of threads at once (the compiled RE2 programs are shared read-only).

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shoal::governance {

enum class pii_type : std::uint8_t { phone, id_card, bank_card, email, ipv4, ipv6, custom };

/// "phone", "id_card", "bank_card", "email", "ipv4", "ipv6", "custom".
const char* to_string(pii_type type);

struct custom_pattern {
  std::string name;   // names the findings, e.g. "employee_id"; required, unique
  std::string regex;  // RE2 syntax, matched against the raw UTF-8 text (no full-width folding)
  std::string placeholder;  // Default: "" = "[" + uppercase(name) + "]"
};

struct masker_options {
  bool phones = true;      // Default: true
  bool id_cards = true;    // Default: true (18-digit and old 15-digit forms)
  bool bank_cards = true;  // Default: true
  bool emails = true;      // Default: true
  bool ips = true;         // Default: true (IPv4 and IPv6)

  std::string phone_placeholder = "[PHONE]";  // Default: "[PHONE]"
  std::string id_placeholder = "[ID]";        // Default: "[ID]"
  std::string card_placeholder = "[CARD]";    // Default: "[CARD]"
  std::string email_placeholder = "[EMAIL]";  // Default: "[EMAIL]"
  std::string ip_placeholder = "[IP]";        // Default: "[IP]"

  // Partial masking: instead of the placeholder, every digit but the last four becomes
  // `partial_mask_char` and separators stay ("138-1234-5678" -> "***-****-5678"). Full-width
  // digits come out as ASCII.
  bool phone_keep_last4 = false;  // Default: false
  bool card_keep_last4 = false;   // Default: false
  char partial_mask_char = '*';   // Default: '*'

  // Findings carry the raw matched text only when asked; keep it off wherever findings are logged.
  bool include_values = false;  // Default: false

  std::vector<custom_pattern> custom;  // Default: none
};

/// Reads options from JSON (a YAML config converted to JSON works the same). Keys are the field
/// names above; "custom" is a list of {"name", "regex", "placeholder"?}. Unknown keys and wrong
/// types throw shoal::error(errc::invalid_argument) naming the key.
masker_options masker_options_from_json(const nlohmann::json& config);

struct finding {
  pii_type type = pii_type::custom;
  std::string name;       // to_string(type), or the custom pattern's name
  std::size_t begin = 0;  // byte offsets into the original text, [begin, end)
  std::size_t end = 0;
  std::string value;  // the raw matched bytes; empty unless options.include_values
};

struct mask_result {
  std::string text;                           // the masked text
  std::vector<finding> findings;              // non-overlapping, sorted by begin
  std::map<std::string, std::size_t> counts;  // findings per name (as in finding::name)

  std::size_t count(pii_type type) const;
};

class masker {
 public:
  /// Compiles the patterns once. Throws shoal::error(errc::invalid_argument) naming the custom
  /// pattern whose name is empty or repeated or whose regex does not compile.
  explicit masker(masker_options options);
  ~masker();
  masker(const masker&);
  masker(masker&&) noexcept;
  masker& operator=(const masker&);
  masker& operator=(masker&&) noexcept;

  mask_result mask(std::string_view text) const;

  /// The findings mask() would report, without building the masked text.
  std::vector<finding> find(std::string_view text) const;

  /// True as soon as one finding is certain; cheaper than find() on text that has PII early.
  bool contains_pii(std::string_view text) const;

  const masker_options& options() const;

 private:
  struct impl;
  std::shared_ptr<const impl> impl_;  // shared and immutable, so copies are cheap and thread-safe
};

/// Text a client wrote (a request id, a model name, an admin filter, a refusal that quotes them)
/// as an audit record or a log line may keep it: personal data masked first (a cut made before
/// could leave part of a number that no pattern matches any more), then cut to at most
/// `max_bytes` on a UTF-8 character boundary, ending in "..." when cut.
std::string mask_capped(const masker& m, std::string_view text, std::size_t max_bytes);

// Validators, usable on their own. They take the bare value (ASCII, no separators) and return
// false for anything else rather than throwing.

/// An 18-character ID (17 digits + digit/X/x) with a known province code, a real birth date
/// 1900-2099 and a correct ISO 7064 MOD 11-2 check digit, or a 15-digit old-form ID with a known
/// province code and a real 19YY birth date.
bool valid_prc_id(std::string_view id);

/// The ISO 7064 MOD 11-2 check character ('0'-'9' or 'X') for the first 17 digits of an ID;
/// '\0' when `first17` is not 17 ASCII digits.
char prc_id_check_char(std::string_view first17);

/// Luhn (mod 10) over ASCII digits; false for an empty string or any non-digit.
bool luhn_valid(std::string_view digits);

/// Dotted quad, each octet 0-255 without leading zeros.
bool valid_ipv4(std::string_view text);

/// Any textual IPv6 form inet_pton accepts (full, `::`-compressed, IPv4-embedded), except the
/// unspecified address ("::", all zeros), which says nothing about anyone.
bool valid_ipv6(std::string_view text);

}  // namespace shoal::governance
