#pragma once
// A read-only memory mapping of a whole file. Weights are used in place from the mapping.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace shoal {

class mapped_file {
 public:
  /// Maps `path` read-only; throws shoal::error naming the path when it cannot.
  explicit mapped_file(const std::string& path);
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& other) noexcept;
  mapped_file& operator=(mapped_file&& other) noexcept;
  ~mapped_file();

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Reads a whole (small) file into a string; throws shoal::error naming the path.
std::string read_text_file(const std::string& path);

}  // namespace shoal
