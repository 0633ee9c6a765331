// SentencePiece-style BPE: stories260K / Llama 2 style vocabularies with byte fallback.

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/bpe_tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace shoal {

namespace {

constexpr std::string_view space_marker = "\xE2\x96\x81";  // "▁"

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  std::size_t pos = 0;
  for (std::size_t hit = s.find(from); hit != std::string::npos; hit = s.find(from, pos)) {
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// "<0xNN>" -> NN, else -1 (tokenizers' ByteFallback decoder accepts either hex case).
int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

void spm_bpe_tokenizer::set_fallback(bool byte_fallback, std::int32_t unk_id, bool fuse_unk) {
  byte_fallback_ = byte_fallback;
  unk_id_ = unk_id;
  fuse_unk_ = fuse_unk;
}

void spm_bpe_tokenizer::index_byte_tokens() {
  byte_token_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto it = vocab_.find(std::string_view(name)); it != vocab_.end())
      byte_token_[b] = it->second;
  }
  byte_of_token_.assign(id_to_text_.size(), -1);
  for (std::size_t i = 0; i < id_to_text_.size(); ++i) {
    if (flags_[i] & flag_present)
      byte_of_token_[i] = static_cast<std::int16_t>(byte_token_value(id_to_text_[i]));
  }
}

std::string spm_bpe_tokenizer::normalize(std::string_view segment, bool) const {
  std::string s(segment);
  for (const auto& op : normalizer_) {
    if (op.what == normalizer_op::kind::prepend) {
      if (!s.empty()) s.insert(0, op.a);  // tokenizers' Prepend leaves an empty piece alone
    } else {
      replace_all(s, op.a, op.b);
    }
  }
  return s;
}

void spm_bpe_tokenizer::encode_segment(std::string_view segment, bool at_start,
                                       std::vector<std::int32_t>& out) const {
  if (!metaspace_) {
    encode_word(segment, out);
    return;
  }
  // Metaspace pre-tokenizer: spaces become the marker, the marker is prepended per the scheme (only
  // where the piece does not already start with one), and `split` starts a new word at every
  // marker.
  std::string s(segment);
  const auto& rep = metaspace_->replacement;
  replace_all(s, " ", rep);
  bool prepend = metaspace_->scheme == prepend_scheme::always ||
                 (metaspace_->scheme == prepend_scheme::first && at_start);
  if (prepend && s.compare(0, rep.size(), rep) != 0) s.insert(0, rep);
  if (!metaspace_->split) {
    encode_word(s, out);
    return;
  }
  std::string_view v = s;
  std::size_t begin = 0;
  for (std::size_t hit = v.find(rep, rep.size() > 0 ? 1 : 0); hit != std::string_view::npos;
       hit = v.find(rep, hit + 1)) {
    if (hit > begin) encode_word(v.substr(begin, hit - begin), out);
    begin = hit;
  }
  if (begin < v.size()) encode_word(v.substr(begin), out);
}

void spm_bpe_tokenizer::encode_word(std::string_view word, std::vector<std::int32_t>& out) const {
  // Initial symbols are characters; tokenizers' BPE falls back to one <0xNN> token per byte for a
  // character outside the vocabulary, then to <unk> (fused when fuse_unk), else drops it.
  std::vector<std::int32_t> ids;
  ids.reserve(word.size());
  bool last_unk = false;
  std::size_t pos = 0;
  while (pos < word.size()) {
    std::size_t n = utf8::valid_sequence_length(word, pos);
    if (n == 0) n = 1;  // cannot happen: encode() repaired the input
    auto ch = word.substr(pos, n);
    pos += n;
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      ids.push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_ && std::all_of(ch.begin(), ch.end(), [&](char c) {
          return byte_token_[static_cast<unsigned char>(c)] >= 0;
        })) {
      for (char c : ch) ids.push_back(byte_token_[static_cast<unsigned char>(c)]);
      last_unk = false;
      continue;
    }
    if (unk_id_ >= 0) {
      if (!(fuse_unk_ && last_unk)) ids.push_back(unk_id_);
      last_unk = true;
    }
  }
  merge_word(word, ids, out);
}

