// Tests of the buddy heap (buddy.cc).
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "buddy.h"
#include "check.h"
#include "heap.h"

using namespace mempool;

namespace {

// A 4096-aligned region owned by the test.
struct Region {
  explicit Region(uint64_t n) : size(n) {
    data = static_cast<uint8_t*>(std::aligned_alloc(4096, n));
    std::memset(data, 0xEE, n);
  }
  ~Region() { std::free(data); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  uint8_t* data;
  uint64_t size;
};

std::unique_ptr<Heap> make(Region& r, HeapOptions o = HeapOptions()) {
  std::unique_ptr<Heap> h;
  if (buddy_format(r.data, r.size, o, &h) != Status::ok) return nullptr;
  return h;
}

uint64_t violations(const Heap& h, std::string* first = nullptr) {
  CheckResult c;
  h.check(&c);
  if (c.violations != 0) std::fprintf(stderr, "    check: %llu violation(s): %s\n",
                                      static_cast<unsigned long long>(c.violations), c.first.c_str());
  if (first) *first = c.first;
  return c.violations;
}

HeapStats stats_of(const Heap& h) {
  HeapStats s;
  h.stats(&s);
  return s;
}

std::vector<BlockInfo> blocks_of(const Heap& h) {
  std::vector<BlockInfo> v;
  h.walk([&](const BlockInfo& b) {
    v.push_back(b);
    return true;
  });
  return v;
}

uint64_t next_pow2(uint64_t x) {
  uint64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

uint64_t area_offset(const Heap& h) { return reinterpret_cast<const RegionHeader*>(h.base())->header_size; }

}  // namespace

TEST("buddy: format and attach") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  EXPECT(h->algorithm() == Algorithm::buddy);
  EXPECT(violations(*h) == 0);
  HeapStats s = stats_of(*h);
  EXPECT(s.capacity == r.size);
  EXPECT(s.used == 0);
  EXPECT(s.free == r.size - area_offset(*h));
  EXPECT(s.free + s.overhead == s.capacity);
  EXPECT(area_offset(*h) % 4096 == 0);
  EXPECT(s.largest_free_block == next_pow2(s.free + 1) / 2);

  const RegionHeader* rh = reinterpret_cast<const RegionHeader*>(r.data);
  EXPECT(rh->magic == kRegionMagic);
  EXPECT(rh->algorithm == static_cast<uint32_t>(Algorithm::buddy));
  EXPECT(rh->size == r.size);

  uint64_t a = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);
  std::unique_ptr<Heap> h2;
  REQUIRE(buddy_attach(r.data, r.size, &h2) == Status::ok);
  uint64_t u = 0;
  EXPECT(h2->usable_size(a, &u) == Status::ok && u == 128);
  EXPECT(violations(*h2) == 0);
  std::unique_ptr<Heap> h3;
  REQUIRE(heap_attach(r.data, r.size, &h3) == Status::ok);
  EXPECT(h3->algorithm() == Algorithm::buddy);
  EXPECT(h3->free(a) == Status::ok);
  EXPECT(h->free(a) == Status::double_free);
  EXPECT(violations(*h) == 0);

  // Through the generic entry point.
  std::unique_ptr<Heap> h4;
  EXPECT(heap_format(Algorithm::buddy, r.data, r.size, HeapOptions(), &h4) == Status::ok);
  EXPECT(heap_min_region_size(Algorithm::buddy, HeapOptions()) == buddy_min_region_size(HeapOptions()));
}

TEST("buddy: options validated, minimum region") {
  Region r(1 << 16);
  std::unique_ptr<Heap> h;
  HeapOptions o;
  o.min_block = 8;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  o.min_block = 24;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  o.min_block = 0;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  o = HeapOptions();
  o.max_block = 8;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  o.max_block = 3000;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  o.min_block = 128;
  o.max_block = 64;
  EXPECT(buddy_format(r.data, r.size, o, &h) == Status::invalid_argument);
  EXPECT(buddy_min_region_size(o) == 0);
  EXPECT(buddy_format(r.data + 16, r.size - 4096, HeapOptions(), &h) == Status::invalid_argument);

  for (uint64_t mb : {16ull, 64ull, 4096ull, 65536ull}) {
    HeapOptions oo;
    oo.min_block = mb;
    uint64_t m = buddy_min_region_size(oo);
    REQUIRE(m != 0);
    Region small(round_up(m, 4096));
    EXPECT(buddy_format(small.data, m, oo, &h) == Status::ok);
    uint64_t off = 0;
    EXPECT(h->alloc(1, 16, kNoHint, &off) == Status::ok);
    EXPECT(violations(*h) == 0);
    EXPECT(buddy_format(small.data, m - 1, oo, &h) == Status::out_of_memory);
  }
  EXPECT(buddy_format(r.data, 100, HeapOptions(), &h) == Status::out_of_memory);
  EXPECT(buddy_format(r.data, 0, HeapOptions(), &h) == Status::out_of_memory);
}

TEST("buddy: alloc free round trip and argument checks") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  HeapStats before = stats_of(*h);
  uint64_t a = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);
  EXPECT(a % 16 == 0 && a >= area_offset(*h) && a + 128 <= r.size);
  std::memset(r.data + a, 0x5A, 128);
  HeapStats s = stats_of(*h);
  EXPECT(s.used == 128 && s.live_allocations == 1 && s.allocations == 1);
  EXPECT(s.free == before.free - 128);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(a) == Status::ok);
  s = stats_of(*h);
  EXPECT(s.used == 0 && s.live_allocations == 0 && s.frees == 1);
  EXPECT(s.free == before.free && s.largest_free_block == before.largest_free_block);
  EXPECT(violations(*h) == 0);

  uint64_t x = 12345;
  EXPECT(h->alloc(0, 16, kNoHint, &x) == Status::invalid_argument);
  EXPECT(h->alloc(kMaxRequest + 1, 16, kNoHint, &x) == Status::invalid_argument);
  EXPECT(h->alloc(16, 24, kNoHint, &x) == Status::invalid_argument);
  EXPECT(h->alloc(16, 8192, kNoHint, &x) == Status::invalid_argument);
  EXPECT(h->alloc(16, 0, kNoHint, &x) == Status::invalid_argument);
  EXPECT(x == 12345);
  EXPECT(stats_of(*h).failed_allocations == 0);
}

