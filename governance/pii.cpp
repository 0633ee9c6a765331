// The masker: fold full-width forms, find candidates with RE2, keep those whose checks pass,
// resolve overlaps, write placeholders.
//
// RE2 rather than PCRE2 (which the tokenizer uses): custom patterns come from operators' config and
// run over every prompt and answer, so matching must stay linear in the text whatever the pattern
// (RE2 has no backtracking, hence no catastrophic patterns), and one compiled RE2 may be used from
// many threads at once without per-thread match data or JIT stacks.

#include <re2/re2.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/common/error.hpp"
#include "governance/pii.hpp"

namespace shoal::governance {

const char* to_string(pii_type type) {
  switch (type) {
    case pii_type::phone:
      return "phone";
    case pii_type::id_card:
      return "id_card";
    case pii_type::bank_card:
      return "bank_card";
    case pii_type::email:
      return "email";
    case pii_type::ipv4:
      return "ipv4";
    case pii_type::ipv6:
      return "ipv6";
    case pii_type::custom:
      return "custom";
  }
  return "custom";
}

std::size_t mask_result::count(pii_type type) const {
  std::size_t n = 0;
  for (const auto& f : findings) n += f.type == type ? 1 : 0;
  return n;
}

namespace {

bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool is_word(unsigned char c) {
  return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

// ---- full-width folding -------------------------------------------------------------------------

// The text the built-in patterns see: full-width ASCII variants, ideographic and no-break spaces
// and Unicode hyphens replaced by their one-byte ASCII twins. Everything else, invalid UTF-8
// included, is copied byte for byte, so positions map back with a short list of shifts.
class folded_text {
 public:
  explicit folded_text(std::string_view original) {
    std::size_t i = 0;
    const std::size_t n = original.size();
    std::size_t saved = 0;
    auto byte = [&](std::size_t k) { return static_cast<unsigned char>(original[k]); };
    while (i < n) {
      unsigned char c = byte(i);
      int folded = -1;
      std::size_t width = 1;
      if (c == 0xEF && i + 2 < n) {
        unsigned char b1 = byte(i + 1), b2 = byte(i + 2);
        if (b1 == 0xBC && b2 >= 0x81 && b2 <= 0xBF) folded = b2 - 0x60;  // U+FF01..U+FF3F
        if (b1 == 0xBD && b2 >= 0x80 && b2 <= 0x9E) folded = b2 - 0x20;  // U+FF40..U+FF5E
        width = 3;
      } else if (c == 0xE3 && i + 2 < n && byte(i + 1) == 0x80 && byte(i + 2) == 0x80) {
        folded = ' ';  // U+3000 ideographic space
        width = 3;
      } else if (c == 0xE2 && i + 2 < n && byte(i + 1) == 0x80 && byte(i + 2) >= 0x90 &&
                 byte(i + 2) <= 0x95) {
        folded = '-';  // U+2010..U+2015 hyphens and dashes
        width = 3;
      } else if (c == 0xC2 && i + 1 < n && byte(i + 1) == 0xA0) {
        folded = ' ';  // U+00A0 no-break space
        width = 2;
      }
      if (folded < 0) {
        ++i;
        continue;
      }
      if (storage_.empty() && shifts_.empty()) storage_.reserve(n);
      storage_.append(original.data() + copied_, i - copied_);
      storage_.push_back(static_cast<char>(folded));
      saved += width - 1;
      shifts_.push_back({storage_.size(), saved});
      i += width;
      copied_ = i;
    }
    if (shifts_.empty()) {
      view_ = original;
    } else {
      storage_.append(original.data() + copied_, n - copied_);
      view_ = storage_;
    }
  }

  std::string_view view() const { return view_; }

  /// The original byte offset of folded position `pos` (a begin or an end).
  std::size_t to_original(std::size_t pos) const {
    // shifts_[k] = {first folded position after the k-th fold, bytes saved by folds up to it}.
    auto it = std::upper_bound(shifts_.begin(), shifts_.end(), pos,
                               [](std::size_t p, const shift& s) { return p < s.from; });
    return it == shifts_.begin() ? pos : pos + std::prev(it)->saved;
  }

 private:
  struct shift {
    std::size_t from;
    std::size_t saved;
  };
  std::string storage_;
  std::vector<shift> shifts_;
  std::string_view view_;
  std::size_t copied_ = 0;
};

// ---- candidates ---------------------------------------------------------------------------------

struct candidate {
  std::size_t begin = 0, end = 0;                // original bytes
  std::size_t folded_begin = 0, folded_end = 0;  // folded text (built-in types only)
  pii_type type = pii_type::custom;
  std::size_t rank = 0;   // lower wins a tie in length; custom pattern k has custom_rank + k
  std::size_t slice = 0;  // see detect()
};

constexpr std::size_t custom_rank = 6;

// Ranks of the built-in types when two candidates cover the same bytes (most specific first).
std::size_t builtin_rank(pii_type type) {
  switch (type) {
    case pii_type::id_card:
      return 0;
    case pii_type::bank_card:
      return 1;
    case pii_type::phone:
      return 2;
    case pii_type::email:
      return 3;
    case pii_type::ipv6:
      return 4;
    case pii_type::ipv4:
      return 5;
    case pii_type::custom:
      break;
  }
  return custom_rank;
}

std::string digits_of(std::string_view s) {
  std::string d;
  for (char c : s)
    if (is_digit(static_cast<unsigned char>(c))) d.push_back(c);
  return d;
}

// A number may not continue a longer run: no word character next to it, no '.' or '-' (the
// `joiners`) that leads on to a digit, and for numbers written in space-separated groups no space
// that leads on to a digit.
bool number_boundaries(std::string_view t, std::size_t b, std::size_t e, std::string_view joiners) {
  auto u = [&](std::size_t k) { return static_cast<unsigned char>(t[k]); };
  bool spaced = t.substr(b, e - b).find(' ') != std::string_view::npos;
  auto joins = [&](unsigned char c) {
    return joiners.find(static_cast<char>(c)) != std::string_view::npos || (spaced && c == ' ');
  };
  if (b > 0) {
    unsigned char c = u(b - 1);
    if (is_word(c) || c == '+') return false;  // "+1381..." is some other country's number
    if (joins(c) && b >= 2 && is_digit(u(b - 2))) return false;
  }
  if (e < t.size()) {
    unsigned char c = u(e);
    if (is_word(c)) return false;
    if (joins(c) && e + 1 < t.size() && is_digit(u(e + 1))) return false;
  }
  return true;
}

// When a number starting at b has a left neighbour that glues it to a run (a word character, or a
// joiner after a digit), so does every number starting later inside that run: returns where the run
// ends, or b when b is not inside one. Skipping the run keeps long digit or dotted runs linear.
std::size_t end_of_enclosing_run(std::string_view t, std::size_t b, std::string_view joiners) {
  auto u = [&](std::size_t k) { return static_cast<unsigned char>(t[k]); };
  auto in_run = [&](std::size_t k) {
    return is_word(u(k)) ||
           (k > 0 && joiners.find(t[k]) != std::string_view::npos && is_digit(u(k - 1)));
  };
  if (b == 0 || !in_run(b - 1)) return b;
  std::size_t k = b;
  while (k < t.size() && in_run(k)) ++k;
  return k;
}

// How to continue after a rejected candidate. Numbers are short, so the next try starts one byte
// later (a valid number may begin inside a rejected one: "186 13812345678"). Emails and IPv6 runs
// are maximal and unbounded, so the next try starts after them, which keeps the scan linear.
enum class resume { next_byte, after_match };

struct builtin_detector {
  pii_type type;
  std::unique_ptr<RE2> regex;
  resume on_reject;
  std::string_view joiners;  // see number_boundaries()
  // Decides whether folded[b, e) is a finding; may narrow [b, e) (punctuation around an IPv6 run).
  std::function<bool(std::string_view, std::size_t&, std::size_t&)> accept;
};

bool accept_phone(std::string_view t, std::size_t& b, std::size_t& e) {
  return number_boundaries(t, b, e, ".-");  // the pattern itself fixes 1[3-9] and 11 digits
}

bool accept_id(std::string_view t, std::size_t& b, std::size_t& e) {
  if (!number_boundaries(t, b, e, ".-")) return false;
  std::string id;
  for (char c : t.substr(b, e - b))
    if (c != ' ' && c != '-') id.push_back(c);
  return valid_prc_id(id);
}

bool accept_card(std::string_view t, std::size_t& b, std::size_t& e) {
  if (!number_boundaries(t, b, e, ".-")) return false;
  std::string d = digits_of(t.substr(b, e - b));
  if (d.size() < 16 || d.size() > 19 || d[0] == '0') return false;
  // "1111 1111 1111 1111"-style fillers pass Luhn by accident; no issuer uses them.
  if (std::all_of(d.begin(), d.end(), [&](char c) { return c == d[0]; })) return false;
  return luhn_valid(d);
}

bool accept_email(std::string_view t, std::size_t&, std::size_t& e) {
  // The pattern's TLD is letters only; a letter, digit, '-' or '_' after it means the domain goes
  // on in a form we do not accept.
  if (e < t.size()) {
    unsigned char c = static_cast<unsigned char>(t[e]);
    if (is_word(c) || c == '-') return false;
  }
  return true;
}

bool accept_ipv4(std::string_view t, std::size_t& b, std::size_t& e) {
  // Only '.' joins here: "10.0.0.1-10.0.0.9" is two addresses, "1.2.3.4.5" is none.
  return number_boundaries(t, b, e, ".") && valid_ipv4(t.substr(b, e - b));
}

bool accept_ipv6(std::string_view t, std::size_t& b, std::size_t& e) {
  auto u = [&](std::size_t k) { return static_cast<unsigned char>(t[k]); };
  if (e < t.size() && is_word(u(e))) return false;
  // The run is every hex digit, ':' and '.' in a row, so it may carry neighbours: the sentence's
  // full stop, a colon after a label ("IP：fe80::1：" once folded), or the label itself
  // ("IPv6:fe80::1").
  std::size_t first = b, last = e;
  while (last > first && t[last - 1] == '.') --last;
  while (first < last && t[first] == '.') ++first;
  if (last - first < 2) return false;
  std::size_t starts[2] = {first, first};
  if (first > 0 && is_word(u(first - 1))) {
    // Glued to a word: the part before the first ':' belongs to that word.
    std::size_t colon = t.substr(first, last - first).find(':') + first;
    if (colon + 1 >= last || t[colon + 1] == ':') return false;
    starts[0] = starts[1] = colon + 1;
  } else if (t[first] == ':' && t[first + 1] != ':') {
    starts[1] = first + 1;
  }
  std::size_t ends[2] = {last, last};
  if (t[last - 1] == ':' && t[last - 2] != ':') ends[1] = last - 1;
  for (std::size_t s : starts)
    for (std::size_t x : ends)
      if (x > s && valid_ipv6(t.substr(s, x - s))) {
        b = s;
        e = x;
        return true;
      }
  return false;
}

std::unique_ptr<RE2> compile_builtin(const char* pattern) {
  RE2::Options o;
  o.set_encoding(RE2::Options::EncodingLatin1);  // the folded text's patterns are ASCII; bytes >=
                                                 // 0x80 never match
  o.set_never_capture(true);
  o.set_log_errors(false);
  auto re = std::make_unique<RE2>(pattern, o);
  if (!re->ok())
    throw error(errc::internal, "built-in PII pattern does not compile: " + re->error());
  return re;
}

// The built-in patterns, over the folded text.
constexpr const char* phone_pattern =
    R"((?:(?:\+|00)86[ -]?|\(\+?86\)[ -]?|86[ -]?)?)"
    R"(1[3-9]\d[ .-]?\d{4}[ .-]?\d{4})";  // 3-4-4 groups, any of the separators
constexpr const char* id_pattern =
    R"(\d{17}[\dXx]|\d{6} \d{8} \d{3}[\dXx]|\d{6}-\d{8}-\d{3}[\dXx]|\d{15})";
constexpr const char* card_pattern =
    R"(\d{16,19}|\d{4}(?: \d{4}){3}(?: \d{1,3})?|\d{4}(?:-\d{4}){3}(?:-\d{1,3})?)";
constexpr const char* email_pattern =
    R"([A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@)"
    R"((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24})";
constexpr const char* ipv4_pattern = R"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})";
constexpr const char* ipv6_pattern = R"([0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)";

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

// Longest first, then the more specific type, then the earlier one; a candidate that overlaps one
// already kept is dropped. Returns the kept ones sorted by begin.
std::vector<candidate> resolve(std::vector<candidate> all) {
  std::sort(all.begin(), all.end(), [](const candidate& a, const candidate& b) {
    std::size_t la = a.end - a.begin, lb = b.end - b.begin;
    if (la != lb) return la > lb;
    if (a.rank != b.rank) return a.rank < b.rank;
    return a.begin < b.begin;
  });
  std::map<std::size_t, std::size_t> kept;  // begin -> index into out
  std::vector<candidate> out;
  for (const auto& c : all) {
    auto next = kept.lower_bound(c.begin);
    if (next != kept.end() && out[next->second].begin < c.end) continue;
    if (next != kept.begin() && out[std::prev(next)->second].end > c.begin) continue;
    kept.emplace(c.begin, out.size());
    out.push_back(c);
  }
  std::sort(out.begin(), out.end(),
            [](const candidate& a, const candidate& b) { return a.begin < b.begin; });
  return out;
}

}  // namespace

struct masker::impl {
  masker_options options;
  std::vector<builtin_detector> builtins;
  std::vector<std::unique_ptr<RE2>> custom;  // parallel to options.custom

