// shoal: one binary, one subcommand per job. `shoal <command> --help` describes each.

#include <iostream>
#include <vector>

#include "engine/common/error.hpp"
#include "tools/cli/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Shoal: serve DeepSeek-family language models on your own machines"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "shoal 0.1.0");
  std::vector<std::pair<CLI::App*, shoal::cli::runner_fn>> commands;
  auto add = [&](const char* name, const char* help, auto adder) {
    auto* sub = app.add_subcommand(name, help);
    commands.emplace_back(sub, adder(*sub));
  };
  add("generate", "Generate text from a prompt or a chat file on this machine", shoal::cli::add_generate);
  add("tokenize", "Encode text to token ids", shoal::cli::add_tokenize);
  add("chat-template", "Render a chat with the model's chat template", shoal::cli::add_chat_template);
  add("inspect", "Describe a model: architecture, shapes, dtypes, parameters, tokenizer", shoal::cli::add_inspect);
  add("make-model", "Write a model with seeded random weights (for tests and benchmarks)", shoal::cli::add_make_model);
  add("quantize", "Write a quantized copy of a model (int8/int4 HF layout, Q8_0/Q4_0 GGUF)", shoal::cli::add_quantize);
  add("bench", "Measure prefill and decode speed and the memory bandwidth they reach", shoal::cli::add_bench);
  add("perplexity", "Perplexity of a model on a text file", shoal::cli::add_perplexity);
  add("node", "Run one node of a cluster", shoal::cli::add_node);
  add("up", "Start every node of a local cluster, wait until it serves, stop all on Ctrl-C", shoal::cli::add_up);
  add("client", "Talk to a running cluster over Cap'n Proto: generate, chat, bench", shoal::cli::add_client);
  add("audit", "Verify, checkpoint, query and export the tamper-evident audit log; lift blocks", shoal::cli::add_audit);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    for (auto& [sub, run] : commands) {
      if (sub->parsed()) return run();
    }
  } catch (const shoal::error& e) {
    std::cerr << "shoal: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "shoal: error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
