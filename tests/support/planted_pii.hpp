#pragma once
// Personal data that tests plant in requests (prompts, malformed bodies, headers) and then look for
// in every log the nodes wrote: none of it may be there in clear (README "Data governance").
// Each value passes the masker's own checks (a valid email, a mobile number, an ID with its MOD
// 11-2 check digit, a Luhn-valid card), so a log that kept it would be keeping real-looking data.

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "tests/support/local_cluster.hpp"

namespace shoal::test {

inline const std::vector<std::string>& planted_pii() {
  static const std::vector<std::string> values = {
      "alice.planted@example.com",  // email
      "13912345678",                // CN mobile
      "11010519491231002X",         // PRC resident ID, check digit X
      "6222021234567890128",        // 19-digit card, Luhn-valid
  };
  return values;
}

/// A sentence carrying every planted value, for prompts and bodies.
inline std::string pii_sentence() {
  const auto& v = planted_pii();
  return "my email is " + v[0] + ", call " + v[1] + ", ID " + v[2] + ", card " + v[3];
}

/// Checks that no node log of `cluster` holds any planted value (call after stopping the nodes, so
/// what they log on the way out is scanned too). Returns how many lines the logs hold, so a caller
/// can also check the scan had something to read.
inline std::size_t expect_no_planted_pii_in_logs(const local_cluster& cluster) {
  const auto text = cluster.all_logs();
  for (const auto& v : planted_pii()) {
    const auto at = text.find(v);
    BOOST_CHECK_MESSAGE(at == std::string::npos,
                        "planted value " << v << " is in a node log: ..."
                                         << text.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0),
                                                        at == std::string::npos ? 0 : 400)
                                         << "...");
  }
  std::size_t lines = 0;
  for (char c : text) lines += c == '\n';
  BOOST_CHECK_MESSAGE(lines > 0, "the nodes wrote no log lines to scan");
  return lines;
}

}  // namespace shoal::test
