#pragma once
// The concrete tokenizers behind tokenizer::from_hf_dir / from_gguf. Both are BPE with the same
// merge loop (Hugging Face tokenizers' Word::merge_all); they differ in what happens before
// (SentencePiece "▁" normalization and byte fallback vs. regex pre-tokenization and GPT-2's byte
// map) and in how a token turns back into bytes.

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/tokenizer/pretokenizer.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace shoal {

class gguf_file;

/// Hash for string-keyed maps that accepts string_view lookups without allocating.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using token_map = std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>>;

/// (left id, right id) -> (rank, merged id). Lower rank merges first.
class merge_table {
 public:
  struct entry {
    std::int32_t rank;
    std::int32_t merged;
  };
  void reserve(std::size_t n) { map_.reserve(n); }
  /// Keeps the first (lowest-rank) entry when a pair repeats, as tokenizers does.
  void add(std::int32_t left, std::int32_t right, std::int32_t rank, std::int32_t merged) {
    map_.try_emplace(key(left, right), entry{rank, merged});
  }
  const entry* find(std::int32_t left, std::int32_t right) const {
    auto it = map_.find(key(left, right));
    return it == map_.end() ? nullptr : &it->second;
  }
  std::size_t size() const { return map_.size(); }

 private:
  static std::uint64_t key(std::int32_t l, std::int32_t r) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(l)) << 32) |
           static_cast<std::uint32_t>(r);
  }
  std::unordered_map<std::uint64_t, entry> map_;
};

/// Merges `ids` in place: repeatedly the lowest-rank adjacent pair, leftmost on ties.
void bpe_merge(std::vector<std::int32_t>& ids, const merge_table& merges);

/// Finds added tokens in raw text, leftmost-longest (tokenizers' Aho-Corasick LeftmostLongest).
class added_token_matcher {
 public:
  struct match {
    std::size_t begin, end;
    std::int32_t id;
  };
  void add(std::string_view content, std::int32_t id, bool lstrip, bool rstrip);
  bool empty() const { return count_ == 0; }
  /// Appends the matches in `text`, left to right, non-overlapping. With `allowed`, only tokens
  /// whose text [begin, end) (before lstrip/rstrip widen it) lies wholly inside one of those
  /// ranges (sorted, offsets into `text`) count; elsewhere the text matches nothing.
  void find_all(std::string_view text, std::vector<match>& out,
                const std::vector<byte_range>* allowed = nullptr) const;

 private:
  struct node {
    std::int32_t id = -1;
    bool lstrip = false, rstrip = false;
    std::vector<std::pair<unsigned char, std::int32_t>> kids;
  };
  std::int32_t child(std::int32_t n, unsigned char c) const;
  std::vector<node> nodes_ = std::vector<node>(1);
  std::size_t count_ = 0;
};

/// An entry of tokenizer.json `added_tokens` (or a GGUF control / user-defined token).
struct added_token {
  std::string content;
  std::int32_t id = -1;
  bool special = false;
  bool normalized = false;  // matched after the normalizer ran (tokenizers' second pass)
  bool lstrip = false, rstrip = false;
};

/// What both kinds share: the id tables, added-token splitting, BOS/EOS, decode.
class bpe_tokenizer : public tokenizer {
 public:
  std::vector<std::int32_t> encode(std::string_view text,
                                   const encode_options& opts = {}) const final;
  std::vector<std::int32_t> encode(std::string_view text, const encode_options& opts,
                                   const std::vector<byte_range>& special_ranges) const final;
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const final;
  std::string token_text(std::int32_t id) const final;
  bool is_special(std::int32_t id) const final;
  std::int32_t vocab_size() const final { return static_cast<std::int32_t>(id_to_text_.size()); }

  /// The id of a token string (model vocabulary or added token), -1 when absent.
  std::int32_t find_token(std::string_view text) const;

  // Loading, used by the from_hf_dir / from_gguf factories.
  void set_vocab(std::vector<std::string> texts, const std::vector<bool>& present);
  void add_added_tokens(const std::vector<added_token>& tokens);
  void set_specials(std::int32_t bos, std::int32_t eos, bool add_bos, bool add_eos);
  void set_bos_eos_text(std::string bos, std::string eos) {
    bos_token_ = std::move(bos);
    eos_token_ = std::move(eos);
  }
  void set_chat_template(std::optional<std::string> t) { chat_template_ = std::move(t); }
  void set_ignore_merges(bool v) { ignore_merges_ = v; }
  merge_table& merges() { return merges_; }
  const token_map& vocab() const { return vocab_; }
  /// Throws shoal::error(out_of_range) naming `id` when it is not a token of this vocabulary.
  void check_id(std::int32_t id) const;

 protected:
  /// The text between added tokens, normalized (SentencePiece's "▁"); identity for byte-level.
  /// `at_start`: the segment begins at offset 0 of the input.
  virtual std::string normalize(std::string_view segment, bool at_start) const;
  /// Appends the ids of a normalized segment that holds no added token.
  virtual void encode_segment(std::string_view segment, bool at_start,
                              std::vector<std::int32_t>& out) const = 0;
  /// Merges `ids`, or maps `word` straight to its id when ignore_merges and it is in the
  /// vocabulary.
  void merge_word(std::string_view word, std::vector<std::int32_t>& ids,
                  std::vector<std::int32_t>& out) const;

  std::vector<std::string> id_to_text_;  // [vocab_size]; "" for holes
  std::vector<std::uint8_t> flags_;      // [vocab_size]; flag_present | flag_special
  token_map vocab_;                      // the model's vocabulary
  token_map added_by_text_;              // added tokens by content
  merge_table merges_;
  bool ignore_merges_ = false;
  added_token_matcher raw_matcher_;         // added tokens with normalized=false
  added_token_matcher normalized_matcher_;  // added tokens with normalized=true

