// Helpers the core's test files share: a region to format heaps in, a seeded generator, and numeric
// settings from the environment.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "heap.h"

namespace coretest {

// A heap region from aligned_alloc, filled with `fill` so that nothing relies on zeroed memory and no
// byte comparison reads uninitialised memory (valgrind would say so).
struct Region {
  uint8_t* bytes;
  uint64_t size;
  explicit Region(uint64_t n, uint8_t fill = 0xA5)
      : bytes(static_cast<uint8_t*>(std::aligned_alloc(mempool::kMaxAlign, n))), size(n) {
    std::memset(bytes, fill, n);
  }
  ~Region() { std::free(bytes); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
};

// splitmix64: seeded, so a failing run can be repeated.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }
  bool chance(uint64_t percent) { return below(100) < percent; }
};

// A number from the environment (test lengths, seeds), or `dflt` when unset or empty.
inline uint64_t env_or(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : dflt;
}

}  // namespace coretest
