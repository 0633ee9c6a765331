// The loaders (tokenizer.json + tokenizer_config.json, GGUF) and the streaming decoder.

#include "engine/tokenizer/tokenizer.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/bpe_tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace shoal {

namespace {

using nlohmann::json;

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json_file(const std::string& path) {
  auto text = read_text(path);
  if (!text) throw error(errc::not_found, "cannot read " + path);
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    throw error(errc::corrupt_file, path + ": malformed JSON: " + e.what());
  }
}

// bos_token / eos_token in tokenizer_config.json: a string, an {"__type": "AddedToken", "content":
// …} object, or null.
std::string token_string(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) return it->value("content", "");
  return "";
}

// generation_config.json / config.json give ids; eos_token_id may be a list (the first is the EOS).
std::int32_t id_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return -1;
  if (it->is_number_integer()) return it->get<std::int32_t>();
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer())
    return (*it)[0].get<std::int32_t>();
  return -1;
}

// The special tokens a TemplateProcessing post-processor puts before and after a single sequence.
void template_specials(const json& pp, std::int32_t& prefix, std::int32_t& suffix) {
  if (!pp.is_object()) return;
  std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : pp.value("processors", json::array()))
      template_specials(p, prefix, suffix);
    return;
  }
  if (type != "TemplateProcessing") return;
  const auto& single = pp.at("single");
  const auto& specials = pp.value("special_tokens", json::object());
  auto id_of = [&](const json& item) -> std::int32_t {
    auto st = item.find("SpecialToken");
    if (st == item.end()) return -1;
    auto name = st->at("id").get<std::string>();
    auto sp = specials.find(name);
    if (sp == specials.end() || sp->at("ids").empty()) return -1;
    return sp->at("ids")[0].get<std::int32_t>();
  };
  if (!single.is_array() || single.empty()) return;
  prefix = id_of(single.front());
  if (single.size() > 1) suffix = id_of(single.back());
}

void configure_hf_specials(bpe_tokenizer& t, const json& tj, const json* cfg,
                           const std::string& dir) {
  std::string bos_text = cfg ? token_string(*cfg, "bos_token") : "";
  std::string eos_text = cfg ? token_string(*cfg, "eos_token") : "";
  std::int32_t bos = bos_text.empty() ? -1 : t.find_token(bos_text);
  std::int32_t eos = eos_text.empty() ? -1 : t.find_token(eos_text);

  // Ids from generation_config.json, then config.json, where tokenizer_config.json names none.
  for (const char* name : {"generation_config.json", "config.json"}) {
    if (bos >= 0 && eos >= 0) break;
    std::string path = dir + "/" + name;
    if (!std::filesystem::exists(path)) continue;
    json j = parse_json_file(path);
    if (bos < 0) bos = id_field(j, "bos_token_id");
    if (eos < 0) eos = id_field(j, "eos_token_id");
  }

  std::int32_t tmpl_prefix = -1, tmpl_suffix = -1;
  if (auto it = tj.find("post_processor"); it != tj.end())
    template_specials(*it, tmpl_prefix, tmpl_suffix);

  // transformers' Llama-style tokenizers rebuild the post-processor from
  // add_bos_token/add_eos_token; without those keys the tokenizer.json post-processor decides.
  bool add_bos = false, add_eos = false;
  if (cfg && cfg->contains("add_bos_token") && (*cfg)["add_bos_token"].is_boolean()) {
    add_bos = (*cfg)["add_bos_token"].get<bool>();
  } else if (tmpl_prefix >= 0) {
    add_bos = true;
    if (bos < 0) bos = tmpl_prefix;
  }
  if (cfg && cfg->contains("add_eos_token") && (*cfg)["add_eos_token"].is_boolean()) {
    add_eos = (*cfg)["add_eos_token"].get<bool>();
  } else if (tmpl_suffix >= 0) {
    add_eos = true;
    if (eos < 0) eos = tmpl_suffix;
  }
  auto valid = [&](std::int32_t id) { return id >= 0 && id < t.vocab_size(); };
  if (!valid(bos)) bos = -1;
  if (!valid(eos)) eos = -1;
  t.set_specials(bos, eos, add_bos, add_eos);
  if (bos_text.empty() && bos >= 0) bos_text = t.token_text(bos);
  if (eos_text.empty() && eos >= 0) eos_text = t.token_text(eos);
  t.set_bos_eos_text(bos_text, eos_text);

  std::optional<std::string> tmpl;
  if (cfg) {
    if (auto it = cfg->find("chat_template"); it != cfg->end()) {
      if (it->is_string()) {
        tmpl = it->get<std::string>();
      } else if (it->is_array()) {
        // Named templates: [{"name": "default", "template": …}, {"name": "tool_use", …}].
        for (const auto& e : *it) {
          if (e.value("name", "") == "default") tmpl = e.value("template", "");
        }
        if (!tmpl && !it->empty()) tmpl = (*it)[0].value("template", "");
      }
    }
  }
  if (!tmpl) tmpl = read_text(dir + "/chat_template.jinja");  // newer transformers save it apart
  t.set_chat_template(std::move(tmpl));
}

}  // namespace

