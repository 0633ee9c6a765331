#include "engine/tokenizer/bpe_tokenizer.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace shoal {

// ---- merge loop ---------------------------------------------------------------------------------

void bpe_merge(std::vector<std::int32_t>& ids, const merge_table& merges) {
  const std::size_t n = ids.size();
  if (n < 2) return;
  struct symbol {
    std::int32_t id;
    std::int32_t prev, next;  // linked list over the surviving symbols
    bool alive;
  };
  struct candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t merged;
  };
  // Min-heap on (rank, pos): the lowest rank first, the leftmost among equal ranks.
  auto later = [](const candidate& a, const candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<symbol> sym(n);
  std::vector<candidate> heap;
  heap.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    sym[i] = {ids[i], static_cast<std::int32_t>(i) - 1,
              i + 1 < n ? static_cast<std::int32_t>(i + 1) : -1, true};
    if (i + 1 < n) {
      if (const auto* m = merges.find(ids[i], ids[i + 1])) {
        heap.push_back({m->rank, static_cast<std::int32_t>(i), m->merged});
      }
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    candidate top = heap.back();
    heap.pop_back();
    symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    symbol& right = sym[left.next];
    // Entries go stale when a neighbour merged first; the pair must still produce the same token.
    const auto* m = merges.find(left.id, right.id);
    if (m == nullptr || m->merged != top.merged) continue;
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* pm = merges.find(sym[left.prev].id, left.id)) {
        heap.push_back({pm->rank, left.prev, pm->merged});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (left.next >= 0) {
      if (const auto* nm = merges.find(left.id, sym[left.next].id)) {
        heap.push_back({nm->rank, top.pos, nm->merged});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
  ids.clear();
  for (std::int32_t i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
}

// ---- added tokens -------------------------------------------------------------------------------

std::int32_t added_token_matcher::child(std::int32_t n, unsigned char c) const {
  for (const auto& [k, v] : nodes_[n].kids) {
    if (k == c) return v;
  }
  return -1;
}

void added_token_matcher::add(std::string_view content, std::int32_t id, bool lstrip, bool rstrip) {
  if (content.empty()) return;
  std::int32_t n = 0;
  for (char ch : content) {
    auto c = static_cast<unsigned char>(ch);
    std::int32_t next = child(n, c);
    if (next < 0) {
      next = static_cast<std::int32_t>(nodes_.size());
      nodes_[n].kids.emplace_back(c, next);
      nodes_.emplace_back();
    }
    n = next;
  }
  if (nodes_[n].id < 0) ++count_;
  nodes_[n].id = id;
  nodes_[n].lstrip = lstrip;
  nodes_[n].rstrip = rstrip;
}

namespace {

// Whether [begin, end) lies inside one of `ranges` (sorted, not overlapping).
bool inside(const std::vector<byte_range>& ranges, std::size_t begin, std::size_t end) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), begin,
                             [](std::size_t b, const byte_range& r) { return b < r.begin; });
  if (it == ranges.begin()) return false;
  --it;
  return it->begin <= begin && end <= it->end;
}

}  // namespace

void added_token_matcher::find_all(std::string_view text, std::vector<match>& out,
                                   const std::vector<byte_range>* allowed) const {
  if (count_ == 0) return;
  if (allowed && allowed->empty()) return;
  std::size_t last_end = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    // Longest (allowed) token starting at i; the first i with any match wins (leftmost-longest).
    std::int32_t n = 0, best = -1;
    std::size_t best_end = 0;
    for (std::size_t j = i; j < text.size(); ++j) {
      n = child(n, static_cast<unsigned char>(text[j]));
      if (n < 0) break;
      if (nodes_[n].id >= 0 && (!allowed || inside(*allowed, i, j + 1))) {
        best = n;
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    std::size_t b = i, e = best_end;
    if (nodes_[best].lstrip) {
      while (b > last_end) {
        std::size_t p = b - 1;
        while (p > last_end && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        std::size_t len = utf8::valid_sequence_length(text, p);
        if (len == 0 || p + len != b || !utf8::is_white_space(utf8::decode_at(text, p, len))) break;
        b = p;
      }
    }
    if (nodes_[best].rstrip) {
      while (e < text.size()) {
        std::size_t len = utf8::valid_sequence_length(text, e);
        if (len == 0 || !utf8::is_white_space(utf8::decode_at(text, e, len))) break;
        e += len;
      }
    }
    out.push_back({b, e, nodes_[best].id});
    last_end = e;
    i = e;
  }
}

// ---- the shared tokenizer -----------------------------------------------------------------------

void bpe_tokenizer::set_vocab(std::vector<std::string> texts, const std::vector<bool>& present) {
  id_to_text_ = std::move(texts);
  flags_.assign(id_to_text_.size(), 0);
  vocab_.clear();
  vocab_.reserve(id_to_text_.size());
  for (std::size_t i = 0; i < id_to_text_.size(); ++i) {
    if (!present[i]) continue;
    flags_[i] = flag_present;
    vocab_.try_emplace(id_to_text_[i], static_cast<std::int32_t>(i));
  }
}

void bpe_tokenizer::add_added_tokens(const std::vector<added_token>& tokens) {
  for (const auto& t : tokens) {
    if (t.id < 0)
      throw error(errc::corrupt_file, "added token '" + t.content + "' has a negative id");
    auto id = static_cast<std::size_t>(t.id);
    if (id >= id_to_text_.size()) {
      id_to_text_.resize(id + 1);
      flags_.resize(id + 1, 0);
    }
    id_to_text_[id] = t.content;
    flags_[id] |= flag_present;
    if (t.special) flags_[id] |= flag_special;
    added_by_text_.insert_or_assign(t.content, t.id);
    (t.normalized ? normalized_matcher_ : raw_matcher_).add(t.content, t.id, t.lstrip, t.rstrip);
  }
}

void bpe_tokenizer::set_specials(std::int32_t bos, std::int32_t eos, bool add_bos, bool add_eos) {
  bos_id_ = bos;
  eos_id_ = eos;
  add_bos_ = add_bos && bos >= 0;
  add_eos_ = add_eos && eos >= 0;
}

std::int32_t bpe_tokenizer::find_token(std::string_view text) const {
  if (auto it = added_by_text_.find(text); it != added_by_text_.end()) return it->second;
  if (auto it = vocab_.find(text); it != vocab_.end()) return it->second;
  return -1;
}

void bpe_tokenizer::check_id(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= flags_.size() || !(flags_[id] & flag_present)) {
    throw error(errc::out_of_range, "token id " + std::to_string(id) +
                                        " is not in the tokenizer's vocabulary (" +
                                        std::to_string(flags_.size()) + " ids)");
  }
}

std::string bpe_tokenizer::token_text(std::int32_t id) const {
  check_id(id);
  return id_to_text_[id];
}

bool bpe_tokenizer::is_special(std::int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < flags_.size() && (flags_[id] & flag_special);
}

std::string bpe_tokenizer::normalize(std::string_view segment, bool) const {
  return std::string(segment);
}

void bpe_tokenizer::merge_word(std::string_view word, std::vector<std::int32_t>& ids,
                               std::vector<std::int32_t>& out) const {
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  bpe_merge(ids, merges_);
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<std::int32_t> bpe_tokenizer::encode(std::string_view text,
                                                const encode_options& opts) const {
  return encode_within(text, opts, nullptr);
}

std::vector<std::int32_t> bpe_tokenizer::encode(std::string_view text, const encode_options& opts,
                                                const std::vector<byte_range>& special_ranges) const {
  return encode_within(text, opts, &special_ranges);
}

std::vector<std::int32_t> bpe_tokenizer::encode_within(std::string_view text, const encode_options& opts,
                                                       const std::vector<byte_range>* ranges) const {
  // Regexes and character iteration need well-formed UTF-8; ill-formed input is repaired the way
  // decode() repairs output (U+FFFD per maximal ill-formed subpart) rather than rejected.
  std::string repaired;
  const bool valid = utf8::is_valid(text);
  if (!valid) {
    repaired = utf8::repair(text);
    text = repaired;
  }
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 2);
  // Ranges point into the text as given; repairing moved the offsets, so nothing may match.
  static const std::vector<byte_range> nowhere;
  const std::vector<byte_range>* allowed = ranges && !valid ? &nowhere : ranges;
  if (opts.add_special && add_bos_) out.push_back(bos_id_);
  encode_text(text, opts.parse_special, allowed, out);
  if (opts.add_special && add_eos_) out.push_back(eos_id_);
  return out;
}

void bpe_tokenizer::encode_text(std::string_view text, bool parse_special,
                                const std::vector<byte_range>* allowed,
                                std::vector<std::int32_t>& out) const {
  // tokenizers' AddedVocabulary: tokens with normalized=false are cut out of the raw text first;
  // the rest is normalized piece by piece and searched for normalized=true tokens; what remains
  // goes to the pre-tokenizer and the model. Neighbours of a token stay ordinary text.
  std::vector<added_token_matcher::match> raw, norm;
  std::vector<byte_range> shifted;
  auto gap = [&](std::string_view seg, std::size_t seg_begin, bool at_start) {
    std::string n = normalize(seg, at_start);
    if (n.empty()) return;
    norm.clear();
    if (parse_special && !allowed) {
      normalized_matcher_.find_all(n, norm);
    } else if (parse_special && n == seg) {
      // Normalizing changed nothing (byte-level tokenizers): offsets in `n` are offsets in `seg`.
      shifted.clear();
      for (const auto& r : *allowed) {
        if (r.end <= seg_begin || r.begin >= seg_begin + seg.size()) continue;
        shifted.push_back({std::max(r.begin, seg_begin) - seg_begin,
                           std::min(r.end, seg_begin + seg.size()) - seg_begin});
      }
      normalized_matcher_.find_all(n, norm, &shifted);
    } else if (parse_special && inside(*allowed, seg_begin, seg_begin + seg.size())) {
      // Normalizing moved offsets: a piece wholly inside a range matches as usual; any other
      // matches nothing, so that no user text can become a token (the safe side).
      normalized_matcher_.find_all(n, norm);
    }
    std::size_t prev = 0;
    std::string_view nv = n;
    for (const auto& m : norm) {
      if (m.begin > prev)
        encode_segment(nv.substr(prev, m.begin - prev), at_start && prev == 0, out);
      out.push_back(m.id);
      prev = m.end;
    }
    if (prev < nv.size()) encode_segment(nv.substr(prev), at_start && prev == 0, out);
  };
  if (parse_special) raw_matcher_.find_all(text, raw, allowed);
  std::size_t prev = 0;
  for (const auto& m : raw) {
    if (m.begin > prev) gap(text.substr(prev, m.begin - prev), prev, prev == 0);
    out.push_back(m.id);
    prev = m.end;
  }
  if (prev < text.size()) gap(text.substr(prev), prev, prev == 0);
}

std::string bpe_tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string raw;
  for (auto id : ids) {
    check_id(id);
    if (skip_special && is_special(id)) continue;
    raw += token_bytes(id);
  }
  std::size_t k = 0;
  while (k < strip_leading_spaces_ && k < raw.size() && raw[k] == ' ') ++k;
  return utf8::repair(std::string_view(raw).substr(k));
}

// ---- tokenizer.json ----------------------------------------------------------------------------

std::vector<added_token> parse_hf_added_tokens(const nlohmann::json& tj) {
  std::vector<added_token> out;
  auto it = tj.find("added_tokens");
  if (it == tj.end() || it->is_null()) return out;
  for (const auto& a : *it) {
    added_token t;
    t.content = a.at("content").get<std::string>();
    t.id = a.at("id").get<std::int32_t>();
    t.special = a.value("special", false);
    t.normalized = a.value("normalized", !t.special);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    out.push_back(std::move(t));
  }
  return out;
}

bool hf_is_byte_level(const nlohmann::json& tj) {
  auto has = [](const nlohmann::json& j, const char* list_key, auto& self) -> bool {
    if (!j.is_object()) return false;
    if (j.value("type", "") == "ByteLevel") return true;
    if (auto it = j.find(list_key); it != j.end() && it->is_array()) {
      for (const auto& s : *it)
        if (self(s, list_key, self)) return true;
    }
    return false;
  };
  auto pre = tj.find("pre_tokenizer");
  auto dec = tj.find("decoder");
  return (pre != tj.end() && has(*pre, "pretokenizers", has)) ||
         (dec != tj.end() && has(*dec, "decoders", has));
}

void load_hf_bpe_model(bpe_tokenizer& t, const nlohmann::json& tj) {
  const auto& model = tj.at("model");
  const auto& vocab = model.at("vocab");
  if (!vocab.is_object()) throw error(errc::corrupt_file, "model.vocab is not an object");
  auto added = parse_hf_added_tokens(tj);

  std::int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    max_id = std::max(max_id, it.value().get<std::int32_t>());
  std::vector<std::string> texts(static_cast<std::size_t>(max_id + 1));
  std::vector<bool> present(texts.size(), false);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    auto id = it.value().get<std::int32_t>();
    if (id < 0)
      throw error(errc::corrupt_file, "model.vocab gives '" + it.key() + "' a negative id");
    texts[id] = it.key();
    present[id] = true;
  }
  t.set_vocab(std::move(texts), present);

  const auto& tv = t.vocab();
  auto id_of = [&](const std::string& s, std::size_t i) {
    auto it = tv.find(s);
    if (it == tv.end()) {
      throw error(errc::corrupt_file,
                  "merge #" + std::to_string(i) + " uses '" + s + "', which is not in model.vocab");
    }
    return it->second;
  };
  auto mit = model.find("merges");
  if (mit != model.end() && !mit->is_null()) {
    auto& merges = t.merges();
    merges.reserve(mit->size());
    std::string left, right;
    for (std::size_t i = 0; i < mit->size(); ++i) {
      const auto& m = (*mit)[i];
      if (m.is_string()) {
        // "a b": tokens never hold a plain space here (byte-level maps it to Ġ, SentencePiece to
        // ▁).
        const auto& s = m.get_ref<const std::string&>();
        auto sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          throw error(errc::corrupt_file,
                      "merge #" + std::to_string(i) + " '" + s + "' is not two tokens");
        }
        left.assign(s, 0, sp);
        right.assign(s, sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        throw error(errc::corrupt_file,
                    "merge #" + std::to_string(i) + " is neither \"a b\" nor [a, b]");
      }
      merges.add(id_of(left, i), id_of(right, i), static_cast<std::int32_t>(i),
                 id_of(left + right, i));
    }
  }
  t.add_added_tokens(added);
  t.set_ignore_merges(model.value("ignore_merges", false));
}