  static constexpr std::uint8_t flag_present = 1;
  static constexpr std::uint8_t flag_special = 2;

 private:
  std::vector<std::int32_t> encode_within(std::string_view text, const encode_options& opts,
                                          const std::vector<byte_range>* allowed) const;
  void encode_text(std::string_view text, bool parse_special, const std::vector<byte_range>* allowed,
                   std::vector<std::int32_t>& out) const;
};

/// SentencePiece-style BPE: "▁" for spaces (Prepend/Replace normalizer or Metaspace), merges by
/// rank (tokenizer.json) or by score (GGUF `llama`), unknown characters as `<0xNN>` byte tokens.
class spm_bpe_tokenizer final : public bpe_tokenizer {
 public:
  std::string token_bytes(std::int32_t id) const override;
  std::string kind() const override { return "spm-bpe"; }

  struct normalizer_op {
    enum class kind { prepend, replace } what;
    std::string a, b;  // prepend: a; replace: a -> b
  };
  enum class prepend_scheme { always, first, never };
  struct metaspace {
    std::string replacement = "\xE2\x96\x81";  // "▁"
    prepend_scheme scheme = prepend_scheme::always;
    bool split = false;
  };

  void set_normalizer(std::vector<normalizer_op> ops) { normalizer_ = std::move(ops); }
  void set_metaspace(std::optional<metaspace> m) { metaspace_ = std::move(m); }
  void set_fallback(bool byte_fallback, std::int32_t unk_id, bool fuse_unk);
  void set_strip_leading_spaces(std::size_t n) { strip_leading_spaces_ = n; }
  /// After set_vocab: records which ids are `<0xNN>` byte tokens.
  void index_byte_tokens();

 protected:
  std::string normalize(std::string_view segment, bool at_start) const override;
  void encode_segment(std::string_view segment, bool at_start,
                      std::vector<std::int32_t>& out) const override;

 private:
  void encode_word(std::string_view word, std::vector<std::int32_t>& out) const;

  std::vector<normalizer_op> normalizer_;
  std::optional<metaspace> metaspace_;
  bool byte_fallback_ = false;
  std::int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  std::array<std::int32_t, 256> byte_token_{};  // byte -> id of "<0xNN>", -1 where missing
  // [vocab_size]: the byte a "<0xNN>" token stands for, else -1.
  std::vector<std::int16_t> byte_of_token_;
};

/// Byte-level BPE (GPT-2 family): regex pre-tokenization, each byte of a piece mapped to a
/// printable code point, merges by rank.
class byte_level_bpe_tokenizer final : public bpe_tokenizer {
 public:
  std::string token_bytes(std::int32_t id) const override;
  std::string kind() const override { return "byte-level-bpe"; }

  void set_pre_tokenizer(pre_tokenizer p) { pre_ = std::move(p); }
  /// After set_vocab: the ids of the 256 single-byte tokens.
  void index_byte_tokens();

 protected:
  void encode_segment(std::string_view segment, bool at_start,
                      std::vector<std::int32_t>& out) const override;

 private:
  pre_tokenizer pre_;
  // byte -> id of the token for its mapped code point, -1 where missing.
  std::array<std::int32_t, 256> byte_token_{};
};

// Builders (the file-level parts: tokenizer_config.json, error wrapping, live in tokenizer.cpp).
// They throw shoal::error without naming the file; the caller adds it.

/// tokenizer.json `added_tokens`.
std::vector<added_token> parse_hf_added_tokens(const nlohmann::json& tokenizer_json);
/// Fills vocabulary, added tokens and merges from tokenizer.json `model` + `added_tokens`.
void load_hf_bpe_model(bpe_tokenizer& t, const nlohmann::json& tokenizer_json);
/// Whether the tokenizer.json describes byte-level BPE (a ByteLevel pre-tokenizer or decoder).
bool hf_is_byte_level(const nlohmann::json& tokenizer_json);

std::unique_ptr<spm_bpe_tokenizer> make_spm_from_hf(const nlohmann::json& tokenizer_json);
std::unique_ptr<byte_level_bpe_tokenizer> make_byte_level_from_hf(
    const nlohmann::json& tokenizer_json);
std::unique_ptr<spm_bpe_tokenizer> make_spm_from_gguf(const gguf_file& file);
std::unique_ptr<byte_level_bpe_tokenizer> make_byte_level_from_gguf(const gguf_file& file);

/// GGUF token types (llama.cpp's llama_token_type).
enum class gguf_token_type : int {
  undefined = 0,
  normal = 1,
  unknown = 2,
  control = 3,
  user_defined = 4,
  unused = 5,
  byte = 6
};

/// GGUF `tokenizer.ggml.*` vocabulary: tokens with their types, trailing unused (padding) entries
/// trimmed so vocab_size() counts the tokenizer's ids, not the model's padded embedding rows.
struct gguf_vocab {
  std::vector<std::string> tokens;
  std::vector<gguf_token_type> types;
};
gguf_vocab read_gguf_vocab(const gguf_file& file);
/// Loads `v` into `t` (types 2/3/4 become added tokens; 2/3 are special) and sets BOS/EOS, add_bos
/// (default `default_add_bos`), add_eos and the chat template from the metadata.
void load_gguf_common(bpe_tokenizer& t, const gguf_file& file, const gguf_vocab& v,
                      bool default_add_bos);

}  // namespace shoal
