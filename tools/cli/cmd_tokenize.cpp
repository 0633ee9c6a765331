// shoal tokenize and shoal chat-template: the tokenizer without the weights.

#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct tokenize_args {
  std::string model;
  std::string tokenizer_dir;
  std::string text;
  std::string input_jsonl;
  bool no_bos = false;
  bool json = false;
  bool specials_as_text = false;
};

void print_ids(const std::vector<std::int32_t>& ids, bool json) {
  if (json) {
    std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
  } else {
    for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
}

int run_tokenize(const tokenize_args& a, bool text_given) {
  auto tok = load_tokenizer(a.model, a.tokenizer_dir);
  encode_options opts{.add_special = !a.no_bos, .parse_special = !a.specials_as_text};
  if (text_given) {
    print_ids(tok->encode(a.text, opts), a.json);
    return 0;
  }
  std::ifstream in(a.input_jsonl);
  if (!in) throw error(errc::not_found, a.input_jsonl + ": cannot open");
  std::string line;
  std::size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw error(errc::invalid_argument, a.input_jsonl + ":" + std::to_string(line_no) + ": invalid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      throw error(errc::invalid_argument, a.input_jsonl + ":" + std::to_string(line_no) + ": needs a string \"text\" field");
    }
    // JSON-lines input always answers in JSON lines, one per input line, in order.
    std::cout << nlohmann::json{{"ids", tok->encode(j["text"].get<std::string>(), opts)}}.dump() << "\n";
  }
  return 0;
}

struct chat_template_args {
  std::string model;
  std::string tokenizer_dir;
  std::string messages;
  std::string template_path;
  bool add_generation_prompt = false;
};

}  // namespace

runner_fn add_tokenize(CLI::App& app) {
  auto a = std::make_shared<tokenize_args>();
  auto* m = app.add_option("--model", a->model, "HF model directory or .gguf file");
  auto* t = app.add_option("--tokenizer", a->tokenizer_dir, "Directory with tokenizer.json (+ tokenizer_config.json)");
  m->excludes(t);
  auto* text = app.add_option("--text", a->text, "Text to encode");
  auto* jl = app.add_option("--input-jsonl", a->input_jsonl, "File of JSON lines with a \"text\" field; one output line each");
  text->excludes(jl);
  app.add_flag("--no-bos", a->no_bos, "Encode without adding special tokens (BOS)");
  app.add_flag("--specials-as-text", a->specials_as_text, "Treat special-token strings in the text as plain text");
  app.add_flag("--json", a->json, "Print {\"ids\": [...]}");
  return [a, m, t, text, jl] {
    if (m->count() + t->count() == 0) throw error(errc::invalid_argument, "give --model PATH or --tokenizer DIR");
    if (text->count() + jl->count() == 0) throw error(errc::invalid_argument, "give --text TEXT or --input-jsonl FILE");
    return run_tokenize(*a, text->count() > 0);
  };
}

runner_fn add_chat_template(CLI::App& app) {
  auto a = std::make_shared<chat_template_args>();
  auto* m = app.add_option("--model", a->model, "HF model directory or .gguf file");
  auto* t = app.add_option("--tokenizer", a->tokenizer_dir, "Directory with tokenizer_config.json holding chat_template");
  m->excludes(t);
  app.add_option("--messages", a->messages, "JSON file: an array of messages or {\"messages\": [...], \"tools\": [...]}")->required();
  app.add_option("--chat-template", a->template_path, "Use this Jinja template file instead of the tokenizer's");
  app.add_flag("--add-generation-prompt", a->add_generation_prompt, "End with the assistant turn's opening");
  return [a, m, t] {
    if (m->count() + t->count() == 0) throw error(errc::invalid_argument, "give --model PATH or --tokenizer DIR");
    auto tok = load_tokenizer(a->model, a->tokenizer_dir);
    auto chat = read_chat_file(a->messages);
    std::cout << render_chat(*tok, chat, a->add_generation_prompt, a->template_path);
    return 0;
  };
}

}  // namespace shoal::cli
