// shoal bench: prefill and decode speed on this machine, and how close decode comes to the memory
// read bandwidth measured just before and after (decode streams every weight once per step).
// --batch B runs B sequences together as the batcher would: their prompts in one prefill step, then
// decode steps of B tokens (one per sequence, each with its own block table), so batched
// throughput has a number outside the cluster.

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/model_runner.hpp"
#include "kernels/host.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct bench_args {
  std::string model;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int prompt_tokens = 128;
  int gen_tokens = 32;
  int repeat = 3;
  int batch = 1;
  bool json = false;
  bool skip_bandwidth = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Resident and peak resident memory of this process, from /proc/self/status (kB).
std::pair<std::int64_t, std::int64_t> resident_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  std::int64_t rss = 0, hwm = 0;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::stoll(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) hwm = std::stoll(line.substr(6));
  }
  return {rss, hwm};
}

// Bytes a decode step reads from weights: every matrix once, plus one embedding row.
std::int64_t weight_bytes_per_token(const model& m) {
  const auto& w = m.weights();
  std::int64_t b = 0;
  for (const auto& l : w.layers) {
    for (const auto* x : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) b += x->m.bytes();
    b += static_cast<std::int64_t>((l.attn_norm.size() + l.ffn_norm.size() + l.bq.size() + l.bk.size() + l.bv.size()) * 4);
  }
  b += w.lm_head.m.bytes() + static_cast<std::int64_t>(w.out_norm.size() * 4);
  b += w.tok_embd.m.row_slice(0, 1).bytes();
  return b;
}

// Multiply-add weights a token passes through (2 FLOPs each): the prefill FLOP count.
std::int64_t matmul_params(const model& m) {
  const auto& w = m.weights();
  std::int64_t p = 0;
  for (const auto& l : w.layers) {
    for (const auto* x : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) p += x->m.rows * x->m.cols;
  }
  return p + w.lm_head.m.rows * w.lm_head.m.cols;
}

