#pragma once
// A scratch directory removed at the end of the test.

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace shoal::test {

class temp_dir {
 public:
  temp_dir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("shoal-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

  void write(const std::string& rel, const std::string& content) const {
    std::filesystem::create_directories((path_ / rel).parent_path());
    std::ofstream out(path_ / rel, std::ios::binary | std::ios::trunc);
    out << content;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace shoal::test
