#include "governance/settings.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "governance/auth.hpp"
#include "config/yaml_util.hpp"
#include "engine/common/error.hpp"

namespace shoal::governance {

using config::yaml::get;
using config::yaml::get_list;

governance_spec governance_spec::from_yaml(const YAML::Node& root, const std::string& file) {
  governance_spec g;
  auto fail = [&](const std::string& what) { throw error(errc::invalid_argument, file + ": " + what); };
  if (const auto c = root["cache"]) {
    const std::string where = file + " cache";
    g.cache.enabled = get<bool>(c, "enabled", g.cache.enabled, where);
    g.cache.path = get<std::string>(c, "path", g.cache.path, where);
    g.cache.ttl_seconds = get<std::int64_t>(c, "ttl_seconds", g.cache.ttl_seconds, where);
    g.cache.max_bytes = get<std::int64_t>(c, "max_bytes", g.cache.max_bytes, where);
    g.cache.key_file = get<std::string>(c, "key_file", "", where);
    g.cache.key_env = get<std::string>(c, "key_env", "", where);
    if (g.cache.ttl_seconds <= 0) fail("cache: 'ttl_seconds' must be positive");
    if (g.cache.max_bytes <= 0) fail("cache: 'max_bytes' must be positive");
  }
  if (const auto a = root["audit"]) g.audit.path = get<std::string>(a, "path", g.audit.path, file + " audit");
  if (const auto al = root["alerts"]) {
    if (!al.IsSequence()) fail("'alerts' must be a list of rules");
    for (const auto& r : al) {
      alert_rule rule;
      rule.name = get<std::string>(r, "name", "", file + " alerts");
      if (rule.name.empty()) fail("an alert rule has no name");
      const std::string where = file + " alert '" + rule.name + "'";
      rule.kind = get<std::string>(r, "kind", "", where);
      if (rule.kind != "operations" && rule.kind != "output_tokens" && rule.kind != "miss_probes") {
        fail("alert '" + rule.name + "': kind must be operations, output_tokens or miss_probes (got '" + rule.kind + "')");
      }
      rule.tenant = get<std::string>(r, "tenant", "", where);
      rule.operations = get_list(r, "operations", where);
      rule.max = get<std::int64_t>(r, "max", 0, where);
      rule.window_seconds = get<std::int32_t>(r, "window_seconds", 60, where);
      rule.baseline_factor = get<double>(r, "baseline_factor", 0.0, where);
      rule.prefix_chars = get<std::int32_t>(r, "prefix_chars", 32, where);
      if (rule.window_seconds <= 0) fail("alert '" + rule.name + "': 'window_seconds' must be positive");
      if (rule.max <= 0 && rule.baseline_factor <= 0) fail("alert '" + rule.name + "': give 'max' (> 0) or 'baseline_factor'");
      if (rule.kind == "operations" && rule.operations.empty()) fail("alert '" + rule.name + "': list the 'operations' it counts");
      if (rule.kind == "miss_probes" && rule.prefix_chars <= 0) fail("alert '" + rule.name + "': 'prefix_chars' must be positive");
      g.alerts.push_back(rule);
    }
  }
  if (const auto p = root["pii"]) {
    const std::string where = file + " pii";
    g.pii.phones = get<bool>(p, "phones", true, where);
    g.pii.id_cards = get<bool>(p, "id_cards", true, where);
    g.pii.bank_cards = get<bool>(p, "bank_cards", true, where);
    g.pii.emails = get<bool>(p, "emails", true, where);
    g.pii.ips = get<bool>(p, "ips", true, where);
    if (const auto cs = p["custom"]) {
      if (!cs.IsSequence()) fail("pii: 'custom' must be a list of {name, regex, placeholder}");
      for (const auto& c : cs) {
        governance::custom_pattern cp;
        cp.name = get<std::string>(c, "name", "", where);
        cp.regex = get<std::string>(c, "regex", "", where);
        cp.placeholder = get<std::string>(c, "placeholder", "", where);
        g.pii.custom.push_back(cp);
      }
    }
    try {
      governance::masker check(g.pii);  // compile now: a bad pattern is a config error, not a runtime one
    } catch (const error& e) {
      fail(std::string("pii: ") + e.what());
    }
  }
  return g;
}

std::string resolve_data_path(const std::string& data_dir, const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.is_absolute() || data_dir.empty()) return p.string();
  return (fs::path(data_dir) / p).string();
}

std::string model_fingerprint(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::ostringstream id;
  std::error_code ec;
  auto add_file = [&](const fs::path& f) {
    id << f.filename().string() << ':' << fs::file_size(f, ec) << ':'
       << fs::last_write_time(f, ec).time_since_epoch().count() << '\n';
  };
  if (fs::is_directory(model_path, ec)) {
    std::ifstream cfg(fs::path(model_path) / "config.json", std::ios::binary);
    id << cfg.rdbuf() << '\n';
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(model_path, ec)) {
      const auto ext = e.path().extension().string();
      if (ext == ".safetensors" || ext == ".bin" || ext == ".gguf") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) add_file(f);
  } else {
    std::ifstream in(model_path, std::ios::binary);
    std::string head(4096, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    id << head << '\n';
    add_file(model_path);
  }
  return sha256_hex(id.str());
}

}  // namespace shoal::governance