int run_bench(const bench_args& a) {
  const int threads = resolve_threads(a.threads);
  if (a.prompt_tokens < 1 || a.gen_tokens < 1 || a.repeat < 1 || a.batch < 1) {
    throw error(errc::invalid_argument, "--prompt-tokens, --gen-tokens, --repeat and --batch must be at least 1");
  }
  if (a.batch > 256) {
    throw error(errc::invalid_argument, "--batch " + std::to_string(a.batch) + " is more than 256 sequences");
  }
  kernels::bandwidth_sample bw_before, bw_after;
  if (!a.skip_bandwidth) bw_before = kernels::measure_host_read_bandwidth(threads);
  // Reset the peak-RSS mark so the reported peak is the model's, not the bandwidth buffer's.
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  auto before_load = resident_kb();
  const auto t_load = std::chrono::steady_clock::now();
  auto m = model::load(a.model);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const auto& cfg = m->config();
  if (a.prompt_tokens + a.gen_tokens > cfg.max_positions) {
    throw error(errc::out_of_range, "--prompt-tokens + --gen-tokens (" + std::to_string(a.prompt_tokens + a.gen_tokens) +
                                        ") exceed the model's context of " + std::to_string(cfg.max_positions));
  }
  auto be = kernels::make_cpu_backend(threads);
  const std::int32_t block = 16;
  const std::int32_t blocks_per_seq = (a.prompt_tokens + a.gen_tokens + block - 1) / block;
  model_runner runner(*m, *be, shard_spec{}, nullptr, kv_cache_options{block, blocks_per_seq * a.batch});
  // Peak while loading and registering (a backend that repacks weights holds the file's pages and
  // its copy at once for a moment; the file's pages should then leave).
  const auto after_register = resident_kb();
  // Sequence s owns blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq).
  std::vector<std::vector<std::int32_t>> tables(static_cast<std::size_t>(a.batch));
  for (std::int32_t s = 0; s < a.batch; ++s) {
    for (std::int32_t b = 0; b < blocks_per_seq; ++b) tables[s].push_back(s * blocks_per_seq + b);
  }
  std::mt19937_64 rng(42);
  const std::int32_t vocab = static_cast<std::int32_t>(std::min<std::int64_t>(m->tok().vocab_size(), cfg.vocab_size));
  std::uniform_int_distribution<std::int32_t> pick(std::min(3, vocab - 1), vocab - 1);
  std::vector<double> prefill_tps, decode_tps, rep_bandwidth;
  std::vector<float> logits;
  const std::int64_t bytes_per_token = weight_bytes_per_token(*m);
  // One untimed warm-up pass faults the weights in and sizes every buffer.
  for (int rep = -1; rep < a.repeat; ++rep) {
    // This machine's bandwidth drifts (shared hosts): sample it right before each timed decode so
    // each repeat's fraction compares numbers taken seconds apart.
    if (rep >= 0 && !a.skip_bandwidth) {
      rep_bandwidth.push_back(kernels::measure_host_read_bandwidth(threads, std::int64_t{256} << 20, 3).best_gb_per_s);
      { std::ofstream("/proc/self/clear_refs") << "5"; }
    }
    forward_batch batch;
    for (const auto& table : tables) {
      for (int i = 0; i < a.prompt_tokens; ++i) batch.add(pick(rng), i, table, i == a.prompt_tokens - 1);
    }
    const auto t0 = std::chrono::steady_clock::now();
    runner.forward(batch, logits);
    const auto t1 = std::chrono::steady_clock::now();
    // Greedy next token of each sequence from its row of logits.
    const std::int64_t V = runner.vocab_size();
    std::vector<std::int32_t> toks(static_cast<std::size_t>(a.batch));
    auto pick_next = [&] {
      for (std::size_t s = 0; s < toks.size(); ++s) {
        const auto row = logits.begin() + static_cast<std::ptrdiff_t>(s * V);
        toks[s] = std::min(static_cast<std::int32_t>(std::max_element(row, row + V) - row), vocab - 1);
      }
    };
    pick_next();
    for (int g = 0; g < a.gen_tokens; ++g) {
      forward_batch step;
      for (std::size_t s = 0; s < tables.size(); ++s) step.add(toks[s], a.prompt_tokens + g, tables[s], true);
      runner.forward(step, logits);
      pick_next();
    }
    const auto t2 = std::chrono::steady_clock::now();
    if (rep < 0) continue;
    prefill_tps.push_back(static_cast<double>(a.batch) * a.prompt_tokens / std::chrono::duration<double>(t1 - t0).count());
    decode_tps.push_back(static_cast<double>(a.batch) * a.gen_tokens / std::chrono::duration<double>(t2 - t1).count());
  }
  auto [rss, hwm] = resident_kb();
  if (!a.skip_bandwidth) bw_after = kernels::measure_host_read_bandwidth(threads);

  const double prefill = median(prefill_tps), decode = median(decode_tps);
  // Each decode step streams the weights once, whatever the batch: bandwidth is per step.
  const double decode_gbs = bytes_per_token * decode / a.batch / 1e9;
  // Against the best pass before or after: the conservative yardstick for "fraction of bandwidth".
  const double bw = std::max(bw_before.best_gb_per_s, bw_after.best_gb_per_s);
  std::vector<double> fractions;
  for (std::size_t i = 0; i < rep_bandwidth.size() && i < decode_tps.size(); ++i) {
    fractions.push_back(bytes_per_token * decode_tps[i] / a.batch / 1e9 / rep_bandwidth[i]);
  }
  const double prefill_gflops = 2.0 * static_cast<double>(matmul_params(*m)) * prefill / 1e9;
  std::map<std::string, int> dtypes;
  for (const auto& l : m->weights().layers) ++dtypes[to_string(l.w_up.m.type)];

  nlohmann::ordered_json j;
  j["model"] = a.model;
  j["weight_type"] = to_string(m->weights().layers.empty() ? dtype::f32 : m->weights().layers[0].w_up.m.type);
  j["backend"] = be->name();
  j["cpu_features"] = kernels::describe_host_cpu();
  j["threads"] = threads;
  j["batch"] = a.batch;
  j["prompt_tokens"] = a.prompt_tokens;
  j["gen_tokens"] = a.gen_tokens;
  j["repeat"] = a.repeat;
  j["load_seconds"] = load_s;
  j["prefill_tokens_per_s"] = prefill;
  j["prefill_gflops"] = prefill_gflops;
  j["decode_tokens_per_s"] = decode;
  j["decode_ms_per_step"] = 1000.0 * a.batch / decode;
  j["decode_tokens_per_s_per_sequence"] = decode / a.batch;
  j["weight_bytes_per_token"] = bytes_per_token;
  j["decode_weight_gb_per_s"] = decode_gbs;
  j["read_bandwidth_gb_per_s_before"] = bw_before.gb_per_s;
  j["read_bandwidth_gb_per_s_after"] = bw_after.gb_per_s;
  j["read_bandwidth_gb_per_s_best"] = bw;
  j["decode_bandwidth_fraction"] = bw > 0 ? decode_gbs / bw : 0.0;
  j["decode_bandwidth_fraction_per_repeat"] = fractions;
  j["decode_bandwidth_fraction_median"] = median(fractions);
  j["read_bandwidth_gb_per_s_per_repeat"] = rep_bandwidth;
  j["prefill_samples"] = prefill_tps;
  j["decode_samples"] = decode_tps;
  j["resident_kb"] = rss;
  j["peak_resident_kb"] = hwm;
  j["resident_kb_before_load"] = before_load.first;
  j["resident_kb_after_register"] = after_register.first;
  j["peak_resident_kb_load"] = after_register.second;
  j["kv_cache_bytes"] = runner.cache().bytes();
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("model            %s (%s weights, %s)\n", a.model.c_str(), j["weight_type"].get<std::string>().c_str(), be->name());
  std::printf("prefill          %.1f tok/s  (%d tokens, %.1f GFLOP/s)\n", prefill, a.prompt_tokens, prefill_gflops);
  if (a.batch == 1) {
    std::printf("decode           %.2f tok/s  (%.1f ms/token)\n", decode, 1000.0 / decode);
  } else {
    std::printf("decode           %.2f tok/s at batch %d  (%.2f tok/s per sequence, %.1f ms/step)\n", decode, a.batch,
                decode / a.batch, 1000.0 * a.batch / decode);
  }
  std::printf("weights/step     %.1f MB  -> %.2f GB/s\n", bytes_per_token / 1e6, decode_gbs);
  if (!a.skip_bandwidth) {
    std::printf("read bandwidth   %.2f GB/s before, %.2f GB/s after (median of 5 passes); best pass %.2f GB/s\n",
                bw_before.gb_per_s, bw_after.gb_per_s, bw);
    std::printf("decode fraction  %.1f%% of the best read bandwidth before/after; %.1f%% median of per-repeat ratios\n",
                100.0 * decode_gbs / bw, 100.0 * median(fractions));
  }
  std::printf("resident         %.1f MB (peak %.1f MB; while loading %.1f MB; KV cache %.1f MB)\n", rss / 1024.0,
              hwm / 1024.0, after_register.second / 1024.0, runner.cache().bytes() / 1e6);
  return 0;
}

}  // namespace

runner_fn add_bench(CLI::App& app) {
  auto a = std::make_shared<bench_args>();
  app.add_option("--model", a->model, "HF model directory or .gguf file")->required();
  app.add_option("--threads", a->threads, "CPU threads (default: all cores)");
  app.add_option("--prompt-tokens", a->prompt_tokens, "Prompt length for the prefill measurement (default 128)");
  app.add_option("--gen-tokens", a->gen_tokens, "Tokens decoded per repeat (default 32)");
  app.add_option("--repeat", a->repeat, "Repeats; medians are reported (default 3)");
  app.add_option("--batch", a->batch,
                 "Sequences prefilled and decoded together, one token each per decode step (default 1)");
  app.add_flag("--json", a->json, "Print JSON");
  app.add_flag("--skip-bandwidth", a->skip_bandwidth, "Do not measure memory bandwidth");
  return [a] { return run_bench(*a); };
}

}  // namespace shoal::cli
