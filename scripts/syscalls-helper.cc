// The native half of scripts/syscalls.js, which builds it into build/syscalls/helper: N small allocations,
// with or without a pool, for `strace -c`.
//
//   helper malloc N   N x malloc(16..512), one byte written in each, none freed (all live until exit)
//   helper pool N     one aligned_alloc of a 64 MiB region and a TLSF heap formatted in it (mempool's core, no
//                     lock), then N x heap.alloc(16..512), one byte written in each, none freed
//
// Sizes come from the xorshift64 trace of /work/shared/workloads.md. N = 0 is the baseline: everything
// the program does but the allocations (for `pool`, the region and the heap are made at N = 0 too).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "heap.h"

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[1], "malloc") != 0 && std::strcmp(argv[1], "pool") != 0)) {
    std::fprintf(stderr, "usage: helper malloc|pool N\n");
    return 2;
  }
  const bool pool = std::strcmp(argv[1], "pool") == 0;
  const uint64_t n = std::strtoull(argv[2], nullptr, 10);
  uint64_t s = 88172645463325252ULL;
  auto draw = [&s] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  uint64_t sum = 0;
  if (pool) {
    const uint64_t region_bytes = uint64_t(64) << 20;
    auto* region = static_cast<uint8_t*>(std::aligned_alloc(4096, region_bytes));  // heaps want page alignment
    std::unique_ptr<mempool::Heap> heap;
    if (region == nullptr ||
        mempool::heap_format(mempool::Algorithm::tlsf, region, region_bytes, mempool::HeapOptions(), &heap) !=
            mempool::Status::ok) {
      std::fprintf(stderr, "helper: cannot make the pool\n");
      return 1;
    }
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t off = 0;
      if (heap->alloc(16 + draw() % 497, mempool::kDefaultAlign, mempool::kNoHint, &off) != mempool::Status::ok) {
        std::fprintf(stderr, "helper: pool full\n");
        return 1;
      }
      *reinterpret_cast<volatile uint8_t*>(region + off) = uint8_t(i);
      sum += off;
    }
  } else {
    for (uint64_t i = 0; i < n; ++i) {
      auto* p = static_cast<uint8_t*>(std::malloc(16 + draw() % 497));
      if (p == nullptr) return 1;
      *reinterpret_cast<volatile uint8_t*>(p) = uint8_t(i);
      sum += reinterpret_cast<uintptr_t>(p) & 1;
    }
  }
  return sum == 42 ? 3 : 0;  // keeps the loop's results alive
}
