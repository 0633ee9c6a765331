// The router's admission policy without actors: each check's answer and code, their order, the
// limits' slots, the priority cap, the masking and cache decisions, and the admin operations.

#include <boost/test/unit_test.hpp>

#include "governance/admission.hpp"

using namespace shoal::governance;
using shoal::errc;

namespace {

key_spec key(const std::string& id, const std::string& role, const std::string& secret) {
  return key_spec{id, role, sha256_hex(secret)};
}

// Tenants: alpha (public; user, service and admin keys), beta (sensitive; only model "small").
admission_options options() {
  admission_options o;
  o.models = {"big", "small"};
  o.cache = true;
  tenant_spec alpha;
  alpha.name = "alpha";
  alpha.keys = {key("u1", "user", "alpha-user"), key("s1", "service", "alpha-service"), key("a1", "admin", "alpha-admin")};
  tenant_spec beta;
  beta.name = "beta";
  beta.domain = data_domain::sensitive;
  beta.models = {"small"};
  beta.keys = {key("u1", "user", "beta-user")};
  o.auth.required = true;
  o.auth.tenants = {alpha, beta};
  return o;
}

admission_request request(const std::string& api_key, const std::string& model = "big") {
  admission_request r;
  r.api_key = api_key;
  r.model = model;
  r.prompt = "Once upon a time";
  r.max_tokens = 16;
  r.deterministic = true;
  return r;
}

errc code(const decision& d) { return d.refused ? d.refused->code : errc::internal; }

}  // namespace

BOOST_AUTO_TEST_SUITE(admission)

BOOST_AUTO_TEST_CASE(keys_map_to_principals) {
  admission_policy p(options());
  auto a = p.admit(request("alpha-service"));
  BOOST_TEST(!a.refused);
  BOOST_REQUIRE(a.who);
  BOOST_TEST(a.who->tenant == "alpha");
  BOOST_TEST(a.who->id == "s1");
  BOOST_TEST(principal_key(*a.who) == "alpha/s1");
  BOOST_TEST(a.counted);

  auto wrong = p.admit(request("no-such-key"));
  BOOST_TEST((code(wrong) == errc::unauthenticated));
  BOOST_TEST(wrong.refused->message == "invalid API key");
  BOOST_TEST(!wrong.who);
  auto none = p.admit(request(""));
  BOOST_TEST((code(none) == errc::unauthenticated));
  BOOST_TEST(none.refused->message == "an API key is required");

  // Without `required`, no key is the anonymous principal.
  auto o = options();
  o.auth.required = false;
  admission_policy open(o);
  auto anon = open.admit(request(""));
  BOOST_TEST(!anon.refused);
  BOOST_TEST(anon.who->tenant == "anonymous");
}

BOOST_AUTO_TEST_CASE(model_kind_and_sink_are_checked_in_order) {
  admission_policy p(options());
  auto unknown = p.admit(request("alpha-user", "huge"));
  BOOST_TEST((code(unknown) == errc::not_found));
  BOOST_TEST(unknown.refused->message == "unknown model 'huge'");
  BOOST_TEST(unknown.who.has_value(), "the caller is known for the audit record");

  // beta may use only "small".
  auto forbidden = p.admit(request("beta-user", "big"));
  BOOST_TEST((code(forbidden) == errc::forbidden));
  BOOST_TEST(forbidden.refused->message.find("may not use model 'big'") != std::string::npos);
  BOOST_TEST(!p.admit(request("beta-user", "small")).refused);

  auto r = request("alpha-user");
  r.kind = "rerank";
  BOOST_TEST((code(p.admit(r)) == errc::invalid_argument));
  // An unknown model is reported before an unknown kind.
  r.model = "huge";
  BOOST_TEST((code(p.admit(r)) == errc::not_found));

  auto no_sink = request("alpha-user");
  no_sink.has_sink = false;
  BOOST_TEST((code(p.admit(no_sink)) == errc::invalid_argument));

  // A domain's model list limits its tenants too.
  auto o = options();
  o.auth.domains[data_domain::public_].models = {"small"};
  admission_policy q(o);
  BOOST_TEST((code(q.admit(request("alpha-user", "big"))) == errc::forbidden));
}

BOOST_AUTO_TEST_CASE(priority_is_capped_by_the_role) {
  admission_policy p(options());
  auto r = request("alpha-user");
  r.priority = 100;
  BOOST_TEST(p.admit(r).priority == 0);
  r.api_key = "alpha-service";
  BOOST_TEST(p.admit(r).priority == 5);
  r.api_key = "alpha-admin";
  BOOST_TEST(p.admit(r).priority == 10);
  r.priority = -3;  // lowering is always allowed
  BOOST_TEST(p.admit(r).priority == -3);
}

