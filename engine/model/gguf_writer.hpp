#pragma once
// GGUF v3 writer: metadata key/values, tensor descriptors, then tensor data, streamed tensor by
// tensor so a multi-gigabyte model is never held in memory twice. What `shoal quantize` and
// `shoal make-model --format gguf` write; gguf_file reads it back.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/model/gguf.hpp"

namespace shoal {

class gguf_writer {
 public:
  /// Sets `key` (replacing an earlier value in place, so key order stays the order of first set).
  void set(const std::string& key, gguf_value v);
  void set_string(const std::string& key, std::string v);
  void set_u32(const std::string& key, std::uint32_t v);
  void set_i32(const std::string& key, std::int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_strings(const std::string& key, std::vector<std::string> v);
  void set_f32s(const std::string& key, const std::vector<float>& v);
  void set_i32s(const std::string& key, const std::vector<std::int32_t>& v);
  void erase(const std::string& key);
  bool has(const std::string& key) const;

  /// Declares a tensor; `shape` outermost first (as PyTorch and model_weights list it; the file
  /// stores ggml's innermost-first order). Tensors are written in declaration order.
  void add_tensor(std::string name, ggml_type type, std::vector<std::int64_t> shape);
  std::size_t tensor_count() const { return tensors_.size(); }

  /// Writes `path`. `fill(index, out)` must produce exactly tensor `index`'s bytes (its row count
  /// times the ggml row size of its type). Throws shoal::error naming the path on I/O failure.
  void write(
      const std::string& path,
      const std::function<void(std::size_t index, std::vector<std::uint8_t>& out)>& fill) const;

  /// Alignment of the data section and of every tensor in it. Default: 32 (ggml's).
  static constexpr std::uint64_t alignment = 32;

 private:
  struct tensor {
    std::string name;
    ggml_type type;
    std::vector<std::int64_t> shape;
    std::uint64_t nbytes;
  };
  std::vector<std::pair<std::string, gguf_value>> kv_;
  std::vector<tensor> tensors_;
};

}  // namespace shoal