TEST("buddy: sizes round to powers of two") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  for (uint64_t size = 1; size <= 9000; size += (size < 300 ? 1 : 37)) {
    uint64_t a = 0, u = 0;
    REQUIRE(h->alloc(size, 16, kNoHint, &a) == Status::ok);
    REQUIRE(h->usable_size(a, &u) == Status::ok);
    EXPECT(u == (size < 16 ? 16 : next_pow2(size)));
    EXPECT((a - area_offset(*h)) % u == 0);
    REQUIRE(h->free(a) == Status::ok);
  }
  EXPECT(stats_of(*h).used == 0);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: alignment is natural, 16..4096") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  std::vector<uint64_t> live;
  for (uint64_t align = 16; align <= 4096; align <<= 1) {
    for (uint64_t size : {1ull, 17ull, 100ull, 3000ull, 5000ull}) {
      uint64_t a = 0, u = 0;
      REQUIRE(h->alloc(size, align, kNoHint, &a) == Status::ok);
      EXPECT(a % align == 0);
      EXPECT(reinterpret_cast<uintptr_t>(r.data + a) % align == 0);
      REQUIRE(h->usable_size(a, &u) == Status::ok);
      EXPECT(u >= align && u >= size);
      EXPECT(reinterpret_cast<uintptr_t>(r.data + a) % (u < 4096 ? u : 4096) == 0);
      live.push_back(a);
    }
  }
  EXPECT(violations(*h) == 0);
  for (uint64_t a : live) EXPECT(h->free(a) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: buddies coalesce back to the initial state") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  HeapStats initial = stats_of(*h);
  std::vector<BlockInfo> initial_blocks = blocks_of(*h);
  std::mt19937_64 rng(7);
  std::vector<uint64_t> live;
  for (int i = 0; i < 2000; ++i) {
    uint64_t a = 0;
    if (h->alloc(1 + rng() % 700, 16, kNoHint, &a) == Status::ok) live.push_back(a);
  }
  EXPECT(stats_of(*h).largest_free_block < initial.largest_free_block);
  std::shuffle(live.begin(), live.end(), rng);
  for (uint64_t a : live) REQUIRE(h->free(a) == Status::ok);
  HeapStats s = stats_of(*h);
  EXPECT(s.used == 0 && s.live_allocations == 0);
  EXPECT(s.free == initial.free);
  EXPECT(s.largest_free_block == initial.largest_free_block);
  std::vector<BlockInfo> after = blocks_of(*h);
  REQUIRE(after.size() == initial_blocks.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT(after[i].offset == initial_blocks[i].offset && after[i].size == initial_blocks[i].size && !after[i].used);
  }
  EXPECT(violations(*h) == 0);
}

TEST("buddy: non-power-of-two region is covered by several top-level blocks") {
  const uint64_t size = (1 << 20) + 5 * 4096 + 3 * 4096 * 16 + 777;
  Region r(round_up(size, 4096));
  std::unique_ptr<Heap> h;
  REQUIRE(buddy_format(r.data, size, HeapOptions(), &h) == Status::ok);
  HeapStats s = stats_of(*h);
  const uint64_t area = size - area_offset(*h);
  EXPECT(s.free + 16 > area && s.free <= area);  // only the sub-min_block tail is lost
  std::vector<BlockInfo> blocks = blocks_of(*h);
  EXPECT(blocks.size() > 2);
  uint64_t total = 0, pos = area_offset(*h);
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT(blocks[i].offset == pos && !blocks[i].used);
    EXPECT(is_power_of_two(blocks[i].size));
    if (i > 0) EXPECT(blocks[i].size < blocks[i - 1].size || blocks[i].size == s.largest_free_block);
    pos += blocks[i].size;
    total += blocks[i].size;
  }
  EXPECT(total == s.free);
  // The whole area can be handed out as min blocks: nothing is wasted.
  std::vector<uint64_t> live;
  uint64_t a = 0;
  while (h->alloc(4096, 16, kNoHint, &a) == Status::ok) live.push_back(a);
  while (h->alloc(16, 16, kNoHint, &a) == Status::ok) live.push_back(a);
  EXPECT(stats_of(*h).free == 0);
  EXPECT(stats_of(*h).used == total);
  EXPECT(violations(*h) == 0);
  for (uint64_t b : live) REQUIRE(h->free(b) == Status::ok);
  EXPECT(blocks_of(*h).size() == blocks.size());  // top-level blocks came back, never merged further
  EXPECT(violations(*h) == 0);
}

