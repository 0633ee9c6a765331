// Weight quantization of a whole model into a new file (see quantize.hpp). Reads the source through
// model::load (memory-mapped, so a model is streamed, never copied whole), converts one matrix row
// at a time.

#include "engine/model/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "engine/common/error.hpp"
#include "engine/common/mapped_file.hpp"
#include "engine/model/gguf.hpp"
#include "engine/model/gguf_convert.hpp"
#include "engine/model/gguf_writer.hpp"
#include "engine/model/model.hpp"
#include "engine/model/safetensors.hpp"
#include "kernels/quantize.hpp"

namespace fs = std::filesystem;

namespace shoal {

namespace {

// One quantize run: the caller's options plus the report it fills.
struct job {
  std::string model;
  std::string out;
  quantize_options opts;
  quantize_report* report;
};

// Converts row r of `src` into `target`'s bytes at `out` (dtype_bytes(target, cols) of them).
void convert_row(const kernels::matrix& src, std::int64_t r, dtype target, std::vector<float>& tmp,
                 std::uint8_t* out) {
  const std::int64_t cols = src.cols;
  if (src.type == target && !dtype_has_external_scales(target)) {
    std::memcpy(out, src.row(r), static_cast<std::size_t>(dtype_bytes(target, cols)));
    return;
  }
  tmp.resize(static_cast<std::size_t>(cols));
  kernels::dequantize_row(src, r, tmp.data());
  switch (target) {
    case dtype::f32:
      std::memcpy(out, tmp.data(), static_cast<std::size_t>(cols) * 4);
      break;
    case dtype::f16:
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::uint16_t h = f32_to_f16(tmp[c]);
        std::memcpy(out + 2 * c, &h, 2);
      }
      break;
    case dtype::bf16:
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::uint16_t h = f32_to_bf16(tmp[c]);
        std::memcpy(out + 2 * c, &h, 2);
      }
      break;
    case dtype::q8_0:
      kernels::quantize_row_q8_0(tmp.data(), cols, out);
      break;
    case dtype::q4_0:
      kernels::quantize_row_q4_0(tmp.data(), cols, out);
      break;
    default:
      throw error(errc::internal,
                  std::string("quantize: cannot write ") + to_string(target) + " rows");
  }
}

// The type a matrix is stored as when it cannot take the target: its own if that is a plain float
// (or, for GGUF, any ggml type), else F32.
dtype fallback_type(const kernels::matrix& m, bool gguf) {
  switch (m.type) {
    case dtype::f32:
    case dtype::f16:
    case dtype::bf16:
      return m.type;
    case dtype::q8_0:
    case dtype::q4_0:
    case dtype::q4_k:
    case dtype::q6_k:
      return gguf ? m.type : dtype::f32;
    default:
      return dtype::f32;
  }
}

const char* safetensors_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "F32";
    case dtype::f16:
      return "F16";
    case dtype::bf16:
      return "BF16";
    default:
      throw error(errc::internal, "no safetensors dtype for " + std::string(to_string(t)));
  }
}

ggml_type ggml_of(dtype t) {
  switch (t) {
    case dtype::f32:
      return ggml_type::f32;
    case dtype::f16:
      return ggml_type::f16;
    case dtype::bf16:
      return ggml_type::bf16;
    case dtype::q8_0:
      return ggml_type::q8_0;
    case dtype::q4_0:
      return ggml_type::q4_0;
    case dtype::q4_k:
      return ggml_type::q4_k;
    case dtype::q6_k:
      return ggml_type::q6_k;
    default:
      throw error(errc::internal, "no ggml type for " + std::string(to_string(t)));
  }
}

void prepare_out(const job& a, bool directory) {
  std::error_code ec;
  if (fs::exists(a.out, ec)) {
    if (!a.opts.force)
      throw error(errc::invalid_argument, a.out + ": already exists (pass --force to overwrite)");
    if (fs::equivalent(a.out, a.model, ec)) {
      throw error(errc::invalid_argument,
                  a.out + ": is the source model itself; choose another --out");
    }
    if (directory) fs::remove_all(a.out);
  }
  if (directory) fs::create_directories(a.out);
}

