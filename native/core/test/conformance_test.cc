// The contract of heap.h, run over every algorithm: the same behaviour, the same statuses.
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "check.h"
#include "support.h"
#include "heap.h"

using namespace mempool;
using coretest::Region;

namespace {

// Debug mode wraps every algorithm; the contract is the same with or without it.
bool g_debug = false;

std::unique_ptr<Heap> make(Algorithm a, Region& r) {
  std::unique_ptr<Heap> h;
  HeapOptions options;
  options.debug = g_debug;
  Status s = heap_format(a, r.bytes, r.size, options, &h);
  return s == Status::ok ? std::move(h) : nullptr;
}

uint64_t violations(const Heap& h) {
  CheckResult r;
  h.check(&r);
  if (r.violations) std::fprintf(stderr, "  check: %llu violation(s), first: %s\n", (unsigned long long)r.violations, r.first.c_str());
  return r.violations;
}

void fill(uint8_t* p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>((seed * 131 + i * 7) & 0xff);
}
bool intact(const uint8_t* p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i) if (p[i] != static_cast<uint8_t>((seed * 131 + i * 7) & 0xff)) return false;
  return true;
}

void basic(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  EXPECT(h->algorithm() == a);
  EXPECT(violations(*h) == 0);
  HeapStats s0;
  h->stats(&s0);
  EXPECT(s0.capacity == r.size);
  EXPECT(s0.used == 0 && s0.live_allocations == 0);
  EXPECT(s0.capacity == s0.used + s0.free + s0.overhead);
  EXPECT(s0.largest_free_block > r.size / 4);
  uint64_t off = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &off) == Status::ok);
  EXPECT(off % 16 == 0 && off + 100 <= r.size);
  uint64_t usable = 0;
  EXPECT(h->usable_size(off, &usable) == Status::ok && usable >= 100);
  HeapStats s1;
  h->stats(&s1);
  EXPECT(s1.used == usable && s1.live_allocations == 1 && s1.allocations == 1);
  EXPECT(s1.capacity == s1.used + s1.free + s1.overhead);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(off) == Status::ok);
  HeapStats s2;
  h->stats(&s2);
  EXPECT(s2.used == 0 && s2.live_allocations == 0 && s2.frees == 1 && s2.peak_used == usable);
  EXPECT(s2.capacity == s2.used + s2.free + s2.overhead);
  EXPECT(violations(*h) == 0);
  // Whatever the heap keeps cached, the whole space can be had again in one piece.
  uint64_t whole = 0;
  EXPECT(h->alloc(s0.largest_free_block, 16, kNoHint, &whole) == Status::ok);
  EXPECT(violations(*h) == 0);
}