std::string spm_bpe_tokenizer::token_bytes(std::int32_t id) const {
  check_id(id);
  if (byte_of_token_[id] >= 0) return std::string(1, static_cast<char>(byte_of_token_[id]));
  std::string s = id_to_text_[id];
  replace_all(s, space_marker, " ");
  return s;
}

// ---- builders -----------------------------------------------------------------------------------

std::unique_ptr<spm_bpe_tokenizer> make_spm_from_hf(const nlohmann::json& tj) {
  auto t = std::make_unique<spm_bpe_tokenizer>();

  // Normalizer: SentencePiece's "▁" convention as Prepend + Replace (the legacy Llama conversion).
  std::vector<spm_bpe_tokenizer::normalizer_op> ops;
  auto add_norm = [&](const nlohmann::json& n, auto& self) -> void {
    if (n.is_null()) return;
    std::string type = n.value("type", "");
    if (type == "Sequence") {
      for (const auto& sub : n.at("normalizers")) self(sub, self);
    } else if (type == "Prepend") {
      ops.push_back({spm_bpe_tokenizer::normalizer_op::kind::prepend,
                     n.at("prepend").get<std::string>(), ""});
    } else if (type == "Replace") {
      const auto& pat = n.at("pattern");
      if (!pat.contains("String"))
        throw error(errc::unsupported, "Replace normalizer with a regex pattern is not supported");
      ops.push_back({spm_bpe_tokenizer::normalizer_op::kind::replace,
                     pat.at("String").get<std::string>(), n.at("content").get<std::string>()});
    } else {
      throw error(errc::unsupported, "unsupported normalizer type '" + type + "'");
    }
  };
  if (auto it = tj.find("normalizer"); it != tj.end()) add_norm(*it, add_norm);
  t->set_normalizer(std::move(ops));

  // Pre-tokenizer: none (the whole normalized piece is one word) or Metaspace.
  if (auto it = tj.find("pre_tokenizer"); it != tj.end() && !it->is_null()) {
    const nlohmann::json* p = &*it;
    if (p->value("type", "") == "Sequence" && p->at("pretokenizers").size() == 1)
      p = &p->at("pretokenizers")[0];
    std::string type = p->value("type", "");
    if (type != "Metaspace")
      throw error(errc::unsupported,
                  "unsupported pre_tokenizer type '" + type + "' for a SentencePiece-style BPE");
    spm_bpe_tokenizer::metaspace m;
    m.replacement = p->value("replacement", std::string(space_marker));
    std::string scheme =
        p->value("prepend_scheme", p->value("add_prefix_space", true) ? "always" : "never");
    m.scheme = scheme == "first"   ? spm_bpe_tokenizer::prepend_scheme::first
               : scheme == "never" ? spm_bpe_tokenizer::prepend_scheme::never
                                   : spm_bpe_tokenizer::prepend_scheme::always;
    m.split = p->value("split", true);
    t->set_metaspace(m);
  }

  // Decoder: the number of leading spaces stripped (Strip start=n, or Metaspace with a prepend
  // scheme).
  std::size_t strip = 0;
  auto scan_dec = [&](const nlohmann::json& d, auto& self) -> void {
    if (d.is_null()) return;
    std::string type = d.value("type", "");
    if (type == "Sequence") {
      for (const auto& sub : d.at("decoders")) self(sub, self);
    } else if (type == "Strip") {
      if (d.value("content", std::string(" ")) == " ") strip = d.value("start", std::size_t{0});
    } else if (type == "Metaspace") {
      if (d.value("prepend_scheme", std::string("always")) != "never" &&
          d.value("add_prefix_space", true))
        strip = 1;
    } else if (type != "Replace" && type != "ByteFallback" && type != "Fuse") {
      throw error(errc::unsupported,
                  "unsupported decoder type '" + type + "' for a SentencePiece-style BPE");
    }
  };
  if (auto it = tj.find("decoder"); it != tj.end()) scan_dec(*it, scan_dec);
  t->set_strip_leading_spaces(strip);

  load_hf_bpe_model(*t, tj);
  const auto& model = tj.at("model");
  std::int32_t unk = -1;
  if (auto it = model.find("unk_token"); it != model.end() && it->is_string())
    unk = t->find_token(it->get<std::string>());
  t->set_fallback(model.value("byte_fallback", false), unk, model.value("fuse_unk", false));
  t->index_byte_tokens();
  return t;
}

