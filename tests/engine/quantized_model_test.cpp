// Quantized models end to end: stories260K quantized (int8, int4, Q8_0, Q4_0) still predicts what
// the F32 model predicts (teacher-forced top-1 agreement over the golden prompts and their golden
// continuations), GGUF K-quants load and run, and bad quantized files fail with clear errors.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"
#include "engine/model/gguf_writer.hpp"
#include "engine/model/model.hpp"
#include "engine/model/quantize.hpp"
#include "engine/runner/generate.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/compare.hpp"

namespace fs = std::filesystem;
using shoal::test::needs_shared;
using shoal::test::read_json;
using shoal::test::shared_path;
using shoal::test::temp_dir;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kStoriesGguf = "models/stories260K/gguf/stories260K-f32.gguf";

// Golden prompt ids followed by their golden continuation, for each public prompt.
std::vector<std::vector<std::int32_t>> golden_sequences() {
  std::vector<std::vector<std::int32_t>> out;
  const auto prompts = read_json(shared_path("golden/prompts.json"));
  for (auto& p : prompts["prompts"]) {
    auto g = read_json(shared_path("golden/" + p["name"].get<std::string>() + ".json"));
    auto ids = g["prompt_ids"].get<std::vector<std::int32_t>>();
    for (auto id : g["generated_ids"]) ids.push_back(id.get<std::int32_t>());
    out.push_back(std::move(ids));
  }
  return out;
}

