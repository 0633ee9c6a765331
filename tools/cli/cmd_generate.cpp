// shoal generate: local generation on this machine (no cluster).

#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/generate.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct generate_args {
  std::string model;
  std::string prompt;
  std::string chat_file_path;
  std::string chat_template_path;
  std::int32_t max_tokens = 128;
  sampling_params sampling;  // the options below write into it; --seed through `seed`
  std::uint64_t seed = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bool ignore_eos = false;
  bool json = false;
  bool dump_logits = false;
  bool specials_as_text = false;
  bool no_bos = false;
  std::vector<std::string> stop;
  std::vector<std::int32_t> stop_ids;
};

int run_generate(const generate_args& a) {
  const int threads = resolve_threads(a.threads);
  if (a.max_tokens < 0) throw error(errc::invalid_argument, "--max-tokens must be >= 0");
  auto m = model::load(a.model);
  const tokenizer& tok = m->tok();
  std::vector<std::int32_t> ids;
  if (!a.chat_file_path.empty()) {
    auto chat = read_chat_file(a.chat_file_path);
    auto text = render_chat(tok, chat, chat.add_generation_prompt, a.chat_template_path);
    // The template writes BOS itself, as transformers' apply_chat_template(tokenize=True) assumes.
    ids = tok.encode(text, encode_options{.add_special = false, .parse_special = true});
  } else {
    ids = tok.encode(a.prompt, encode_options{.add_special = !a.no_bos, .parse_special = !a.specials_as_text});
  }
  if (ids.empty()) {
    throw error(errc::invalid_argument, "the prompt encodes to no tokens (empty prompt with --no-bos?)");
  }

  generation_options opts;
  opts.max_tokens = a.max_tokens;
  opts.ignore_eos = a.ignore_eos;
  opts.stop = a.stop;
  opts.stop_token_ids = a.stop_ids;
  opts.sampling = a.sampling;
  if (auto msg = opts.sampling.validate(); !msg.empty()) throw error(errc::invalid_argument, msg);

  auto be = kernels::make_cpu_backend(threads);
  // KV blocks for this request only, not the model's whole context.
  const std::int64_t need = std::min<std::int64_t>(static_cast<std::int64_t>(ids.size()) + a.max_tokens,
                                                   m->config().max_positions);
  const std::int32_t block = 16;
  model_runner runner(*m, *be, shard_spec{}, nullptr,
                      kv_cache_options{block, static_cast<std::int32_t>((need + block - 1) / block)});
  nlohmann::json logits_json = nlohmann::json::array();
  logits_callback on_logits;
  if (a.dump_logits) {
    on_logits = [&](std::int32_t pos, std::int32_t input, std::span<const float> l) {
      logits_json.push_back({{"position", pos}, {"input_token", input}, {"logits", std::vector<float>(l.begin(), l.end())}});
    };
  }
  text_callback on_text;
  if (!a.json) {
    std::cout << tok.decode(ids, /*skip_special=*/true) << std::flush;
    on_text = [](std::string_view s) { std::cout << s << std::flush; };
  }
  auto res = generate(runner, ids, opts, on_text, on_logits);
  if (a.json) {
    nlohmann::json out;
    out["prompt_ids"] = res.prompt_ids;
    out["generated_ids"] = res.generated_ids;
    out["text"] = res.text;
    out["generated_text"] = res.generated_text;
    out["finish_reason"] = to_string(res.reason);
    out["usage"] = {{"prompt_tokens", res.prompt_ids.size()}, {"completion_tokens", res.generated_ids.size()}};
    out["timings"] = {{"prefill_seconds", res.prefill_seconds}, {"decode_seconds", res.decode_seconds}};
    if (a.dump_logits) out["logits_at"] = logits_json;
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

runner_fn add_generate(CLI::App& app) {
  auto a = std::make_shared<generate_args>();
  app.add_option("--model", a->model, "HF model directory or .gguf file")->required();
  auto* p = app.add_option("--prompt", a->prompt, "Prompt text (BOS is added as the tokenizer says)");
  auto* c = app.add_option("--chat-file", a->chat_file_path,
                           "JSON chat: an array of {role, content} or {\"messages\": [...], \"tools\": [...]}");
  p->excludes(c);
  app.add_option("--chat-template", a->chat_template_path, "Use this Jinja template file instead of the model's");
  app.add_option("--max-tokens", a->max_tokens, "Most tokens to generate (default 128)");
  app.add_option("--temperature", a->sampling.temperature, "0 = greedy (default 1)");
  app.add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens (0 = off)");
  app.add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass (1 = off)");
  app.add_option("--min-p", a->sampling.min_p, "Drop tokens below min_p * p(max) (0 = off)");
  app.add_option("--repetition-penalty", a->sampling.repetition_penalty, "Divide logits of seen tokens (1 = off)");
  app.add_option("--presence-penalty", a->sampling.presence_penalty, "Subtract from logits of generated tokens");
  app.add_option("--frequency-penalty", a->sampling.frequency_penalty, "Subtract per occurrence in the output");
  auto* seed = app.add_option("--seed", a->seed, "RNG seed: same seed and parameters give the same text");
  app.add_option("--threads", a->threads, "CPU threads (default: all cores)");
  app.add_option("--stop", a->stop, "Stop string (repeatable); the text ends before it");
  app.add_option("--stop-token-id", a->stop_ids, "Stop at this token id (repeatable)");
  app.add_flag("--ignore-eos", a->ignore_eos, "Keep generating past end-of-sequence tokens");
  app.add_flag("--json", a->json, "Print one JSON object: prompt_ids, generated_ids, text, generated_text, ...");
  app.add_flag("--dump-logits", a->dump_logits, "With --json: add logits_at (full logits at each step)");
  app.add_flag("--specials-as-text", a->specials_as_text,
               "Treat special-token strings in the prompt (e.g. <s>) as plain text");
  app.add_flag("--no-bos", a->no_bos, "Do not add BOS/special tokens around the prompt");
  return [a, seed] {
    if (seed->count() > 0) a->sampling.seed = a->seed;
    return run_generate(*a);
  };
}

}  // namespace shoal::cli