BOOST_AUTO_TEST_CASE(limits_say_which_limit_by_code) {
  auto o = options();
  o.auth.tenants[0].limits.max_concurrent = 1;
  o.auth.global_max_inflight = 2;
  admission_policy p(o);
  auto first = p.admit(request("alpha-user"));
  BOOST_TEST(first.counted);
  auto second = p.admit(request("alpha-user"));
  BOOST_TEST((code(second) == errc::rate_limited));
  BOOST_TEST(!second.counted);
  BOOST_TEST(p.admit(request("beta-user", "small")).counted);
  // Two in flight: the cluster-wide limit answers for everyone.
  auto third = p.admit(request("beta-user", "small"));
  BOOST_TEST((code(third) == errc::overloaded));
  // A finished request frees its slot.
  BOOST_TEST(!p.finished("alpha", "alpha/u1", 3));
  BOOST_TEST(p.admit(request("alpha-user")).counted);
  p.release("alpha");
  p.release("beta");
  BOOST_TEST(p.admit(request("beta-user", "small")).counted);
}

BOOST_AUTO_TEST_CASE(rules_block_and_blocks_hold) {
  auto o = options();
  alert_rule rule;
  rule.name = "burst";
  rule.kind = "operations";
  rule.operations = {"generate"};
  rule.max = 2;
  o.alerts = {rule};
  o.blocked = {{"beta/u1", "rule 'old': persisted"}};
  admission_policy p(o);
  // A block persisted earlier refuses at once, as a block.
  auto held = p.admit(request("beta-user", "small"));
  BOOST_TEST((code(held) == errc::forbidden));
  BOOST_TEST(held.blocked);
  BOOST_TEST(!held.block, "nothing new to persist");
  BOOST_TEST(held.refused->message.find("persisted") != std::string::npos);

  BOOST_TEST(!p.admit(request("alpha-user")).refused);
  BOOST_TEST(!p.admit(request("alpha-user")).refused);
  auto tripped = p.admit(request("alpha-user"));
  BOOST_TEST((code(tripped) == errc::forbidden));
  BOOST_TEST(tripped.blocked);
  BOOST_REQUIRE(tripped.block);
  BOOST_TEST(tripped.block->key == "alpha/u1");
  BOOST_TEST(tripped.block->trip.rule == "burst");
  BOOST_TEST(!tripped.counted, "a refused request holds no slot");
  // From now on the principal is refused before anything else; another key of the tenant is not.
  auto after = p.admit(request("alpha-user", "huge"));
  BOOST_TEST((code(after) == errc::forbidden));
  BOOST_TEST(!after.block, "the block is persisted once");
  BOOST_TEST(p.blocked().count("alpha/u1") == 1u);
  BOOST_TEST(!p.admit(request("alpha-service")).refused);
  // Lifting it admits again.
  BOOST_TEST(p.unblock("alpha/u1"));
  BOOST_TEST(!p.unblock("alpha/u1"));
}

BOOST_AUTO_TEST_CASE(output_and_probe_rules_block_after_the_fact) {
  auto o = options();
  alert_rule out;
  out.name = "volume";
  out.kind = "output_tokens";
  out.max = 100;
  alert_rule probes;
  probes.name = "probing";
  probes.kind = "miss_probes";
  probes.max = 1;
  o.alerts = {out, probes};
  admission_policy p(o);
  auto a = p.admit(request("alpha-user"));
  auto b = p.finished("alpha", "alpha/u1", 500);
  BOOST_REQUIRE(b);
  BOOST_TEST(b->who.tenant == "alpha");
  BOOST_TEST(b->who.id == "u1");
  BOOST_TEST(b->trip.rule == "volume");
  BOOST_TEST((code(p.admit(request("alpha-user"))) == errc::forbidden));

  auto s = p.admit(request("alpha-service"));
  BOOST_TEST(!p.cache_miss(*s.who, "the same prefix of a probing prompt, then 1"));
  auto probe = p.cache_miss(*s.who, "the same prefix of a probing prompt, then 2");
  BOOST_REQUIRE(probe);
  BOOST_TEST(probe->trip.rule == "probing");
}

BOOST_AUTO_TEST_CASE(masking_decides_what_the_model_sees_and_the_cache_takes) {
  admission_policy p(options());
  auto r = request("alpha-user");
  r.prompt = "mail alice@example.com today";
  auto a = p.admit(r);
  BOOST_TEST(a.prompt_has_pii);
  BOOST_TEST(a.masked.text == "mail [EMAIL] today");
  BOOST_TEST(a.masked.counts.at("email") == 1u);
  // Public domain: the model sees the prompt as given, so a cached answer keyed by the masked
  // prompt could answer a different prompt: not cacheable.
  BOOST_TEST(!a.model_sees_masked);
  BOOST_TEST(!a.cacheable);
  BOOST_TEST(p.admit(request("alpha-user")).cacheable);

  // Sensitive domain: the model sees the masked prompt, and the domain keeps no cache.
  auto s = request("beta-user", "small");
  s.prompt = r.prompt;
  auto b = p.admit(s);
  BOOST_TEST(b.model_sees_masked);
  BOOST_TEST(b.encrypt_cache);
  BOOST_TEST(!b.cacheable);

  // A domain that gives the model the masked prompt and allows a cache caches PII prompts too.
  auto o = options();
  auto& policy = o.auth.domains[data_domain::public_];
  policy.model_sees_masked = true;
  policy.store_masked_text = true;
  admission_policy q(o);
  auto c = q.admit(r);
  BOOST_TEST(c.model_sees_masked);
  BOOST_TEST(c.store_masked_text);
  BOOST_TEST(c.cacheable);
}

