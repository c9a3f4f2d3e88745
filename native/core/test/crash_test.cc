// kill -9 in the middle of heap operations: rebuild() must restore every invariant, and blocks the
// survivor holds must be untouched. The heap lives in MAP_SHARED memory so the parent sees exactly what
// the killed child left behind.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "heap.h"

using namespace mempool;

namespace {

void crash_rounds(Algorithm a, int rounds, bool debug = false) {
  const uint64_t size = 1 << 20;
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  uint8_t* base = static_cast<uint8_t*>(mem);
  std::unique_ptr<Heap> heap;
  HeapOptions options;
  options.debug = debug;
  REQUIRE(heap_format(a, base, size, options, &heap) == Status::ok);
  // The survivor's blocks, with patterns.
  std::vector<std::pair<uint64_t, uint64_t>> mine;
  for (uint64_t i = 0; i < 50; ++i) {
    uint64_t off = 0, n = 16 + i * 24;
    REQUIRE(heap->alloc(n, 16, kNoHint, &off) == Status::ok);
    std::memset(base + off, static_cast<int>(i + 1), n);
    mine.emplace_back(off, n);
  }
  std::mt19937_64 rng(static_cast<uint64_t>(a) * 31 + 7);
  int recovered = 0;
  for (int round = 0; round < rounds; ++round) {
    pid_t child = fork();
    if (child == 0) {
      // The child allocates and frees its own blocks until it is killed.
      std::unique_ptr<Heap> h;
      if (heap_attach(base, size, &h) != Status::ok) _exit(2);
      std::mt19937_64 r(static_cast<uint64_t>(getpid()));
      std::vector<uint64_t> held;
      for (;;) {
        if (held.size() < 200 && (held.empty() || r() % 2)) {
          uint64_t off = 0;
          if (h->alloc(1 + r() % 3000, uint64_t(16) << (r() % 3), kNoHint, &off) == Status::ok) held.push_back(off);
        } else if (!held.empty()) {
          size_t i = r() % held.size();
          if (h->free(held[i]) != Status::ok) _exit(3);
          held[i] = held.back();
          held.pop_back();
        }
      }
    }
    REQUIRE(child > 0);
    usleep(static_cast<useconds_t>(200 + rng() % 3000));
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    REQUIRE(WIFSIGNALED(status));  // it was still working, not exited on an error
    REQUIRE(heap->rebuild() == Status::ok);
    CheckResult cr;
    heap->check(&cr);
    if (cr.violations) std::fprintf(stderr, "  after rebuild: %s\n", cr.first.c_str());
    REQUIRE(cr.violations == 0);
    for (size_t i = 0; i < mine.size(); ++i) {
      uint64_t usable = 0;
      REQUIRE(heap->usable_size(mine[i].first, &usable) == Status::ok);
      for (uint64_t k = 0; k < mine[i].second; ++k) REQUIRE(base[mine[i].first + k] == static_cast<uint8_t>(i + 1));
    }
    ++recovered;
  }
  EXPECT(recovered == rounds);
  munmap(mem, size);
}

TEST("tlsf: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::tlsf, 150); }
TEST("buddy: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::buddy, 150); }
TEST("bitmap: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::bitmap, 150); }
TEST("debug-tlsf: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::tlsf, 60, true); }
TEST("debug-buddy: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::buddy, 60, true); }
TEST("debug-bitmap: crash: kill -9 mid-operation, rebuild restores the heap") { crash_rounds(Algorithm::bitmap, 60, true); }

}  // namespace
