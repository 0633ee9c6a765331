// shoal audit: verify, checkpoint, query and export the tamper-evident audit log; list and lift blocks.
// Reading commands open the database read-only (they work while a node runs); export and unblock
// write an audit record of their own, so they need the node stopped (RocksDB's lock).

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "governance/audit_log.hpp"
#include "governance/auth.hpp"
#include "engine/common/error.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

using governance::audit_filter;
using governance::audit_log;

struct filter_options {
  audit_filter f;
  void add(CLI::App& app) {
    app.add_option("--tenant", f.tenant, "Only records of this tenant (who.tenant)");
    app.add_option("--principal", f.principal, "Only records of this principal (who.principal)");
    app.add_option("--operation", f.operation, "Only this operation (what.operation: generate, export, ...)");
    app.add_option("--kind", f.kind, "Only this kind (request, admin, block)");
    app.add_option("--since", f.since, "From this UTC time, inclusive (2026-11-29, 2026-11-29T12:00:00Z)");
    app.add_option("--until", f.until, "Up to this UTC time, inclusive at the precision given");
    app.add_option("--limit", f.limit, "At most this many records (0: all)");
  }
  nlohmann::json to_json() const {
    nlohmann::json j = nlohmann::json::object();
    if (!f.tenant.empty()) j["tenant"] = f.tenant;
    if (!f.principal.empty()) j["principal"] = f.principal;
    if (!f.operation.empty()) j["operation"] = f.operation;
    if (!f.kind.empty()) j["kind"] = f.kind;
    if (!f.since.empty()) j["since"] = f.since;
    if (!f.until.empty()) j["until"] = f.until;
    if (f.limit != 0) j["limit"] = f.limit;
    return j;
  }
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::not_found, "cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// The admin's name: --by, else $USER (the CLI is where the environment is read).
std::string admin_name(const std::string& by) {
  if (!by.empty()) return by;
  const char* user = std::getenv("USER");
  return user != nullptr && *user != '\0' ? user : "unknown";
}

// Writable open for the commands that append; a held lock means a node has the database.
std::unique_ptr<audit_log> open_for_admin(const std::string& db, const char* command) {
  // A mistyped --db must not create an empty log and audit the export into it.
  if (!std::filesystem::exists(std::filesystem::path(db) / "CURRENT")) {
    throw error(errc::not_found, "audit database " + db + " does not exist");
  }
  try {
    return audit_log::open(db, false);
  } catch (const error& e) {
    if (e.code() != errc::unavailable || std::string(e.what()).find("locked") == std::string::npos) throw;
    throw error(errc::unavailable, std::string(e.what()) + "\n`shoal audit " + command +
                                       "` appends an audit record and needs write access: stop the node, or " +
                                       (std::string(command) == "export" ? "export" : "unblock") +
                                       " through the node");
  }
}

nlohmann::json admin_record(const std::string& by, const std::string& operation) {
  return {{"kind", "admin"},
          {"who", {{"principal", by}, {"role", "admin"}}},
          {"what", {{"operation", operation}}},
          {"where", {{"node", host_name()}, {"client", "shoal audit (command line)"}}},
          {"how", {{"method", "cli"}}},
          {"outcome", {{"status", "ok"}}},
          {"when", {{"start", governance::utc_now_iso()}}}};
}

}  // namespace