void bad_arguments(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  uint64_t off = 0;
  EXPECT(h->alloc(0, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(16, 24, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(16, 8192, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(kMaxRequest + 1, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(UINT64_MAX, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(UINT64_MAX - 7, 16, kNoHint, &off) == Status::invalid_argument);
  // Near the top of the size range: refused cleanly, never a small block.
  EXPECT(h->alloc(kMaxRequest, 16, kNoHint, &off) == Status::out_of_memory);
  EXPECT(h->alloc(r.size, 16, kNoHint, &off) == Status::out_of_memory);
  HeapStats s;
  h->stats(&s);
  EXPECT(s.failed_allocations == 2 && s.live_allocations == 0);
  EXPECT(violations(*h) == 0);
}

void alignment(Algorithm a) {
  Region r(1 << 22);
  auto h = make(a, r);
  REQUIRE(h);
  std::vector<uint64_t> offs;
  for (uint64_t align = 16; align <= kMaxAlign; align *= 2) {
    for (uint64_t size : {1ull, 17ull, 100ull, 5000ull}) {
      uint64_t off = 0;
      REQUIRE(h->alloc(size, align, kNoHint, &off) == Status::ok);
      EXPECT(off % align == 0);
      EXPECT(reinterpret_cast<uintptr_t>(r.bytes + off) % align == 0);
      offs.push_back(off);
    }
  }
  EXPECT(violations(*h) == 0);
  for (uint64_t off : offs) EXPECT(h->free(off) == Status::ok);
  HeapStats s;
  h->stats(&s);
  EXPECT(s.used == 0);
  EXPECT(violations(*h) == 0);
}

void refused_frees(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  uint64_t x = 0, y = 0;
  REQUIRE(h->alloc(256, 16, kNoHint, &x) == Status::ok);
  REQUIRE(h->alloc(256, 16, kNoHint, &y) == Status::ok);
  fill(r.bytes + y, 256, 9);
  HeapStats before;
  h->stats(&before);
  EXPECT(h->free(x + 16) == Status::foreign);   // interior of a live allocation
  EXPECT(h->free(x + 1) == Status::foreign);    // misaligned
  EXPECT(h->free(0) == Status::foreign);        // the heap's own header
  EXPECT(h->free(r.size) == Status::foreign);   // past the end
  EXPECT(h->free(UINT64_MAX) == Status::foreign);
  uint64_t n = 0;
  EXPECT(h->usable_size(x + 16, &n) == Status::foreign);
  EXPECT(h->resize_in_place(x + 16, 10) == Status::foreign);
  EXPECT(h->free(x) == Status::ok);
  EXPECT(h->free(x) == Status::double_free);
  EXPECT(h->usable_size(x, &n) == Status::double_free);
  HeapStats after;
  h->stats(&after);
  EXPECT(after.live_allocations == 1 && after.frees == 1);
  EXPECT(intact(r.bytes + y, 256, 9));
  EXPECT(violations(*h) == 0);
}

void exhaustion(Algorithm a) {
  Region r(1 << 18);
  auto h = make(a, r);
  REQUIRE(h);
  std::vector<uint64_t> offs;
  uint64_t off = 0;
  Status s;
  while ((s = h->alloc(200, 16, kNoHint, &off)) == Status::ok) {
    fill(r.bytes + off, 200, off);
    offs.push_back(off);
  }
  EXPECT(s == Status::out_of_memory);
  EXPECT(offs.size() > (g_debug ? 200u : 500u));  // debug mode adds 80 bytes of guards and header
  EXPECT(violations(*h) == 0);
  for (size_t i = 0; i < offs.size(); i += 2) EXPECT(h->free(offs[i]) == Status::ok);
  for (size_t i = 1; i < offs.size(); i += 2) EXPECT(intact(r.bytes + offs[i], 200, offs[i]));
  EXPECT(h->alloc(200, 16, kNoHint, &off) == Status::ok);
  EXPECT(h->free(off) == Status::ok);
  for (size_t i = 1; i < offs.size(); i += 2) EXPECT(h->free(offs[i]) == Status::ok);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0);
  // Everything coalesced back: one large allocation fits again.
  EXPECT(h->alloc(st.largest_free_block, 16, kNoHint, &off) == Status::ok);
  EXPECT(violations(*h) == 0);
}

void hint(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 64; ++i) {
    uint64_t off = 0;
    REQUIRE(h->alloc(64, 16, kNoHint, &off) == Status::ok);
    offs.push_back(off);
  }
  // Free a few low and a few high blocks; a hinted request goes at or after the hint.
  for (int i : {2, 3, 40, 41}) EXPECT(h->free(offs[static_cast<size_t>(i)]) == Status::ok);
  uint64_t near = 0;
  REQUIRE(h->alloc(64, 16, offs[39], &near) == Status::ok);
  EXPECT(near >= offs[39]);
  EXPECT(violations(*h) == 0);
}

void resize(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  uint64_t x = 0, y = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &x) == Status::ok);
  fill(r.bytes + x, 100, 3);
  // Grows in place into the free space after it.
  EXPECT(h->resize_in_place(x, 1000) == Status::ok);
  uint64_t n = 0;
  EXPECT(h->usable_size(x, &n) == Status::ok && n >= 1000);
  EXPECT(intact(r.bytes + x, 100, 3));
  HeapStats s;
  h->stats(&s);
  EXPECT(s.used == n);
  EXPECT(h->resize_in_place(x, 50) == Status::ok);
  EXPECT(h->usable_size(x, &n) == Status::ok && n >= 50 && n < 1000);
  EXPECT(intact(r.bytes + x, 50, 3));
  REQUIRE(h->alloc(100, 16, kNoHint, &y) == Status::ok);
  // realloc moves when the neighbour is taken, keeping the bytes.
  uint64_t moved = 0;
  EXPECT(heap_realloc(*h, x, 100000, 16, &moved) == Status::ok);
  EXPECT(intact(r.bytes + moved, 50, 3));
  EXPECT(h->usable_size(moved, &n) == Status::ok && n >= 100000);
  h->stats(&s);
  EXPECT(s.live_allocations == 2);
  EXPECT(violations(*h) == 0);
  EXPECT(heap_realloc(*h, moved, uint64_t(1) << 30, 16, &x) == Status::out_of_memory);
  EXPECT(intact(r.bytes + moved, 50, 3));
  EXPECT(violations(*h) == 0);
}

// The copied-region test: the heap keeps only offsets, so its bytes work at another address.
void copied_region(Algorithm a) {
  Region r(1 << 20);
  auto h = make(a, r);
  REQUIRE(h);
  std::mt19937_64 rng(7);
  std::map<uint64_t, uint64_t> live;  // offset -> size
  for (int i = 0; i < 400; ++i) {
    uint64_t size = 1 + rng() % 600, off = 0;
    if (h->alloc(size, 16, kNoHint, &off) != Status::ok) break;
    fill(r.bytes + off, size, off);
    live[off] = size;
  }
  for (auto it = live.begin(); it != live.end();) {
    if (rng() % 3 == 0) {
      EXPECT(h->free(it->first) == Status::ok);
      it = live.erase(it);
    } else {
      ++it;
    }
  }
  Region copy(r.size);
  std::memcpy(copy.bytes, r.bytes, r.size);
  std::memset(r.bytes, 0, r.size);  // the original is gone
  h.reset();
  std::unique_ptr<Heap> h2;
  REQUIRE(heap_attach(copy.bytes, copy.size, &h2) == Status::ok);
  REQUIRE(h2->algorithm() == a);
  EXPECT(violations(*h2) == 0);
  for (auto& [off, size] : live) EXPECT(intact(copy.bytes + off, size, off));
  for (int i = 0; i < 300; ++i) {
    uint64_t size = 1 + rng() % 600, off = 0;
    if (h2->alloc(size, 16, kNoHint, &off) != Status::ok) break;
    fill(copy.bytes + off, size, off);
    live[off] = size;
  }
  for (auto& [off, size] : live) EXPECT(intact(copy.bytes + off, size, off));
  for (auto& [off, size] : live) EXPECT(h2->free(off) == Status::ok);
  HeapStats s;
  h2->stats(&s);
  EXPECT(s.used == 0 && s.live_allocations == 0);
  EXPECT(violations(*h2) == 0);
}

void junk_attach(Algorithm a) {
  Region r(1 << 16);
  std::mt19937_64 rng(11);
  for (uint64_t i = 0; i < r.size; ++i) r.bytes[i] = static_cast<uint8_t>(rng());
  std::unique_ptr<Heap> h;
  EXPECT(heap_attach(r.bytes, r.size, &h) != Status::ok);
  // A valid heap attached with the wrong size is refused too.
  auto good = make(a, r);
  REQUIRE(good);
  good.reset();
  EXPECT(heap_attach(r.bytes, r.size - 4096, &h) != Status::ok);
  EXPECT(heap_attach(r.bytes, 16, &h) != Status::ok);
  EXPECT(heap_attach(r.bytes, r.size, &h) == Status::ok);
}

// Random scribbles over the metadata: operations may report corrupted, never crash or touch memory
// outside the region (ASan watches).
void scribbles(Algorithm a) {
  std::mt19937_64 rng(static_cast<uint64_t>(a) * 1000 + 5);
  for (int round = 0; round < 200; ++round) {
    Region r(1 << 16);
    auto h = make(a, r);
    REQUIRE(h);
    std::vector<uint64_t> offs;
    for (int i = 0; i < 40; ++i) {
      uint64_t off = 0;
      if (h->alloc(1 + rng() % 300, 16, kNoHint, &off) == Status::ok) offs.push_back(off);
    }
    for (size_t i = 0; i < offs.size(); i += 3) h->free(offs[i]);
    int writes = 1 + static_cast<int>(rng() % 8);
    for (int w = 0; w < writes; ++w) {
      uint64_t at = rng() % (r.size - 8);
      if (rng() % 2) at %= 16384;  // aim at metadata half of the time
      uint64_t v = rng() % 4 == 0 ? rng() : rng() % r.size;
      std::memcpy(r.bytes + at, &v, 8);
    }
    CheckResult cr;
    h->check(&cr);
    HeapStats st;
    h->stats(&st);
    h->walk([](const BlockInfo&) { return true; });
    for (int i = 0; i < 100; ++i) {
      uint64_t off = 0;
      if (rng() % 2) {
        h->alloc(1 + rng() % 500, uint64_t(16) << (rng() % 4), rng() % 3 ? kNoHint : rng() % r.size, &off);
      } else if (!offs.empty()) {
        h->free(offs[rng() % offs.size()]);
      }
      if (rng() % 8 == 0 && !offs.empty()) h->resize_in_place(offs[rng() % offs.size()], 1 + rng() % 2000);
    }
    h->check(&cr);
    std::unique_ptr<Heap> again;
    heap_attach(r.bytes, r.size, &again);
  }
}

// Random alloc/free/realloc against a model, check() after every step.
void model_stress(Algorithm a, uint64_t region, int steps, uint64_t max_size) {
  Region r(region);
  auto h = make(a, r);
  REQUIRE(h);
  std::mt19937_64 rng(static_cast<uint64_t>(a) * 77 + region);
  std::map<uint64_t, uint64_t> live;  // offset -> requested size
  for (int step = 0; step < steps; ++step) {
    uint64_t op = rng() % 10;
    if (op < 5 || live.empty()) {
      uint64_t size = 1 + rng() % max_size, off = 0;
      uint64_t align = rng() % 8 == 0 ? uint64_t(16) << (rng() % 9) : 16;
      Status s = h->alloc(size, align, rng() % 16 == 0 ? rng() % region : kNoHint, &off);
      if (s == Status::ok) {
        REQUIRE(off % align == 0 && off + size <= region);
        auto next = live.lower_bound(off);
        REQUIRE(next == live.end() || next->first >= off + size);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          REQUIRE(prev->first + prev->second <= off);
        }
        fill(r.bytes + off, size, off);
        live[off] = size;
      } else {
        REQUIRE(s == Status::out_of_memory);
      }
    } else if (op < 9) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      REQUIRE(intact(r.bytes + it->first, it->second, it->first));
      REQUIRE(h->free(it->first) == Status::ok);
      live.erase(it);
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      uint64_t size = 1 + rng() % max_size, moved = 0;
      uint64_t old = it->first, old_size = it->second;
      Status s = heap_realloc(*h, old, size, 16, &moved);
      if (s == Status::ok) {
        uint64_t kept = old_size < size ? old_size : size;
        REQUIRE(intact(r.bytes + moved, kept, old));
        live.erase(it);
        fill(r.bytes + moved, size, moved);
        live[moved] = size;
      } else {
        REQUIRE(s == Status::out_of_memory);
        REQUIRE(intact(r.bytes + old, old_size, old));
      }
    }
    if (region <= (1 << 16) || step % 512 == 0) REQUIRE(violations(*h) == 0);
    HeapStats st;
    h->stats(&st);
    REQUIRE(st.live_allocations == live.size());
    REQUIRE(st.capacity == st.used + st.free + st.overhead);
  }
  for (auto& [off, size] : live) {
    REQUIRE(intact(r.bytes + off, size, off));
    REQUIRE(h->free(off) == Status::ok);
  }
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0);
  EXPECT(violations(*h) == 0);
}

