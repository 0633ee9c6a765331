#include "actors/auditor.hpp"

#include <nlohmann/json.hpp>

#include <memory>

#include "actors/errors.hpp"
#include "engine/common/error.hpp"
#include "governance/audit_log.hpp"

namespace shoal::actors {

using governance::audit_filter;
using governance::audit_log;

namespace {

nlohmann::json parse_object(const std::string& text, const char* what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw error(errc::invalid_argument, std::string(what) + " is not a JSON object");
  return j;
}

// A failed write or a bad record is an error answer to the one caller, never the auditor's end;
// it keeps its code (a bad filter is invalid_argument, a failed write whatever the store said).
template <class T, class F>
caf::result<T> guarded(F&& f) {
  try {
    return f();
  } catch (const error& e) {
    return make_error(e.code(), std::string("audit store: ") + e.what());
  } catch (const std::exception& e) {
    return make_error(errc::internal, std::string("audit store: ") + e.what());
  }
}

auditor_actor::behavior_type auditor(auditor_actor::pointer self, std::shared_ptr<audit_log> log) {
  (void)self;
  return {
      [=](audit_atom, const std::string& record) -> caf::result<std::uint64_t> {
        return guarded<std::uint64_t>(
            [&] { return log->append(parse_object(record, "audit record")).at("seq").get<std::uint64_t>(); });
      },
      [=](query_atom, const std::string& filter) -> caf::result<std::vector<std::string>> {
        return guarded<std::vector<std::string>>([&] {
        auto j = parse_object(filter, "audit filter");
        audit_filter f;
        f.tenant = j.value("tenant", "");
        f.principal = j.value("principal", "");
        f.operation = j.value("operation", "");
        f.kind = j.value("kind", "");
        f.since = j.value("since", "");
        f.until = j.value("until", "");
        f.limit = j.value("limit", std::uint64_t{0});
        std::vector<std::string> out;
        log->query(f, [&](const nlohmann::json& r) { out.push_back(r.dump()); });
        return out;
        });
      },
      [=](block_atom, const std::string& principal, const std::string& info,
          const std::string& record) -> caf::result<std::uint64_t> {
        return guarded<std::uint64_t>([&] {
          return log->append_and_set_block(parse_object(record, "audit record"), principal, parse_object(info, "block info"))
              .at("seq")
              .get<std::uint64_t>();
        });
      },
      [=](unblock_atom, const std::string& principal, const std::string& record) -> caf::result<std::uint64_t> {
        return guarded<std::uint64_t>([&] {
          return log->append_and_clear_block(parse_object(record, "audit record"), principal).at("seq").get<std::uint64_t>();
        });
      },
      [=](blocks_atom) -> caf::result<std::vector<std::string>> {
        return guarded<std::vector<std::string>>([&] {
        std::vector<std::string> out;
        for (const auto& [p, info] : log->blocks()) {
          auto j = info;
          j["principal"] = p;
          out.push_back(j.dump());
        }
        return out;
        });
      },
  };
}

}  // namespace

auditor_actor spawn_auditor(caf::actor_system& sys, const std::string& path) {
  std::shared_ptr<audit_log> log = audit_log::open(path);
  return sys.spawn<caf::detached>(auditor, std::move(log));
}

}  // namespace shoal::actors