BOOST_AUTO_TEST_CASE(only_deterministic_generations_without_opt_out_are_cacheable) {
  admission_policy p(options());
  auto r = request("alpha-user");
  BOOST_TEST(p.admit(r).cacheable);
  r.deterministic = false;
  BOOST_TEST(!p.admit(r).cacheable);
  r.deterministic = true;
  r.no_cache = true;
  BOOST_TEST(!p.admit(r).cacheable);
  r.no_cache = false;
  r.kind = "score";
  BOOST_TEST(!p.admit(r).cacheable);
  auto o = options();
  o.cache = false;  // no cache on this node
  admission_policy q(o);
  BOOST_TEST(!q.admit(request("alpha-user")).cacheable);
}

BOOST_AUTO_TEST_CASE(admin_operations_by_role_and_tenant) {
  admission_policy p(options());
  BOOST_TEST((code(p.admit_admin("bad", "query", "")) == errc::unauthenticated));
  BOOST_TEST((code(p.admit_admin("alpha-admin", "drop", "")) == errc::invalid_argument));
  BOOST_TEST((code(p.admit_admin("alpha-user", "blocks", "")) == errc::forbidden));
  BOOST_TEST((code(p.admit_admin("alpha-user", "unblock", "")) == errc::forbidden));
  // A user reaches its own tenant only, and "" means its own.
  BOOST_TEST((code(p.admit_admin("alpha-user", "query", "beta")) == errc::forbidden));
  auto own = p.admit_admin("alpha-user", "export", "");
  BOOST_TEST(!own.refused);
  BOOST_TEST(own.tenant == "alpha");
  // An admin reaches every tenant, or all of them.
  BOOST_TEST(p.admit_admin("alpha-admin", "query", "beta").tenant == "beta");
  BOOST_TEST(p.admit_admin("alpha-admin", "purge_cache", "").tenant == "");
}

// Special-token strings: text in a completion prompt unless the tenant is trusted with them; a
// chat's template ranges keep theirs; ranges that are not sorted pairs inside the prompt are refused;
// a masked chat keeps its ranges on the masked text (and gives up parsing when masking cannot).
BOOST_AUTO_TEST_CASE(special_tokens_follow_the_tenant_and_the_template) {
  auto o = options();
  o.auth.tenants[0].special_tokens = true;  // alpha is trusted; beta (sensitive) is not
  admission_policy p(o);
  auto trusted = p.admit(request("alpha-user"));
  BOOST_TEST(trusted.parse_special);
  auto plain = p.admit(request("beta-user", "small"));
  BOOST_TEST(!plain.parse_special);
  auto asked_not = request("alpha-user");
  asked_not.parse_special = false;  // the caller wants its text as text (RPC specialsAsText)
  BOOST_TEST(!p.admit(asked_not).parse_special);

  // A chat: "<s>[INST] " (template) + "hi </s>" (content) + " [/INST]" (template), beta masks.
  auto chat = request("beta-user", "small");
  chat.prompt = "<s>[INST] hi </s> [/INST]";
  chat.special_ranges = {0, 10, 17, 25};
  auto c = p.admit(chat);
  BOOST_TEST(!c.refused);
  BOOST_TEST(c.parse_special);
  BOOST_TEST(c.special_ranges == chat.special_ranges, boost::test_tools::per_element());
  // With an email in the content the masked text is shorter; the ranges move with it.
  chat.prompt = "<s>[INST] mail a@example.com [/INST]";
  chat.special_ranges = {0, 10, 28, 36};
  auto m = p.admit(chat);
  BOOST_TEST(m.prompt_has_pii);
  BOOST_REQUIRE_EQUAL(m.special_ranges.size(), 4u);
  const auto& t = m.masked.text;
  BOOST_TEST(t.substr(0, 10) == "<s>[INST] ");
  BOOST_TEST(t.substr(static_cast<std::size_t>(m.special_ranges[2])) == " [/INST]");

  for (const std::vector<std::int32_t>& bad : {std::vector<std::int32_t>{0}, {5, 3}, {0, 4, 2, 6}, {0, 99}}) {
    auto r = request("alpha-user");
    r.special_ranges = bad;
    BOOST_TEST((code(p.admit(r)) == errc::invalid_argument));
  }
}

BOOST_AUTO_TEST_SUITE_END()
