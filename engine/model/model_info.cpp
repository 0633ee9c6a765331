#include "engine/model/model_info.hpp"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/gguf.hpp"

namespace shoal {

namespace {

std::vector<std::int32_t> ids_of(const nlohmann::json& v) {
  std::vector<std::int32_t> out;
  if (v.is_number_integer()) out.push_back(v.get<std::int32_t>());
  if (v.is_array()) {
    for (auto& x : v) if (x.is_number_integer()) out.push_back(x.get<std::int32_t>());
  }
  return out;
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::corrupt_file, path + ": invalid JSON: " + e.what());
  }
}

}  // namespace

std::unique_ptr<tokenizer> load_model_tokenizer(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw error(errc::not_found, path + ": no such file or directory");
  if (std::filesystem::is_directory(path, ec)) return tokenizer::from_hf_dir(path);
  gguf_file g(path);
  return tokenizer::from_gguf(g);
}

model_info read_model_info(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw error(errc::not_found, path + ": no such file or directory");
  model_info info;
  if (fs::is_directory(path, ec)) {
    const std::string cfg_path = path + "/config.json";
    if (!fs::exists(cfg_path)) throw error(errc::not_found, path + ": no config.json here");
    auto c = read_json(cfg_path);
    if (c.contains("architectures") && c["architectures"].is_array() && !c["architectures"].empty()) {
      info.architecture = c["architectures"][0].get<std::string>();
    }
    info.context_length = c.value("max_position_embeddings", 2048);
    info.vocab_size = c.value("vocab_size", 0);
    if (c.contains("eos_token_id")) info.eos_ids = ids_of(c["eos_token_id"]);
    if (fs::exists(path + "/generation_config.json")) {
      auto g = read_json(path + "/generation_config.json");
      if (g.is_object() && g.contains("eos_token_id")) {
        auto ids = ids_of(g["eos_token_id"]);
        if (!ids.empty()) info.eos_ids = ids;
      }
    }
  } else {
    gguf_file g(path);
    info.architecture = g.get_string("general.architecture");
    info.context_length = static_cast<std::int64_t>(g.get_number(info.architecture + ".context_length"));
    if (auto v = g.get_number_opt("tokenizer.ggml.eos_token_id")) info.eos_ids.push_back(static_cast<std::int32_t>(*v));
    if (auto v = g.get_number_opt("tokenizer.ggml.eot_token_id")) info.eos_ids.push_back(static_cast<std::int32_t>(*v));
    if (const auto* t = g.find_tensor("token_embd.weight"); t && t->ne.size() == 2) info.vocab_size = t->ne[1];
  }
  if (info.context_length <= 0) throw error(errc::corrupt_file, path + ": no positive context length");
  return info;
}

}  // namespace shoal
