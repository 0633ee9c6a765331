// Loading real models, and refusing bad ones with one clear message naming the file and problem.

#include <boost/test/unit_test.hpp>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/model/model.hpp"
#include "engine/model/safetensors.hpp"
#include "engine/runner/generate.hpp"
#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using shoal::test::needs_shared;
using shoal::test::shared_path;
using shoal::test::temp_dir;

namespace {

const char* kStories = "models/stories260K/hf";
const char* kStoriesGguf = "models/stories260K/gguf/stories260K-f32.gguf";

// Expects model::load(path) to throw a shoal::error whose message contains every fragment.
void expect_load_error(const std::string& path, std::initializer_list<std::string> fragments) {
  try {
    shoal::model::load(path);
    BOOST_ERROR("loading " << path << " should have failed");
  } catch (const shoal::error& e) {
    std::string msg = e.what();
    for (auto& f : fragments) BOOST_TEST(msg.find(f) != std::string::npos, "message '" << msg << "' lacks '" << f << "'");
  }
}

// A copy of stories260K's HF directory whose files can be edited.
void copy_stories(const temp_dir& d) {
  for (auto& e : fs::directory_iterator(shared_path(kStories))) {
    fs::copy_file(e.path(), d / e.path().filename().string());
    fs::permissions(d / e.path().filename().string(), fs::perms::owner_read | fs::perms::owner_write);
  }
}

std::string read_bytes(const std::string& p) { return shoal::test::read_file(p); }

nlohmann::json stories_config() { return shoal::test::read_json(shared_path(std::string(kStories) + "/config.json")); }

}  // namespace

BOOST_AUTO_TEST_SUITE(model_load)

BOOST_AUTO_TEST_CASE(stories_hf_config, *boost::unit_test::precondition(needs_shared{kStories})) {
  auto m = shoal::model::load(shared_path(kStories));
  const auto& c = m->config();
  BOOST_TEST(c.architecture == "LlamaForCausalLM");
  BOOST_TEST(c.hidden_size == 64);
  BOOST_TEST(c.intermediate_size == 172);
  BOOST_TEST(c.n_layers == 5);
  BOOST_TEST(c.n_heads == 8);
  BOOST_TEST(c.n_kv_heads == 4);
  BOOST_TEST(c.head_dim == 8);
  BOOST_TEST(c.vocab_size == 512);
  BOOST_TEST(c.max_positions == 512);
  BOOST_TEST((c.rope_style == shoal::kernels::rope_style::neox));
  BOOST_TEST(m->tok().kind() == "spm-bpe");
  // Weights are used in place: the embedding points into the mapped file, not a copy.
  BOOST_TEST((m->weights().tok_embd.m.type == shoal::dtype::f32));
}

BOOST_AUTO_TEST_CASE(stories_gguf_config, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  auto m = shoal::model::load(shared_path(kStoriesGguf));
  const auto& c = m->config();
  BOOST_TEST(c.architecture == "llama");
  BOOST_TEST(c.n_kv_heads == 4);
  BOOST_TEST((c.rope_style == shoal::kernels::rope_style::interleaved));
  BOOST_TEST(std::fabs(c.rms_norm_eps - 1e-5f) < 1e-9f);
}

BOOST_AUTO_TEST_CASE(missing_path) {
  expect_load_error("/nonexistent/shoal/model", {"/nonexistent/shoal/model", "no such file"});
}

BOOST_AUTO_TEST_CASE(directory_without_config) {
  temp_dir d;
  d.write("README", "not a model");
  expect_load_error(d.path(), {d.path(), "config.json"});
}

BOOST_AUTO_TEST_CASE(config_json_garbage) {
  temp_dir d;
  d.write("config.json", "{\"architectures\": [LlamaForCausalLM");
  expect_load_error(d.path(), {"config.json", "invalid JSON"});
}

BOOST_AUTO_TEST_CASE(unsupported_architecture, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  auto c = stories_config();
  c["architectures"] = {"MambaForCausalLM"};
  d.write("config.json", c.dump());
  expect_load_error(d.path(), {"config.json", "MambaForCausalLM", "not supported"});
}

BOOST_AUTO_TEST_CASE(unsupported_rope_scaling, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  auto c = stories_config();
  c["rope_scaling"] = {{"type", "longrope"}, {"factor", 2.0}};
  d.write("config.json", c.dump());
  expect_load_error(d.path(), {"config.json", "longrope", "not supported"});
}

BOOST_AUTO_TEST_CASE(wrong_shape_for_config, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  auto c = stories_config();
  c["intermediate_size"] = 176;
  d.write("config.json", c.dump());
  expect_load_error(d.path(), {"model.safetensors", "gate_proj", "[172, 64]", "[176, 64]"});
}