std::int32_t argmax(const float* l, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i) {
    if (l[i] > l[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

// Teacher-forced logits at every position of `ids`: one prefill forward (`decode` false: the
// multi-token kernels), or one token per forward (`decode` true: the one-token kernels).
std::vector<std::vector<float>> teacher_forced(const shoal::model& m,
                                               const std::vector<std::int32_t>& ids, bool decode) {
  auto be = shoal::kernels::make_cpu_backend(2);
  shoal::model_runner runner(m, *be, {}, nullptr, {});
  std::vector<std::int32_t> table(static_cast<std::size_t>(runner.cache().num_blocks()));
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int32_t>(i);
  const auto V = m.config().vocab_size;
  std::vector<std::vector<float>> out;
  std::vector<float> logits;
  if (!decode) {
    shoal::forward_batch b;
    for (std::size_t p = 0; p < ids.size(); ++p)
      b.add(ids[p], static_cast<std::int32_t>(p), table, true);
    runner.forward(b, logits);
    for (std::size_t p = 0; p < ids.size(); ++p)
      out.emplace_back(logits.begin() + p * V, logits.begin() + (p + 1) * V);
  } else {
    for (std::size_t p = 0; p < ids.size(); ++p) {
      shoal::forward_batch b;
      b.add(ids[p], static_cast<std::int32_t>(p), table, true);
      runner.forward(b, logits);
      out.emplace_back(logits.begin(), logits.begin() + V);
    }
  }
  return out;
}

struct agreement {
  int same = 0, total = 0;
  double nll = 0, nll_ref = 0;  // mean negative log-likelihood of the next golden token
  double rate() const { return total ? static_cast<double>(same) / total : 0; }
};

double log_softmax_at(const std::vector<float>& l, std::int32_t id) {
  const float mx = *std::max_element(l.begin(), l.end());
  double sum = 0;
  for (float v : l) sum += std::exp(static_cast<double>(v) - mx);
  return static_cast<double>(l[id]) - mx - std::log(sum);
}

agreement measure(const shoal::model& ref, const shoal::model& q, bool decode) {
  agreement a;
  for (const auto& ids : golden_sequences()) {
    const auto lr = teacher_forced(ref, ids, decode);
    const auto lq = teacher_forced(q, ids, decode);
    const auto V = ref.config().vocab_size;
    for (std::size_t p = 0; p + 1 < ids.size(); ++p) {
      a.same += argmax(lr[p].data(), V) == argmax(lq[p].data(), V);
      ++a.total;
      a.nll -= log_softmax_at(lq[p], ids[p + 1]);
      a.nll_ref -= log_softmax_at(lr[p], ids[p + 1]);
    }
  }
  a.nll /= a.total;
  a.nll_ref /= a.total;
  return a;
}

void expect_error(const std::function<void()>& f, shoal::errc code,
                  std::initializer_list<std::string> fragments) {
  try {
    f();
    BOOST_ERROR("expected an error");
  } catch (const shoal::error& e) {
    const std::string msg = e.what();
    BOOST_TEST(static_cast<int>(e.code()) == static_cast<int>(code), "code of: " << msg);
    for (auto& frag : fragments)
      BOOST_TEST(msg.find(frag) != std::string::npos, "'" << msg << "' lacks '" << frag << "'");
  }
}

// Offsets of each tensor's type field (and data-offset field) in a GGUF header, for patching.
struct tensor_fields {
  std::string name;
  std::size_t type_at, offset_at;
};
std::vector<tensor_fields> gguf_tensor_fields(const std::string& bytes) {
  std::size_t pos = 8;
  auto u32 = [&] {
    std::uint32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  auto u64 = [&] {
    std::uint64_t v;
    std::memcpy(&v, bytes.data() + pos, 8);
    pos += 8;
    return v;
  };
  auto str = [&] {
    auto n = u64();
    std::string s = bytes.substr(pos, n);
    pos += n;
    return s;
  };
  const auto n_tensors = u64(), n_kv = u64();
  auto skip_value = [&](std::uint32_t t, auto& self) -> void {
    static const std::size_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == 8)
      str();
    else if (t == 9) {
      auto et = u32();
      auto n = u64();
      for (std::uint64_t i = 0; i < n; ++i) self(et, self);
    } else
      pos += sizes[t];
  };
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    str();
    skip_value(u32(), skip_value);
  }
  std::vector<tensor_fields> out;
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    tensor_fields f;
    f.name = str();
    auto nd = u32();
    pos += 8 * nd;
    f.type_at = pos;
    pos += 4;
    f.offset_at = pos;
    pos += 8;
    out.push_back(f);
  }
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  o << bytes;
}

// A one-layer llama GGUF with stories260K's tokenizer and 256-wide matrices, every matrix of type
// `t` (random blocks with small scales; Q4_K, Q6_K or Q5_K), norms 1: enough to run K-quants
// through a whole model.
void write_k_quant_gguf(const std::string& path, shoal::ggml_type t) {
  shoal::gguf_file src(shared_path(kStoriesGguf));
  shoal::gguf_writer w;
  for (const auto& [k, v] : src.metadata()) {
    if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
  }
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.context_length", 128);
  w.set_u32("llama.embedding_length", 256);
  w.set_u32("llama.block_count", 1);
  w.set_u32("llama.feed_forward_length", 512);
  w.set_u32("llama.attention.head_count", 8);
  w.set_u32("llama.attention.head_count_kv", 4);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> mats = {
      {"token_embd.weight", {512, 256}},        {"blk.0.attn_q.weight", {256, 256}},
      {"blk.0.attn_k.weight", {128, 256}},      {"blk.0.attn_v.weight", {128, 256}},
      {"blk.0.attn_output.weight", {256, 256}}, {"blk.0.ffn_gate.weight", {512, 256}},
      {"blk.0.ffn_up.weight", {512, 256}},      {"blk.0.ffn_down.weight", {256, 512}}};
  std::vector<bool> is_norm;
  for (auto& [name, shape] : mats) {
    w.add_tensor(name, t, shape);
    is_norm.push_back(false);
  }
  for (auto name : {"output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"}) {
    w.add_tensor(name, shoal::ggml_type::f32, {256});
    is_norm.push_back(true);
  }
  std::mt19937 rng(3);
  w.write(path, [&](std::size_t i, std::vector<std::uint8_t>& out) {
    if (is_norm[i]) {
      out.resize(256 * 4);
      const float one = 1.0f;
      for (int k = 0; k < 256; ++k) std::memcpy(out.data() + 4 * k, &one, 4);
      return;
    }
    const auto& shape = mats[i].second;
    const std::size_t bb = t == shoal::ggml_type::q4_k   ? 144
                           : t == shoal::ggml_type::q6_k ? 210
                                                         : 176;
    out.resize(static_cast<std::size_t>(shape[0] * shape[1] / 256) * bb);
    for (auto& b : out) b = static_cast<std::uint8_t>(rng());
    // Scales giving weights of roughly N(0, 0.02) size, as a trained model has.
    const std::uint16_t d = shoal::f32_to_f16(t == shoal::ggml_type::q4_k ? 1e-4f : 2e-5f);
    for (std::size_t b = 0; b < out.size() / bb; ++b) {
      std::uint8_t* blk = out.data() + b * bb;
      if (t == shoal::ggml_type::q4_k) {
        std::memcpy(blk, &d, 2);
        std::memcpy(blk + 2, &d, 2);
      } else if (t == shoal::ggml_type::q6_k) {
        std::memcpy(blk + 208, &d, 2);
      }
    }
  });
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quantized_model)

BOOST_AUTO_TEST_CASE(stories_quantized_agree_with_f32,
                     *boost::unit_test::precondition(needs_shared{kStories}) *
                         boost::unit_test::precondition(needs_shared{"golden/prompts.json"})) {
  temp_dir d;
  auto f32 = shoal::model::load(shared_path(kStories));
  struct variant {
    std::string type, source, out;
    double min_top1;       // decode and prefill alike
    double max_ppl_ratio;  // exp(mean NLL - F32's mean NLL) on the golden continuations
  };
  // Q8_0: the bar, >= 99% top-1 agreement (measured 210/210); int8: perplexity within 1%
  // of F32 (measured +0.3%, 209/210 agree). 4-bit: measured 180/210 and +12-13% perplexity on this
  // 260K-parameter model, whose 64-wide rows leave each scale few values to share; those bars only
  // catch breakage.
  const std::vector<variant> variants = {
      {"int8", kStories, d / "int8", 0.98, 1.01},
      {"q8_0", kStories, d / "q8_0.gguf", 0.99, 1.01},
      {"q8_0", kStoriesGguf, d / "q8_0-from-gguf.gguf", 0.99, 1.01},
      {"q4_0", kStories, d / "q4_0.gguf", 0.80, 1.25},
      {"int4", kStories, d / "int4", 0.80, 1.25},
  };
  for (const auto& v : variants) {
    shoal::quantize_options o;
    o.type = v.type;
    o.group_size = 32;
    const auto report = shoal::quantize_model(shared_path(v.source), v.out, o);
    BOOST_TEST(report.quantized > 0);
    auto q = shoal::model::load(v.out);
    for (bool decode : {false, true}) {
      const auto a = measure(*f32, *q, decode);
      BOOST_TEST_MESSAGE(v.type << " from " << v.source << (decode ? " decode" : " prefill")
                                << ": top-1 agreement " << a.same << "/" << a.total << " = "
                                << a.rate() << ", mean NLL " << a.nll << " vs F32 " << a.nll_ref
                                << " (perplexity ratio " << std::exp(a.nll - a.nll_ref) << ")");
      BOOST_TEST(a.rate() >= v.min_top1,
                 v.type << (decode ? " decode" : " prefill") << " agreement " << a.rate());
      BOOST_TEST(std::exp(a.nll - a.nll_ref) <= v.max_ppl_ratio, v.type << " perplexity ratio");
    }
    // And it still generates: greedy text from the golden prompt, valid ids.
    auto be = shoal::kernels::make_cpu_backend(2);
    shoal::model_runner runner(*q, *be, {}, nullptr, {});
    shoal::generation_options opts;
    opts.sampling.temperature = 0.0f;
    opts.max_tokens = 24;
    opts.ignore_eos = true;
    auto ids = q->tok().encode("Once upon a time");
    auto r = shoal::generate(runner, ids, opts);
    BOOST_TEST(r.generated_ids.size() == 24u);
    BOOST_TEST(!r.generated_text.empty());
  }
}

BOOST_AUTO_TEST_CASE(k_quant_gguf_runs_like_the_reference,
                     *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  // Q4_K / Q6_K matrices through the whole forward pass: the fast backend (int8 activations)
  // against the reference backend (dequantized F32), logits close relative to their spread.
  for (auto t : {shoal::ggml_type::q4_k, shoal::ggml_type::q6_k}) {
    temp_dir d;
    write_k_quant_gguf(d / "k.gguf", t);
    auto m = shoal::model::load(d / "k.gguf");
    BOOST_TEST(shoal::to_string(m->weights().layers[0].wq.m.type) == shoal::to_string(t));
    const std::vector<std::int32_t> ids = {1, 300, 301, 302, 40, 41, 42};
    auto fast = shoal::kernels::make_cpu_backend(2);
    auto ref = shoal::kernels::make_reference_backend();
    for (bool decode : {false, true}) {
      std::vector<float> lf, lr;
      for (auto* be : {fast.get(), ref.get()}) {
        shoal::model_runner runner(*m, *be, {}, nullptr, {});
        std::vector<std::int32_t> table(static_cast<std::size_t>(runner.cache().num_blocks()));
        for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int32_t>(i);
        std::vector<float> all, logits;
        for (std::size_t p = 0; p < ids.size(); ++p) {
          if (decode || p == 0) {
            shoal::forward_batch b;
            const std::size_t end = decode ? p + 1 : ids.size();
            for (std::size_t k = p; k < end; ++k)
              b.add(ids[k], static_cast<std::int32_t>(k), table, true);
            runner.forward(b, logits);
            all.insert(all.end(), logits.begin(), logits.end());
          }
        }
        (be == fast.get() ? lf : lr) = all;
      }
      BOOST_REQUIRE_EQUAL(lf.size(), lr.size());
      double spread = 0, worst = 0;
      for (std::size_t i = 0; i < lr.size(); ++i) {
        BOOST_REQUIRE(std::isfinite(lf[i]));
        spread = std::max(spread, std::fabs(double(lr[i])));
        worst = shoal::test::worse(worst, double(lf[i]) - lr[i]);
      }
      BOOST_TEST_MESSAGE(shoal::to_string(t)
                         << (decode ? " decode" : " prefill") << ": max |logit diff| " << worst
                         << " of max |logit| " << spread);
      BOOST_TEST(worst <= 0.05 * spread);
    }
  }
}

BOOST_AUTO_TEST_CASE(unsupported_gguf_types_are_named,
                     *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  temp_dir d;
  const std::string bytes = shoal::test::read_file(shared_path(kStoriesGguf));
  const auto fields = gguf_tensor_fields(bytes);
  std::size_t q_at = 0;
  for (auto& f : fields) {
    if (f.name == "blk.0.attn_q.weight") q_at = f.type_at;
  }
  BOOST_REQUIRE(q_at > 0);
  // An id ggml never defined, and IQ2_XXS (16), which this build does not implement.
  for (std::uint32_t id : {99u, 16u}) {
    std::string patched = bytes;
    std::memcpy(patched.data() + q_at, &id, 4);
    write_bytes(d / "bad.gguf", patched);
    expect_error([&] { shoal::model::load(d / "bad.gguf"); }, shoal::errc::unsupported,
                 {"bad.gguf", "blk.0.attn_q.weight",
                  id == 99 ? "unknown (ggml type 99)" : "IQ2_XXS", "Q8_0, Q4_0, Q4_K, Q6_K"});
  }
  // Q5_K (13) on 256-wide matrices: a real K-quant this build does not run.
  write_k_quant_gguf(d / "q5k.gguf", shoal::ggml_type::q5_k);
  expect_error([&] { shoal::model::load(d / "q5k.gguf"); }, shoal::errc::unsupported,
               {"q5k.gguf", "token_embd.weight", "type Q5_K", "does not support"});
}

BOOST_AUTO_TEST_CASE(quantized_data_must_match_its_shape,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  shoal::quantize_options o;
  o.type = "q8_0";
  shoal::quantize_model(shared_path(kStories), d / "q8.gguf", o);
  const std::string bytes = shoal::test::read_file(d / "q8.gguf");
  const auto fields = gguf_tensor_fields(bytes);
  // Truncated: the last tensor's blocks run past the end of the file.
  write_bytes(d / "short.gguf", bytes.substr(0, bytes.size() - 100));
  expect_error([&] { shoal::model::load(d / "short.gguf"); }, shoal::errc::corrupt_file,
               {"short.gguf", fields.back().name, "past the end of the file"});
  // Overlapping: a Q8_0 tensor whose next neighbour starts before its blocks end.
  std::size_t i = 0;
  while (i + 1 < fields.size() && fields[i].name != "blk.0.attn_q.weight") ++i;
  BOOST_REQUIRE(i + 1 < fields.size());
  std::uint64_t off;
  std::memcpy(&off, bytes.data() + fields[i].offset_at, 8);
  std::string patched = bytes;
  const std::uint64_t next = off + 64;  // [64 x 64] Q8_0 needs 64 * 2 * 34 = 4352 bytes
  std::memcpy(patched.data() + fields[i + 1].offset_at, &next, 8);
  write_bytes(d / "overlap.gguf", patched);
  expect_error([&] { shoal::model::load(d / "overlap.gguf"); }, shoal::errc::corrupt_file,
               {"overlap.gguf", "blk.0.attn_q.weight", "Q8_0", "4352 bytes", "128 blocks"});
}

BOOST_AUTO_TEST_CASE(hf_int8_layout_errors,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  shoal::quantize_options o;
  o.type = "int8";
  shoal::quantize_model(shared_path(kStories), d / "int8", o);
  auto m = shoal::model::load(d / "int8");
  BOOST_TEST(shoal::to_string(m->weights().layers[0].wq.m.type) == std::string("I8"));
  BOOST_TEST(shoal::to_string(m->weights().tok_embd.m.type) == std::string("F32"));
  BOOST_TEST(m->parameter_count() == shoal::model::load(shared_path(kStories))->parameter_count());
  // Unknown method.
  auto cfg = read_json(d / "int8/config.json");
  cfg["quantization_config"]["quant_method"] = "gptq";
  { std::ofstream(d / "int8/config.json") << cfg.dump(); }
  expect_error([&] { shoal::model::load(d / "int8"); }, shoal::errc::unsupported,
               {"config.json", "gptq", "shoal-int8"});
  // int4 with a group size the kernels cannot take.
  cfg["quantization_config"] = {{"quant_method", "shoal-int4"}, {"group_size", 48}};
  { std::ofstream(d / "int8/config.json") << cfg.dump(); }
  expect_error([&] { shoal::model::load(d / "int8"); }, shoal::errc::corrupt_file,
               {"group_size 48", "multiple of 32"});
  // I8 weights read as int4: the dtype contradicts the method.
  cfg["quantization_config"] = {{"quant_method", "shoal-int4"}, {"group_size", 32}};
  { std::ofstream(d / "int8/config.json") << cfg.dump(); }
  expect_error([&] { shoal::model::load(d / "int8"); }, shoal::errc::corrupt_file,
               {"dtype I8", "shoal-int4", "U8"});
}

BOOST_AUTO_TEST_CASE(quantize_refuses_bad_requests,
                     *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  shoal::quantize_options o;
  o.type = "int8";
  fs::create_directories(d / "exists");
  expect_error([&] { shoal::quantize_model(shared_path(kStories), d / "exists", o); },
               shoal::errc::invalid_argument, {"exists", "already exists", "--force"});
  o.force = true;
  BOOST_TEST(shoal::quantize_model(shared_path(kStories), d / "exists", o).quantized == 36);
  expect_error([&] { shoal::quantize_model(shared_path(kStoriesGguf), d / "x", o); },
               shoal::errc::unsupported, {"Hugging Face"});
  o.type = "q5_k";
  expect_error([&] { shoal::quantize_model(shared_path(kStories), d / "y", o); },
               shoal::errc::invalid_argument, {"q5_k", "int8, int4, fp8", "q8_0, q4_0, f32, f16, bf16"});
  o.type = "int4";
  o.group_size = 40;
  expect_error([&] { shoal::quantize_model(shared_path(kStories), d / "y", o); },
               shoal::errc::invalid_argument, {"--group-size 40"});
}

BOOST_AUTO_TEST_SUITE_END()
