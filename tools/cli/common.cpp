#include <filesystem>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/gguf.hpp"
#include "engine/tokenizer/chat_template.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

std::unique_ptr<tokenizer> load_tokenizer(const std::string& model_path, const std::string& tokenizer_dir) {
  if (!tokenizer_dir.empty()) return tokenizer::from_hf_dir(tokenizer_dir);
  std::error_code ec;
  if (!std::filesystem::exists(model_path, ec)) throw error(errc::not_found, model_path + ": no such file or directory");
  if (std::filesystem::is_directory(model_path, ec)) return tokenizer::from_hf_dir(model_path);
  gguf_file g(model_path);
  return tokenizer::from_gguf(g);
}

int resolve_threads(int requested) {
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (requested < 1) {
    std::cerr << "shoal: warning: --threads " << requested << " is not a thread count; using 1\n";
    return 1;
  }
  if (requested > cores) {
    std::cerr << "shoal: warning: --threads " << requested << " exceeds the " << cores << " cores here; using " << cores << "\n";
    return cores;
  }
  return requested;
}

chat_file read_chat_file(const std::string& path) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::invalid_argument, path + ": invalid JSON: " + e.what());
  }
  chat_file out;
  nlohmann::ordered_json messages;
  if (j.is_array()) {
    messages = j;
  } else if (j.is_object() && j.contains("messages")) {
    messages = j["messages"];
    if (j.contains("tools")) out.tools_json = j["tools"].dump();
    if (j.contains("add_generation_prompt") && j["add_generation_prompt"].is_boolean()) {
      out.add_generation_prompt = j["add_generation_prompt"].get<bool>();
    }
  } else {
    throw error(errc::invalid_argument, path + ": expected a JSON array of messages or an object with \"messages\"");
  }
  if (!messages.is_array() || messages.empty()) {
    throw error(errc::invalid_argument, path + ": \"messages\" must be a non-empty array");
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      throw error(errc::invalid_argument, path + ": message " + std::to_string(i) + " needs a string \"role\"");
    }
  }
  out.messages_json = messages.dump();
  if (out.tools_json.empty()) out.tools_json = "null";
  return out;
}

std::string render_chat(const tokenizer& tok, const chat_file& chat, bool add_generation_prompt,
                        const std::string& template_path) {
  std::string source;
  if (!template_path.empty()) {
    source = read_text_file(template_path);
  } else if (tok.chat_template()) {
    source = *tok.chat_template();
  } else {
    throw error(errc::unsupported, "the model's tokenizer has no chat_template; pass --chat-template FILE");
  }
  chat_template_vars vars;
  vars.messages = nlohmann::ordered_json::parse(chat.messages_json);
  vars.tools = nlohmann::ordered_json::parse(chat.tools_json);
  vars.add_generation_prompt = add_generation_prompt;
  vars.bos_token = tok.bos_token();
  vars.eos_token = tok.eos_token();
  return render_chat_template(source, vars);
}

}  // namespace shoal::cli
