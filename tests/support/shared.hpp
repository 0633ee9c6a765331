#pragma once
// Helpers for tests that read the reference material in ../shared.

#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace shoal::test {

inline std::string shared_dir() {
  if (const char* env = std::getenv("SHOAL_SHARED_DIR")) return env;
  return SHOAL_SHARED_DIR;
}

inline std::string shared_path(const std::string& rel) { return shared_dir() + "/" + rel; }

/// Boost.Test precondition: the test is skipped, with a message naming the path, when the
/// reference file is absent (a user's fresh clone has no ../shared).
struct needs_shared {
  std::string rel;
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result r(std::filesystem::exists(shared_path(rel)));
    if (!r) r.message() << "reference material " << shared_path(rel) << " is missing";
    return r;
  }
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

}  // namespace shoal::test