BOOST_AUTO_TEST_CASE(truncated_safetensors, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  auto bytes = read_bytes(d / "model.safetensors");
  d.write("model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_load_error(d.path(), {"model.safetensors", "truncated"});
}

BOOST_AUTO_TEST_CASE(header_length_past_end, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  auto bytes = read_bytes(d / "model.safetensors");
  std::uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  d.write("model.safetensors", bytes);
  expect_load_error(d.path(), {"model.safetensors", "header length"});
}

BOOST_AUTO_TEST_CASE(header_json_garbage, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  std::string header = "{\"model.embed_tokens.weight\": {\"dtype\": \"F32\", garbage";
  std::string bytes(8, '\0');
  std::uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  d.write("model.safetensors", bytes + header);
  expect_load_error(d.path(), {"model.safetensors", "not valid JSON"});
}

BOOST_AUTO_TEST_CASE(offsets_past_end, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  std::string header = R"({"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}})";
  std::string bytes(8, '\0');
  std::uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  d.write("model.safetensors", bytes + header + std::string(16, '\0'));
  expect_load_error(d.path(), {"model.safetensors", "model.norm.weight", "exceed"});
}

BOOST_AUTO_TEST_CASE(unsupported_dtype, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  // Rewrite the file with the embedding stored as I32 (same byte count as F32).
  shoal::safetensors_file src(shared_path(std::string(kStories) + "/model.safetensors"));
  shoal::safetensors_writer w;
  std::vector<const shoal::safetensors_tensor*> order;
  for (auto& [name, t] : src.tensors()) {
    w.add(name, name == "model.embed_tokens.weight" ? "I32" : t.dtype, t.shape);
    order.push_back(&t);
  }
  w.write(d / "model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) {
    out.assign(order[i]->data, order[i]->data + order[i]->nbytes);
  });
  expect_load_error(d.path(), {"model.safetensors", "embed_tokens", "I32"});
}

BOOST_AUTO_TEST_CASE(missing_tensor, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  copy_stories(d);
  shoal::safetensors_file src(shared_path(std::string(kStories) + "/model.safetensors"));
  shoal::safetensors_writer w;
  std::vector<const shoal::safetensors_tensor*> order;
  for (auto& [name, t] : src.tensors()) {
    if (name == "model.layers.3.mlp.up_proj.weight") continue;
    w.add(name, t.dtype, t.shape);
    order.push_back(&t);
  }
  w.write(d / "model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) {
    out.assign(order[i]->data, order[i]->data + order[i]->nbytes);
  });
  expect_load_error(d.path(), {"model.layers.3.mlp.up_proj.weight", "missing"});
}

BOOST_AUTO_TEST_CASE(tied_embedding_fallback, *boost::unit_test::precondition(needs_shared{kStories})) {
  // Real tied checkpoints omit lm_head; the loader must fall back to the embedding.
  temp_dir d;
  copy_stories(d);
  shoal::safetensors_file src(shared_path(std::string(kStories) + "/model.safetensors"));
  shoal::safetensors_writer w;
  std::vector<const shoal::safetensors_tensor*> order;
  for (auto& [name, t] : src.tensors()) {
    if (name == "lm_head.weight") continue;
    w.add(name, t.dtype, t.shape);
    order.push_back(&t);
  }
  w.write(d / "model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) {
    out.assign(order[i]->data, order[i]->data + order[i]->nbytes);
  });
  auto m = shoal::model::load(d.path());
  BOOST_TEST(m->config().tied_embeddings);
  BOOST_TEST(m->weights().lm_head.m.data == m->weights().tok_embd.m.data);
}

