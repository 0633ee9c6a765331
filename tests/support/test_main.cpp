// The main of every test binary: Boost.Test's, except that a run in which every selected case was
// skipped (a precondition such as needs_shared or needs_gpu failed) prints why and exits with 77,
// which CTest reports as skipped (SKIP_RETURN_CODE) rather than passed.
#define BOOST_TEST_MODULE shoal
#define BOOST_TEST_NO_MAIN
#include <boost/test/results_collector.hpp>
#include <boost/test/tree/traverse.hpp>
#include <boost/test/tree/visitor.hpp>
#include <boost/test/unit_test.hpp>

#include <iostream>

namespace {

namespace ut = boost::unit_test;

// Prints "SKIPPED <case>: <reason>" for each selected case whose precondition fails.
struct skip_reasons : ut::test_tree_visitor {
  void visit(const ut::test_case& tc) override {
    if (!tc.is_enabled()) return;  // not selected by --run_test
    for (const auto& pre : tc.p_preconditions.get()) {
      const auto r = pre(tc.p_id);
      if (!r) std::cout << "SKIPPED " << tc.full_name() << ": " << r.message() << std::endl;
    }
  }
};

}  // namespace

int main(int argc, char* argv[]) {
  const int rc = ut::unit_test_main(&init_unit_test, argc, argv);
  if (rc != 0) return rc;
  const auto& r = ut::results_collector.results(ut::framework::master_test_suite().p_id);
  if (r.p_test_cases_skipped > 0 && r.p_test_cases_passed == 0 && r.p_test_cases_failed == 0 &&
      r.p_test_cases_aborted == 0) {
    skip_reasons v;
    ut::traverse_test_tree(ut::framework::master_test_suite(), v, true);
    return 77;
  }
  return 0;
}