TEST("buddy: double free and interior free are refused and change nothing") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  uint64_t a = 0, b = 0, c = 0;
  REQUIRE(h->alloc(64, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(64, 16, kNoHint, &b) == Status::ok);
  REQUIRE(h->alloc(256, 16, kNoHint, &c) == Status::ok);
  REQUIRE(h->free(a) == Status::ok);
  HeapStats s0 = stats_of(*h);
  std::vector<BlockInfo> w0 = blocks_of(*h);
  EXPECT(h->free(a) == Status::double_free);            // a's buddy b is live: a stays a free block start
  EXPECT(h->free(b + 16) == Status::foreign);           // interior of a live block
  EXPECT(h->free(c + 128) == Status::foreign);
  EXPECT(h->free(b + 1) == Status::foreign);
  EXPECT(h->free(0) == Status::foreign);                // the header
  EXPECT(h->free(area_offset(*h) - 16) == Status::foreign);
  EXPECT(h->free(r.size) == Status::foreign);
  EXPECT(h->free(UINT64_MAX) == Status::foreign);
  EXPECT(h->free(kNoHint - 4095) == Status::foreign);
  uint64_t u = 0;
  EXPECT(h->usable_size(a, &u) == Status::double_free);
  EXPECT(h->usable_size(b + 16, &u) == Status::foreign);
  EXPECT(h->resize_in_place(a, 32) == Status::double_free);
  HeapStats s1 = stats_of(*h);
  EXPECT(std::memcmp(&s0, &s1, sizeof s0) == 0);
  std::vector<BlockInfo> w1 = blocks_of(*h);
  EXPECT(w0.size() == w1.size());
  EXPECT(violations(*h) == 0);
  // Freed and coalesced: b merges with a, so b is no longer a block start.
  REQUIRE(h->free(b) == Status::ok);
  EXPECT(h->free(b) == Status::double_free);
  EXPECT(h->free(a) == Status::double_free);
  EXPECT(h->free(c) == Status::ok);
  EXPECT(h->free(c) == Status::double_free);
  EXPECT(stats_of(*h).used == 0);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: exhaustion and reuse") {
  HeapOptions o;
  Region r(4096 * 4);
  auto h = make(r, o);
  REQUIRE(h != nullptr);
  HeapStats s = stats_of(*h);
  std::vector<uint64_t> live;
  uint64_t a = 0;
  while (h->alloc(64, 16, kNoHint, &a) == Status::ok) live.push_back(a);
  EXPECT(live.size() == s.free / 64);
  EXPECT(stats_of(*h).failed_allocations == 1);
  EXPECT(stats_of(*h).largest_free_block == 0);
  EXPECT(h->alloc(16, 16, kNoHint, &a) == Status::out_of_memory);
  EXPECT(stats_of(*h).failed_allocations == 2);
  uint64_t victim = live[live.size() / 2];
  REQUIRE(h->free(victim) == Status::ok);
  EXPECT(stats_of(*h).largest_free_block == 64);
  REQUIRE(h->alloc(50, 16, kNoHint, &a) == Status::ok);
  EXPECT(a == victim);
  EXPECT(violations(*h) == 0);
  for (uint64_t b : live) REQUIRE(h->free(b) == Status::ok);
  // Larger than max_block (the largest power of two in the area): out_of_memory, counted.
  uint64_t before = stats_of(*h).failed_allocations;
  EXPECT(h->alloc(s.largest_free_block + 1, 16, kNoHint, &a) == Status::out_of_memory);
  EXPECT(h->alloc(kMaxRequest, 16, kNoHint, &a) == Status::out_of_memory);
  EXPECT(stats_of(*h).failed_allocations == before + 2);
  REQUIRE(h->alloc(s.largest_free_block, 16, kNoHint, &a) == Status::ok);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: guard words catch overwritten bookkeeping") {
  Region r(1 << 16);
  auto h = make(r);
  REQUIRE(h != nullptr);
  uint64_t a = 0, b = 0;
  REQUIRE(h->alloc(64, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(64, 16, kNoHint, &b) == Status::ok);
  const uint64_t guards[2] = {160, area_offset(*h) - 8};
  for (uint64_t g : guards) {
    uint64_t saved = 0;
    std::memcpy(&saved, r.data + g, 8);
    r.data[g + 3] ^= 0x10;
    HeapStats s0 = stats_of(*h);
    EXPECT(h->free(a) == Status::corrupted);
    uint64_t x = 0;
    EXPECT(h->alloc(16, 16, kNoHint, &x) == Status::corrupted);
    EXPECT(h->resize_in_place(a, 16) == Status::corrupted);
    HeapStats s1 = stats_of(*h);
    EXPECT(s0.used == s1.used && s0.free == s1.free && s0.frees == s1.frees);
    std::string first;
    EXPECT(violations(*h, &first) >= 1);
    EXPECT(first.find("guard") != std::string::npos);
    std::unique_ptr<Heap> h2;
    EXPECT(buddy_attach(r.data, r.size, &h2) == Status::corrupted);
    std::memcpy(r.data + g, &saved, 8);
    CheckResult c;
    h->check(&c);
    EXPECT(c.violations == 0);
  }
  EXPECT(h->free(a) == Status::ok);
  EXPECT(h->free(b) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: resize_in_place") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  uint64_t a = 0, u = 0;
  REQUIRE(h->alloc(64, 16, kNoHint, &a) == Status::ok);  // split from a fresh block: a left buddy up to it
  std::memset(r.data + a, 0x11, 64);
  EXPECT(h->resize_in_place(a, 1000) == Status::ok);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 1024);
  EXPECT(r.data[a + 63] == 0x11);
  EXPECT(stats_of(*h).used == 1024);
  EXPECT(violations(*h) == 0);
  EXPECT(h->resize_in_place(a, 1024) == Status::ok);
  EXPECT(h->resize_in_place(a, 20) == Status::ok);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 32);
  EXPECT(stats_of(*h).used == 32);
  EXPECT(violations(*h) == 0);
  // Right buddy taken: cannot grow; nothing changes.
  uint64_t b = 0;
  REQUIRE(h->alloc(32, 16, kNoHint, &b) == Status::ok);
  EXPECT(b == a + 32);
  HeapStats s0 = stats_of(*h);
  EXPECT(h->resize_in_place(a, 64) == Status::out_of_memory);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 32);
  // b is a right buddy: it never grows in place.
  EXPECT(h->resize_in_place(b, 64) == Status::out_of_memory);
  HeapStats s1 = stats_of(*h);
  EXPECT(s0.used == s1.used && s0.free == s1.free);
  EXPECT(h->resize_in_place(a, 0) == Status::invalid_argument);
  EXPECT(h->resize_in_place(a + 16, 16) == Status::foreign);
  EXPECT(h->resize_in_place(a, s1.largest_free_block * 4) == Status::out_of_memory);
  EXPECT(violations(*h) == 0);
  // Shrink then grow back through the generic realloc.
  uint64_t moved = 0;
  EXPECT(heap_realloc(*h, b, 16, 16, &moved) == Status::ok && moved == b);
  EXPECT(h->usable_size(b, &u) == Status::ok && u == 16);
  std::memset(r.data + a, 0x22, 32);
  EXPECT(heap_realloc(*h, a, 5000, 16, &moved) == Status::ok && moved != a);
  EXPECT(r.data[moved] == 0x22 && r.data[moved + 31] == 0x22);
  EXPECT(h->usable_size(moved, &u) == Status::ok && u == 8192);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(moved) == Status::ok);
  EXPECT(h->free(b) == Status::ok);
  EXPECT(stats_of(*h).used == 0);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: the region copied elsewhere attaches and keeps working") {
  const uint64_t size = 1 << 20;
  Region r(size);
  auto h = make(r);
  REQUIRE(h != nullptr);
  std::mt19937_64 rng(11);
  std::map<uint64_t, std::pair<uint64_t, uint8_t>> live;  // offset -> (size, pattern)
  for (int i = 0; i < 1500; ++i) {
    uint64_t n = 1 + rng() % 900, a = 0;
    if (h->alloc(n, 16, kNoHint, &a) != Status::ok) continue;
    uint8_t p = static_cast<uint8_t>(rng());
    std::memset(r.data + a, p, n);
    live[a] = {n, p};
    if (rng() % 3 == 0) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      REQUIRE(h->free(it->first) == Status::ok);
      live.erase(it);
    }
  }
  HeapStats s0 = stats_of(*h);
  Region copy(size);
  std::memcpy(copy.data, r.data, size);
  std::memset(r.data, 0, size);  // the original is gone
  h.reset();
  std::unique_ptr<Heap> c;
  REQUIRE(buddy_attach(copy.data, size, &c) == Status::ok);
  EXPECT(violations(*c) == 0);
  HeapStats s1 = stats_of(*c);
  EXPECT(s0.used == s1.used && s0.free == s1.free && s0.live_allocations == s1.live_allocations);
  auto intact = [&]() {
    for (auto& kv : live) {
      for (uint64_t i = 0; i < kv.second.first; ++i) {
        if (copy.data[kv.first + i] != kv.second.second) return false;
      }
    }
    return true;
  };
  EXPECT(intact());
  for (int i = 0; i < 3000; ++i) {
    if (rng() % 2 == 0 && !live.empty()) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      REQUIRE(c->free(it->first) == Status::ok);
      live.erase(it);
    } else {
      uint64_t n = 1 + rng() % 2000, a = 0;
      if (c->alloc(n, 16, kNoHint, &a) != Status::ok) continue;
      REQUIRE(live.count(a) == 0);
      uint8_t p = static_cast<uint8_t>(rng());
      std::memset(copy.data + a, p, n);
      live[a] = {n, p};
    }
  }
  EXPECT(intact());
  EXPECT(violations(*c) == 0);
  for (auto& kv : live) REQUIRE(c->free(kv.first) == Status::ok);
  EXPECT(stats_of(*c).used == 0);
  EXPECT(violations(*c) == 0);
}

