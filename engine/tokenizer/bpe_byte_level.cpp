// Byte-level BPE (GPT-2, DeepSeek-Coder, DeepSeek-V3, Llama 3, Qwen2).

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/bpe_tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace shoal {

void byte_level_bpe_tokenizer::index_byte_tokens() {
  const auto& bt = utf8::gpt2_bytes();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string_view(bt.to_utf8[b]));
    byte_token_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

void byte_level_bpe_tokenizer::encode_segment(std::string_view segment, bool,
                                              std::vector<std::int32_t>& out) const {
  std::vector<std::string_view> pieces;
  std::deque<std::string> storage;
  pre_.run(segment, pieces, storage);
  const auto& bt = utf8::gpt2_bytes();
  std::vector<std::int32_t> ids;
  std::string mapped;
  for (auto piece : pieces) {
    ids.clear();
    for (char c : piece) {
      // A byte whose code point is missing from the vocabulary has no token (no unk in these
      // models); tokenizers drops it, and so do we.
      std::int32_t id = byte_token_[static_cast<unsigned char>(c)];
      if (id >= 0) ids.push_back(id);
    }
    if (ignore_merges_) {
      mapped.clear();
      for (char c : piece) mapped += bt.to_utf8[static_cast<unsigned char>(c)];
      merge_word(mapped, ids, out);
    } else {
      merge_word({}, ids, out);
    }
  }
}

std::string byte_level_bpe_tokenizer::token_bytes(std::int32_t id) const {
  check_id(id);
  // A token whose every character is in the byte table stands for those bytes; any other token
  // (e.g. "<｜begin▁of▁sentence｜>") is its own UTF-8 text.
  const auto& bt = utf8::gpt2_bytes();
  const std::string& text = id_to_text_[id];
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t n = utf8::valid_sequence_length(text, pos);
    if (n == 0) return text;
    char32_t cp = utf8::decode_at(text, pos, n);
    if (cp >= bt.from_cp.size() || bt.from_cp[cp] < 0) return text;
    out += static_cast<char>(bt.from_cp[cp]);
    pos += n;
  }
  return out;
}

std::unique_ptr<byte_level_bpe_tokenizer> make_byte_level_from_hf(const nlohmann::json& tj) {
  auto t = std::make_unique<byte_level_bpe_tokenizer>();
  // Byte-level models here have no normalizer; anything else (NFC, lowercase…) would silently
  // change the ids, so refuse it.
  if (auto it = tj.find("normalizer"); it != tj.end() && !it->is_null()) {
    std::string type = it->value("type", "");
    bool empty_sequence =
        type == "Sequence" && it->value("normalizers", nlohmann::json::array()).empty();
    if (!empty_sequence)
      throw error(errc::unsupported,
                  "unsupported normalizer type '" + type + "' for byte-level BPE");
  }
  auto pre = tj.find("pre_tokenizer");
  if (pre == tj.end() || pre->is_null())
    throw error(errc::unsupported, "byte-level BPE without a pre_tokenizer is not supported");
  t->set_pre_tokenizer(pre_tokenizer::from_hf_json(*pre));
  const auto& model = tj.at("model");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (auto it = model.find(key);
        it != model.end() && it->is_string() && !it->get<std::string>().empty()) {
      throw error(errc::unsupported, std::string("BPE ") + key + " is not supported");
    }
  }
  load_hf_bpe_model(*t, tj);
  t->index_byte_tokens();
  return t;
}

std::unique_ptr<byte_level_bpe_tokenizer> make_byte_level_from_gguf(const gguf_file& file) {
  auto t = std::make_unique<byte_level_bpe_tokenizer>();
  gguf_vocab v = read_gguf_vocab(file);
  load_gguf_common(*t, file, v, /*default_add_bos=*/false);
  std::string pre = file.get_string_opt("tokenizer.ggml.pre").value_or("default");
  bool ignore_merges = false;
  t->set_pre_tokenizer(pre_tokenizer::from_gguf_name(pre, ignore_merges));
  t->set_ignore_merges(ignore_merges);

  const auto* merges = file.find("tokenizer.ggml.merges");
  if (merges == nullptr || !merges->is_array() || merges->elem != gguf_type::string) {
    throw error(errc::corrupt_file, "tokenizer.ggml.merges is missing or not a string array");
  }
  const auto& vocab = t->vocab();
  auto& table = t->merges();
  table.reserve(merges->strs.size());
  std::string joined;
  for (std::size_t i = 0; i < merges->strs.size(); ++i) {
    const std::string& m = merges->strs[i];
    auto sp = m.find(' ');
    if (sp == std::string::npos)
      throw error(errc::corrupt_file,
                  "merge #" + std::to_string(i) + " '" + m + "' is not two tokens");
    std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
    joined.assign(left);
    joined.append(right);
    auto l = vocab.find(left), r = vocab.find(right), j = vocab.find(std::string_view(joined));
    if (l == vocab.end() || r == vocab.end() || j == vocab.end()) {
      throw error(errc::corrupt_file, "merge #" + std::to_string(i) + " '" + m +
                                          "' uses a token not in tokenizer.ggml.tokens");
    }
    table.add(l->second, r->second, static_cast<std::int32_t>(i), j->second);
  }
  t->index_byte_tokens();
  return t;
}

}  // namespace shoal
