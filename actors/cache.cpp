#include "actors/cache.hpp"
#include "telemetry/log.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "governance/answer_cache.hpp"
#include "engine/common/error.hpp"

namespace shoal::actors {

using governance::answer_cache;
using governance::cached_answer;
using governance::cached_answer_from_json;
using governance::to_json_text;

namespace {

std::int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct cache_metrics {
  explicit cache_metrics(prometheus::Registry& r)
      : hits(prometheus::BuildCounter().Name("shoal:cache_hits_total").Help("Answer cache hits").Register(r)),
        misses(prometheus::BuildCounter().Name("shoal:cache_misses_total").Help("Answer cache misses").Register(r)),
        evictions(prometheus::BuildCounter()
                      .Name("shoal:cache_evictions_total")
                      .Help("Answer cache entries evicted by the size limit")
                      .Register(r)),
        stores(prometheus::BuildCounter().Name("shoal:cache_stores_total").Help("Answers stored").Register(r)),
        bytes(prometheus::BuildGauge()
                  .Name("shoal:cache_bytes")
                  .Help("Bytes of keys and values in the answer cache")
                  .Register(r)
                  .Add({})),
        entries(prometheus::BuildGauge().Name("shoal:cache_entries").Help("Answers in the cache").Register(r).Add({})) {}
  prometheus::Family<prometheus::Counter>& hits;
  prometheus::Family<prometheus::Counter>& misses;
  prometheus::Family<prometheus::Counter>& evictions;
  prometheus::Family<prometheus::Counter>& stores;
  prometheus::Gauge& bytes;
  prometheus::Gauge& entries;
};

struct cache_state {
  cache_state() = default;  // not an aggregate (see router.cpp's tracker_state)
  std::shared_ptr<answer_cache> store;
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<cache_metrics> metrics;
  static inline const char* name = "cache";

  void update_sizes() {
    if (!metrics) return;
    auto c = store->counts();
    metrics->bytes.Set(static_cast<double>(c.bytes));
    metrics->entries.Set(static_cast<double>(c.entries));
  }
};

cache_actor::behavior_type cache(cache_actor::stateful_pointer<cache_state> self, std::shared_ptr<answer_cache> store,
                                 std::shared_ptr<prometheus::Registry> registry) {
  self->state.store = std::move(store);
  self->state.registry = registry;
  if (registry) self->state.metrics = std::make_unique<cache_metrics>(*registry);
  self->state.update_sizes();
  return {
      [=](lookup_atom, const std::string& tenant, const std::string& key, const std::string& domain) -> std::string {
        auto& st = self->state;
        std::optional<cached_answer> a;
        try {
          a = st.store->get(tenant, key, now_seconds());
        } catch (const error& e) {
          // A damaged entry is a miss (and said once in the log), never a wrong answer.
          log::error("cache: {}", e.what());
        }
        if (st.metrics) (a ? st.metrics->hits : st.metrics->misses).Add({{"domain", domain}}).Increment();
        if (!a) return {};
        return to_json_text(*a);
      },
      [=](store_atom, const std::string& tenant, const std::string& key, const std::string& domain, bool encrypt,
          const std::string& answer) {
        auto& st = self->state;
        auto a = cached_answer_from_json(answer);
        if (!a) return;
        try {
          auto evicted = st.store->put(tenant, key, *a, encrypt, now_seconds());
          if (st.metrics) {
            st.metrics->stores.Add({{"domain", domain}}).Increment();
            if (evicted) st.metrics->evictions.Add({{"domain", domain}}).Increment(static_cast<double>(evicted));
          }
        } catch (const error& e) {
          log::error("cache: {}", e.what());
        }
        st.update_sizes();
      },
      [=](purge_atom, const std::string& tenant) -> std::int64_t {
        auto n = self->state.store->purge_tenant(tenant);
        self->state.update_sizes();
        return n;
      },
  };
}

}  // namespace

cache_actor spawn_cache(caf::actor_system& sys, const std::string& path, const cache_spec& spec,
                        std::shared_ptr<prometheus::Registry> registry) {
  auto store = std::make_shared<answer_cache>(path, spec);
  return sys.spawn<caf::detached>(cache, std::move(store), std::move(registry));
}

}  // namespace shoal::actors