  explicit impl(masker_options o) : options(std::move(o)) {
    auto add = [&](pii_type type, const char* pattern, resume r, std::string_view joiners,
                   auto accept) {
      builtins.push_back({type, compile_builtin(pattern), r, joiners, accept});
    };
    if (options.id_cards) add(pii_type::id_card, id_pattern, resume::next_byte, ".-", accept_id);
    if (options.bank_cards)
      add(pii_type::bank_card, card_pattern, resume::next_byte, ".-", accept_card);
    if (options.phones) add(pii_type::phone, phone_pattern, resume::next_byte, ".-", accept_phone);
    if (options.emails) add(pii_type::email, email_pattern, resume::after_match, "", accept_email);
    if (options.ips) {
      add(pii_type::ipv6, ipv6_pattern, resume::after_match, "", accept_ipv6);
      add(pii_type::ipv4, ipv4_pattern, resume::next_byte, ".", accept_ipv4);
    }

    std::set<std::string> names;
    for (auto& p : options.custom) {
      if (p.name.empty()) throw error(errc::invalid_argument, "custom PII pattern without a name");
      static const std::set<std::string> reserved{"phone", "id_card", "bank_card", "email",
                                                  "ipv4",  "ipv6",    "custom"};
      if (reserved.count(p.name))
        throw error(errc::invalid_argument,
                    "custom PII pattern '" + p.name + "' reuses the name of a built-in type");
      if (!names.insert(p.name).second)
        throw error(errc::invalid_argument, "custom PII pattern '" + p.name + "' is defined twice");
      RE2::Options o;  // UTF-8, case-sensitive: the pattern means what it says in RE2 syntax
      o.set_never_capture(true);
      o.set_log_errors(false);
      auto re = std::make_unique<RE2>(p.regex, o);
      if (!re->ok())
        throw error(errc::invalid_argument, "custom PII pattern '" + p.name + "': invalid regex /" +
                                                p.regex + "/: " + re->error());
      if (p.placeholder.empty()) p.placeholder = "[" + upper(p.name) + "]";
      custom.push_back(std::move(re));
    }
  }

