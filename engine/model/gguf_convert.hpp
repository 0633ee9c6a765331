#pragma once
// Hugging Face -> GGUF: the metadata a GGUF file needs so gguf_file + model::load read back the
// same model and tokenizer (architecture keys, RoPE scaling, tokenizer.ggml.*), and the tensor
// names and row order GGUF uses. `shoal quantize` (GGUF output) and `shoal make-model --format
// gguf` use it.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/model/gguf_writer.hpp"
#include "engine/model/model.hpp"

namespace shoal {

/// GGUF architecture name for a config ("llama", "qwen2"); throws errc::unsupported otherwise.
std::string gguf_architecture(const model_config& cfg);

/// general.* and {arch}.* keys for `cfg` (llama.cpp's names). `file_type` is llama.cpp's
/// LLAMA_FTYPE (0 all F32, 1 mostly F16, 2 mostly Q4_0, 7 mostly Q8_0, 32 mostly BF16).
/// Throws errc::unsupported for RoPE scaling GGUF cannot express (YaRN with non-default betas).
void add_gguf_arch_metadata(gguf_writer& w, const model_config& cfg, const std::string& name,
                            std::uint32_t file_type);

/// Per-pair RoPE frequency divisors for GGUF's rope_freqs.weight: Llama 3 scaling (which GGUF
/// stores as a tensor, as llama.cpp's converter does); empty when none is needed.
std::vector<float> gguf_rope_freq_factors(const model_config& cfg);

/// tokenizer.ggml.* keys equivalent to a Hugging Face tokenizer.json, with BOS/EOS/add_bos/
/// add_eos/chat template taken from the loaded tokenizer `tok` (which resolved tokenizer_config).
/// SentencePiece-style BPE becomes model "llama" with scores from merge ranks (the token the
/// k-th merge first produces scores -k, so GGUF's highest-score-first merging follows HF's
/// lowest-rank-first order); byte-level BPE becomes model "gpt2" with the merges and a
/// tokenizer.ggml.pre name recognized from the pre-tokenizer's regexes.
/// `eos_ids` (the model's, first is EOS; a second becomes tokenizer.ggml.eot_token_id).
void add_gguf_tokenizer_metadata(gguf_writer& w, const nlohmann::json& tokenizer_json,
                                 const tokenizer& tok, std::int32_t bos_id,
                                 const std::vector<std::int32_t>& eos_ids);

/// HF row permutation for q/k projections of a GGUF `llama` file: GGUF keeps Meta's interleaved
/// RoPE pairs (2i, 2i+1) where HF stores rotate-half pairs (i, i + d/2). Returns, for GGUF row g,
/// the HF row to read (llama.cpp convert_hf_to_gguf's LlamaModel.permute).
std::vector<std::int64_t> hf_to_gguf_rope_rows(std::int64_t n_heads, std::int64_t head_dim);

}  // namespace shoal