#define FOR_EACH_ALGORITHM(label, body)                                                  \
  TEST("tlsf: " label) { g_debug = false; body(Algorithm::tlsf); }                     \
  TEST("buddy: " label) { g_debug = false; body(Algorithm::buddy); }                   \
  TEST("bitmap: " label) { g_debug = false; body(Algorithm::bitmap); }                 \
  TEST("debug-tlsf: " label) { g_debug = true; body(Algorithm::tlsf); }                \
  TEST("debug-buddy: " label) { g_debug = true; body(Algorithm::buddy); }              \
  TEST("debug-bitmap: " label) { g_debug = true; body(Algorithm::bitmap); }

FOR_EACH_ALGORITHM("conformance: basic alloc, stats, free", basic)
FOR_EACH_ALGORITHM("conformance: bad arguments and huge sizes", bad_arguments)
FOR_EACH_ALGORITHM("conformance: alignment 16..4096", alignment)
FOR_EACH_ALGORITHM("conformance: foreign and double frees change nothing", refused_frees)
FOR_EACH_ALGORITHM("conformance: exhaustion, reuse, coalescing", exhaustion)
FOR_EACH_ALGORITHM("conformance: hint places at or after it", hint)
FOR_EACH_ALGORITHM("conformance: resize in place and realloc", resize)
FOR_EACH_ALGORITHM("conformance: copied region keeps working", copied_region)
FOR_EACH_ALGORITHM("conformance: junk regions are refused", junk_attach)
FOR_EACH_ALGORITHM("conformance: scribbled metadata never crashes", scribbles)

// Debug mode checks every guard byte on every check(): fewer steps keep the suite quick.
static void small_stress(Algorithm a) { model_stress(a, 1 << 16, g_debug ? 40000 : 200000, 700); }
static void large_stress(Algorithm a) { model_stress(a, 1 << 24, g_debug ? 40000 : 200000, 70000); }
FOR_EACH_ALGORITHM("conformance: model stress, small region, check every step", small_stress)
FOR_EACH_ALGORITHM("conformance: model stress, mixed sizes", large_stress)

}  // namespace