std::unique_ptr<tokenizer> tokenizer::from_hf_dir(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  if (!std::filesystem::exists(path))
    throw error(errc::not_found, "tokenizer file " + path + " does not exist");
  json tj = parse_json_file(path);

  std::optional<json> cfg;
  const std::string cfg_path = dir + "/tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) cfg = parse_json_file(cfg_path);

  std::unique_ptr<bpe_tokenizer> t;
  try {
    if (!tj.is_object() || !tj.contains("model"))
      throw error(errc::corrupt_file, "no \"model\" object");
    const auto& model = tj.at("model");
    // Older files omit "type"; BPE is what they hold.
    std::string type = model.value("type", "BPE");
    if (type != "BPE")
      throw error(errc::unsupported, "model type '" + type + "' is not supported (only BPE)");
    if (hf_is_byte_level(tj)) {
      t = make_byte_level_from_hf(tj);
    } else {
      t = make_spm_from_hf(tj);
    }
  } catch (const error& e) {
    throw error(e.code(), path + ": " + e.what());
  } catch (const json::exception& e) {
    throw error(errc::corrupt_file, path + ": unexpected structure: " + e.what());
  }
  try {
    configure_hf_specials(*t, tj, cfg ? &*cfg : nullptr, dir);
  } catch (const json::exception& e) {
    throw error(errc::corrupt_file, cfg_path + ": unexpected structure: " + e.what());
  }
  return t;
}

std::unique_ptr<tokenizer> tokenizer::from_gguf(const gguf_file& file) {
  std::string model = file.get_string("tokenizer.ggml.model");
  try {
    if (model == "llama") return make_spm_from_gguf(file);
    if (model == "gpt2") return make_byte_level_from_gguf(file);
    throw error(errc::unsupported,
                "tokenizer.ggml.model '" + model + "' is not supported (llama or gpt2)");
  } catch (const error& e) {
    std::string msg = e.what();
    if (msg.rfind(file.path(), 0) == 0) throw;  // already names the file
    throw error(e.code(), file.path() + ": " + msg);
  }
}

// ---- stream_decoder -----------------------------------------------------------------------------

stream_decoder::stream_decoder(const tokenizer& tok, std::span<const std::int32_t> prompt_ids,
                               bool skip_special)
    : tok_(tok), skip_special_(skip_special), strip_left_(tok.decode_strip_spaces()) {
  for (auto id : prompt_ids) append(id);
  // The prompt's text is not ours to return; keep only a tail that generated bytes may complete.
  std::size_t keep = utf8::incomplete_tail(pending_);
  pending_.erase(0, pending_.size() - keep);
  prompt_tail_ = keep > 0;
}

void stream_decoder::append(std::int32_t id) {
  std::string bytes = tok_.token_bytes(id);  // validates the id
  if (skip_special_ && tok_.is_special(id)) return;
  std::size_t k = 0;
  while (strip_left_ > 0 && k < bytes.size() && bytes[k] == ' ') {
    ++k;
    --strip_left_;
  }
  if (k < bytes.size()) strip_left_ = 0;
  pending_.append(bytes, k, std::string::npos);
}

std::string stream_decoder::push(std::int32_t id) {
  append(id);
  std::size_t settled = pending_.size() - utf8::incomplete_tail(pending_);
  if (settled == 0) return {};
  // The prompt's unfinished character either completed (new text) or broke, and then decode(prompt)
  // already showed its U+FFFD.
  bool drop_first = prompt_tail_ && utf8::valid_sequence_length(pending_, 0) == 0;
  prompt_tail_ = false;
  std::string out = utf8::repair(std::string_view(pending_).substr(0, settled));
  pending_.erase(0, settled);
  if (drop_first) out.erase(0, 3);
  return out;
}

std::string stream_decoder::finish() {
  std::string out = utf8::repair(pending_);
  if (prompt_tail_ && !out.empty()) out.erase(0, 3);  // the prompt's own U+FFFD
  prompt_tail_ = false;
  pending_.clear();
  return out;
}

}  // namespace shoal
