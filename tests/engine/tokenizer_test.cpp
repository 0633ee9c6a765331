// Tokenizers against independent references: Hugging Face tokenizers' encodings of 401 strings for
// three real tokenizer.json files, the chat-template goldens, the prompt ids the reference
// implementations fed the models, and HF-vs-GGUF agreement for the two models shipped in both
// layouts.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/pretokenizer.hpp"
#include "engine/tokenizer/tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

using shoal::encode_options;
using shoal::tokenizer;
using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::shared_path;
using ids_t = std::vector<std::int32_t>;

namespace {

const encode_options no_special{.add_special = false, .parse_special = true};
const encode_options as_text{.add_special = false, .parse_special = false};

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  BOOST_REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

std::string show(const ids_t& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

ids_t cat(ids_t a, const ids_t& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Every string in the three golden files: a varied corpus (scripts, emoji, whitespace, specials).
std::vector<std::string> golden_texts() {
  std::vector<std::string> out;
  for (const char* dir : {"gpt2", "deepseek-coder-6.7b-instruct", "deepseek-v3"}) {
    for (const auto& g :
         read_jsonl(shared_path(std::string("tokenizers/") + dir + "/golden.jsonl"))) {
      out.push_back(g.at("text").get<std::string>());
    }
  }
  return out;
}

struct golden_counts {
  std::size_t lines = 0, encode = 0, encode_special = 0, decode = 0, decode_skip = 0;
};

golden_counts check_golden(const std::string& dir) {
  auto tok = tokenizer::from_hf_dir(shared_path("tokenizers/" + dir));
  golden_counts c;
  int shown = 0;
  for (const auto& g : read_jsonl(shared_path("tokenizers/" + dir + "/golden.jsonl"))) {
    ++c.lines;
    auto text = g.at("text").get<std::string>();
    auto ids = g.at("ids").get<ids_t>();
    auto got = tok->encode(text, no_special);
    auto got_special = tok->encode(text);
    auto dec = tok->decode(ids);
    auto dec_skip = tok->decode(ids, true);
    bool bad = false;
    if (got != ids) ++c.encode, bad = true;
    if (got_special != g.at("ids_with_special_hf").get<ids_t>()) ++c.encode_special, bad = true;
    if (dec != g.at("decoded").get<std::string>()) ++c.decode, bad = true;
    if (dec_skip != g.at("decoded_skip_special").get<std::string>()) ++c.decode_skip, bad = true;
    if (bad && shown++ < 5) {
      BOOST_TEST_MESSAGE(dir << " mismatch on " << nlohmann::json(text).dump() << ": want "
                             << show(ids) << " got " << show(got) << " decoded "
                             << nlohmann::json(dec).dump());
    }
  }
  BOOST_TEST_MESSAGE(dir << ": " << c.lines << " golden lines; mismatches: encode " << c.encode
                         << ", encode+special " << c.encode_special << ", decode " << c.decode
                         << ", decode skip_special " << c.decode_skip);
  return c;
}

void require_clean(const golden_counts& c) {
  BOOST_TEST(c.lines == 401u);
  BOOST_TEST(c.encode == 0u);
  BOOST_TEST(c.encode_special == 0u);
  BOOST_TEST(c.decode == 0u);
  BOOST_TEST(c.decode_skip == 0u);
}

bool valid_utf8(const std::string& s) {
  return shoal::utf8::is_valid(s);
}

// Streams `generated` after `prompt` and checks each chunk and the total against decode().
void check_stream(const tokenizer& tok, const ids_t& prompt, const ids_t& generated,
                  bool skip_special) {
  shoal::stream_decoder sd(tok, prompt, skip_special);
  std::string streamed;
  for (auto id : generated) {
    auto chunk = sd.push(id);
    BOOST_TEST(valid_utf8(chunk));
    streamed += chunk;
  }
  streamed += sd.finish();
  auto before = tok.decode(prompt, skip_special);
  auto after = tok.decode(cat(prompt, generated), skip_special);
  BOOST_REQUIRE(after.size() >= before.size());
  BOOST_TEST(after.compare(0, before.size(), before) == 0);
  BOOST_TEST(streamed == after.substr(before.size()));
}

// A minimal GGUF (no tensors) holding only tokenizer metadata, for loader error paths.
class gguf_writer {
 public:
  void str(const std::string& key, const std::string& v) {
    head(key, 8);
    s(v);
    ++n_;
  }
  void strs(const std::string& key, const std::vector<std::string>& v) {
    head(key, 9);
    u32(8);
    u64(v.size());
    for (const auto& x : v) s(x);
    ++n_;
  }
  void u32_kv(const std::string& key, std::uint32_t v) {
    head(key, 4);
    u32(v);
    ++n_;
  }
  std::string bytes() const {
    std::string out = "GGUF";
    auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
    put(std::uint32_t{3});
    put(std::uint64_t{0});
    put(std::uint64_t{n_});
    out += body_;
    out.resize((out.size() + 31) / 32 * 32, '\0');
    return out;
  }

 private:
  void head(const std::string& key, std::uint32_t type) {
    s(key);
    u32(type);
  }
  void s(const std::string& v) {
    u64(v.size());
    body_ += v;
  }
  void u32(std::uint32_t v) { body_.append(reinterpret_cast<const char*>(&v), 4); }
  void u64(std::uint64_t v) { body_.append(reinterpret_cast<const char*>(&v), 8); }
  std::string body_;
  std::uint64_t n_ = 0;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(tokenizer_golden)

BOOST_AUTO_TEST_CASE(gpt2, *boost::unit_test::precondition(needs_shared{
                               "tokenizers/gpt2/golden.jsonl"})) {
  require_clean(check_golden("gpt2"));
}

BOOST_AUTO_TEST_CASE(deepseek_coder, *boost::unit_test::precondition(needs_shared{
                                         "tokenizers/deepseek-coder-6.7b-instruct/golden.jsonl"})) {
  require_clean(check_golden("deepseek-coder-6.7b-instruct"));
}

BOOST_AUTO_TEST_CASE(deepseek_v3, *boost::unit_test::precondition(needs_shared{
                                      "tokenizers/deepseek-v3/golden.jsonl"})) {
  require_clean(check_golden("deepseek-v3"));
}

BOOST_AUTO_TEST_CASE(chat_template_expected_ids,
                     *boost::unit_test::precondition(needs_shared{
                         "tokenizers/deepseek-v3/chat_template_golden.json"})) {
  for (const char* dir : {"deepseek-coder-6.7b-instruct", "deepseek-v3"}) {
    auto tok = tokenizer::from_hf_dir(shared_path(std::string("tokenizers/") + dir));
    auto g =
        read_json(shared_path(std::string("tokenizers/") + dir + "/chat_template_golden.json"));
    BOOST_REQUIRE(tok->chat_template().has_value());
    BOOST_TEST(*tok->chat_template() == g.at("chat_template").get<std::string>());
    BOOST_TEST(tok->bos_token() == g.at("template_variables").at("bos_token").get<std::string>());
    BOOST_TEST(tok->eos_token() == g.at("template_variables").at("eos_token").get<std::string>());
    std::size_t n = 0;
    for (const auto& c : g.at("cases")) {
      auto expected = c.at("expected").get<std::string>();
      BOOST_TEST(tok->encode(expected, no_special) == c.at("expected_ids").get<ids_t>(),
                 dir << " case " << c.at("name"));
      BOOST_TEST(tok->decode(c.at("expected_ids").get<ids_t>()) == expected);
      ++n;
    }
    BOOST_TEST_MESSAGE(dir << ": " << n << " chat template cases checked");
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(tokenizer_models)

BOOST_AUTO_TEST_CASE(stories_prompts_hf_and_gguf,
                     *boost::unit_test::precondition(needs_shared{
                         "models/stories260K/gguf/stories260K-f32.gguf"})) {
  auto hf = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  shoal::gguf_file file(shared_path("models/stories260K/gguf/stories260K-f32.gguf"));
  auto gg = tokenizer::from_gguf(file);
  for (const auto* t : {hf.get(), gg.get()}) {
    BOOST_TEST(t->kind() == "spm-bpe");
    BOOST_TEST(t->vocab_size() == 512);
    BOOST_TEST(t->bos_id() == 1);
    BOOST_TEST(t->eos_id() == 2);
    BOOST_TEST(t->add_bos());
  }
  auto prompts = read_json(shared_path("golden/prompts.json"));
  for (const auto& p : prompts.at("prompts")) {
    auto g = read_json(shared_path("golden/" + p.at("name").get<std::string>() + ".json"));
    auto prompt = g.at("prompt").get<std::string>();
    auto prompt_ids = g.at("prompt_ids").get<ids_t>();
    auto generated = g.at("generated_ids").get<ids_t>();
    for (const auto* t : {hf.get(), gg.get()}) {
      BOOST_TEST(t->encode(prompt) == prompt_ids, p.at("name") << " " << t->kind());
      // The reference C implementation's text: BOS dropped, the first word's space stripped.
      BOOST_TEST(t->decode(cat(prompt_ids, generated), true) == g.at("text").get<std::string>());
      shoal::stream_decoder sd(*t, prompt_ids, true);
      std::string streamed;
      for (auto id : generated) streamed += sd.push(id);
      streamed += sd.finish();
      BOOST_TEST(streamed == g.at("generated_text").get<std::string>(), p.at("name"));
    }
  }
}

BOOST_AUTO_TEST_CASE(stories_hf_equals_gguf,
                     *boost::unit_test::precondition(needs_shared{
                         "tokenizers/deepseek-v3/golden.jsonl"}) *
                         boost::unit_test::precondition(needs_shared{
                             "models/stories260K/gguf/stories260K-f32.gguf"})) {
  auto hf = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  shoal::gguf_file file(shared_path("models/stories260K/gguf/stories260K-f32.gguf"));
  auto gg = tokenizer::from_gguf(file);
  auto texts = golden_texts();
  for (const char* extra : {"", " ", "  leading", "trailing  ", "a\tb\nc",
                            "Once upon a time<s>The cat", "x</s>y<unk>z"}) {
    texts.push_back(extra);
  }
  std::size_t bad = 0, roundtrip_bad = 0;
  for (const auto& s : texts) {
    for (const auto& opts : {encode_options{}, as_text}) {
      auto a = hf->encode(s, opts);
      auto b = gg->encode(s, opts);
      if (a != b) {
        if (bad++ < 5)
          BOOST_TEST_MESSAGE("stories HF/GGUF differ on " << nlohmann::json(s).dump() << ": "
                                                          << show(a) << " vs " << show(b));
      }
      if (hf->decode(a) != gg->decode(b)) ++bad;
    }
    // Byte fallback covers every character, so treating specials as text round-trips the input
    // (minus the "▁" the normalizer put in front, which decode strips again). A literal "▁" in the
    // input is SentencePiece's space marker and comes back as a space, so those strings are
    // skipped.
    bool has_marker = s.find("\xE2\x96\x81") != std::string::npos;
    if (!has_marker && shoal::utf8::is_valid(s) && hf->decode(hf->encode(s, as_text)) != s) {
      if (roundtrip_bad++ < 5)
        BOOST_TEST_MESSAGE("stories roundtrip fails on " << nlohmann::json(s).dump());
    }
  }
  BOOST_TEST_MESSAGE("stories260K: " << texts.size() << " strings x 2 modes, HF/GGUF mismatches "
                                     << bad << ", roundtrip failures " << roundtrip_bad);
  BOOST_TEST(bad == 0u);
  BOOST_TEST(roundtrip_bad == 0u);
}

BOOST_AUTO_TEST_CASE(
    qwen2_tiny_hf_equals_gguf,
    *boost::unit_test::precondition(needs_shared{"models/qwen2-tiny/gguf/qwen2-tiny.gguf"}) *
        boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/golden.jsonl"})) {
  auto hf = tokenizer::from_hf_dir(shared_path("models/qwen2-tiny/hf"));
  shoal::gguf_file file(shared_path("models/qwen2-tiny/gguf/qwen2-tiny.gguf"));
  auto gg = tokenizer::from_gguf(file);
  for (const auto* t : {hf.get(), gg.get()}) {
    BOOST_TEST(t->kind() == "byte-level-bpe");
    BOOST_TEST(t->vocab_size() == 32022);  // the model has 32,256 embedding rows
    BOOST_TEST(t->bos_id() == 32013);
    BOOST_TEST(t->eos_id() == 32021);
    BOOST_TEST(t->add_bos());
    BOOST_TEST(t->chat_template().has_value());
    BOOST_CHECK_THROW(t->decode(ids_t{32022}), shoal::error);
  }
  BOOST_TEST(*hf->chat_template() == *gg->chat_template());

  auto texts = golden_texts();
  std::size_t bad = 0;
  for (const auto& s : texts) {
    auto a = hf->encode(s);
    auto b = gg->encode(s);
    if (a != b || hf->decode(a) != gg->decode(b)) {
      if (bad++ < 5)
        BOOST_TEST_MESSAGE("qwen2-tiny HF/GGUF differ on " << nlohmann::json(s).dump() << ": "
                                                           << show(a) << " vs " << show(b));
    }
  }
  BOOST_TEST_MESSAGE("qwen2-tiny: " << texts.size() << " strings, HF/GGUF mismatches " << bad);
  BOOST_TEST(bad == 0u);

  for (const auto& p : read_json(shared_path("golden/qwen2-tiny/prompts.json"))) {
    auto g =
        read_json(shared_path("golden/qwen2-tiny/" + p.at("name").get<std::string>() + ".json"));
    auto want = g.at("prompt_ids").get<ids_t>();
    BOOST_TEST(hf->encode(g.at("prompt").get<std::string>()) == want, p.at("name"));
    BOOST_TEST(gg->encode(g.at("prompt").get<std::string>()) == want, p.at("name"));
  }
  // The chat-template goldens through the GGUF copy of the same tokenizer.
  auto cg =
      read_json(shared_path("tokenizers/deepseek-coder-6.7b-instruct/chat_template_golden.json"));
  for (const auto& c : cg.at("cases")) {
    BOOST_TEST(gg->encode(c.at("expected").get<std::string>(), no_special) ==
               c.at("expected_ids").get<ids_t>());
  }
}

BOOST_AUTO_TEST_CASE(deepseek_v3_tiny_prompts, *boost::unit_test::precondition(needs_shared{
                                                   "golden/deepseek-v3-tiny/prompts.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("models/deepseek-v3-tiny/hf"));
  BOOST_TEST(tok->bos_id() == 0);
  BOOST_TEST(tok->eos_id() == 1);
  BOOST_TEST(tok->vocab_size() == 128815);
  for (const auto& p : read_json(shared_path("golden/deepseek-v3-tiny/prompts.json"))) {
    auto g = read_json(
        shared_path("golden/deepseek-v3-tiny/" + p.at("name").get<std::string>() + ".json"));
    BOOST_TEST(tok->encode(g.at("prompt").get<std::string>()) == g.at("prompt_ids").get<ids_t>(),
               p.at("name"));
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(tokenizer_behaviour)

// Literal special tokens: split out with their neighbours left as ordinary text. After a special
// token, SentencePiece's Prepend normalizer puts "▁" before the next piece again, so the pieces
// encode exactly as the golden prompts do on their own.
BOOST_AUTO_TEST_CASE(stories_special_in_the_middle, *boost::unit_test::precondition(needs_shared{
                                                        "golden/once_upon_a_time.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  auto once = read_json(shared_path("golden/once_upon_a_time.json"))
                  .at("prompt_ids")
                  .get<ids_t>();  // [1, …]
  auto cat_ids = read_json(shared_path("golden/the_cat.json")).at("prompt_ids").get<ids_t>();
  auto got = tok->encode("Once upon a time<s>The cat");
  BOOST_TEST(got == cat(once, cat_ids));  // BOS, "Once upon a time", <s>, "The cat"
  BOOST_TEST(tok->encode("<s>The cat", no_special) == cat_ids);
  BOOST_TEST(tok->decode(got) == "<s> Once upon a time<s> The cat");
  BOOST_TEST(tok->decode(got, true) == "Once upon a time The cat");

  // parse_special=false: "<s>" is text, no id 1 anywhere, and it decodes back to itself.
  auto plain = tok->encode("a<s>b", as_text);
  BOOST_TEST(std::count(plain.begin(), plain.end(), 1) == 0);
  BOOST_TEST(tok->decode(plain) == "a<s>b");
  BOOST_TEST(tok->encode("", encode_options{}) == ids_t{1});
  BOOST_TEST(tok->encode("", no_special).empty());
}

BOOST_AUTO_TEST_CASE(byte_level_special_in_the_middle,
                     *boost::unit_test::precondition(needs_shared{
                         "tokenizers/deepseek-v3/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("tokenizers/deepseek-v3"));
  const std::string eos = "<｜end▁of▁sentence｜>";
  auto left = tok->encode("the answer is", no_special);
  auto right = tok->encode(" 42 ok", no_special);
  auto got = tok->encode("the answer is" + eos + " 42 ok", no_special);
  BOOST_TEST(got == cat(cat(left, {1}), right));
  // A near miss is text; two specials back to back are two ids.
  auto near = tok->encode("<｜end▁of▁sentence|>", no_special);
  BOOST_TEST(std::count(near.begin(), near.end(), 1) == 0);
  BOOST_TEST(tok->encode(eos + eos, no_special) == (ids_t{1, 1}));
  BOOST_TEST(tok->decode(ids_t{0, 1}, true).empty());
  // As text, the special's characters go through the byte-level BPE.
  auto plain = tok->encode(eos, as_text);
  BOOST_TEST(plain.size() > 1u);
  BOOST_TEST(tok->decode(plain) == eos);
  // add_special prepends BOS exactly once, even when the text starts with it.
  BOOST_TEST(tok->encode("<｜begin▁of▁sentence｜>hi") ==
             cat(ids_t{0, 0}, tok->encode("hi", no_special)));
}

BOOST_AUTO_TEST_CASE(gpt2_endoftext_as_text, *boost::unit_test::precondition(needs_shared{
                                                 "tokenizers/gpt2/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("tokenizers/gpt2"));
  BOOST_TEST(tok->vocab_size() == 50257);
  BOOST_TEST(!tok->add_bos());
  BOOST_TEST(tok->encode("a<|endoftext|>b", no_special) ==
             cat(cat(tok->encode("a", no_special), {50256}), tok->encode("b", no_special)));
  auto plain = tok->encode("<|endoftext|>", as_text);
  BOOST_TEST(std::count(plain.begin(), plain.end(), 50256) == 0);
  BOOST_TEST(tok->decode(plain) == "<|endoftext|>");
  // GPT-2's regex: "<|", "endoftext", "|>" are separate pre-tokens, so the text form is the
  // concatenation of their encodings.
  BOOST_TEST(plain == cat(cat(tok->encode("<|", as_text), tok->encode("endoftext", as_text)),
                          tok->encode("|>", as_text)));
  BOOST_TEST(tok->token_text(50256) == "<|endoftext|>");
  BOOST_TEST(tok->is_special(50256));
  BOOST_TEST(tok->token_bytes(220) == " ");  // "Ġ"
  BOOST_TEST(tok->token_text(220) == "Ġ");
}

// Pre-tokenization facts that follow from the regexes, checked by hand.
BOOST_AUTO_TEST_CASE(pre_tokenizer_pieces) {
  auto run = [](const std::string& name, const std::string& text) {
    bool ignore = false;
    auto p = shoal::pre_tokenizer::from_gguf_name(name, ignore);
    std::vector<std::string_view> pieces;
    std::deque<std::string> storage;
    p.run(text, pieces, storage);
    return std::vector<std::string>(pieces.begin(), pieces.end());
  };
  using sv = std::vector<std::string>;
  BOOST_TEST(run("gpt-2", "Hello world's  end") == (sv{"Hello", " world", "'s", " ", " end"}));
  // U+180E (Mongolian vowel separator) is not White_Space, so it joins the punctuation run; PCRE2's
  // UCP \s would call it space and split it off.
  BOOST_TEST(run("gpt-2", "a\xE1\xA0\x8E!") == (sv{"a", "\xE1\xA0\x8E!"}));
  // U+0085 (NEL) is White_Space; the optional leading space in the regex is only U+0020.
  BOOST_TEST(run("gpt-2", "a\xC2\x85\xC2\x85x") == (sv{"a", "\xC2\x85", "\xC2\x85", "x"}));
  // DeepSeek Coder isolates every numeral, fullwidth ones included.
  BOOST_TEST(run("deepseek-coder", "ab12\xEF\xBC\x93") == (sv{"ab", "1", "2", "\xEF\xBC\x93"}));
  // DeepSeek V3 groups digits by three, then the later splits work inside each piece.
  BOOST_TEST(run("deepseek-v3", "x12345") == (sv{"x", "123", "45"}));
  // Llama 3 groups digits by three, Qwen2 isolates them; contractions match in any case.
  BOOST_TEST(run("llama3", "I'M 12345 ok") == (sv{"I", "'M", " ", "123", "45", " ok"}));
  BOOST_TEST(run("llama-bpe", "I'M 12345 ok") == (sv{"I", "'M", " ", "123", "45", " ok"}));
  BOOST_TEST(run("qwen2", "I'M 12345 ok") == (sv{"I", "'M", " ", "1", "2", "3", "4", "5", " ok"}));
  BOOST_TEST(run("default", "I'M 12345 ok") == (sv{"I", "'", "M", " 12345", " ok"}));
  BOOST_CHECK_THROW(run("no-such-pre", "x"), shoal::error);
}

BOOST_AUTO_TEST_CASE(
    streaming_split_characters,
    *boost::unit_test::precondition(needs_shared{"models/stories260K/hf/tokenizer.json"}) *
        boost::unit_test::precondition(needs_shared{"tokenizers/deepseek-v3/tokenizer.json"})) {
  const std::string text = "Tom saw 😀 and 你好, ü!";
  // stories260K has no CJK or emoji tokens: they arrive as 3- and 4-byte <0xNN> runs.
  auto stories = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  auto ids = stories->encode(text);
  BOOST_TEST(stories->decode(ids, true) == text);
  std::size_t byte_tokens = 0;
  for (auto id : ids) byte_tokens += (id >= 3 && id < 3 + 256);
  BOOST_TEST(byte_tokens >= 10u);
  for (std::size_t cut = 0; cut <= ids.size(); ++cut) {
    ids_t prompt(ids.begin(), ids.begin() + cut), gen(ids.begin() + cut, ids.end());
    // Prompts end on whole characters (a cut inside a byte run would decode with U+FFFD).
    if (stories->decode(prompt, true).find("\xEF\xBF\xBD") != std::string::npos) continue;
    check_stream(*stories, prompt, gen, true);
    check_stream(*stories, prompt, gen, false);
  }
  // From an empty prompt (BOS only) the stream is exactly the text.
  shoal::stream_decoder sd(*stories, ids_t{1}, true);
  std::string streamed;
  for (std::size_t i = 1; i < ids.size(); ++i) {
    auto chunk = sd.push(ids[i]);
    BOOST_TEST(valid_utf8(chunk));
    streamed += chunk;
  }
  BOOST_TEST(sd.finish().empty());
  BOOST_TEST(streamed == text);

  // Byte-level: the emoji's 4 bytes are spread over several tokens.
  auto v3 = tokenizer::from_hf_dir(shared_path("tokenizers/deepseek-v3"));
  auto vids = v3->encode("🦜🦜 深度求索 🧑‍💻", no_special);
  check_stream(*v3, {}, vids, false);
  check_stream(*v3, ids_t{0}, vids, true);

  // An unfinished character is held back, then flushed as one U+FFFD.
  shoal::stream_decoder half(*stories, ids_t{1}, true);
  BOOST_TEST(half.push(3 + 0xF0).empty());
  BOOST_TEST(half.push(3 + 0x9F).empty());
  BOOST_TEST(half.finish() == "\xEF\xBF\xBD");
  BOOST_TEST(stories->decode(ids_t{1, 3 + 0xF0, 3 + 0x9F}, true) == "\xEF\xBF\xBD");

  // A prompt ending inside a character: decode(prompt) already shows its U+FFFD, so when the next
  // byte breaks the sequence only the new text follows; when it completes it, the character does.
  check_stream(*stories, ids_t{1, 3 + 0xE4}, ids_t{3 + 'A', 3 + 0xB8}, true);
  shoal::stream_decoder mid(*stories, ids_t{1, 3 + 0xE4, 3 + 0xB8}, true);
  BOOST_TEST(mid.push(3 + 0xAD) == "\xE4\xB8\xAD");  // 中
}

BOOST_AUTO_TEST_CASE(out_of_range_ids, *boost::unit_test::precondition(needs_shared{
                                           "models/stories260K/hf/tokenizer.json"})) {
  auto tok = tokenizer::from_hf_dir(shared_path("models/stories260K/hf"));
  try {
    tok->decode(ids_t{5, 512});
    BOOST_FAIL("decode of id 512 did not throw");
  } catch (const shoal::error& e) {
    BOOST_TEST((e.code() == shoal::errc::out_of_range));
    BOOST_TEST(std::string(e.what()).find("512") != std::string::npos);
  }
  BOOST_CHECK_THROW(tok->decode(ids_t{-1}), shoal::error);
  BOOST_CHECK_THROW(shoal::stream_decoder(*tok, ids_t{1}).push(9999), shoal::error);
}

BOOST_AUTO_TEST_CASE(load_errors) {
  shoal::test::temp_dir dir;
  auto expect = [](const std::string& path, shoal::errc code, const std::string& needle) {
    try {
      tokenizer::from_hf_dir(path);
      BOOST_FAIL("loading " << path << " did not throw");
    } catch (const shoal::error& e) {
      BOOST_TEST((e.code() == code), e.what());
      BOOST_TEST(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  expect(dir / "missing", shoal::errc::not_found, "tokenizer.json");
  dir.write("garbage/tokenizer.json", "{\"model\": {\"vocab\": ");
  expect(dir / "garbage", shoal::errc::corrupt_file, dir / "garbage/tokenizer.json");
  dir.write("wordpiece/tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect(dir / "wordpiece", shoal::errc::unsupported, "WordPiece");
  dir.write("badmerge/tokenizer.json",
            R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]},
                "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}})");
  expect(dir / "badmerge", shoal::errc::corrupt_file, "merge #0");
  dir.write("badcfg/tokenizer.json", R"({"model": {"vocab": {"a": 0}, "merges": []}})");
  dir.write("badcfg/tokenizer_config.json", "not json");
  expect(dir / "badcfg", shoal::errc::corrupt_file, "tokenizer_config.json");

  // A tiny hand-made tokenizer.json: model without "type", merges as arrays, ByteLevel use_regex
  // absent.
  dir.write("tiny/tokenizer.json",
            R"({"model": {"vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4, "c": 5},
                          "merges": [["a", "b"], ["Ġ", "ab"]]},
                "added_tokens": [{"id": 6, "content": "<x>", "special": true, "normalized": false}],
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
                "decoder": {"type": "ByteLevel"}})");
  auto tiny = tokenizer::from_hf_dir(dir / "tiny");
  BOOST_TEST(tiny->vocab_size() == 7);
  BOOST_TEST(tiny->encode("ab ab<x>cab", no_special) == (ids_t{3, 4, 6, 5, 3}));
  BOOST_TEST(tiny->decode(ids_t{3, 4, 6, 5, 3}, true) == "ab abcab");

  // GGUF: an unknown pre-tokenizer name is refused by name.
  gguf_writer w;
  w.str("tokenizer.ggml.model", "gpt2");
  w.str("tokenizer.ggml.pre", "mystery-pre");
  w.strs("tokenizer.ggml.tokens", {"a", "b", "ab"});
  w.strs("tokenizer.ggml.merges", {"a b"});
  dir.write("t.gguf", w.bytes());
  shoal::gguf_file f(dir / "t.gguf");
  try {
    tokenizer::from_gguf(f);
    BOOST_FAIL("unknown pre accepted");
  } catch (const shoal::error& e) {
    BOOST_TEST((e.code() == shoal::errc::unsupported));
    BOOST_TEST(std::string(e.what()).find("mystery-pre") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(deepseek_v3_load_time, *boost::unit_test::precondition(needs_shared{
                                                "tokenizers/deepseek-v3/tokenizer.json"})) {
  auto t0 = std::chrono::steady_clock::now();
  auto tok = tokenizer::from_hf_dir(shared_path("tokenizers/deepseek-v3"));
  auto t1 = std::chrono::steady_clock::now();
  std::string big;
  for (const auto& s : golden_texts()) big += s + "\n";
  std::size_t n = 0;
  for (int i = 0; i < 5; ++i) n += tok->encode(big, no_special).size();
  auto t2 = std::chrono::steady_clock::now();
  auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  BOOST_TEST_MESSAGE("deepseek-v3 tokenizer.json loads in "
                     << ms(t1 - t0) << " ms; encodes " << 5 * big.size() << " bytes (" << n
                     << " tokens) in " << ms(t2 - t1) << " ms");
  BOOST_TEST(n > 0u);
  // Timing is reported, not asserted: tests do not time things on this shared machine.
}

BOOST_AUTO_TEST_SUITE_END()
