#pragma once
// GGUF v2/v3 reader: metadata key/values and tensor descriptors over a memory mapping.
// Every offset and length is checked against the mapping before it is used.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/common/mapped_file.hpp"

namespace shoal {

enum class gguf_type : std::uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

/// One metadata value. Scalars live in `num` (integers and floats alike; exact for the integer
/// ranges GGUF metadata uses) or `str`; arrays in `strs` or `nums` with `elem` giving their type.
struct gguf_value {
  gguf_type type = gguf_type::u32;
  gguf_type elem = gguf_type::u32;  // element type when type == array
  double num = 0;
  std::string str;
  std::vector<std::string> strs;
  std::vector<double> nums;

  bool is_array() const { return type == gguf_type::array; }
  std::size_t array_size() const { return elem == gguf_type::string ? strs.size() : nums.size(); }
};

/// ggml tensor element types that appear in GGUF files (numbering from ggml.h).
enum class ggml_type : std::uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9,
  q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15,
  iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22,
  iq4_xs = 23, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30,
  tq1_0 = 34, tq2_0 = 35, mxfp4 = 39,
};
/// ggml's name for the type ("Q8_0", "IQ4_XS", ...); "unknown" for ids ggml does not define.
const char* to_string(ggml_type t);

struct gguf_tensor_info {
  std::string name;
  ggml_type type = ggml_type::f32;
  std::vector<std::int64_t> ne;   // ggml order: ne[0] is the innermost (contiguous) dimension
  std::uint64_t offset = 0;       // relative to the data section
  std::uint64_t nbytes = 0;
  const std::uint8_t* data = nullptr;  // inside the mapping
};

class gguf_file {
 public:
  /// Parses the header of `path`; throws shoal::error naming the file and the first problem found.
  explicit gguf_file(const std::string& path);

  const std::string& path() const { return map_.path(); }
  std::uint32_t version() const { return version_; }
  const std::map<std::string, gguf_value>& metadata() const { return kv_; }
  const std::vector<gguf_tensor_info>& tensors() const { return tensors_; }

  const gguf_value* find(const std::string& key) const;
  const gguf_tensor_info* find_tensor(const std::string& name) const;

  /// Typed getters: throw shoal::error naming the file and key when missing or mistyped.
  std::string get_string(const std::string& key) const;
  double get_number(const std::string& key) const;
  std::optional<double> get_number_opt(const std::string& key) const;
  std::optional<std::string> get_string_opt(const std::string& key) const;

 private:
  mapped_file map_;
  std::uint32_t version_ = 0;
  std::map<std::string, gguf_value> kv_;
  std::vector<gguf_tensor_info> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

/// Bytes taken by `n` elements of `t` (n must be a multiple of the block size); nullopt when the type
/// is not one this build knows.
std::optional<std::uint64_t> ggml_nbytes(ggml_type t, std::int64_t n);
/// Elements per block (1 for plain floats); 0 for types whose layout this build does not know.
std::int64_t ggml_block_size(ggml_type t);

}  // namespace shoal