  // Calls emit(candidate) for each accepted candidate, type by type; stops when emit returns false.
  // Returns false if stopped.
  template <class Emit>
  bool scan(std::string_view original, Emit&& emit) const {
    if (!builtins.empty()) {
      folded_text folded(original);
      std::string_view t = folded.view();
      for (const auto& d : builtins) {
        std::size_t pos = 0;
        re2::StringPiece m;
        while (pos < t.size() && d.regex->Match(re2::StringPiece(t.data(), t.size()), pos, t.size(),
                                                RE2::UNANCHORED, &m, 1)) {
          std::size_t b = static_cast<std::size_t>(m.data() - t.data());
          std::size_t e = b + m.size();
          if (e == b) break;  // no built-in pattern matches empty; guard the loop anyway
          std::size_t kept_begin = b, kept_end = e;
          if (d.accept(t, kept_begin, kept_end)) {
            candidate c;
            c.folded_begin = kept_begin;
            c.folded_end = kept_end;
            c.begin = folded.to_original(kept_begin);
            c.end = folded.to_original(kept_end);
            c.type = d.type;
            c.rank = builtin_rank(d.type);
            if (!emit(c, &t)) return false;
            pos = e;
          } else if (d.on_reject == resume::after_match) {
            pos = e;
          } else {
            pos = std::max(b + 1, end_of_enclosing_run(t, b, d.joiners));
          }
        }
      }
    }
    for (std::size_t k = 0; k < custom.size(); ++k) {
      std::size_t pos = 0;
      re2::StringPiece m;
      while (pos <= original.size() &&
             custom[k]->Match(re2::StringPiece(original.data(), original.size()), pos,
                              original.size(), RE2::UNANCHORED, &m, 1)) {
        std::size_t b = static_cast<std::size_t>(m.data() - original.data());
        std::size_t e = b + m.size();
        if (e == b) {  // an empty match masks nothing; step over it
          pos = b + 1;
          continue;
        }
        candidate c;
        c.begin = b;
        c.end = e;
        c.type = pii_type::custom;
        c.rank = custom_rank + k;
        if (!emit(c, nullptr)) return false;
        pos = e;
      }
    }
    return true;
  }