// ---- HF int8 / int4 -----------------------------------------------------------------------------

struct st_entry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::function<void(std::vector<std::uint8_t>&)> fill;
};

void write_hf(const job& a, const model& m) {
  if (m.config().format != "hf") {
    throw error(
        errc::unsupported,
        a.model + ": --type " + a.opts.type +
            " writes a Hugging Face directory; give a Hugging Face source (this is a GGUF file)");
  }
  const bool int4 = a.opts.type == "int4";
  const std::int64_t G = a.opts.group_size;
  std::vector<st_entry> entries;

  auto add_vector = [&](const std::string& name, const std::vector<float>& v) {
    if (v.empty()) return;
    entries.push_back(
        {name, "F32", {static_cast<std::int64_t>(v.size())}, [&v](std::vector<std::uint8_t>& out) {
           out.resize(v.size() * 4);
           std::memcpy(out.data(), v.data(), out.size());
         }});
  };
  auto add_kept = [&](const std::string& name, const kernels::matrix& w) {
    const dtype t = fallback_type(w, false);
    entries.push_back(
        {name, safetensors_name(t), {w.rows, w.cols}, [w, t](std::vector<std::uint8_t>& out) {
           const std::int64_t rb = dtype_bytes(t, w.cols);
           out.resize(static_cast<std::size_t>(w.rows * rb));
           std::vector<float> tmp;
           for (std::int64_t r = 0; r < w.rows; ++r) convert_row(w, r, t, tmp, out.data() + r * rb);
         }});
  };
  auto add_matrix = [&](const std::string& name, const kernels::matrix& w) {
    if (int4 && w.cols % G != 0) {
      ++a.report->kept;
      a.report->notes.push_back(name + " has " + std::to_string(w.cols) +
                                " columns, not a multiple of group size " + std::to_string(G) +
                                ": kept as " + to_string(fallback_type(w, false)));
      add_kept(name, w);
      return;
    }
    ++a.report->quantized;
    // Scales first (a pre-pass over the rows) so every F32 tensor precedes the 1-byte ones and
    // stays 4-byte aligned in the file.
    const std::int64_t per_row = int4 ? w.cols / G : 1;
    entries.push_back(
        {name + "_scale", "F32",
         int4 ? std::vector<std::int64_t>{w.rows, per_row} : std::vector<std::int64_t>{w.rows},
         [w, int4, G, per_row](std::vector<std::uint8_t>& out) {
           out.resize(static_cast<std::size_t>(w.rows * per_row * 4));
           std::vector<float> row(w.cols), scales(per_row);
           std::vector<std::uint8_t> q(static_cast<std::size_t>(w.cols));
           for (std::int64_t r = 0; r < w.rows; ++r) {
             kernels::dequantize_row(w, r, row.data());
             if (int4) {
               kernels::quantize_row_i4(row.data(), w.cols, G, q.data(), scales.data());
             } else {
               scales[0] = kernels::quantize_row_i8(row.data(), w.cols,
                                                         reinterpret_cast<std::int8_t*>(q.data()));
             }
             std::memcpy(out.data() + r * per_row * 4, scales.data(),
                         static_cast<std::size_t>(per_row) * 4);
           }
         }});
    entries.push_back({name,
                       int4 ? "U8" : "I8",
                       {w.rows, int4 ? w.cols / 2 : w.cols},
                       [w, int4, G](std::vector<std::uint8_t>& out) {
                         const std::int64_t rb = int4 ? w.cols / 2 : w.cols;
                         out.resize(static_cast<std::size_t>(w.rows * rb));
                         std::vector<float> row(w.cols), scales(int4 ? w.cols / G : 1);
                         for (std::int64_t r = 0; r < w.rows; ++r) {
                           kernels::dequantize_row(w, r, row.data());
                           std::uint8_t* dst = out.data() + r * rb;
                           if (int4)
                             kernels::quantize_row_i4(row.data(), w.cols, G, dst,
                                                           scales.data());
                           else
                             kernels::quantize_row_i8(row.data(), w.cols,
                                                           reinterpret_cast<std::int8_t*>(dst));
                         }
                       }});
  };

  const auto& W = m.weights();
  add_kept("model.embed_tokens.weight", W.tok_embd.m);  // lookups read one row: kept as stored
  add_vector("model.norm.weight", W.out_norm);
  if (W.lm_head.m.data != W.tok_embd.m.data) add_matrix("lm_head.weight", W.lm_head.m);
  for (std::size_t i = 0; i < W.layers.size(); ++i) {
    const auto& L = W.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add_vector(p + "input_layernorm.weight", L.attn_norm);
    add_matrix(p + "self_attn.q_proj.weight", L.wq.m);
    add_matrix(p + "self_attn.k_proj.weight", L.wk.m);
    add_matrix(p + "self_attn.v_proj.weight", L.wv.m);
    add_matrix(p + "self_attn.o_proj.weight", L.wo.m);
    add_vector(p + "self_attn.q_proj.bias", L.bq);
    add_vector(p + "self_attn.k_proj.bias", L.bk);
    add_vector(p + "self_attn.v_proj.bias", L.bv);
    add_vector(p + "post_attention_layernorm.weight", L.ffn_norm);
    add_matrix(p + "mlp.gate_proj.weight", L.w_gate.m);
    add_matrix(p + "mlp.up_proj.weight", L.w_up.m);
    add_matrix(p + "mlp.down_proj.weight", L.w_down.m);
  }
  // F32 first, then 2-byte, then 1-byte tensors: each stays aligned to its element size.
  auto rank = [](const std::string& d) {
    return d == "F32" ? 0 : (d == "F16" || d == "BF16") ? 1 : 2;
  };
  std::stable_sort(entries.begin(), entries.end(), [&](const st_entry& x, const st_entry& y) {
    return rank(x.dtype) < rank(y.dtype);
  });

  prepare_out(a, true);
  // Everything but the weights and config.json comes along unchanged (tokenizer, generation
  // config).
  for (const auto& e : fs::directory_iterator(a.model)) {
    const std::string fn = e.path().filename().string();
    if (!e.is_regular_file() || e.path().extension() == ".safetensors" ||
        fn == "model.safetensors.index.json" || fn == "config.json") {
      continue;
    }
    const fs::path dst = fs::path(a.out) / fn;
    fs::copy_file(e.path(), dst, fs::copy_options::overwrite_existing);
    // Sources may be read-only (a shared model store); the copy belongs to the caller.
    fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                             fs::perms::others_read);
  }
  nlohmann::ordered_json cfg =
      nlohmann::ordered_json::parse(read_text_file(a.model + "/config.json"));
  nlohmann::ordered_json qc = {{"quant_method", int4 ? "shoal-int4" : "shoal-int8"},
                               {"bits", int4 ? 4 : 8}};
  if (int4) qc["group_size"] = G;
  qc["symmetric"] = true;
  qc["weight_scale_suffix"] = "_scale";
  cfg["quantization_config"] = qc;
  {
    std::ofstream out(a.out + "/config.json");
    out << cfg.dump(2) << "\n";
    if (!out) throw error(errc::invalid_argument, a.out + "/config.json: write failed");
  }
  safetensors_writer w;
  for (auto& e : entries) w.add(e.name, e.dtype, e.shape);
  w.set_metadata("format", "pt");
  w.set_metadata("shoal_quantization", int4 ? "shoal-int4" : "shoal-int8");
  w.write(a.out + "/model.safetensors",
          [&](std::size_t i, std::vector<std::uint8_t>& out) { entries[i].fill(out); });
}

