#pragma once
// safetensors reader: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
// Tensors stay in the mapping; every offset is checked against the file before it is exposed.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/common/mapped_file.hpp"

namespace shoal {

struct safetensors_tensor {
  std::string name;
  std::string dtype;                // as written: "F32", "F16", "BF16", "I8", "F8_E4M3", ...
  std::vector<std::int64_t> shape;  // row-major, outermost first
  const std::uint8_t* data = nullptr;
  std::uint64_t nbytes = 0;
};

class safetensors_file {
 public:
  /// Parses and validates the header of `path`; throws shoal::error naming the file and problem.
  explicit safetensors_file(const std::string& path);

  const std::string& path() const { return map_.path(); }
  const std::map<std::string, safetensors_tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  mapped_file map_;
  std::map<std::string, safetensors_tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Bytes per element of a safetensors dtype name; 0 when unknown.
std::size_t safetensors_dtype_size(const std::string& dtype);

}  // namespace shoal

#include <functional>

namespace shoal {

/// Streams a safetensors file: declare every tensor first, then `write` asks for each one's bytes in
/// declaration order, so multi-gigabyte models never sit in memory twice.
class safetensors_writer {
 public:
  void add(std::string name, std::string dtype, std::vector<std::int64_t> shape);
  void set_metadata(std::string key, std::string value) { metadata_.emplace_back(std::move(key), std::move(value)); }
  /// `fill(index, out)` must write exactly the declared byte count of tensor `index` into `out`.
  void write(const std::string& path,
             const std::function<void(std::size_t index, std::vector<std::uint8_t>& out)>& fill) const;

 private:
  struct entry {
    std::string name, dtype;
    std::vector<std::int64_t> shape;
    std::uint64_t nbytes;
  };
  std::vector<entry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace shoal