// ---- GGUF ---------------------------------------------------------------------------------------

gguf_vocab read_gguf_vocab(const gguf_file& file) {
  gguf_vocab v;
  const auto* toks = file.find("tokenizer.ggml.tokens");
  if (toks == nullptr || !toks->is_array() || toks->elem != gguf_type::string) {
    throw error(errc::corrupt_file, "tokenizer.ggml.tokens is missing or not a string array");
  }
  v.tokens = toks->strs;
  v.types.assign(v.tokens.size(), gguf_token_type::normal);
  if (const auto* tt = file.find("tokenizer.ggml.token_type")) {
    if (!tt->is_array() || tt->array_size() != v.tokens.size()) {
      throw error(errc::corrupt_file,
                  "tokenizer.ggml.token_type does not have one entry per token");
    }
    for (std::size_t i = 0; i < v.types.size(); ++i)
      v.types[i] = static_cast<gguf_token_type>(tt->nums[i]);
  }
  // Converters pad the vocabulary to the embedding rows with unused "[PAD…]" entries.
  std::size_t n = v.tokens.size();
  while (n > 0 && v.types[n - 1] == gguf_token_type::unused) --n;
  v.tokens.resize(n);
  v.types.resize(n);
  return v;
}

void load_gguf_common(bpe_tokenizer& t, const gguf_file& file, const gguf_vocab& v,
                      bool default_add_bos) {
  t.set_vocab(v.tokens, std::vector<bool>(v.tokens.size(), true));
  std::vector<added_token> added;
  for (std::size_t i = 0; i < v.tokens.size(); ++i) {
    auto ty = v.types[i];
    if (ty == gguf_token_type::unknown || ty == gguf_token_type::control ||
        ty == gguf_token_type::user_defined) {
      added_token a;
      a.content = v.tokens[i];
      a.id = static_cast<std::int32_t>(i);
      a.special = ty != gguf_token_type::user_defined;
      added.push_back(std::move(a));
    }
  }
  t.add_added_tokens(added);
  auto id_or = [&](const char* key) {
    auto n = file.get_number_opt(key);
    if (!n) return -1;
    auto id = static_cast<std::int32_t>(*n);
    return id >= 0 && static_cast<std::size_t>(id) < v.tokens.size() ? id : -1;
  };
  auto flag_or = [&](const char* key, bool dflt) {
    auto n = file.get_number_opt(key);
    return n ? *n != 0 : dflt;
  };
  std::int32_t bos = id_or("tokenizer.ggml.bos_token_id");
  std::int32_t eos = id_or("tokenizer.ggml.eos_token_id");
  t.set_specials(bos, eos, flag_or("tokenizer.ggml.add_bos_token", default_add_bos),
                 flag_or("tokenizer.ggml.add_eos_token", false));
  t.set_bos_eos_text(bos >= 0 ? v.tokens[bos] : "", eos >= 0 ? v.tokens[eos] : "");
  t.set_chat_template(file.get_string_opt("tokenizer.chat_template"));
}

}  // namespace shoal
