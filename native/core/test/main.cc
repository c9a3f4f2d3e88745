// Runs every registered core test; a name filter may be given as the first argument.
#include <cstring>

#include "check.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int run = 0;
  for (const auto& c : coretest::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    int before = coretest::failures();
    c.body();
    ++run;
    std::printf("%s %s\n", coretest::failures() == before ? "ok  " : "FAIL", c.name);
  }
  std::printf("%d test(s), %d failure(s)\n", run, coretest::failures());
  return coretest::failures() == 0 ? 0 : 1;
}
