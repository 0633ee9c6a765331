#include "actors/errors.hpp"

namespace shoal::actors {

namespace {

// The first errc the wire code can name is errc{0}, sent as 1; internal is the last.
constexpr int kLastCode = static_cast<int>(errc::internal);

std::string context_text(const caf::error& e) {
  if (e.context().match_elements<std::string>()) return e.context().get_as<std::string>(0);
  return {};
}

// CAF's system errors that mean a peer (an actor, its node, the link to it) did not answer.
bool peer_missing(caf::sec s) {
  switch (s) {
    case caf::sec::request_receiver_down:
    case caf::sec::request_timeout:
    case caf::sec::no_actor_published_at_port:
    case caf::sec::unexpected_actor_messaging_interface:
    case caf::sec::disconnect_during_handshake:
    case caf::sec::cannot_forward_to_invalid_actor:
    case caf::sec::no_route_to_receiving_node:
    case caf::sec::cannot_connect_to_node:
    case caf::sec::network_syscall_failed:
    case caf::sec::socket_disconnected:
    case caf::sec::socket_operation_failed:
    case caf::sec::remote_lookup_failed:
    case caf::sec::connection_timeout:
      return true;
    default:
      return false;
  }
}

}  // namespace

caf::error make_error(errc code, std::string message) {
  return caf::error(static_cast<std::uint8_t>(static_cast<int>(code) + 1), error_category,
                    caf::make_message(std::move(message)));
}

caf::error make_error(const refusal& r) { return make_error(r.code, r.message); }

caf::error make_error(const std::exception& e) {
  if (const auto* se = dynamic_cast<const error*>(&e)) return make_error(se->code(), se->what());
  return make_error(errc::internal, e.what());
}

refusal read_error(const caf::error& e, const std::string& peer) {
  const std::string context = context_text(e);
  if (e.category() == error_category) {
    const int code = static_cast<int>(e.code()) - 1;
    if (code < 0 || code > kLastCode) {
      return {errc::internal, "unknown Shoal error code " + std::to_string(e.code()) + ": " + context};
    }
    return {static_cast<errc>(code), context};
  }
  if (e.category() == caf::atom("system")) {
    const auto s = static_cast<caf::sec>(e.code());
    std::string what;
    switch (s) {
      case caf::sec::request_timeout: what = peer + " did not answer in time"; break;
      case caf::sec::request_receiver_down: what = peer + " is down"; break;
      default: what = peer + ": " + caf::to_string(s); break;
    }
    if (!context.empty()) what += " (" + context + ")";
    if (s == caf::sec::invalid_argument) return {errc::invalid_argument, context.empty() ? what : context};
    return {peer_missing(s) ? errc::unavailable : errc::internal, what};
  }
  if (e.category() == caf::atom("exit")) {
    return {errc::unavailable, peer + " stopped (" + caf::to_string(static_cast<caf::exit_reason>(e.code())) + ")"};
  }
  return {errc::internal, peer + " failed with error " + std::to_string(e.code()) + " of category " +
                              caf::to_string(e.category()) + (context.empty() ? "" : ": " + context)};
}

errc code_of(const caf::error& e) { return read_error(e).code; }

void add_error_category(caf::actor_system_config& cfg) {
  cfg.add_error_category(error_category, [](std::uint8_t code, caf::atom_value, const caf::message& context) {
    const int c = static_cast<int>(code) - 1;
    std::string out = "shoal: ";
    out += c >= 0 && c <= kLastCode ? to_string(static_cast<errc>(c)) : "unknown";
    if (context.match_elements<std::string>()) out += ": " + context.get_as<std::string>(0);
    return out;
  });
}

}  // namespace shoal::actors
