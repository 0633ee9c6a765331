// The public `model` class: pick the format from the path, load it, attach the tokenizer, and
// finish (RoPE tables, BOS/EOS fallbacks, the parameter count). Each format's loading lives in its
// own file; load_internal.hpp lists them.

#include "engine/model/model.hpp"

#include <filesystem>

#include "engine/common/error.hpp"
#include "engine/model/gguf.hpp"         // complete types for ~model
#include "engine/model/safetensors.hpp"  // complete types for ~model

namespace fs = std::filesystem;

namespace shoal {

model::~model() = default;

std::unique_ptr<model> model::load(const std::string& path, const load_options& opts) {
  std::unique_ptr<model> m(new model());
  m->path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw error(errc::not_found, path + ": no such file or directory");
  if (fs::is_directory(path, ec)) {
    m->load_hf(path);
    std::string tok_dir = opts.tokenizer_dir.empty() ? path : opts.tokenizer_dir;
    m->tokenizer_ = tokenizer::from_hf_dir(tok_dir);
  } else {
    m->load_gguf(path);
    if (!opts.tokenizer_dir.empty()) {
      m->tokenizer_ = tokenizer::from_hf_dir(opts.tokenizer_dir);
    } else {
      m->tokenizer_ = tokenizer::from_gguf(*m->gguf_);
    }
  }
  m->finish();
  return m;
}

void model::finish() {
  auto& cfg = config_;
  const std::string where = path_;
  if (cfg.n_heads % cfg.n_kv_heads != 0) {
    throw error(errc::corrupt_file, where + ": " + std::to_string(cfg.n_heads) + " attention heads are not a multiple of " +
                                        std::to_string(cfg.n_kv_heads) + " key/value heads");
  }
  if (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2 != 0) {
    throw error(errc::corrupt_file, where + ": rotary dimension " + std::to_string(cfg.rope_dim) +
                                        " does not fit head_dim " + std::to_string(cfg.head_dim));
  }
  if ((cfg.rope_scaling.type == "llama3" || cfg.rope_scaling.type == "yarn") &&
      cfg.rope_scaling.original_max_positions <= 0) {
    cfg.rope_scaling.original_max_positions = cfg.max_positions;
  }
  rope_inv_freq_ = rope_inverse_frequencies(cfg.rope_theta, cfg.rope_dim, cfg.rope_scaling, rope_attn_factor_);
  if (!weights_.rope_freq_factors.empty()) {
    for (std::size_t i = 0; i < rope_inv_freq_.size(); ++i) rope_inv_freq_[i] /= weights_.rope_freq_factors[i];
  }
  if (cfg.bos_id < 0) cfg.bos_id = tokenizer_->bos_id();
  if (cfg.eos_ids.empty() && tokenizer_->eos_id() >= 0) cfg.eos_ids.push_back(tokenizer_->eos_id());
  if (tokenizer_->vocab_size() > cfg.vocab_size) {
    throw error(errc::corrupt_file, where + ": the tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                                        " ids but the embedding only " + std::to_string(cfg.vocab_size) + " rows");
  }
  parameter_count_ = 0;
  for (auto& t : tensors_) {
    const bool scale = !hf_quant_method_.empty() && t.name.size() > 6 &&
                       t.name.compare(t.name.size() - 6, 6, "_scale") == 0;
    const bool scale_inv = t.name.size() > 10 && t.name.compare(t.name.size() - 10, 10, "_scale_inv") == 0;
    if (scale || scale_inv) continue;  // quantization metadata, not parameters
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    if (hf_quant_method_ == "shoal-int4" && t.dtype == "U8") n *= 2;  // two 4-bit values per byte
    parameter_count_ += n;
  }
}

}  // namespace shoal
