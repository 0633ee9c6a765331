#include "actors/admin_operation.hpp"

#include <chrono>
#include <memory>
#include <vector>

#include "actors/errors.hpp"
#include "governance/audit_log.hpp"
#include "telemetry/log.hpp"

namespace shoal::actors {

namespace {

using json = nlohmann::json;
using governance::record_text;

admin_operation_actor::behavior_type admin_operation(admin_operation_actor::pointer self, admin_context ctx) {
  return {
      [=](admin_atom, const admin_request& req) -> caf::result<admin_result> {
        auto rp = self->make_response_promise<admin_result>();
        auto deliver = [=](admin_result res) mutable {
          rp.deliver(std::move(res));
          self->quit();
        };
        // Success: the operation's record first, then the answer.
        auto done = [=](std::vector<std::string> lines, json extra) mutable {
          auto r = ctx.record;
          r["when"]["end"] = governance::utc_now_iso();
          r["outcome"] = json{{"status", "ok"}};
          if (extra.is_object()) r["outcome"].update(extra);
          admin_result res;
          res.ok = true;
          res.lines = std::move(lines);
          if (!ctx.auditor) return deliver(std::move(res));
          self->request(ctx.auditor, std::chrono::seconds(30), audit_atom::value, record_text(r))
              .then([=](std::uint64_t) mutable { deliver(res); },
                    [=](caf::error& e) mutable {
                      deliver(admin_refusal(errc::unavailable, "the audit record could not be written: " +
                                                                   read_error(e, "the audit store").message));
                    });
        };
        // A failed operation is audited too (every admin operation is), with its code and the
        // message masked (a store's complaint may quote the filter). The answer is the failure
        // either way: should that record fail as well, the caller still learns why.
        auto failed = [=](errc code, std::string message) mutable {
          if (!ctx.auditor) return deliver(admin_refusal(code, std::move(message)));
          auto r = ctx.record;
          r["when"]["end"] = governance::utc_now_iso();
          if (req.op == "unblock") r["target"] = ctx.target;
          // 1 KiB of message, as the router keeps for refusals.
          const std::string masked =
              ctx.masker ? governance::mask_capped(*ctx.masker, message, 1024) : std::string();
          r["outcome"] = json{{"status", "error"}, {"error_code", to_string(code)}, {"message", masked}};
          const admin_result res = admin_refusal(code, std::move(message));
          self->request(ctx.auditor, std::chrono::seconds(30), audit_atom::value, record_text(r))
              .then([=](std::uint64_t) mutable { deliver(res); },
                    [=](caf::error& e) mutable {
                      log::error("admin operation: its audit record could not be written: {}",
                                 read_error(e, "the audit store").message);
                      deliver(res);
                    });
        };
        auto fail = [=](const std::string& peer) {
          return [=](caf::error& e) mutable {
            const auto why = read_error(e, peer);
            failed(why.code, why.message);
          };
        };
        if (req.op == "purge_cache") {
          if (!ctx.cache) {
            done({}, json{{"removed", 0}});
            return rp;
          }
          self->request(ctx.cache, std::chrono::seconds(60), purge_atom::value, req.tenant)
              .then([=](std::int64_t n) mutable { done({record_text(json{{"removed", n}})}, json{{"removed", n}}); },
                    fail("the answer cache"));
          return rp;
        }
        if (!ctx.auditor) {
          deliver(admin_refusal(errc::unavailable, "this cluster keeps no audit log"));
          return rp;
        }
        if (req.op == "query" || req.op == "export") {
          self->request(ctx.auditor, std::chrono::seconds(60), query_atom::value, record_text(ctx.filter))
              .then(
                  [=](std::vector<std::string>& lines) mutable {
                    const auto n = lines.size();
                    done(std::move(lines), json{{"records", n}});
                  },
                  fail("the audit store"));
        } else if (req.op == "blocks") {
          self->request(ctx.auditor, std::chrono::seconds(60), blocks_atom::value)
              .then([=](std::vector<std::string>& lines) mutable { done(std::move(lines), json::object()); },
                    fail("the audit store"));
        } else {  // unblock: this records it, and the router lifts the block once it is durable
          const std::string target = req.principal;
          auto r = ctx.record;
          r["when"]["end"] = governance::utc_now_iso();
          r["target"] = ctx.target;
          r["outcome"] = json{{"status", "ok"}};
          self->request(ctx.auditor, std::chrono::seconds(30), unblock_atom::value, target, record_text(r))
              .then(
                  [=](std::uint64_t) mutable {
                    admin_result res;
                    res.ok = true;
                    res.lines = {record_text(json{{"unblocked", target}})};
                    deliver(std::move(res));
                  },
                  fail("the audit store"));
        }
        return rp;
      },
  };
}

}  // namespace

admin_operation_actor spawn_admin_operation(caf::actor_system& sys, admin_context ctx) {
  return sys.spawn(admin_operation, std::move(ctx));
}

admin_result admin_refusal(errc code, std::string message) {
  admin_result r;
  r.error_code = to_string(code);
  r.error_message = std::move(message);
  return r;
}

}  // namespace shoal::actors