// ---- HF FP8 (DeepSeek's published layout) --------------------------------------------------------

// One source tensor as F32 values (F32, BF16 or F16 as stored).
std::vector<float> tensor_f32(const safetensors_tensor& t, const std::string& file) {
  const std::size_t es = safetensors_dtype_size(t.dtype);
  if (t.dtype != "F32" && t.dtype != "BF16" && t.dtype != "F16") {
    throw error(errc::unsupported, file + ": tensor '" + t.name + "' has dtype " + t.dtype +
                                       "; --type fp8 converts F32, BF16 or F16 models");
  }
  std::vector<float> out(t.nbytes / es);
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.dtype == "F32") {
      std::memcpy(&out[i], t.data + 4 * i, 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      out[i] = t.dtype == "BF16" ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  return out;
}

// Linear layers become float8_e4m3fn with one F32 `weight_scale_inv` per 128x128 block (the value
// that multiplies the block back; partial blocks at the edges), as DeepSeek-V3 checkpoints do. The
// embedding, lm_head, the MoE router and every vector stay in their source type, as there.
void write_fp8(const job& a, const model& m) {
  if (m.config().format != "hf") {
    throw error(errc::unsupported, a.model + ": --type fp8 writes a Hugging Face directory; give a Hugging Face source");
  }
  constexpr std::int64_t B = 128;
  std::vector<std::unique_ptr<safetensors_file>> files;
  for (const auto& e : fs::directory_iterator(a.model)) {
    if (e.path().extension() == ".safetensors") files.push_back(std::make_unique<safetensors_file>(e.path().string()));
  }
  std::vector<st_entry> entries;
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const auto& f : files) {
    for (const auto& [name, t] : f->tensors()) {
      const std::string file = f->path();
      const bool linear = t.shape.size() == 2 && ends_with(name, ".weight") && name != "lm_head.weight" &&
                          name != "model.embed_tokens.weight" && !ends_with(name, ".mlp.gate.weight");
      if (t.dtype == "F8_E4M3" || ends_with(name, "_scale_inv")) {
        throw error(errc::invalid_argument, a.model + ": already holds FP8 weights ('" + name + "')");
      }
      if (!linear) {
        entries.push_back({name, t.dtype, t.shape, [&t](std::vector<std::uint8_t>& out) {
                             out.assign(t.data, t.data + t.nbytes);
                           }});
        ++a.report->kept;
        continue;
      }
      ++a.report->quantized;
      const std::int64_t rows = t.shape[0], cols = t.shape[1];
      const std::int64_t sr = (rows + B - 1) / B, sc = (cols + B - 1) / B;
      // Both tensors come from one pass over the source: the scales are computed with the bytes.
      auto quantized = std::make_shared<std::pair<std::vector<float>, std::vector<std::uint8_t>>>();
      auto compute = [quantized, &t, file, rows, cols, sr, sc] {
        const std::vector<float> w = tensor_f32(t, file);
        auto& scales = quantized->first;
        auto& q = quantized->second;
        scales.assign(static_cast<std::size_t>(sr * sc), 1.0f);
        q.resize(static_cast<std::size_t>(rows * cols));
        for (std::int64_t br = 0; br < sr; ++br) {
          for (std::int64_t bc = 0; bc < sc; ++bc) {
            const std::int64_t r1 = std::min(rows, (br + 1) * B), c1 = std::min(cols, (bc + 1) * B);
            float amax = 0.0f;
            for (std::int64_t r = br * B; r < r1; ++r)
              for (std::int64_t c = bc * B; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
            const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
            scales[br * sc + bc] = scale;
            for (std::int64_t r = br * B; r < r1; ++r)
              for (std::int64_t c = bc * B; c < c1; ++c) q[r * cols + c] = f32_to_f8_e4m3(w[r * cols + c] / scale);
          }
        }
      };
      entries.push_back({name + "_scale_inv", "F32", {sr, sc}, [quantized, compute](std::vector<std::uint8_t>& out) {
                           compute();
                           out.resize(quantized->first.size() * 4);
                           std::memcpy(out.data(), quantized->first.data(), out.size());
                           // Every F32 tensor is written before any FP8 one: recompute the bytes
                           // then rather than hold the whole model meanwhile.
                           quantized->second = {};
                         }});
      entries.push_back({name, "F8_E4M3", t.shape, [quantized, compute](std::vector<std::uint8_t>& out) {
                           compute();
                           out = std::move(quantized->second);
                           quantized->second = {};
                         }});
    }
  }
  auto rank = [](const std::string& d) { return d == "F32" ? 0 : (d == "F16" || d == "BF16") ? 1 : 2; };
  std::stable_sort(entries.begin(), entries.end(),
                   [&](const st_entry& x, const st_entry& y) { return rank(x.dtype) < rank(y.dtype); });
  prepare_out(a, true);
  for (const auto& e : fs::directory_iterator(a.model)) {
    const std::string fn = e.path().filename().string();
    if (!e.is_regular_file() || e.path().extension() == ".safetensors" || fn == "model.safetensors.index.json" ||
        fn == "config.json") {
      continue;
    }
    const fs::path dst = fs::path(a.out) / fn;
    fs::copy_file(e.path(), dst, fs::copy_options::overwrite_existing);
    fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  }
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(read_text_file(a.model + "/config.json"));
  cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                {"weight_block_size", {B, B}}};
  {
    std::ofstream out(a.out + "/config.json");
    out << cfg.dump(2) << "\n";
    if (!out) throw error(errc::invalid_argument, a.out + "/config.json: write failed");
  }
  safetensors_writer w;
  for (auto& e : entries) w.add(e.name, e.dtype, e.shape);
  w.set_metadata("format", "pt");
  w.write(a.out + "/model.safetensors", [&](std::size_t i, std::vector<std::uint8_t>& out) { entries[i].fill(out); });
}

