// shoal perplexity: how well a model predicts a text, and optionally how often its top-1 choice
// agrees with a reference model's on the same positions (to price a quantization).

#include <cmath>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/model_runner.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct perplexity_args {
  std::string model;
  std::string reference;
  std::string text_file;
  int context = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bool json = false;
  bool reference_kernels = false;
};

// Logits for every position of `ids` (one window), [ids.size(), vocab].
void window_logits(model_runner& r, const std::vector<std::int32_t>& ids, std::vector<float>& logits) {
  std::vector<std::int32_t> table;
  for (std::int32_t b = 0; b < r.cache().num_blocks(); ++b) table.push_back(b);
  forward_batch batch;
  for (std::size_t i = 0; i < ids.size(); ++i) batch.add(ids[i], static_cast<std::int32_t>(i), table, true);
  r.forward(batch, logits);
}

int run_perplexity(const perplexity_args& a) {
  const int threads = resolve_threads(a.threads);
  auto m = model::load(a.model);
  std::unique_ptr<model> ref;
  if (!a.reference.empty()) ref = model::load(a.reference);
  const std::string text = read_text_file(a.text_file);
  auto ids = m->tok().encode(text);
  if (ref && ref->tok().encode(text) != ids) {
    throw error(errc::invalid_argument, a.reference + ": its tokenizer encodes the text differently from " + a.model);
  }
  const auto& cfg = m->config();
  const std::int64_t ctx = a.context > 0 ? std::min<std::int64_t>(a.context, cfg.max_positions) : cfg.max_positions;
  if (ctx < 2) throw error(errc::invalid_argument, "--context must be at least 2");
  if (ids.size() < 2) throw error(errc::invalid_argument, a.text_file + ": the text has fewer than 2 tokens");
  // --reference-kernels: the plain F32 reference (weights dequantized, activations in F32), to
  // separate weight-quantization error from the fast kernels' activation quantization.
  auto be = a.reference_kernels ? kernels::make_reference_backend() : kernels::make_cpu_backend(threads);
  const std::int32_t block = 16;
  const kv_cache_options kv{block, static_cast<std::int32_t>((ctx + block - 1) / block)};
  model_runner runner(*m, *be, shard_spec{}, nullptr, kv);
  std::unique_ptr<model_runner> ref_runner;
  if (ref) ref_runner = std::make_unique<model_runner>(*ref, *be, shard_spec{}, nullptr, kv);
  const std::int64_t V = cfg.vocab_size;
  const std::int64_t n_valid = std::min<std::int64_t>(V, m->tok().vocab_size());
  double nll = 0, ref_nll = 0;
  std::int64_t scored = 0, agree = 0;
  std::vector<float> logits, ref_logits;
  // Non-overlapping windows of `ctx` tokens; every token after a window's first is scored.
  for (std::size_t start = 0; start + 1 < ids.size(); start += static_cast<std::size_t>(ctx)) {
    std::vector<std::int32_t> w(ids.begin() + static_cast<std::ptrdiff_t>(start),
                                ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), start + static_cast<std::size_t>(ctx))));
    if (w.size() < 2) break;
    window_logits(runner, w, logits);
    if (ref_runner) window_logits(*ref_runner, w, ref_logits);
    for (std::size_t i = 0; i + 1 < w.size(); ++i) {
      auto nll_of = [&](const float* l) {
        float mx = l[0];
        for (std::int64_t v = 1; v < n_valid; ++v) mx = std::max(mx, l[v]);
        double sum = 0;
        for (std::int64_t v = 0; v < n_valid; ++v) sum += std::exp(static_cast<double>(l[v] - mx));
        return std::log(sum) + mx - l[w[i + 1]];
      };
      const float* l = logits.data() + i * V;
      nll += nll_of(l);
      if (ref_runner) {
        const float* rl = ref_logits.data() + i * V;
        ref_nll += nll_of(rl);
        const auto top = std::max_element(l, l + n_valid) - l;
        const auto ref_top = std::max_element(rl, rl + n_valid) - rl;
        agree += top == ref_top;
      }
      ++scored;
    }
  }
  const double ppl = std::exp(nll / static_cast<double>(scored));
  nlohmann::ordered_json j;
  j["model"] = a.model;
  j["text_file"] = a.text_file;
  j["tokens"] = ids.size();
  j["scored"] = scored;
  j["context"] = ctx;
  j["perplexity"] = ppl;
  if (ref) {
    const double ref_ppl = std::exp(ref_nll / static_cast<double>(scored));
    j["reference"] = a.reference;
    j["reference_perplexity"] = ref_ppl;
    j["perplexity_change_percent"] = 100.0 * (ppl / ref_ppl - 1.0);
    j["top1_agreement"] = static_cast<double>(agree) / static_cast<double>(scored);
  }
  if (a.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("perplexity %.4f over %lld tokens (context %lld)\n", ppl, static_cast<long long>(scored), static_cast<long long>(ctx));
    if (ref) {
      std::printf("reference  %.4f (%+.2f%%), top-1 agreement %.2f%%\n", j["reference_perplexity"].get<double>(),
                  j["perplexity_change_percent"].get<double>(), 100.0 * j["top1_agreement"].get<double>());
    }
  }
  return 0;
}

}  // namespace

runner_fn add_perplexity(CLI::App& app) {
  auto a = std::make_shared<perplexity_args>();
  app.add_option("--model", a->model, "HF model directory or .gguf file")->required();
  app.add_option("--text-file", a->text_file, "UTF-8 text to score")->required();
  app.add_option("--context", a->context, "Window length in tokens (default: the model's context)");
  app.add_option("--reference", a->reference, "Also score this model and report top-1 agreement with it");
  app.add_option("--threads", a->threads, "CPU threads (default: all cores)");
  app.add_flag("--json", a->json, "Print JSON");
  app.add_flag("--reference-kernels", a->reference_kernels, "Use the plain F32 reference kernels (slow)");
  return [a] { return run_perplexity(*a); };
}

}  // namespace shoal::cli
