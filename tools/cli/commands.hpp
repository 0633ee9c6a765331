#pragma once
// Subcommands of the shoal CLI. Each registers its options on a CLI11 subcommand and returns the
// function that runs it (exit status: 0 ok, 1 runtime error, 2 usage).

#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/tokenizer/tokenizer.hpp"

namespace shoal::cli {

using runner_fn = std::function<int()>;

runner_fn add_generate(CLI::App& app);
runner_fn add_tokenize(CLI::App& app);
runner_fn add_chat_template(CLI::App& app);
runner_fn add_inspect(CLI::App& app);
runner_fn add_make_model(CLI::App& app);
runner_fn add_quantize(CLI::App& app);
runner_fn add_bench(CLI::App& app);
runner_fn add_perplexity(CLI::App& app);
runner_fn add_node(CLI::App& app);
runner_fn add_up(CLI::App& app);
runner_fn add_client(CLI::App& app);
runner_fn add_audit(CLI::App& app);

/// The tokenizer of a model path (HF dir or .gguf) or a tokenizer-only directory, without mapping
/// weights.
std::unique_ptr<tokenizer> load_tokenizer(const std::string& model_path, const std::string& tokenizer_dir);

/// --threads as given, clamped to [1, cores] with a warning on stderr when it had to be.
int resolve_threads(int requested);

/// Reads a chat file: a JSON array of messages or an object with "messages" (and optional "tools",
/// "add_generation_prompt"). Throws shoal::error naming the file.
struct chat_file {
  std::string messages_json;  // the messages array, serialized
  std::string tools_json;     // "null" when absent
  bool add_generation_prompt = true;
};
chat_file read_chat_file(const std::string& path);

/// Renders a chat with the tokenizer's template (or `template_path`'s text when given).
std::string render_chat(const tokenizer& tok, const chat_file& chat, bool add_generation_prompt,
                        const std::string& template_path);

}  // namespace shoal::cli