// ---- GGUF Q8_0 / Q4_0 ---------------------------------------------------------------------------

void write_gguf(const job& a, const model& m) {
  const std::string& ty = a.opts.type;
  const dtype target = ty == "q8_0" ? dtype::q8_0 : ty == "q4_0" ? dtype::q4_0 : ty == "f16" ? dtype::f16
                       : ty == "bf16" ? dtype::bf16 : dtype::f32;
  const auto& c = m.config();
  const auto& W = m.weights();
  gguf_writer w;
  // LLAMA_FTYPE: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7, MOSTLY_BF16 32.
  const std::uint32_t file_type = target == dtype::q8_0 ? 7 : target == dtype::q4_0 ? 2 : target == dtype::f16 ? 1
                                  : target == dtype::bf16 ? 32 : 0;
  if (c.format == "gguf") {
    const gguf_file src(a.model);
    for (const auto& [k, v] : src.metadata()) w.set(k, v);
    w.set_u32("general.file_type", file_type);
    w.set_u32("general.quantization_version", 2);
    // deepseek2 is always written in the current MLA layout (attn_k_b/attn_v_b), whichever the
    // source used: its architecture keys are rewritten to match.
    if (c.family == model_family::deepseek) {
      add_gguf_arch_metadata(w, c, src.get_string_opt("general.name").value_or(fs::path(a.model).stem().string()),
                             file_type);
    }
  } else {
    add_gguf_arch_metadata(w, c, fs::path(a.model).filename().string(), file_type);
    nlohmann::json tj = nlohmann::json::parse(read_text_file(a.model + "/tokenizer.json"));
    add_gguf_tokenizer_metadata(w, tj, m.tok(), c.bos_id, c.eos_ids);
  }
  // HF Llama rows are permuted for rotate-half RoPE; GGUF `llama` keeps interleaved pairs.
  const bool permute = gguf_architecture(c) == "llama" && c.rope_style == kernels::rope_style::neox;

  struct entry {
    std::function<void(std::vector<std::uint8_t>&)> fill;
  };
  std::vector<entry> fills;
  auto add_vector = [&](const std::string& name, std::vector<float> v) {
    if (v.empty()) return;
    w.add_tensor(name, ggml_type::f32, {static_cast<std::int64_t>(v.size())});
    fills.push_back({[v = std::move(v)](std::vector<std::uint8_t>& out) {
      out.resize(v.size() * 4);
      std::memcpy(out.data(), v.data(), out.size());
    }});
  };
  auto add_matrix = [&](const std::string& name, const kernels::matrix& src,
                        std::vector<std::int64_t> rows) {
    dtype t = target;
    if (src.cols % dtype_block_size(target) != 0) {
      t = fallback_type(src, true);
      ++a.report->kept;
      // llama.cpp's llama-quantize has no fallback for Q8_0/Q4_0 and refuses such a tensor.
      a.report->notes.push_back(
          name + " has " + std::to_string(src.cols) + " columns, not a multiple of " +
          std::to_string(dtype_block_size(target)) + ": kept as " + to_string(t));
    } else {
      ++a.report->quantized;
    }
    w.add_tensor(name, ggml_of(t), {src.rows, src.cols});
    fills.push_back({[src, t, rows = std::move(rows)](std::vector<std::uint8_t>& out) {
      const std::int64_t rb = dtype_bytes(t, src.cols);
      out.resize(static_cast<std::size_t>(src.rows * rb));
      std::vector<float> tmp;
      for (std::int64_t r = 0; r < src.rows; ++r) {
        convert_row(src, rows.empty() ? r : rows[r], t, tmp, out.data() + r * rb);
      }
    }});
  };
  auto permuted_vector = [](const std::vector<float>& v, const std::vector<std::int64_t>& rows) {
    if (v.empty() || rows.empty()) return v;
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = v[rows[i]];
    return out;
  };
  const auto q_rows =
      permute ? hf_to_gguf_rope_rows(c.n_heads, c.head_dim) : std::vector<std::int64_t>{};
  const auto k_rows =
      permute ? hf_to_gguf_rope_rows(c.n_kv_heads, c.head_dim) : std::vector<std::int64_t>{};

  // A [count, rows, cols] tensor ([rows, cols] when `flat`) whose matrix i row r is
  // `row_of(i, r, out)` (cols floats).
  auto add_stacked = [&](const std::string& name, std::int64_t count, std::int64_t rows, std::int64_t cols,
                         dtype src_type, std::function<void(std::int64_t, std::int64_t, float*)> row_of,
                         bool flat = false, bool keep_f32 = false) {
    dtype t = target;
    if (keep_f32) {
      t = dtype::f32;
      ++a.report->kept;
    } else if (cols % dtype_block_size(target) != 0) {
      t = src_type == dtype::f16 || src_type == dtype::bf16 ? src_type : dtype::f32;
      ++a.report->kept;
      a.report->notes.push_back(name + " has " + std::to_string(cols) + " columns, not a multiple of " +
                                std::to_string(dtype_block_size(target)) + ": kept as " + to_string(t));
    } else {
      ++a.report->quantized;
    }
    w.add_tensor(name, ggml_of(t), flat ? std::vector<std::int64_t>{rows, cols} : std::vector<std::int64_t>{count, rows, cols});
    fills.push_back({[count, rows, cols, t, row_of = std::move(row_of)](std::vector<std::uint8_t>& out) {
      const std::int64_t rb = dtype_bytes(t, cols);
      out.resize(static_cast<std::size_t>(count * rows * rb));
      std::vector<float> x(static_cast<std::size_t>(cols)), tmp;
      for (std::int64_t i = 0; i < count; ++i) {
        for (std::int64_t r = 0; r < rows; ++r) {
          row_of(i, r, x.data());
          const kernels::matrix one{x.data(), dtype::f32, 1, cols, cols};
          convert_row(one, 0, t, tmp, out.data() + (i * rows + r) * rb);
        }
      }
    }});
  };
  // The router stays F32 (llama.cpp keeps ffn_gate_inp unquantized).
  auto add_f32_matrix = [&](const std::string& name, const kernels::matrix& src) {
    add_stacked(
        name, 1, src.rows, src.cols, dtype::f32,
        [src](std::int64_t, std::int64_t r, float* out) { kernels::dequantize_row(src, r, out); }, true, true);
  };

  add_matrix("token_embd.weight", W.tok_embd.m, {});
  add_vector("output_norm.weight", W.out_norm);
  if (W.lm_head.m.data != W.tok_embd.m.data) add_matrix("output.weight", W.lm_head.m, {});
  auto freq = W.rope_freq_factors.empty() ? gguf_rope_freq_factors(c) : W.rope_freq_factors;
  add_vector("rope_freqs.weight", freq);
  for (std::size_t i = 0; i < W.layers.size() && c.family == model_family::deepseek; ++i) {
    const auto& L = W.layers[i];
    const auto& ml = c.mla;
    const std::int64_t nh = c.n_heads, r = ml.kv_lora_rank, nope = ml.qk_nope_dim, vd = ml.v_head_dim;
    const std::int64_t per_head = nope + vd;
    const std::string p = "blk." + std::to_string(i) + ".";
    add_vector(p + "attn_norm.weight", L.attn_norm);
    if (ml.q_lora_rank > 0) {
      add_matrix(p + "attn_q_a.weight", L.wq_a.m, {});
      add_vector(p + "attn_q_a_norm.weight", L.q_a_norm);
      add_matrix(p + "attn_q_b.weight", L.wq_b.m, {});
    } else {
      add_matrix(p + "attn_q.weight", L.wq.m, {});
    }
    add_matrix(p + "attn_kv_a_mqa.weight", L.wkv_a.m, {});
    add_vector(p + "attn_kv_a_norm.weight", L.kv_a_norm);
    // kv_b_proj split as llama.cpp's converter does: attn_k_b [heads, kv_lora_rank, nope] (each
    // head's key rows transposed) and attn_v_b [heads, v_head_dim, kv_lora_rank].
    const kernels::matrix kv_b = L.wkv_b.m;
    // Rows are asked for head by head: each head's nope x r key block is dequantized once.
    auto block = std::make_shared<std::pair<std::int64_t, std::vector<float>>>(-1, std::vector<float>());
    add_stacked(p + "attn_k_b.weight", nh, r, nope, kv_b.type,
                [kv_b, r, nope, per_head, block](std::int64_t h, std::int64_t j, float* out) {
                  if (block->first != h) {
                    block->second.resize(static_cast<std::size_t>(nope * r));
                    for (std::int64_t k = 0; k < nope; ++k)
                      kernels::dequantize_row(kv_b, h * per_head + k, block->second.data() + k * r);
                    block->first = h;
                  }
                  for (std::int64_t k = 0; k < nope; ++k) out[k] = block->second[k * r + j];
                });
    add_stacked(p + "attn_v_b.weight", nh, vd, r, kv_b.type, [kv_b, nope, per_head](std::int64_t h, std::int64_t v, float* out) {
      kernels::dequantize_row(kv_b, h * per_head + nope + v, out);
    });
    add_matrix(p + "attn_output.weight", L.wo.m, {});
    add_vector(p + "ffn_norm.weight", L.ffn_norm);
    if (L.experts.empty()) {
      add_matrix(p + "ffn_gate.weight", L.w_gate.m, {});
      add_matrix(p + "ffn_up.weight", L.w_up.m, {});
      add_matrix(p + "ffn_down.weight", L.w_down.m, {});
      continue;
    }
    add_f32_matrix(p + "ffn_gate_inp.weight", L.router.m);
    add_vector(p + "exp_probs_b.bias", L.router_bias);
    const std::int64_t E = static_cast<std::int64_t>(L.experts.size());
    const std::vector<mlp_weights>* experts = &L.experts;
    for (const auto& [tname, pick] :
         std::vector<std::pair<std::string, const weight mlp_weights::*>>{
             {"ffn_gate_exps", &mlp_weights::gate}, {"ffn_up_exps", &mlp_weights::up}, {"ffn_down_exps", &mlp_weights::down}}) {
      const kernels::matrix& first = ((*experts)[0].*pick).m;
      add_stacked(p + tname + ".weight", E, first.rows, first.cols, first.type,
                  [experts, pick](std::int64_t e, std::int64_t row, float* out) {
                    kernels::dequantize_row(((*experts)[e].*pick).m, row, out);
                  });
    }
    if (L.shared.gate.m.data) {
      add_matrix(p + "ffn_gate_shexp.weight", L.shared.gate.m, {});
      add_matrix(p + "ffn_up_shexp.weight", L.shared.up.m, {});
      add_matrix(p + "ffn_down_shexp.weight", L.shared.down.m, {});
    }
  }
  for (std::size_t i = 0; i < W.layers.size() && c.family != model_family::deepseek; ++i) {
    const auto& L = W.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    add_vector(p + "attn_norm.weight", L.attn_norm);
    add_matrix(p + "attn_q.weight", L.wq.m, q_rows);
    add_matrix(p + "attn_k.weight", L.wk.m, k_rows);
    add_matrix(p + "attn_v.weight", L.wv.m, {});
    add_vector(p + "attn_q.bias", permuted_vector(L.bq, q_rows));
    add_vector(p + "attn_k.bias", permuted_vector(L.bk, k_rows));
    add_vector(p + "attn_v.bias", L.bv);
    add_matrix(p + "attn_output.weight", L.wo.m, {});
    add_vector(p + "ffn_norm.weight", L.ffn_norm);
    add_matrix(p + "ffn_gate.weight", L.w_gate.m, {});
    add_matrix(p + "ffn_up.weight", L.w_up.m, {});
    add_matrix(p + "ffn_down.weight", L.w_down.m, {});
  }
  prepare_out(a, false);
  w.write(a.out, [&](std::size_t i, std::vector<std::uint8_t>& out) { fills[i].fill(out); });
}

}  // namespace

