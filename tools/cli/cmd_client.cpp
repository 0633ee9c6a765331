// shoal client: talk to a running cluster through its Cap'n Proto gateway (tools/client).
//   shoal client generate --connect HOST:PORT --prompt TEXT ...   streams the text (or --json)
//   shoal client chat --connect HOST:PORT --message TEXT ...      the gateway renders the template
//   shoal client bench --connect HOST:PORT --concurrency C ...    throughput and latency
//   percentiles

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "tools/cli/commands.hpp"
#include "tools/client/shoal_client.hpp"

namespace shoal::cli {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct generation_flags {
  std::string connect;
  std::string model;
  std::int32_t max_tokens = 128;
  float temperature = 1.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::uint64_t seed = 0;
  CLI::Option* seed_option = nullptr;
  std::vector<std::string> stop;
  std::vector<std::int32_t> stop_ids;
  bool ignore_eos = false;
  bool no_cache = false;
  std::int32_t priority = 0;
  std::string request_id;
  bool json = false;
};

void add_connect_flag(CLI::App& sub, std::string& connect) {
  sub.add_option("--connect", connect, "The gateway's HOST:PORT (as `shoal up` prints it)")
      ->required();
}

void add_generation_flags(CLI::App& sub, generation_flags& f) {
  add_connect_flag(sub, f.connect);
  sub.add_option("--model", f.model, "Served model name (default: the cluster's first)");
  sub.add_option("--max-tokens", f.max_tokens, "Most tokens to generate (default 128)");
  sub.add_option("--temperature", f.temperature, "0 = greedy (default 1)");
  sub.add_option("--top-k", f.top_k, "Keep the k most likely tokens (0 = off)");
  sub.add_option("--top-p", f.top_p, "Nucleus sampling mass (1 = off)");
  sub.add_option("--min-p", f.min_p, "Drop tokens below min_p * p(max) (0 = off)");
  sub.add_option("--repetition-penalty", f.repetition_penalty,
                 "Divide logits of seen tokens (1 = off)");
  sub.add_option("--presence-penalty", f.presence_penalty,
                 "Subtract from logits of generated tokens");
  sub.add_option("--frequency-penalty", f.frequency_penalty,
                 "Subtract per occurrence in the output");
  f.seed_option =
      sub.add_option("--seed", f.seed, "RNG seed: same seed and parameters give the same text");
  sub.add_option("--stop", f.stop, "Stop string (repeatable); the text ends before it");
  sub.add_option("--stop-token-id", f.stop_ids, "Stop at this token id (repeatable)");
  sub.add_flag("--ignore-eos", f.ignore_eos, "Keep generating past end-of-sequence tokens");
  sub.add_flag("--no-cache", f.no_cache, "Neither answer from nor fill the answer cache");
  sub.add_option("--priority", f.priority, "Higher is scheduled first (default 0)");
  sub.add_option("--request-id", f.request_id,
                 "Name the request (default: the gateway assigns one)");
  sub.add_flag("--json", f.json,
               "Print one JSON object: request_id, generated_ids, generated_text, finish_reason, "
               "usage, timings");
}

client::generate_params to_params(const generation_flags& f) {
  client::generate_params p;
  p.model = f.model;
  p.max_tokens = f.max_tokens;
  p.sampling.temperature = f.temperature;
  p.sampling.top_k = f.top_k;
  p.sampling.top_p = f.top_p;
  p.sampling.min_p = f.min_p;
  p.sampling.repetition_penalty = f.repetition_penalty;
  p.sampling.presence_penalty = f.presence_penalty;
  p.sampling.frequency_penalty = f.frequency_penalty;
  if (f.seed_option && f.seed_option->count() > 0) p.sampling.seed = f.seed;
  p.stop = f.stop;
  p.stop_ids = f.stop_ids;
  p.ignore_eos = f.ignore_eos;
  p.no_cache = f.no_cache;
  p.priority = f.priority;
  p.request_id = f.request_id;
  return p;
}

std::unique_ptr<client::client> connect(const std::string& endpoint) {
  auto [host, port] = client::parse_endpoint(endpoint);
  return std::make_unique<client::client>(host, port);
}

// Streams one generation: the text to stdout as it comes, or one JSON object at the end.
template <class Run>
int stream_and_print(const generation_flags& f, const std::string& echo, Run&& run) {
  std::vector<std::int32_t> ids;
  std::string text;
  const auto t0 = clock_type::now();
  double client_ttft = -1;
  // The prompt is echoed once the gateway answers, so a failed connection prints nothing.
  bool echoed = f.json;
  auto echo_once = [&] {
    if (!echoed) std::cout << echo << std::flush;
    echoed = true;
  };
  auto s = run([&](const client::chunk& c) {
    if (client_ttft < 0 && !c.ids.empty()) client_ttft = seconds_between(t0, clock_type::now());
    ids.insert(ids.end(), c.ids.begin(), c.ids.end());
    text += c.text;
    echo_once();
    if (!f.json) std::cout << c.text << std::flush;
    return true;
  });
  const double client_total = seconds_between(t0, clock_type::now());
  if (!f.json) {
    echo_once();
    std::cout << "\n";
    return 0;
  }
  nlohmann::json out;
  out["request_id"] = s.request_id;
  out["generated_ids"] = ids;
  out["generated_text"] = text;
  out["finish_reason"] = s.finish_reason;
  out["usage"] = {{"prompt_tokens", s.prompt_tokens},
                  {"completion_tokens", s.completion_tokens},
                  {"total_tokens", s.prompt_tokens + s.completion_tokens}};
  out["timings"] = {{"queue_seconds", s.queue_seconds},
                    {"ttft_seconds", s.ttft_seconds},
                    {"total_seconds", s.total_seconds},
                    {"client_ttft_seconds", std::max(0.0, client_ttft)},
                    {"client_total_seconds", client_total}};
  out["replica"] = s.replica;
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}

// ---- bench

struct bench_flags {
  std::string connect;
  std::string model;
  int concurrency = 1;
  int requests = 0;  // 0: 4 per stream
  int prompt_tokens = 32;
  int gen_tokens = 64;
  bool json = false;
  bool cache_hits = false;  // every request the same deterministic one: measures the answer cache
};

struct request_sample {
  double ttft = 0;
  double e2e = 0;
  std::int32_t tokens = 0;
  std::vector<double> itl;
  bool cached = false;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest sample with at least q of the samples at or below it.
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// Prompts of exactly `n` tokens cut at different offsets from real text, so that no two requests
// share a prompt.
std::vector<std::vector<std::int32_t>> make_prompts(client::client& c, const std::string& model,
                                                    int n, int count) {
  const std::string paragraph =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
      "with her "
      "friends. One day, she saw a big red ball under a tree and wanted to share it with everyone "
      "she knew. ";
  const auto prefix = c.tokenize("", model, true);  // BOS, when the model adds one
  const auto body_len = static_cast<std::size_t>(std::max(0, n - static_cast<int>(prefix.size())));
  std::string text = paragraph;
  auto ids = c.tokenize(text, model, false);
  const std::size_t per = std::max<std::size_t>(1, ids.size());
  const std::size_t need = body_len + static_cast<std::size_t>(std::min(count, 64)) + 1;
  if (ids.size() < need) {
    std::string more;
    for (std::size_t k = 0; k < need / per + 1; ++k) more += paragraph;
    text = more;
    ids = c.tokenize(text, model, false);
  }
  std::vector<std::vector<std::int32_t>> out;
  const std::size_t spread = ids.size() - body_len;
  for (int i = 0; i < count; ++i) {
    std::vector<std::int32_t> p = prefix;
    const std::size_t off = static_cast<std::size_t>(i) % spread;
    p.insert(p.end(), ids.begin() + static_cast<std::ptrdiff_t>(off),
             ids.begin() + static_cast<std::ptrdiff_t>(off + body_len));
    out.push_back(std::move(p));
  }
  return out;
}

int run_bench(const bench_flags& f) {
  if (f.concurrency < 1) throw error(errc::invalid_argument, "--concurrency must be at least 1");
  if (f.prompt_tokens < 1)
    throw error(errc::invalid_argument, "--prompt-tokens must be at least 1");
  if (f.gen_tokens < 1) throw error(errc::invalid_argument, "--gen-tokens must be at least 1");
  const int total = f.requests > 0 ? f.requests : 4 * f.concurrency;
  auto probe = connect(f.connect);
  const auto models = probe->models();
  const client::model_info* m = nullptr;
  for (const auto& x : models) {
    if (x.name == f.model || (f.model.empty() && !m)) m = &x;
  }
  if (!m)
    throw error(errc::not_found,
                "the cluster at " + f.connect + " does not serve model '" + f.model + "'");
  if (m->context_length > 0 && f.prompt_tokens + f.gen_tokens > m->context_length) {
    throw error(errc::invalid_argument, "--prompt-tokens + --gen-tokens (" +
                                            std::to_string(f.prompt_tokens + f.gen_tokens) +
                                            ") exceed the context of model '" + m->name + "', " +
                                            std::to_string(m->context_length));
  }
  const auto prompts = make_prompts(*probe, f.model, f.prompt_tokens, total);
  auto params_for = [&](int i) {
    client::generate_params p;
    p.model = f.model;
    p.prompt_ids = prompts[static_cast<std::size_t>(f.cache_hits ? 0 : i)];
    p.max_tokens = f.gen_tokens;
    p.ignore_eos = true;
    p.sampling.temperature = 0.0f;
    // Throughput runs measure the model, not the answer cache.
    p.no_cache = !f.cache_hits;
    return p;
  };
  // Cache-hit runs: one request first fills the cache (not counted).
  if (f.cache_hits) probe->generate(params_for(0));
  probe.reset();

  std::vector<request_sample> samples(static_cast<std::size_t>(total));
  std::atomic<int> next{0};
  std::mutex error_mutex;
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  const auto start = clock_type::now();
  for (int t = 0; t < f.concurrency; ++t) {
    threads.emplace_back([&] {
      std::unique_ptr<client::client> c;
      for (int i = next++; i < total; i = next++) {
        try {
          if (!c) c = connect(f.connect);
          const auto p = params_for(i);
          auto& s = samples[static_cast<std::size_t>(i)];
          const auto t0 = clock_type::now();
          auto last = t0;
          bool first = true;
          auto sum = c->generate(p, [&](const client::chunk& ch) {
            if (ch.ids.empty()) return true;
            s.cached = s.cached || ch.cached;
            const auto now = clock_type::now();
            const double gap = seconds_between(last, now);
            last = now;
            std::size_t k = ch.ids.size();
            if (first) {
              s.ttft = gap;
              first = false;
              --k;
            }
            // Tokens that arrived together (coalesced under back-pressure) share the gap.
            for (std::size_t j = 0; j < k; ++j)
              s.itl.push_back(gap / static_cast<double>(ch.ids.size()));
            return true;
          });
          s.e2e = seconds_between(t0, clock_type::now());
          s.tokens = sum.completion_tokens;
        } catch (const std::exception& e) {
          std::lock_guard lock(error_mutex);
          errors.push_back("request " + std::to_string(i) + ": " + e.what());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = seconds_between(start, clock_type::now());

  std::vector<double> ttft, itl, e2e;
  std::int64_t tokens = 0;
  int ok = 0, cached = 0;
  for (const auto& s : samples) {
    if (s.tokens == 0) continue;
    ++ok;
    cached += s.cached ? 1 : 0;
    tokens += s.tokens;
    ttft.push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
  }
  const double tok_s = static_cast<double>(tokens) / wall;
  const double req_s = static_cast<double>(ok) / wall;
  if (f.json) {
    nlohmann::json out;
    out["model"] = m->name;
    out["concurrency"] = f.concurrency;
    out["requests"] = total;
    out["completed"] = ok;
    out["failed"] = errors.size();
    out["prompt_tokens"] = f.prompt_tokens;
    out["gen_tokens"] = f.gen_tokens;
    out["wall_seconds"] = wall;
    out["cached"] = cached;
    out["output_tokens"] = tokens;
    out["output_tokens_per_second"] = tok_s;
    out["requests_per_second"] = req_s;
    auto stats = [](const std::vector<double>& v) {
      return nlohmann::json{
          {"mean", mean(v)}, {"p50", percentile(v, 0.50)}, {"p99", percentile(v, 0.99)}};
    };
    out["ttft_seconds"] = stats(ttft);
    out["itl_seconds"] = stats(itl);
    out["e2e_seconds"] = stats(e2e);
    if (!errors.empty()) out["first_error"] = errors.front();
    std::cout << out.dump() << "\n";
  } else {
    auto ms = [](double s) {
      std::ostringstream o;
      o << std::fixed << std::setprecision(2) << s * 1e3 << " ms";
      return o.str();
    };
    std::cout << "shoal client bench: model " << m->name << ", " << total
              << " requests, concurrency " << f.concurrency << ", " << f.prompt_tokens
              << " prompt + " << f.gen_tokens << " generated tokens each\n"
              << std::fixed << std::setprecision(2) << "  completed          " << ok << " ("
              << errors.size() << " failed, " << cached << " answered from the cache)\n"
              << "  wall time          " << wall << " s\n"
              << "  output tokens/s    " << tok_s << "\n"
              << "  requests/s         " << req_s << "\n"
              << "  TTFT               p50 " << ms(percentile(ttft, 0.5)) << "   p99 "
              << ms(percentile(ttft, 0.99)) << "\n"
              << "  inter-token        p50 " << ms(percentile(itl, 0.5)) << "   p99 "
              << ms(percentile(itl, 0.99)) << "\n"
              << "  end-to-end         p50 " << ms(percentile(e2e, 0.5)) << "   p99 "
              << ms(percentile(e2e, 0.99)) << "\n";
  }
  if (!errors.empty()) {
    std::cerr << "shoal client bench: " << errors.size()
              << " requests failed; the first: " << errors.front() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

runner_fn add_client(CLI::App& app) {
  app.require_subcommand(1);

  auto* gen = app.add_subcommand("generate",
                                 "Generate from a prompt on a running cluster (streams the text)");
  auto gf = std::make_shared<generation_flags>();
  auto prompt = std::make_shared<std::string>();
  gen->add_option("--prompt", *prompt, "Prompt text (BOS is added as the tokenizer says)")
      ->required();
  add_generation_flags(*gen, *gf);

  auto* chat = app.add_subcommand(
      "chat", "Chat with a model on a running cluster (the gateway applies its chat template)");
  auto cf = std::make_shared<generation_flags>();
  auto messages_file = std::make_shared<std::string>();
  auto user_messages = std::make_shared<std::vector<std::string>>();
  auto system_message = std::make_shared<std::string>();
  auto* mf = chat->add_option(
      "--messages", *messages_file,
      "JSON chat file: an array of {role, content} or {\"messages\": [...], \"tools\": [...]}");
  auto* mt = chat->add_option("--message", *user_messages, "A user message (repeatable, in order)");
  chat->add_option("--system", *system_message, "A system message before the --message ones");
  mf->excludes(mt);
  add_generation_flags(*chat, *cf);

  auto* bench = app.add_subcommand(
      "bench", "Measure throughput and latency of a running cluster with concurrent streams");
  auto bf = std::make_shared<bench_flags>();
  add_connect_flag(*bench, bf->connect);
  bench->add_option("--model", bf->model, "Served model name (default: the cluster's first)");
  bench->add_option("--concurrency", bf->concurrency,
                    "Concurrent streams, each with its own connection (default 1)");
  bench->add_option("--requests", bf->requests, "Requests in all (default: 4 per stream)");
  bench->add_option("--prompt-tokens", bf->prompt_tokens, "Prompt length in tokens (default 32)");
  bench->add_option("--gen-tokens", bf->gen_tokens,
                    "Tokens generated per request, EOS ignored (default 64)");
  bench->add_flag("--json", bf->json, "Print one JSON object instead of the table");
  bench->add_flag("--cache-hits", bf->cache_hits,
                  "Send one deterministic request over and over: latency of answers from the cache "
                  "(other runs bypass the cache)");

  auto* adm = app.add_subcommand(
      "admin", "Administrative operations through the router (each one audited): read or export the "
               "audit log, list or lift blocks, purge cached answers");
  auto ap = std::make_shared<client::admin_params>();
  auto admin_at = std::make_shared<std::string>();
  add_connect_flag(*adm, *admin_at);
  adm->add_option("--op", ap->op, "query | export | blocks | unblock | purge_cache")->required();
  adm->add_option("--tenant", ap->tenant, "Filter or target tenant (non-admin keys: their own)");
  adm->add_option("--principal", ap->principal, "Filter, or the principal (tenant/key id) to unblock");
  adm->add_option("--operation", ap->operation, "Filter: the audited operation (generate, export, ...)");
  adm->add_option("--since", ap->since, "Filter: UTC ISO-8601, inclusive");
  adm->add_option("--until", ap->until, "Filter: UTC ISO-8601, inclusive");
  adm->add_option("--limit", ap->limit, "At most this many records");
  adm->add_option("--api-key", ap->api_key, "The key to act with (default $SHOAL_API_KEY)");

  return [=]() -> int {
    if (adm->parsed()) {
      auto c = connect(*admin_at);
      for (const auto& line : c->admin(*ap)) std::cout << line << "\n";
      return 0;
    }
    if (gen->parsed()) {
      auto c = connect(gf->connect);
      auto p = to_params(*gf);
      p.prompt = *prompt;
      return stream_and_print(*gf, *prompt,
                              [&](const client::chunk_callback& cb) { return c->generate(p, cb); });
    }
    if (chat->parsed()) {
      if (messages_file->empty() && user_messages->empty()) {
        throw error(errc::invalid_argument, "give the chat with --messages FILE or --message TEXT");
      }
      client::chat_params p;
      p.generation = to_params(*cf);
      if (!messages_file->empty()) {
        auto file = read_chat_file(*messages_file);
        p.messages_json = file.messages_json;
        if (file.tools_json != "null") p.tools_json = file.tools_json;
        p.add_generation_prompt = file.add_generation_prompt;
      } else {
        if (!system_message->empty()) p.messages.push_back({"system", *system_message});
        for (const auto& m : *user_messages) p.messages.push_back({"user", m});
      }
      auto c = connect(cf->connect);
      return stream_and_print(*cf, "",
                              [&](const client::chunk_callback& cb) { return c->chat(p, cb); });
    }
    if (bench->parsed()) return run_bench(*bf);
    return 2;
  };
}

}  // namespace shoal::cli