std::unique_ptr<spm_bpe_tokenizer> make_spm_from_gguf(const gguf_file& file) {
  auto t = std::make_unique<spm_bpe_tokenizer>();
  gguf_vocab v = read_gguf_vocab(file);
  load_gguf_common(*t, file, v, /*default_add_bos=*/true);

  std::vector<double> scores(v.tokens.size(), 0.0);
  if (const auto* sc = file.find("tokenizer.ggml.scores")) {
    if (!sc->is_array() || sc->nums.size() < v.tokens.size()) {
      throw error(errc::corrupt_file, "tokenizer.ggml.scores does not have one score per token");
    }
    std::copy_n(sc->nums.begin(), v.tokens.size(), scores.begin());
  }

  // SentencePiece BPE merges the adjacent pair whose concatenation is the highest-scoring token,
  // leftmost on ties. Expressed as a merge table: every split of a token into two tokens is a pair,
  // ranked by the token's score (equal scores share a rank, so position decides, as in llama.cpp).
  auto mergeable = [&](std::size_t id) {
    auto ty = v.types[id];
    return ty == gguf_token_type::normal || ty == gguf_token_type::user_defined ||
           ty == gguf_token_type::undefined;
  };
  std::vector<std::int32_t> order(v.tokens.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](auto a, auto b) { return scores[a] > scores[b]; });
  std::vector<std::int32_t> rank(v.tokens.size(), 0);
  std::int32_t r = 0;
  for (std::size_t k = 0; k < order.size(); ++k) {
    if (k > 0 && scores[order[k]] != scores[order[k - 1]]) ++r;
    rank[order[k]] = r;
  }
  const auto& vocab = t->vocab();
  auto& merges = t->merges();
  for (std::size_t id = 0; id < v.tokens.size(); ++id) {
    if (!mergeable(id)) continue;
    std::string_view text = v.tokens[id];
    std::size_t pos = utf8::valid_sequence_length(text, 0);
    while (pos > 0 && pos < text.size()) {
      auto l = vocab.find(text.substr(0, pos));
      auto rr = vocab.find(text.substr(pos));
      if (l != vocab.end() && rr != vocab.end() && mergeable(l->second) && mergeable(rr->second)) {
        merges.add(l->second, rr->second, rank[id], static_cast<std::int32_t>(id));
      }
      std::size_t n = utf8::valid_sequence_length(text, pos);
      if (n == 0) break;
      pos += n;
    }
  }

  // llama.cpp's SPM convention: a space before the text (per fragment after a special token, like
  // tokenizers' Prepend normalizer), spaces as "▁", and that first space stripped again on decode.
  bool add_space_prefix = true;
  if (auto n = file.get_number_opt("tokenizer.ggml.add_space_prefix")) add_space_prefix = *n != 0;
  std::vector<spm_bpe_tokenizer::normalizer_op> ops;
  if (add_space_prefix)
    ops.push_back({spm_bpe_tokenizer::normalizer_op::kind::prepend, std::string(space_marker), ""});
  ops.push_back({spm_bpe_tokenizer::normalizer_op::kind::replace, " ", std::string(space_marker)});
  t->set_normalizer(std::move(ops));
  t->set_strip_leading_spaces(add_space_prefix ? 1 : 0);

  std::int32_t unk = -1;
  if (auto n = file.get_number_opt("tokenizer.ggml.unknown_token_id"))
    unk = static_cast<std::int32_t>(*n);
  if (unk < 0 || static_cast<std::size_t>(unk) >= v.tokens.size()) {
    unk = -1;
    for (std::size_t i = 0; i < v.types.size(); ++i)
      if (v.types[i] == gguf_token_type::unknown) unk = static_cast<std::int32_t>(i);
  }
  t->set_fallback(true, unk, true);
  t->index_byte_tokens();
  return t;
}

}  // namespace shoal
