#pragma once
// Tokenizers: SentencePiece-style BPE with scores and byte fallback (Llama/stories260K), and
// byte-level BPE with regex pre-tokenization (GPT-2, DeepSeek-Coder, DeepSeek-V3, Llama-3, Qwen2).
// Loaded from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) or GGUF
// `tokenizer.ggml.*`.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

class gguf_file;

/// [begin, end) byte offsets into a text.
struct byte_range {
  std::size_t begin = 0;
  std::size_t end = 0;
};

struct encode_options {
  /// Add what the tokenizer adds around a text (BOS where `add_bos_token` says so).
  /// Default: true.
  bool add_special = true;
  /// Match added/special tokens written literally in the text (Hugging Face's behaviour). False
  /// treats every added token, special or not, as plain text, for untrusted input (like llama.cpp's
  /// parse_special=false, but stricter: llama.cpp still matches user-defined tokens).
  /// Default: true.
  bool parse_special = true;
};

class tokenizer {
 public:
  virtual ~tokenizer() = default;

  /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` (BOS/EOS,
  /// add_bos_token, chat_template). Throws shoal::error naming the file and the problem.
  static std::unique_ptr<tokenizer> from_hf_dir(const std::string& dir);
  /// Loads the tokenizer embedded in a GGUF file (`tokenizer.ggml.model` = llama | gpt2).
  static std::unique_ptr<tokenizer> from_gguf(const gguf_file& file);

  /// Ids for `text` (ill-formed UTF-8 in it is first repaired to U+FFFD).
  virtual std::vector<std::int32_t> encode(std::string_view text,
                                           const encode_options& opts = {}) const = 0;
  /// As encode(text, opts), with parse_special matching added tokens only where they lie wholly
  /// inside one of `special_ranges` (sorted, not overlapping), e.g. the text a chat template wrote
  /// itself, so that token strings in what a user wrote stay text. The text is still split at the
  /// tokens that match, exactly as without ranges, so a text whose other parts hold no token
  /// strings gives the same ids as encode(text, opts). Text that is not valid UTF-8 (repaired
  /// before encoding, which moves offsets) matches no token.
  virtual std::vector<std::int32_t> encode(std::string_view text, const encode_options& opts,
                                           const std::vector<byte_range>& special_ranges) const = 0;
  /// Decodes to UTF-8. Invalid UTF-8 becomes U+FFFD, one per maximal ill-formed subpart (Rust's
  /// from_utf8_lossy, as Hugging Face's byte-level decoder does). `skip_special` drops special
  /// tokens. Throws shoal::error(out_of_range) naming an id outside the vocabulary.
  /// SentencePiece byte tokens are concatenated as raw bytes first (llama.cpp / llama2.c); Hugging
  /// Face's ByteFallback decoder differs only for an ill-formed run of byte tokens, which it turns
  /// into one U+FFFD per byte. Raw concatenation keeps decode() prefix-stable for stream_decoder.
  virtual std::string decode(std::span<const std::int32_t> ids,
                             bool skip_special = false) const = 0;

  /// The bytes one token contributes when it follows other text (byte fallback resolved, "▁"/byte
  /// map undone, no leading-space stripping). May be an incomplete UTF-8 sequence.
  virtual std::string token_bytes(std::int32_t id) const = 0;
  /// The token's string as stored in the vocabulary (for `tokens` listings and debugging).
  virtual std::string token_text(std::int32_t id) const = 0;
  virtual bool is_special(std::int32_t id) const = 0;

  /// Number of ids the tokenizer can produce (may be smaller than the model's embedding rows).
  virtual std::int32_t vocab_size() const = 0;
  /// "spm-bpe" or "byte-level-bpe".
  virtual std::string kind() const = 0;

  /// -1 when the tokenizer has none.
  std::int32_t bos_id() const { return bos_id_; }
  std::int32_t eos_id() const { return eos_id_; }
  /// Strings of BOS/EOS as the chat template sees them ("" when absent).
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  bool add_bos() const { return add_bos_; }
  /// Whether encode() with add_special appends EOS (tokenizer_config `add_eos_token`).
  bool add_eos() const { return add_eos_; }
  /// Leading spaces decode() drops from the start of its output (SentencePiece strips the space it
  /// put before the first word); 0 for byte-level. stream_decoder mirrors it.
  std::size_t decode_strip_spaces() const { return strip_leading_spaces_; }
  /// The Jinja chat template from tokenizer_config.json / GGUF `tokenizer.chat_template`, if any.
  const std::optional<std::string>& chat_template() const { return chat_template_; }

 protected:
  std::int32_t bos_id_ = -1;
  std::int32_t eos_id_ = -1;
  std::string bos_token_;
  std::string eos_token_;
  bool add_bos_ = false;
  bool add_eos_ = false;
  std::size_t strip_leading_spaces_ = 0;
  std::optional<std::string> chat_template_;
};

/// Streaming-safe incremental decoding: feed generated ids one at a time, get back only complete
/// UTF-8 text, exactly the text `decode(prompt + generated)` adds after `decode(prompt)`.
/// Works per token in O(token length): decode() is the repaired concatenation of token_bytes(), so
/// only an incomplete UTF-8 tail (at most 3 bytes) is ever held back. (If the prompt itself ends in
/// an incomplete sequence, decode(prompt) shows it as U+FFFD; should generated bytes complete it,
/// the completed character is emitted whole, otherwise that U+FFFD is not repeated.)
class stream_decoder {
 public:
  stream_decoder(const tokenizer& tok, std::span<const std::int32_t> prompt_ids,
                 bool skip_special = false);
  /// Appends `id` and returns the newly completed text (possibly empty).
  std::string push(std::int32_t id);
  /// Returns whatever is still held back (an incomplete UTF-8 tail becomes U+FFFD).
  std::string finish();

 private:
  // Appends the raw bytes `id` contributes (after skipping / leading-space stripping) to pending_.
  void append(std::int32_t id);

  const tokenizer& tok_;
  bool skip_special_;
  std::size_t strip_left_ = 0;  // leading spaces decode() would still strip
  std::string pending_;         // raw bytes not yet returned (an incomplete UTF-8 tail after push)
  bool prompt_tail_ = false;    // pending_ starts with the prompt's unfinished character
};

}  // namespace shoal
