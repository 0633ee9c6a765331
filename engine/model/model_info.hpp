#pragma once
// What a serving front end needs to know about a model without mapping its weights: the tokenizer,
// the context length and the end-of-sequence ids.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.hpp"

namespace shoal {

struct model_info {
  std::string architecture;
  std::int64_t context_length = 0;
  std::int64_t vocab_size = 0;
  std::vector<std::int32_t> eos_ids;
};

/// The tokenizer of an HF model directory, a tokenizer-only directory, or a .gguf file.
std::unique_ptr<tokenizer> load_model_tokenizer(const std::string& path);
/// Reads config.json/generation_config.json or GGUF metadata; throws shoal::error naming the file.
model_info read_model_info(const std::string& path);

}  // namespace shoal
