#pragma once
// Runs the shoal binary (or any command) and captures exit status, stdout and stderr.

#include <sys/wait.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "tests/support/shared.hpp"
#include "tests/support/temp_dir.hpp"

namespace shoal::test {

struct process_result {
  int status = -1;
  std::string out;
  std::string err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  return q + "'";
}

inline std::string shoal_bin() {
  if (const char* env = std::getenv("SHOAL_BIN")) return env;
  return std::string(SHOAL_BIN_DIR) + "/shoal";
}

/// Runs `argv` (argv[0] is the program) with a time limit; stdin is /dev/null.
inline process_result run_process(const std::vector<std::string>& argv, int timeout_s = 300) {
  temp_dir d;
  std::string cmd = "timeout " + std::to_string(timeout_s);
  for (auto& a : argv) cmd += " " + shell_quote(a);
  cmd += " </dev/null >" + shell_quote(d / "out") + " 2>" + shell_quote(d / "err");
  int rc = std::system(cmd.c_str());
  process_result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  r.out = read_file(d / "out");
  r.err = read_file(d / "err");
  return r;
}

inline process_result run_shoal(std::vector<std::string> args, int timeout_s = 300) {
  args.insert(args.begin(), shoal_bin());
  return run_process(args, timeout_s);
}

}  // namespace shoal::test