BOOST_AUTO_TEST_CASE(gguf_truncated, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  temp_dir d;
  auto bytes = read_bytes(shared_path(kStoriesGguf));
  for (std::size_t cut : {std::size_t{3}, std::size_t{20}, std::size_t{2000}, bytes.size() - 100}) {
    d.write("m.gguf", bytes.substr(0, cut));
    BOOST_TEST_CONTEXT("cut at " << cut) {
      try {
        shoal::model::load(d / "m.gguf");
        BOOST_ERROR("truncated GGUF loaded");
      } catch (const shoal::error& e) {
        std::string msg = e.what();
        BOOST_TEST(msg.find("m.gguf") != std::string::npos, msg);
        BOOST_TEST((msg.find("past the end") != std::string::npos || msg.find("magic") != std::string::npos), msg);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(gguf_bad_magic) {
  temp_dir d;
  d.write("m.gguf", "GGML" + std::string(64, '\0'));
  expect_load_error(d / "m.gguf", {"m.gguf", "magic"});
}

BOOST_AUTO_TEST_CASE(gguf_huge_counts, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  temp_dir d;
  auto bytes = read_bytes(shared_path(kStoriesGguf));
  std::uint64_t huge = 1ull << 60;
  std::memcpy(bytes.data() + 16, &huge, 8);  // metadata key count
  d.write("m.gguf", bytes);
  expect_load_error(d / "m.gguf", {"m.gguf", "exceed"});
}

BOOST_AUTO_TEST_CASE(gguf_unsupported_architecture, *boost::unit_test::precondition(needs_shared{kStoriesGguf})) {
  // Rename general.architecture's value "llama" -> "lxama" in place (same length).
  temp_dir d;
  auto bytes = read_bytes(shared_path(kStoriesGguf));
  auto at = bytes.find("general.architecture");
  BOOST_REQUIRE(at != std::string::npos);
  auto v = bytes.find("llama", at);
  bytes[v + 1] = 'x';
  d.write("m.gguf", bytes);
  expect_load_error(d / "m.gguf", {"m.gguf", "lxama", "not supported"});
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(model_formats)

namespace {

// Rewrites stories260K's weights as `dtype` (F16/BF16) into `dir`, optionally split into two
// shards with a model.safetensors.index.json.
void write_converted(const temp_dir& d, const std::string& dtype, bool sharded) {
  for (auto f : {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    fs::copy_file(shared_path(std::string(kStories) + "/" + f), d / f);
  }
  shoal::safetensors_file src(shared_path(std::string(kStories) + "/model.safetensors"));
  std::vector<const shoal::safetensors_tensor*> all;
  for (auto& [name, t] : src.tensors()) all.push_back(&t);
  const std::size_t shards = sharded ? 2 : 1;
  nlohmann::json weight_map;
  for (std::size_t s = 0; s < shards; ++s) {
    shoal::safetensors_writer w;
    std::vector<const shoal::safetensors_tensor*> mine;
    for (std::size_t i = s; i < all.size(); i += shards) {
      w.add(all[i]->name, dtype, all[i]->shape);
      mine.push_back(all[i]);
    }
    const std::string file = sharded ? "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors" : "model.safetensors";
    for (auto* t : mine) weight_map[t->name] = file;
    w.write(d / file, [&](std::size_t i, std::vector<std::uint8_t>& out) {
      const auto* t = mine[i];
      const std::size_t n = t->nbytes / 4;
      out.resize(n * (dtype == "F32" ? 4 : 2));
      for (std::size_t k = 0; k < n; ++k) {
        float v;
        std::memcpy(&v, t->data + 4 * k, 4);
        if (dtype == "F32") {
          std::memcpy(out.data() + 4 * k, &v, 4);
        } else {
          std::uint16_t h = dtype == "F16" ? shoal::f32_to_f16(v) : shoal::f32_to_bf16(v);
          std::memcpy(out.data() + 2 * k, &h, 2);
        }
      }
    });
  }
  if (sharded) d.write("model.safetensors.index.json", nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump());
}

std::vector<std::int32_t> greedy(const std::string& path, const std::vector<std::int32_t>& prompt, int n) {
  auto m = shoal::model::load(path);
  auto be = shoal::kernels::make_reference_backend();
  shoal::model_runner r(*m, *be, {}, nullptr, {});
  shoal::generation_options o;
  o.sampling.temperature = 0;
  o.max_tokens = n;
  o.ignore_eos = true;
  return shoal::generate(r, prompt, o).generated_ids;
}

}  // namespace

BOOST_AUTO_TEST_CASE(sharded_index_loads, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  write_converted(d, "F32", true);
  auto g = shoal::test::read_json(shared_path("golden/lily_and_tom.json"));
  auto ids = greedy(d.path(), g["prompt_ids"], 48);
  BOOST_TEST(ids == g["generated_ids"].get<std::vector<std::int32_t>>(), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(sharded_index_missing_shard, *boost::unit_test::precondition(needs_shared{kStories})) {
  temp_dir d;
  write_converted(d, "F32", true);
  fs::remove(d / "model-00002-of-00002.safetensors");
  expect_load_error(d.path(), {"model-00002-of-00002.safetensors", "missing"});
}

BOOST_AUTO_TEST_CASE(f16_and_bf16_reproduce_the_goldens, *boost::unit_test::precondition(needs_shared{kStories})) {
  // ../shared/README.md: the smallest top-1/top-2 gap in these goldens is 0.036, so half-precision
  // weights must still give the same greedy ids here.
  for (std::string dtype : {"F16", "BF16"}) {
    temp_dir d;
    write_converted(d, dtype, false);
    BOOST_TEST((shoal::model::load(d.path())->weights().layers[0].wq.m.type ==
                (dtype == "F16" ? shoal::dtype::f16 : shoal::dtype::bf16)));
    for (auto name : {"once_upon_a_time", "the_cat"}) {
      auto g = shoal::test::read_json(shared_path(std::string("golden/") + name + ".json"));
      auto ids = greedy(d.path(), g["prompt_ids"], 48);
      BOOST_TEST(ids == g["generated_ids"].get<std::vector<std::int32_t>>(), dtype << " " << name);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
