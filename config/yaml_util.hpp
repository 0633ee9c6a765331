#pragma once
// Typed reads from yaml-cpp nodes with errors that name the file and the key (config parsing only).

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "engine/common/error.hpp"

namespace shoal::config::yaml {

template <class T>
T get(const YAML::Node& n, const char* key, T fallback, const std::string& where) {
  if (!n[key]) return fallback;
  try {
    return n[key].as<T>();
  } catch (const YAML::Exception&) {
    throw error(errc::invalid_argument, where + ": '" + key + "' has the wrong type");
  }
}

inline std::vector<std::string> get_list(const YAML::Node& n, const char* key, const std::string& where) {
  std::vector<std::string> out;
  if (!n[key]) return out;
  if (!n[key].IsSequence()) throw error(errc::invalid_argument, where + ": '" + key + "' must be a list");
  for (const auto& v : n[key]) out.push_back(v.as<std::string>());
  return out;
}

}  // namespace shoal::config::yaml