runner_fn add_audit(CLI::App& app) {
  app.require_subcommand(1);
  struct state {
    std::string db, checkpoint, key, trusted_key, out, by, principal;
    filter_options filters;
  };
  auto s = std::make_shared<state>();

  auto* verify = app.add_subcommand("verify", "Walk the hash chain and report the first bad record");
  verify->add_option("--db", s->db, "Audit database directory")->required();
  verify->add_option("--checkpoint", s->checkpoint, "A signed head (from `shoal audit checkpoint`) the chain must reach");
  verify->add_option("--key", s->trusted_key, "Require the checkpoint to be signed by this key file's key");

  auto* checkpoint = app.add_subcommand("checkpoint", "Sign the current head (seq and hash) with an Ed25519 key");
  checkpoint->add_option("--db", s->db, "Audit database directory")->required();
  checkpoint->add_option("--key", s->key, "Secret key file (created, mode 0600, when absent)")->required();
  checkpoint->add_option("--out", s->out, "Write the checkpoint here (default: stdout)");

  auto* query = app.add_subcommand("query", "Print matching records as JSON lines");
  query->add_option("--db", s->db, "Audit database directory")->required();
  s->filters.add(*query);

  auto* exp = app.add_subcommand("export", "Write matching records as JSON lines to a file (itself audited)");
  exp->add_option("--db", s->db, "Audit database directory")->required();
  exp->add_option("--out", s->out, "Output file (JSON lines)")->required();
  exp->add_option("--by", s->by, "Who exports (default: $USER)");
  s->filters.add(*exp);

  auto* blocks = app.add_subcommand("blocks", "List the principals blocked by alert rules");
  blocks->add_option("--db", s->db, "Audit database directory")->required();

  auto* unblock = app.add_subcommand("unblock", "Lift a principal's block (itself audited)");
  unblock->add_option("--db", s->db, "Audit database directory")->required();
  unblock->add_option("--principal", s->principal, "The blocked principal")->required();
  unblock->add_option("--by", s->by, "Who lifts the block (default: $USER)");

  return [=]() -> int {
    if (verify->parsed()) {
      auto log = audit_log::open(s->db, true);
      std::optional<governance::audit_checkpoint> cp;
      if (!s->checkpoint.empty()) {
        nlohmann::json j = nlohmann::json::parse(read_text(s->checkpoint), nullptr, false);
        if (j.is_discarded()) throw error(errc::invalid_argument, "checkpoint " + s->checkpoint + " is not JSON");
        cp = governance::checkpoint_from_json(j);
      }
      std::string trusted;
      if (!s->trusted_key.empty()) trusted = governance::checkpoint_public_key(s->trusted_key);
      auto r = log->verify(cp ? &*cp : nullptr, trusted);
      if (!r.ok) {
        if (r.first_bad_seq == 0) std::cout << "FAILED: " << r.problem << "\n";
        else std::cout << "FAILED at seq " << r.first_bad_seq << ": " << r.problem << "\n";
        return 1;
      }
      std::cout << "ok: " << r.records << " records, head seq " << r.head_seq << " hash " << r.head_hash << "\n";
      if (cp) std::cout << "checkpoint: seq " << cp->seq << " signed " << cp->created << " by " << cp->public_key << ": reached\n";
      return 0;
    }
    if (checkpoint->parsed()) {
      auto log = audit_log::open(s->db, true);
      auto text = governance::to_json(governance::make_checkpoint(*log, s->key)).dump(2) + "\n";
      if (s->out.empty()) {
        std::cout << text;
      } else {
        std::ofstream out(s->out, std::ios::binary | std::ios::trunc);
        out << text;
        out.flush();
        if (!out) throw error(errc::unavailable, "cannot write " + s->out);
      }
      return 0;
    }
    if (query->parsed()) {
      auto log = audit_log::open(s->db, true);
      log->query(s->filters.f, [](const nlohmann::json& rec) {
        std::cout << rec.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      });
      return 0;
    }
    if (exp->parsed()) {
      auto log = open_for_admin(s->db, "export");
      std::string lines;
      std::uint64_t count = 0;
      log->query(s->filters.f, [&](const nlohmann::json& rec) {
        lines += rec.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        lines += '\n';
        ++count;
      });
      {
        std::ofstream out(s->out, std::ios::binary | std::ios::trunc);
        out << lines;
        out.flush();
        if (!out) throw error(errc::unavailable, "cannot write " + s->out);
      }
      auto rec = admin_record(admin_name(s->by), "export");
      rec["what"]["filters"] = s->filters.to_json();
      rec["what"]["count"] = count;
      rec["what"]["output"] = {{"file", s->out}, {"sha256", governance::sha256_hex(lines)}, {"bytes", lines.size()}};
      rec["when"]["end"] = governance::utc_now_iso();
      auto stored = log->append(std::move(rec));
      std::cerr << "exported " << count << " records to " << s->out << "; audited as seq " << stored["seq"] << "\n";
      return 0;
    }
    if (blocks->parsed()) {
      auto log = audit_log::open(s->db, true);
      for (auto& [principal, info] : log->blocks()) {
        std::cout << nlohmann::json{{"principal", principal}, {"block", info}}.dump() << "\n";
      }
      return 0;
    }
    if (unblock->parsed()) {
      auto log = open_for_admin(s->db, "unblock");
      auto all = log->blocks();
      auto it = all.find(s->principal);
      if (it == all.end()) throw error(errc::not_found, "principal '" + s->principal + "' is not blocked");
      auto rec = admin_record(admin_name(s->by), "unblock");
      rec["what"]["target"] = s->principal;
      rec["what"]["block"] = it->second;
      rec["when"]["end"] = governance::utc_now_iso();
      auto stored = log->append_and_clear_block(std::move(rec), s->principal);
      std::cout << "unblocked " << s->principal << "; audited as seq " << stored["seq"] << "\n";
      return 0;
    }
    return 2;
  };
}

}  // namespace shoal::cli