// Random operations against a model; check() after every step on a small region.
static void stress(uint64_t seed, uint64_t region_size, HeapOptions o, int steps) {
  Region r(round_up(region_size, 4096));
  std::unique_ptr<Heap> h;
  REQUIRE(buddy_format(r.data, region_size, o, &h) == Status::ok);
  const HeapStats initial = stats_of(*h);
  const uint64_t min_block = o.min_block;
  std::mt19937_64 rng(seed);
  struct Live {
    uint64_t usable;
    uint8_t pattern;
  };
  std::map<uint64_t, Live> live;
  uint64_t used = 0, fails = 0;
  auto pick = [&]() {
    auto it = live.begin();
    std::advance(it, static_cast<long>(rng() % live.size()));
    return it;
  };
  auto stamp = [&](uint64_t off, const Live& l) {
    r.data[off] = l.pattern;
    r.data[off + l.usable - 1] = l.pattern;
    r.data[off + l.usable / 2] = l.pattern;
  };
  auto stamped = [&](uint64_t off, const Live& l) {
    return r.data[off] == l.pattern && r.data[off + l.usable - 1] == l.pattern && r.data[off + l.usable / 2] == l.pattern;
  };
  for (int step = 0; step < steps; ++step) {
    const uint64_t op = rng() % 10;
    if (op < 5 || live.empty()) {
      uint64_t n = (rng() % 4 == 0) ? 1 + rng() % 2048 : 1 + rng() % 200;
      uint64_t align = uint64_t(16) << (rng() % 4 == 0 ? rng() % 9 : 0);
      uint64_t hint = rng() % 4 == 0 ? rng() % region_size : kNoHint;
      uint64_t a = 0;
      Status s = h->alloc(n, align, hint, &a);
      if (s == Status::ok) {
        uint64_t u = 0;
        REQUIRE(h->usable_size(a, &u) == Status::ok);
        REQUIRE(u >= n && u >= align && u >= min_block && is_power_of_two(u));
        REQUIRE(a % align == 0 && a + u <= region_size);
        // No overlap with neighbours.
        auto next = live.lower_bound(a);
        REQUIRE(next == live.end() || next->first >= a + u);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          REQUIRE(prev->first + prev->second.usable <= a);
        }
        Live l{u, static_cast<uint8_t>(rng() | 1)};
        stamp(a, l);
        live[a] = l;
        used += u;
      } else {
        REQUIRE(s == Status::out_of_memory);
        ++fails;
      }
    } else if (op < 9) {
      auto it = pick();
      REQUIRE(stamped(it->first, it->second));
      REQUIRE(h->free(it->first) == Status::ok);
      used -= it->second.usable;
      uint64_t off = it->first;
      live.erase(it);
      Status again = h->free(off);
      REQUIRE(again == Status::double_free);
    } else {
      auto it = pick();
      uint64_t n = 1 + rng() % 1024;
      Status s = h->resize_in_place(it->first, n);
      uint64_t u = 0;
      REQUIRE(h->usable_size(it->first, &u) == Status::ok);
      if (s == Status::ok) {
        REQUIRE(u >= n && u == (n <= min_block ? min_block : next_pow2(n)));
        REQUIRE(r.data[it->first] == it->second.pattern);
        // Growing must not have overlapped the next live block.
        auto next = std::next(it);
        REQUIRE(next == live.end() || next->first >= it->first + u);
        used = used - it->second.usable + u;
        it->second.usable = u;
        stamp(it->first, it->second);
      } else {
        REQUIRE(s == Status::out_of_memory);
        REQUIRE(u == it->second.usable);
      }
    }
    HeapStats s = stats_of(*h);
    REQUIRE(s.used == used && s.live_allocations == live.size());
    REQUIRE(s.used + s.free == initial.free);
    CheckResult c;
    h->check(&c);
    if (c.violations != 0) std::fprintf(stderr, "    step %d: %s\n", step, c.first.c_str());
    REQUIRE(c.violations == 0);
  }
  EXPECT(fails > 0);  // the region was small enough to fill up
  for (auto& kv : live) {
    REQUIRE(stamped(kv.first, kv.second));
    REQUIRE(h->free(kv.first) == Status::ok);
  }
  HeapStats s = stats_of(*h);
  EXPECT(s.used == 0 && s.live_allocations == 0);
  EXPECT(s.free == initial.free && s.largest_free_block == initial.largest_free_block);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: seeded random stress against a model") {
  stress(1, 4096 * 6 + 16 * 37, HeapOptions(), 120000);
}