quantize_report quantize_model(const std::string& model_path, const std::string& out,
                               const quantize_options& opts) {
  quantize_report report;
  const job a{model_path, out, opts, &report};
  const bool hf_out = a.opts.type == "int8" || a.opts.type == "int4";
  const bool fp8 = a.opts.type == "fp8";
  const bool gguf_out = a.opts.type == "q8_0" || a.opts.type == "q4_0" || a.opts.type == "f32" ||
                        a.opts.type == "f16" || a.opts.type == "bf16";
  if (!hf_out && !fp8 && !gguf_out) {
    throw error(errc::invalid_argument,
                "unknown --type '" + a.opts.type + "' (int8, int4, fp8: Hugging Face; q8_0, q4_0, f32, f16, bf16: GGUF)");
  }
  if (a.opts.type == "int4" && (a.opts.group_size <= 0 || a.opts.group_size % 32 != 0)) {
    throw error(errc::invalid_argument, "--group-size " + std::to_string(a.opts.group_size) +
                                            " must be a positive multiple of 32");
  }
  if (a.out.empty()) throw error(errc::invalid_argument, "--out is required");
  std::error_code ec;
  if (fs::exists(a.out, ec) && !a.opts.force) {
    throw error(errc::invalid_argument, a.out + ": already exists (pass --force to overwrite)");
  }
  auto m = model::load(a.model);
  if (m->config().family == model_family::deepseek && hf_out) {
    throw error(errc::unsupported, a.model + ": " + m->config().architecture +
                                       " models are quantized with --type fp8 (their published format) or written to "
                                       "GGUF (q8_0, q4_0, f32, f16, bf16)");
  }
  try {
    if (fp8)
      write_fp8(a, *m);
    else if (hf_out)
      write_hf(a, *m);
    else
      write_gguf(a, *m);
  } catch (const fs::filesystem_error& e) {
    throw error(errc::invalid_argument, a.out + ": " + e.what());
  }
  return report;
}

}  // namespace shoal
