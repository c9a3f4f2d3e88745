// Debug mode catches each kind of misuse and names the allocation.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "check.h"
#include "debug_heap.h"
#include "heap.h"

using namespace mempool;

namespace {

struct DebugRegion {
  uint8_t* bytes;
  uint64_t size;
  std::unique_ptr<Heap> heap;
  DebugRegion(Algorithm a, uint64_t n) : bytes(static_cast<uint8_t*>(std::aligned_alloc(kMaxAlign, n))), size(n) {
    HeapOptions o;
    o.debug = true;
    if (heap_format(a, bytes, n, o, &heap) != Status::ok) heap.reset();
  }
  ~DebugRegion() {
    heap.reset();
    std::free(bytes);
  }
  CheckResult check() const {
    CheckResult r;
    heap->check(&r);
    return r;
  }
};

void overrun(Algorithm a) {
  DebugRegion r(a, 1 << 20);
  REQUIRE(r.heap && r.heap->debug());
  uint64_t x = 0, y = 0;
  REQUIRE(r.heap->alloc(100, 16, kNoHint, &x) == Status::ok);
  REQUIRE(r.heap->alloc(100, 16, kNoHint, &y) == Status::ok);
  EXPECT(r.check().violations == 0);
  r.bytes[x + 100] = 1;  // one byte past the end
  CheckResult c = r.check();
  EXPECT(c.violations == 1);
  EXPECT(c.first.find("overrun after the allocation at offset " + std::to_string(x)) != std::string::npos);
  EXPECT(r.heap->free(x) == Status::corrupted);
  EXPECT(r.heap->debug()->last_violation().find("overrun") != std::string::npos);
  EXPECT(r.heap->free(y) == Status::ok);  // the other allocation is untouched and frees fine
}

void underrun(Algorithm a) {
  DebugRegion r(a, 1 << 20);
  REQUIRE(r.heap);
  uint64_t x = 0;
  REQUIRE(r.heap->alloc(64, 16, kNoHint, &x) == Status::ok);
  r.bytes[x - 1] = 7;
  CheckResult c = r.check();
  EXPECT(c.violations == 1);
  EXPECT(c.first.find("underrun before the allocation at offset " + std::to_string(x)) != std::string::npos);
  EXPECT(r.heap->free(x) == Status::corrupted);
  HeapStats s;
  r.heap->stats(&s);
  EXPECT(s.live_allocations == 1);  // refused: nothing changed
}

void write_after_free(Algorithm a) {
  DebugRegion r(a, 1 << 20);
  REQUIRE(r.heap);
  uint64_t x = 0;
  REQUIRE(r.heap->alloc(200, 16, kNoHint, &x) == Status::ok);
  std::memset(r.bytes + x, 0x11, 200);
  REQUIRE(r.heap->free(x) == Status::ok);
  EXPECT(r.bytes[x] == kPoisonByte);
  EXPECT(r.check().violations == 0);
  r.bytes[x + 10] = 0x42;  // the bug: a write through a stale pointer
  CheckResult c = r.check();
  EXPECT(c.violations == 1);
  EXPECT(c.first.find("write after free to the allocation at offset " + std::to_string(x)) != std::string::npos);
  // The block is caught before it is reused: push it out of the quarantine.
  bool reported = false;
  for (int i = 0; i < 2000 && !reported; ++i) {
    uint64_t y = 0;
    REQUIRE(r.heap->alloc(16, 16, kNoHint, &y) == Status::ok);
    reported = r.heap->free(y) == Status::corrupted;
  }
  EXPECT(reported);
  EXPECT(r.heap->debug()->last_violation().find("write after free") != std::string::npos);
  EXPECT(r.heap->free(x) != Status::ok);  // freed already (and its memory may be someone else's now)
}

void owners_and_reclaim(Algorithm a) {
  DebugRegion r(a, 1 << 20);
  REQUIRE(r.heap);
  std::vector<uint64_t> mine;
  r.heap->debug()->set_site(7);
  for (int i = 0; i < 5; ++i) {
    uint64_t x = 0;
    REQUIRE(r.heap->alloc(32, 16, kNoHint, &x) == Status::ok);
    mine.push_back(x);
  }
  uint64_t count = 0, sites = 0;
  r.heap->debug()->live_allocations([&](const DebugAllocation& d) {
    ++count;
    if (d.site == 7 && d.owner_pid == static_cast<uint32_t>(getpid()) && d.size == 32) ++sites;
  });
  EXPECT(count == 5 && sites == 5);
  uint64_t n = 0, bytes = 0;
  EXPECT(r.heap->debug()->reclaim(999999, &n, &bytes) == Status::ok && n == 0);
  EXPECT(r.heap->debug()->reclaim(static_cast<uint32_t>(getpid()), &n, &bytes) == Status::ok);
  EXPECT(n == 5 && bytes == 160);
  HeapStats s;
  r.heap->stats(&s);
  EXPECT(s.live_allocations == 0 && s.used == 0);
  EXPECT(r.check().violations == 0);
}

void usable_is_requested(Algorithm a) {
  DebugRegion r(a, 1 << 20);
  REQUIRE(r.heap);
  uint64_t x = 0, n = 0;
  REQUIRE(r.heap->alloc(37, 64, kNoHint, &x) == Status::ok);
  EXPECT(x % 64 == 0);
  EXPECT(r.heap->usable_size(x, &n) == Status::ok && n == 37);
  EXPECT(r.heap->resize_in_place(x, 20) == Status::ok);
  r.bytes[x + 20] = 0;  // past the new end: an overrun now
  EXPECT(r.check().violations == 1);
}

#define DEBUG_TESTS(name, fn)                                       \
  TEST("debug-tlsf: " name) { fn(Algorithm::tlsf); }               \
  TEST("debug-buddy: " name) { fn(Algorithm::buddy); }             \
  TEST("debug-bitmap: " name) { fn(Algorithm::bitmap); }

DEBUG_TESTS("overrun is caught on free and by check", overrun)
DEBUG_TESTS("underrun is caught, the free refused", underrun)
DEBUG_TESTS("write after free is caught by check and before reuse", write_after_free)
DEBUG_TESTS("owners, sites and reclaim by pid", owners_and_reclaim)
DEBUG_TESTS("usable size is the requested size; shrinking moves the guard", usable_is_requested)

}  // namespace