TEST("buddy: seeded random stress, min_block 64 and max_block 4096") {
  HeapOptions o;
  o.min_block = 64;
  o.max_block = 4096;
  stress(2, 4096 * 9, o, 40000);
}

TEST("buddy: min_block and max_block options") {
  Region r(1 << 20);
  HeapOptions o;
  o.min_block = 64;
  o.max_block = 4096;
  auto h = make(r, o);
  REQUIRE(h != nullptr);
  EXPECT(stats_of(*h).largest_free_block == 4096);
  for (const BlockInfo& b : blocks_of(*h)) EXPECT(b.size == 4096 && !b.used);
  uint64_t a = 0, u = 0;
  REQUIRE(h->alloc(1, 16, kNoHint, &a) == Status::ok);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 64);
  EXPECT(h->free(a + 16) == Status::foreign);  // not a min_block boundary
  uint64_t big = 0;
  EXPECT(h->alloc(4097, 16, kNoHint, &big) == Status::out_of_memory);
  REQUIRE(h->alloc(4096, 4096, kNoHint, &big) == Status::ok);
  EXPECT(h->resize_in_place(big, 8192) == Status::out_of_memory);
  EXPECT(h->free(big) == Status::ok);
  EXPECT(h->free(a) == Status::ok);
  // Coalescing stops at max_block.
  for (const BlockInfo& b : blocks_of(*h)) EXPECT(b.size == 4096 && !b.used);
  EXPECT(violations(*h) == 0);
  std::unique_ptr<Heap> h2;
  REQUIRE(buddy_attach(r.data, r.size, &h2) == Status::ok);
  EXPECT(h2->alloc(4097, 16, kNoHint, &big) == Status::out_of_memory);
  EXPECT(h2->alloc(10, 16, kNoHint, &a) == Status::ok && h2->usable_size(a, &u) == Status::ok && u == 64);

  // max_block larger than the area: allowed; blocks stay within the area.
  Region r2(1 << 16);
  HeapOptions o2;
  o2.max_block = uint64_t(1) << 30;
  auto h3 = make(r2, o2);
  REQUIRE(h3 != nullptr);
  EXPECT(h3->alloc(1 << 20, 16, kNoHint, &a) == Status::out_of_memory);
  EXPECT(h3->alloc(16, 16, kNoHint, &a) == Status::ok);
  EXPECT(h3->free(a) == Status::ok);
  EXPECT(violations(*h3) == 0);
  std::unique_ptr<Heap> h4;
  EXPECT(buddy_attach(r2.data, r2.size, &h4) == Status::ok);
}