  // The kept candidates of `text`; with `slices`, each candidate's folded text is copied into it
  // and candidate::slice indexes it (partial masks need the folded digits after the scan has
  // ended).
  std::vector<candidate> detect(std::string_view text, std::vector<std::string>* slices) const {
    std::vector<candidate> all;
    scan(text, [&](const candidate& c, const std::string_view* folded) {
      all.push_back(c);
      if (slices) {
        all.back().slice = slices->size();
        slices->emplace_back(folded ? folded->substr(c.folded_begin, c.folded_end - c.folded_begin)
                                    : std::string_view{});
      }
      return true;
    });
    return resolve(std::move(all));
  }
};

masker::masker(masker_options options) : impl_(std::make_shared<const impl>(std::move(options))) {}
masker::~masker() = default;
masker::masker(const masker&) = default;
masker::masker(masker&&) noexcept = default;
masker& masker::operator=(const masker&) = default;
masker& masker::operator=(masker&&) noexcept = default;

const masker_options& masker::options() const {
  return impl_->options;
}

bool masker::contains_pii(std::string_view text) const {
  return !impl_->scan(text, [](const candidate&, const std::string_view*) { return false; });
}

namespace {

finding to_finding(const masker_options& o, const candidate& c, std::string_view text) {
  finding f;
  f.type = c.type;
  f.name = c.type == pii_type::custom ? o.custom[c.rank - custom_rank].name : to_string(c.type);
  f.begin = c.begin;
  f.end = c.end;
  if (o.include_values) f.value.assign(text.substr(c.begin, c.end - c.begin));
  return f;
}

}  // namespace

std::vector<finding> masker::find(std::string_view text) const {
  std::vector<finding> out;
  for (const auto& c : impl_->detect(text, nullptr))
    out.push_back(to_finding(impl_->options, c, text));
  return out;
}

mask_result masker::mask(std::string_view text) const {
  const auto& o = impl_->options;
  std::vector<std::string> slices;
  auto kept = impl_->detect(text, o.phone_keep_last4 || o.card_keep_last4 ? &slices : nullptr);

  mask_result r;
  r.text.reserve(text.size());
  r.findings.reserve(kept.size());
  std::size_t copied = 0;
  for (const auto& c : kept) {
    finding f = to_finding(o, c, text);
    ++r.counts[f.name];

    r.text.append(text.substr(copied, c.begin - copied));
    bool partial = (c.type == pii_type::phone && o.phone_keep_last4) ||
                   (c.type == pii_type::bank_card && o.card_keep_last4);
    if (partial) {
      const std::string& s = slices[c.slice];
      std::size_t digits = digits_of(s).size(), seen = 0;
      for (char ch : s) {
        if (is_digit(static_cast<unsigned char>(ch))) {
          r.text.push_back(seen + 4 < digits ? o.partial_mask_char : ch);
          ++seen;
        } else {
          r.text.push_back(ch);
        }
      }
    } else {
      switch (c.type) {
        case pii_type::phone:
          r.text += o.phone_placeholder;
          break;
        case pii_type::id_card:
          r.text += o.id_placeholder;
          break;
        case pii_type::bank_card:
          r.text += o.card_placeholder;
          break;
        case pii_type::email:
          r.text += o.email_placeholder;
          break;
        case pii_type::ipv4:
        case pii_type::ipv6:
          r.text += o.ip_placeholder;
          break;
        case pii_type::custom:
          r.text += o.custom[c.rank - custom_rank].placeholder;
          break;
      }
    }
    copied = c.end;
    r.findings.push_back(std::move(f));
  }
  r.text.append(text.substr(copied));
  return r;
}

// ---- configuration ------------------------------------------------------------------------------

masker_options masker_options_from_json(const nlohmann::json& config) {
  masker_options o;
  if (!config.is_object())
    throw error(errc::invalid_argument, "PII masker options must be an object");
  auto want = [](bool ok, const std::string& key, const char* what) {
    if (!ok) throw error(errc::invalid_argument, "PII masker option '" + key + "' must be " + what);
  };
  for (const auto& [key, v] : config.items()) {
    auto flag = [&](bool& field) {
      want(v.is_boolean(), key, "true or false");
      field = v.get<bool>();
    };
    auto text = [&](std::string& field) {
      want(v.is_string(), key, "a string");
      field = v.get<std::string>();
    };
    if (key == "phones")
      flag(o.phones);
    else if (key == "id_cards")
      flag(o.id_cards);
    else if (key == "bank_cards")
      flag(o.bank_cards);
    else if (key == "emails")
      flag(o.emails);
    else if (key == "ips")
      flag(o.ips);
    else if (key == "phone_placeholder")
      text(o.phone_placeholder);
    else if (key == "id_placeholder")
      text(o.id_placeholder);
    else if (key == "card_placeholder")
      text(o.card_placeholder);
    else if (key == "email_placeholder")
      text(o.email_placeholder);
    else if (key == "ip_placeholder")
      text(o.ip_placeholder);
    else if (key == "phone_keep_last4")
      flag(o.phone_keep_last4);
    else if (key == "card_keep_last4")
      flag(o.card_keep_last4);
    else if (key == "include_values")
      flag(o.include_values);
    else if (key == "partial_mask_char") {
      want(v.is_string() && v.get<std::string>().size() == 1, key, "a one-character string");
      o.partial_mask_char = v.get<std::string>()[0];
    } else if (key == "custom") {
      want(v.is_array(), key, "a list of {name, regex, placeholder}");
      for (const auto& p : v) {
        want(p.is_object() && p.contains("name") && p.at("name").is_string() &&
                 p.contains("regex") && p.at("regex").is_string() &&
                 (!p.contains("placeholder") || p.at("placeholder").is_string()),
             key, "a list of {name, regex, placeholder} with string values");
        for (const auto& [k, unused] : p.items())
          if (k != "name" && k != "regex" && k != "placeholder")
            throw error(errc::invalid_argument,
                        "PII masker option 'custom' has an unknown key '" + k + "'");
        o.custom.push_back({p.at("name").get<std::string>(), p.at("regex").get<std::string>(),
                            p.value("placeholder", std::string{})});
      }
    } else {
      throw error(errc::invalid_argument, "unknown PII masker option '" + key + "'");
    }
  }
  return o;
}

std::string mask_capped(const masker& m, std::string_view text, std::size_t max_bytes) {
  std::string out = m.mask(text).text;
  if (out.size() <= max_bytes) return out;
  static constexpr std::string_view ellipsis = "...";
  std::size_t cut = max_bytes > ellipsis.size() ? max_bytes - ellipsis.size() : 0;
  // Back to the first byte of a character: continuation bytes are 10xxxxxx.
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  out.resize(cut);
  out += ellipsis.substr(0, std::min(ellipsis.size(), max_bytes));
  return out;
}

}  // namespace shoal::governance
