// A tiny test harness for the core: no dependencies, so the core builds and tests on its own.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace coretest {

struct Case {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> body) { registry().push_back({name, std::move(body)}); }
};

}  // namespace coretest

#define CORE_CONCAT2(a, b) a##b
#define CORE_CONCAT(a, b) CORE_CONCAT2(a, b)
// TEST("name") { ... }  registers a test case. __COUNTER__ keeps names unique even when several
// TEST uses come from one macro expansion.
#define TEST(name) CORE_TEST_IMPL(name, __COUNTER__)
#define CORE_TEST_IMPL(name, n)                                                        \
  static void CORE_CONCAT(test_fn_, n)();                                              \
  static coretest::Register CORE_CONCAT(test_reg_, n)(name, CORE_CONCAT(test_fn_, n)); \
  static void CORE_CONCAT(test_fn_, n)()

// EXPECT(cond) records a failure and goes on; REQUIRE(cond) stops the test case.
#define EXPECT(cond)                                                             \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "  %s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++coretest::failures();                                                    \
    }                                                                            \
  } while (0)
#define REQUIRE(cond)                                                            \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "  %s:%d: required %s\n", __FILE__, __LINE__, #cond); \
      ++coretest::failures();                                                    \
      return;                                                                    \
    }                                                                            \
  } while (0)