TEST("buddy: hint places the block at or after it") {
  Region r(1 << 20);
  auto h = make(r);
  REQUIRE(h != nullptr);
  const uint64_t start = area_offset(*h);
  uint64_t a = 0;
  REQUIRE(h->alloc(100, 16, start + 100000, &a) == Status::ok);
  EXPECT(a >= start + 100000 && a < start + 100000 + 128);
  uint64_t b = 0;
  REQUIRE(h->alloc(100, 16, start + 100000, &b) == Status::ok);
  EXPECT(b >= start + 100000 && b != a);
  uint64_t d = 0;
  REQUIRE(h->alloc(64, 16, r.size + 4096, &d) == Status::ok);  // hint past the end: normal choice
  REQUIRE(h->alloc(64, 16, 0, &d) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("buddy: walk visits blocks in address order") {
  Region r(1 << 18);
  auto h = make(r);
  REQUIRE(h != nullptr);
  uint64_t a = 0, b = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(3000, 16, kNoHint, &b) == Status::ok);
  std::vector<BlockInfo> v = blocks_of(*h);
  uint64_t pos = area_offset(*h), used = 0, n = 0;
  for (const BlockInfo& bi : v) {
    EXPECT(bi.offset == pos);
    pos += bi.size;
    if (bi.used) used += bi.size, ++n;
  }
  EXPECT(n == 2 && used == 128 + 4096);
  int visited = 0;
  EXPECT(h->walk([&](const BlockInfo&) { return ++visited < 2; }) == Status::ok);
  EXPECT(visited == 2);
}

TEST("buddy: junk, foreign and damaged regions do not attach") {
  const uint64_t size = 1 << 16;
  Region r(size);
  std::unique_ptr<Heap> h;
  std::memset(r.data, 0, size);
  EXPECT(buddy_attach(r.data, size, &h) == Status::incompatible);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100; ++i) {
    for (uint64_t j = 0; j < size; ++j) r.data[j] = static_cast<uint8_t>(rng());
    Status s = buddy_attach(r.data, size, &h);
    EXPECT(s == Status::incompatible || s == Status::corrupted);
  }
  EXPECT(buddy_attach(r.data, 100, &h) == Status::incompatible);
  EXPECT(buddy_attach(r.data, 10, &h) == Status::incompatible);

  // A good heap with one header field changed at a time.
  Region good(size);
  auto g = make(good);
  REQUIRE(g != nullptr);
  uint64_t a = 0;
  REQUIRE(g->alloc(100, 16, kNoHint, &a) == Status::ok);
  EXPECT(buddy_attach(good.data, size - 4096, &h) == Status::incompatible);  // size differs
  for (uint64_t off = 0; off < 160; ++off) {
    if (off >= 32 && off < 80) continue;  // the counters may change
    std::memcpy(r.data, good.data, size);
    r.data[off] ^= 0x41;
    Status s = buddy_attach(r.data, size, &h);
    EXPECT(s == Status::incompatible || s == Status::corrupted);
  }
  // Another algorithm's header.
  std::memcpy(r.data, good.data, size);
  reinterpret_cast<RegionHeader*>(r.data)->algorithm = static_cast<uint32_t>(Algorithm::tlsf);
  EXPECT(buddy_attach(r.data, size, &h) == Status::incompatible);
  std::memcpy(r.data, good.data, size);
  reinterpret_cast<RegionHeader*>(r.data)->version = 99;
  EXPECT(buddy_attach(r.data, size, &h) == Status::incompatible);
}

TEST("buddy: scribbled metadata is reported, never followed out of bounds") {
  const uint64_t size = 1 << 16;
  Region good(size);
  auto g = make(good);
  REQUIRE(g != nullptr);
  const uint64_t start = area_offset(*g);
  std::mt19937_64 rng(5);
  std::vector<uint64_t> live;
  for (int i = 0; i < 300; ++i) {
    uint64_t a = 0;
    if (g->alloc(1 + rng() % 300, 16, kNoHint, &a) == Status::ok) live.push_back(a);
    if (rng() % 3 == 0 && !live.empty()) {
      size_t k = rng() % live.size();
      REQUIRE(g->free(live[k]) == Status::ok);
      live.erase(live.begin() + static_cast<long>(k));
    }
  }
  REQUIRE(violations(*g) == 0);
  // A free-list head pointing out of the region, into the header, misaligned.
  Region r(size);
  for (uint64_t bogus : {uint64_t(8), size + 64, start + 8, start + 24, UINT64_MAX - 7}) {
    std::memcpy(r.data, good.data, size);
    std::unique_ptr<Heap> h;
    REQUIRE(buddy_attach(r.data, size, &h) == Status::ok);
    for (uint32_t o = 4; o < 16; ++o) std::memcpy(r.data + 168 + 16 + 8 * o, &bogus, 8);
    std::memset(r.data + 168 + 8, 0xff, 8);  // every order looks non-empty
    uint64_t a = 0;
    EXPECT(h->alloc(16, 16, kNoHint, &a) == Status::corrupted);
    EXPECT(h->alloc(16, 16, start + 4000, &a) == Status::corrupted);
    CheckResult c;
    h->check(&c);
    EXPECT(c.violations > 0);
  }
  // Random scribbles over the state, the side table and the area: any status, no crash, check() reports
  // (ASan/UBSan catch any stray access).
  uint64_t reported = 0;
  for (int round = 0; round < 300; ++round) {
    std::memcpy(r.data, good.data, size);
    std::unique_ptr<Heap> h;
    REQUIRE(buddy_attach(r.data, size, &h) == Status::ok);
    int n = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n; ++i) {
      uint64_t where = rng() % 3 == 0 ? 168 + rng() % (start - 168 - 8) : start + rng() % (size - start);
      r.data[where] = static_cast<uint8_t>(rng());
    }
    for (int i = 0; i < 200; ++i) {
      uint64_t a = 0;
      switch (rng() % 4) {
        case 0: h->alloc(1 + rng() % 500, 16, rng() % 2 ? kNoHint : rng() % size, &a); break;
        case 1: h->free(live.empty() ? rng() % size : live[rng() % live.size()]); break;
        case 2: h->resize_in_place(live.empty() ? rng() % size : live[rng() % live.size()], 1 + rng() % 600); break;
        default: h->free(start + 16 * (rng() % ((size - start) / 16))); break;
      }
    }
    CheckResult c;
    h->check(&c);
    reported += c.violations;
    h->walk([](const BlockInfo&) { return true; });
    HeapStats s;
    h->stats(&s);
    EXPECT(s.used + s.free + s.overhead == s.capacity);
  }
  EXPECT(reported > 0);
}

