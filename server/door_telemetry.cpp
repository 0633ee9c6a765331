#include "server/door_telemetry.hpp"

#include "telemetry/log.hpp"

namespace shoal::server {

door_telemetry::door_telemetry(std::shared_ptr<prometheus::Registry> registry, const governance::masker_options& pii)
    : registry_(std::move(registry)), masker_(pii) {
  if (registry_) {
    disconnects_ = &prometheus::BuildCounter()
                        .Name("shoal:client_disconnects_total")
                        .Help("Clients that went away before their request was read or their answer delivered")
                        .Register(*registry_);
  }
}

void door_telemetry::client_gone(const char* door, const char* during, const std::string& peer) {
  if (disconnects_) disconnects_->Add({{"door", door}, {"during", during}}).Increment();
  log::debug("{}: client {} went away during its {}", door, peer, during);
}

std::string door_telemetry::for_log(std::string_view text, std::size_t max) const {
  auto masked = masker_.mask(text).text;
  if (masked.size() > max) {
    // Cut on a UTF-8 character boundary, and say so.
    std::size_t cut = max;
    while (cut > 0 && (static_cast<unsigned char>(masked[cut]) & 0xC0) == 0x80) --cut;
    masked = masked.substr(0, cut) + "... (" + std::to_string(masked.size()) + " bytes)";
  }
  return masked;
}

namespace {

// kj's own words: up to the first "; " (variables follow) or line break (a stack trace follows).
std::string_view kj_words(std::string_view t) {
  t = t.substr(0, t.find('\n'));
  return t.substr(0, t.find("; "));
}

}  // namespace

std::string door_telemetry::for_log(const kj::Exception& e) const {
  const auto d = e.getDescription();
  return for_log(kj_words(std::string_view(d.cStr(), d.size())));
}

void kj_log_to_debug::logMessage(kj::LogSeverity, const char* file, int line, int, kj::String&& text) {
  log::debug("kj {}:{}: {}", file, line, telemetry_.for_log(kj_words(std::string_view(text.cStr(), text.size()))));
}

}  // namespace shoal::server