namespace {

// Offsets of the buddy layout the rebuild tests scribble on (buddy.h).
constexpr uint64_t kFreeBytesAt = 168;
constexpr uint64_t kMaskAt = 176;
constexpr uint64_t kHeadsAt = 184;
constexpr uint64_t kTableAt = 696;
constexpr uint64_t kUsedAt = 32, kPeakAt = 40, kLiveAt = 48;

void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  std::memcpy(&v, p, 8);
  return v;
}

struct Patterned {
  uint64_t off, n;
  uint8_t pat;
};

// A heap with a mix of live and free blocks of several orders, every live block filled with a pattern.
std::vector<Patterned> populate(Heap& h, uint8_t* base, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Patterned> live;
  for (int i = 0; i < 400; ++i) {
    uint64_t a = 0, n = 1 + rng() % (rng() % 8 == 0 ? 3000 : 200);
    if (h.alloc(n, 16, kNoHint, &a) == Status::ok) live.push_back({a, n, static_cast<uint8_t>(1 + i % 250)});
    if (rng() % 2 == 0 && !live.empty()) {
      size_t k = rng() % live.size();
      if (h.free(live[k].off) != Status::ok) return {};
      live.erase(live.begin() + static_cast<long>(k));
    }
  }
  for (auto& b : live) std::memset(base + b.off, b.pat, b.n);
  return live;
}

bool intact(const Heap& h, const uint8_t* base, const std::vector<Patterned>& live) {
  for (auto& b : live) {
    uint64_t u = 0;
    if (h.usable_size(b.off, &u) != Status::ok || u < b.n) return false;
    for (uint64_t i = 0; i < b.n; ++i) {
      if (base[b.off + i] != b.pat) return false;
    }
  }
  return true;
}

// After a rebuild the heap must keep working: more allocations, every block freed, back to one state.
void drains_to_empty(Heap& h, uint8_t* base, std::vector<Patterned> live, const HeapStats& fresh) {
  std::vector<uint64_t> more;
  for (int i = 0; i < 50; ++i) {
    uint64_t a = 0;
    if (h.alloc(16 + 32 * static_cast<uint64_t>(i), 16, kNoHint, &a) == Status::ok) {
      std::memset(base + a, 0x77, 16);
      more.push_back(a);
    }
  }
  EXPECT(intact(h, base, live));
  for (uint64_t a : more) EXPECT(h.free(a) == Status::ok);
  for (auto& b : live) EXPECT(h.free(b.off) == Status::ok);
  EXPECT(violations(h) == 0);
  HeapStats s = stats_of(h);
  EXPECT(s.used == 0 && s.live_allocations == 0);
  EXPECT(s.free == fresh.free && s.largest_free_block == fresh.largest_free_block);
}

}  // namespace

TEST("buddy: rebuild recomputes lists, mask, free bytes and counters from the side table") {
  const uint64_t size = 1 << 18;
  Region fresh_r(size);
  auto fresh = make(fresh_r);
  REQUIRE(fresh != nullptr);
  const HeapStats fresh_stats = stats_of(*fresh);
  Region good(size);
  auto g = make(good);
  REQUIRE(g != nullptr);
  const std::vector<Patterned> live = populate(*g, good.data, 11);
  REQUIRE(!live.empty());
  REQUIRE(violations(*g) == 0);
  const HeapStats before = stats_of(*g);
  const uint64_t start = area_offset(*g);
  // Derived structures only, one kind of damage per case.
  const std::vector<std::function<void(uint8_t*)>> damage = {
      [](uint8_t* b) {  // the first non-empty free-list head zeroed (its blocks are lost to alloc)
        for (uint32_t o = 4; o < 64; ++o) {
          if (get64(b + kHeadsAt + 8 * o) != 0) {
            put64(b + kHeadsAt + 8 * o, 0);
            break;
          }
        }
      },
      [](uint8_t* b) { put64(b + kMaskAt, 0); },            // the non-empty mask zeroed
      [](uint8_t* b) { put64(b + kMaskAt, ~uint64_t(0)); },  // every order claims to be non-empty
      [](uint8_t* b) { std::memset(b + kHeadsAt, 0, 64 * 8); },  // every head zeroed
      [](uint8_t* b) { put64(b + kFreeBytesAt, 12345); },
      [](uint8_t* b) {  // counters
        put64(b + kUsedAt, 3);
        put64(b + kLiveAt, 999);
      },
      [start](uint8_t* b) {  // the first free block's links point at nonsense (a cycle onto itself)
        for (uint32_t o = 4; o < 64; ++o) {
          const uint64_t head = get64(b + kHeadsAt + 8 * o);
          if (head >= start) {
            put64(b + head, head);
            put64(b + head + 8, 77);
            break;
          }
        }
      },
  };
  for (size_t i = 0; i < damage.size(); ++i) {
    Region r(size);
    std::memcpy(r.data, good.data, size);
    std::unique_ptr<Heap> h;
    REQUIRE(buddy_attach(r.data, size, &h) == Status::ok);
    damage[i](r.data);
    EXPECT(violations(*h) > 0);
    EXPECT(h->rebuild() == Status::ok);
    EXPECT(violations(*h) == 0);
    EXPECT(intact(*h, r.data, live));
    const HeapStats after = stats_of(*h);
    EXPECT(after.used == before.used && after.live_allocations == before.live_allocations);
    EXPECT(after.free == before.free && after.largest_free_block == before.largest_free_block);
    // Kept as they were.
    EXPECT(after.peak_used == before.peak_used && after.allocations == before.allocations);
    EXPECT(after.frees == before.frees && after.failed_allocations == before.failed_allocations);
    drains_to_empty(*h, r.data, live, fresh_stats);
  }
  // On an undamaged heap rebuild changes nothing that check() or stats() can see.
  EXPECT(g->rebuild() == Status::ok);
  EXPECT(violations(*g) == 0);
  const HeapStats again = stats_of(*g);
  EXPECT(again.used == before.used && again.free == before.free && again.live_allocations == before.live_allocations);
  EXPECT(intact(*g, good.data, live));
}

TEST("buddy: rebuild clears stale interior bytes and merges free buddies left apart") {
  const uint64_t size = 1 << 18;
  Region fresh_r(size);
  auto fresh = make(fresh_r);
  REQUIRE(fresh != nullptr);
  const HeapStats fresh_stats = stats_of(*fresh);
  Region r(size);
  auto h = make(r);
  REQUIRE(h != nullptr);
  const std::vector<Patterned> live = populate(*h, r.data, 12);
  REQUIRE(!live.empty());
  const HeapStats before = stats_of(*h);
  const uint64_t start = area_offset(*h);
  // What a writer killed half-way could leave (or an older one): free blocks split in the table only
  // (upper byte written first, then the lower one), lists and counters untouched; and stale start bytes
  // inside blocks, which the walk skips.
  uint64_t splits = 0, stale = 0;
  for (const BlockInfo& b : blocks_of(*h)) {
    const uint64_t rel = b.offset - start;
    if (!b.used && b.size >= 64) {
      uint32_t o = static_cast<uint32_t>(__builtin_ctzll(b.size));
      r.data[kTableAt + ((rel + b.size / 2) >> 4)] = static_cast<uint8_t>(0x80 | (o - 1));
      r.data[kTableAt + (rel >> 4)] = static_cast<uint8_t>(0x80 | (o - 1));
      r.data[kTableAt + ((rel + b.size / 4) >> 4)] = static_cast<uint8_t>(0x80 | (o - 2));  // lower half split
      r.data[kTableAt + (rel >> 4)] = static_cast<uint8_t>(0x80 | (o - 2));
      ++splits;
    } else if (b.used && b.size >= 64) {
      r.data[kTableAt + ((rel + 16) >> 4)] = 0xC4;  // "used, order 4" inside a live block
      ++stale;
    }
  }
  REQUIRE(splits > 0 && stale > 0);
  EXPECT(violations(*h) > 0);
  EXPECT(h->rebuild() == Status::ok);
  EXPECT(violations(*h) == 0);
  EXPECT(intact(*h, r.data, live));
  const HeapStats after = stats_of(*h);
  EXPECT(after.free == before.free && after.largest_free_block == before.largest_free_block);
  EXPECT(after.used == before.used && after.live_allocations == before.live_allocations);
  // Blocks reported as they were: the merges restored exactly the earlier tiling.
  drains_to_empty(*h, r.data, live, fresh_stats);
}

TEST("buddy: rebuild refuses a side table that does not tile the area, and changes nothing") {
  const uint64_t size = 1 << 16;
  Region good(size);
  auto g = make(good);
  REQUIRE(g != nullptr);
  const std::vector<Patterned> live = populate(*g, good.data, 13);
  REQUIRE(!live.empty());
  const uint64_t start = area_offset(*g);
  const uint64_t unit = (live[0].off - start) >> 4;  // a live block's start byte
  uint64_t big = 0, big_order = 0;                   // a block of at least 64 bytes
  for (const BlockInfo& b : blocks_of(*g)) {
    if (b.size >= 64) {
      big = (b.offset - start) >> 4;
      big_order = static_cast<uint64_t>(__builtin_ctzll(b.size));
      break;
    }
  }
  REQUIRE(big_order != 0);
  const std::vector<std::function<void(uint8_t*)>> damage = {
      [unit](uint8_t* b) { b[kTableAt + unit] = 0; },         // a start byte lost
      [unit](uint8_t* b) { b[kTableAt + unit] = 0xC0 | 3; },  // order below min_block
      [unit](uint8_t* b) { b[kTableAt + unit] = 0xC0 | 40; }, // order above max_block
      [big, big_order](uint8_t* b) {  // a torn split: the lower half written, the upper half's byte never
        b[kTableAt + big] = static_cast<uint8_t>((b[kTableAt + big] & 0xC0) | (big_order - 1));
      },
      [](uint8_t* b) { b[160] ^= 1; },             // low guard word
      [start](uint8_t* b) { b[start - 1] ^= 1; },  // high guard word
      [](uint8_t* b) { b[80] ^= 1; },              // geometry (min_block)
  };
  for (size_t i = 0; i < damage.size(); ++i) {
    Region r(size);
    std::memcpy(r.data, good.data, size);
    std::unique_ptr<Heap> h;
    REQUIRE(buddy_attach(r.data, size, &h) == Status::ok);
    damage[i](r.data);
    std::vector<uint8_t> snapshot(r.data, r.data + size);
    EXPECT(h->rebuild() == Status::corrupted);
    EXPECT(std::memcmp(snapshot.data(), r.data, size) == 0);
  }
}
