// Tests of the bitmap heap (bitmap.h / bitmap.cc).
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "bitmap.h"
#include "check.h"

using namespace mempool;

namespace {

// A 4096-aligned test region.
struct Region {
  // Filled, so that tests comparing bytes never read uninitialised memory (valgrind would say so).
  explicit Region(uint64_t n) : size(n), base(static_cast<uint8_t*>(std::aligned_alloc(4096, n))) {
    std::memset(base, 0xA5, n);
  }
  ~Region() { std::free(base); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  uint64_t size;
  uint8_t* base;
};

std::unique_ptr<Heap> make_heap(Region& r, uint64_t block_size = 16) {
  HeapOptions o;
  o.block_size = block_size;
  std::unique_ptr<Heap> h;
  if (heap_format(Algorithm::bitmap, r.base, r.size, o, &h) != Status::ok) return nullptr;
  return h;
}

// Word w of the bitmap whose word 0 is at p: the used and start bitmaps are interleaved (16 bytes per
// word pair, layout version 3).
struct BitmapWords {
  uint8_t* p;
  uint64_t& operator[](uint64_t w) const { return reinterpret_cast<uint64_t*>(p)[2 * w]; }
};

BitmapHeader read_header(const Region& r) {
  BitmapHeader h;
  std::memcpy(&h, r.base, sizeof h);
  return h;
}

uint64_t violations(const Heap& h, std::string* first = nullptr) {
  CheckResult c;
  h.check(&c);
  if (first) *first = c.first;
  if (c.violations != 0 && !first) std::fprintf(stderr, "  check: %llu violation(s), first: %s\n",
                                      static_cast<unsigned long long>(c.violations), c.first.c_str());
  return c.violations;
}

uint8_t pattern_byte(uint64_t seed, uint64_t i) { return static_cast<uint8_t>((seed * 131 + i * 7 + (i >> 8)) & 0xff); }

void fill(uint8_t* p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i) p[i] = pattern_byte(seed, i);
}

bool intact(const uint8_t* p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != pattern_byte(seed, i)) return false;
  }
  return true;
}

// Collects the walk.
std::vector<BlockInfo> walk_all(const Heap& h, Status* s = nullptr) {
  std::vector<BlockInfo> v;
  Status st = h.walk([&v](const BlockInfo& b) {
    v.push_back(b);
    return true;
  });
  if (s) *s = st;
  return v;
}

}  // namespace

TEST("bitmap: format, attach, options, min size") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  EXPECT(h->algorithm() == Algorithm::bitmap);
  BitmapHeader hd = read_header(r);
  EXPECT(hd.region.magic == kRegionMagic);
  EXPECT(hd.region.algorithm == static_cast<uint32_t>(Algorithm::bitmap));
  EXPECT(hd.region.version == kBitmapVersion);
  EXPECT(hd.region.size == r.size);
  EXPECT(hd.region.header_size % 4096 == 0);
  EXPECT(hd.block_size == 16);
  EXPECT(hd.total_blocks == r.size / 16);
  EXPECT(hd.first_block * 16 == hd.region.header_size);
  EXPECT(hd.levels >= 1 && hd.level_count[hd.levels - 1] == 1);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.capacity == r.size);
  EXPECT(st.used == 0);
  EXPECT(st.free == r.size - hd.region.header_size);
  EXPECT(st.overhead == hd.region.header_size);
  EXPECT(st.largest_free_block == st.free);
  EXPECT(violations(*h) == 0);

  std::unique_ptr<Heap> a;
  EXPECT(heap_attach(r.base, r.size, &a) == Status::ok);
  REQUIRE(a != nullptr);
  EXPECT(a->algorithm() == Algorithm::bitmap);
  EXPECT(violations(*a) == 0);
  std::unique_ptr<Heap> b;
  EXPECT(bitmap_attach(r.base, r.size, &b) == Status::ok);
  EXPECT(bitmap_attach(r.base, r.size - 4096, &b) == Status::incompatible);

  // Options.
  HeapOptions o;
  std::unique_ptr<Heap> x;
  for (uint64_t bad : {uint64_t(0), uint64_t(8), uint64_t(24), uint64_t(48), uint64_t(100), uint64_t(1) << 40}) {
    o.block_size = bad;
    EXPECT(bitmap_format(r.base, r.size, o, &x) == Status::invalid_argument);
    EXPECT(bitmap_min_region_size(o) == 0);
  }
  EXPECT(bitmap_format(r.base + 16, r.size - 4096, HeapOptions{}, &x) == Status::invalid_argument);

  // The minimum size works and one block less does not.
  for (uint64_t bs : {uint64_t(16), uint64_t(64), uint64_t(4096), uint64_t(65536)}) {
    o.block_size = bs;
    uint64_t m = bitmap_min_region_size(o);
    EXPECT(m == heap_min_region_size(Algorithm::bitmap, o));
    REQUIRE(m > 0 && m <= r.size);
    EXPECT(bitmap_format(r.base, m, o, &x) == Status::ok);
    uint64_t off = 0;
    EXPECT(x->alloc(1, 16, kNoHint, &off) == Status::ok);
    EXPECT(x->alloc(1, 16, kNoHint, &off) == Status::out_of_memory);
    EXPECT(violations(*x) == 0);
    EXPECT(bitmap_format(r.base, m - 1, o, &x) == Status::out_of_memory);
    EXPECT(bitmap_format(r.base, m - bs, o, &x) == Status::out_of_memory);
  }
  EXPECT(bitmap_format(r.base, 0, HeapOptions{}, &x) == Status::out_of_memory);
  EXPECT(bitmap_format(r.base, 100, HeapOptions{}, &x) == Status::out_of_memory);
}

TEST("bitmap: alloc/free round trip, usable size, stats, walk") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  HeapStats s0;
  h->stats(&s0);
  const uint64_t hs = read_header(r).region.header_size;

  uint64_t a = 0, b = 0, c = 0;
  REQUIRE(h->alloc(1, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(17, 16, kNoHint, &b) == Status::ok);
  REQUIRE(h->alloc(100, 16, kNoHint, &c) == Status::ok);
  EXPECT(a == hs);  // first fit from the lowest block
  EXPECT(b == a + 16);
  EXPECT(c == b + 32);
  uint64_t u = 0;
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 16);
  EXPECT(h->usable_size(b, &u) == Status::ok && u == 32);
  EXPECT(h->usable_size(c, &u) == Status::ok && u == 112);
  std::memset(r.base + a, 0xa1, 16);
  std::memset(r.base + b, 0xb2, 32);
  std::memset(r.base + c, 0xc3, 112);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 160);
  EXPECT(st.live_allocations == 3);
  EXPECT(st.allocations == 3);
  EXPECT(st.free == s0.free - 160);
  EXPECT(st.capacity == st.used + st.free + st.overhead);
  EXPECT(st.peak_used == 160);
  EXPECT(violations(*h) == 0);

  Status ws;
  auto w = walk_all(*h, &ws);
  EXPECT(ws == Status::ok);
  REQUIRE(w.size() == 4);
  EXPECT(w[0].offset == a && w[0].size == 16 && w[0].used);
  EXPECT(w[1].offset == b && w[1].size == 32 && w[1].used);
  EXPECT(w[2].offset == c && w[2].size == 112 && w[2].used);
  EXPECT(w[3].offset == c + 112 && !w[3].used && w[3].size == st.free);

  EXPECT(h->free(b) == Status::ok);
  w = walk_all(*h);
  REQUIRE(w.size() == 4);
  EXPECT(w[1].offset == b && w[1].size == 32 && !w[1].used);
  // Early termination of the walk.
  int seen = 0;
  EXPECT(h->walk([&seen](const BlockInfo&) { return ++seen < 2; }) == Status::ok);
  EXPECT(seen == 2);

  // The hole is reused by first fit.
  uint64_t d = 0;
  EXPECT(h->alloc(20, 16, kNoHint, &d) == Status::ok && d == b);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(h->free(c) == Status::ok);
  EXPECT(h->free(d) == Status::ok);
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0 && st.free == s0.free && st.frees == 4);
  EXPECT(st.largest_free_block == s0.free);
  EXPECT(violations(*h) == 0);

  // Bad requests.
  uint64_t off = 0;
  EXPECT(h->alloc(0, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(kMaxRequest + 1, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(UINT64_MAX, 16, kNoHint, &off) == Status::invalid_argument);
  EXPECT(h->alloc(kMaxRequest, 16, kNoHint, &off) == Status::out_of_memory);
  for (uint64_t bad : {uint64_t(0), uint64_t(1), uint64_t(8), uint64_t(24), uint64_t(8192), UINT64_MAX}) {
    EXPECT(h->alloc(16, bad, kNoHint, &off) == Status::invalid_argument);
  }
  h->stats(&st);
  EXPECT(st.failed_allocations == 1);
  // A whole-region request.
  EXPECT(h->alloc(s0.free, 16, kNoHint, &off) == Status::ok && off == hs);
  EXPECT(h->free(off) == Status::ok);
  EXPECT(h->alloc(s0.free + 1, 16, kNoHint, &off) == Status::out_of_memory);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: alignment 16..4096") {
  for (uint64_t bs : {uint64_t(16), uint64_t(64), uint64_t(1024)}) {
    Region r(4 << 20);
    auto h = make_heap(r, bs);
    REQUIRE(h != nullptr);
    std::mt19937_64 rng(7 + bs);
    std::vector<uint64_t> live;
    for (int i = 0; i < 600; ++i) {
      uint64_t align = uint64_t(16) << (rng() % 9);
      uint64_t size = 1 + rng() % 700;
      uint64_t off = 0;
      REQUIRE(h->alloc(size, align, kNoHint, &off) == Status::ok);
      EXPECT(off % align == 0);
      EXPECT(off % bs == 0);
      uint64_t u = 0;
      EXPECT(h->usable_size(off, &u) == Status::ok && u == round_up(size, bs));
      live.push_back(off);
      if (rng() % 3 == 0) {
        size_t k = rng() % live.size();
        EXPECT(h->free(live[k]) == Status::ok);
        live[k] = live.back();
        live.pop_back();
      }
    }
    EXPECT(violations(*h) == 0);
    for (uint64_t off : live) EXPECT(h->free(off) == Status::ok);
    HeapStats st;
    h->stats(&st);
    EXPECT(st.used == 0 && st.live_allocations == 0);
    EXPECT(violations(*h) == 0);
  }
  // An aligned request finds an aligned hole that is an exact fit, even in a fragmented heap.
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  const uint64_t hs = read_header(r).region.header_size;
  std::vector<uint64_t> offs;
  uint64_t off = 0;
  while (h->alloc(16, 16, kNoHint, &off) == Status::ok) offs.push_back(off);
  // Free 32-byte holes at odd 64-byte positions, then one at a 4096 boundary.
  for (uint64_t o : offs) {
    if ((o - hs) % 256 == 48 || (o - hs) % 256 == 64) EXPECT(h->free(o) == Status::ok);
  }
  const uint64_t target = hs + 8 * 4096;
  EXPECT(h->free(target) == Status::ok);
  EXPECT(h->free(target + 16) == Status::ok);
  EXPECT(h->alloc(32, 4096, kNoHint, &off) == Status::ok && off == target);
  EXPECT(h->alloc(32, 4096, kNoHint, &off) == Status::out_of_memory);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: hint") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  const uint64_t hs = read_header(r).region.header_size;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  EXPECT(h->alloc(64, 16, hs + 100 * 16, &a) == Status::ok && a == hs + 100 * 16);
  // A hint that is not block-aligned places the block at the next block.
  EXPECT(h->alloc(64, 16, hs + 200 * 16 + 3, &b) == Status::ok && b == hs + 201 * 16);
  // A hint inside a live block goes past it.
  EXPECT(h->alloc(16, 16, a + 16, &c) == Status::ok && c == a + 64);
  // Alignment wins over the hint's exact position.
  EXPECT(h->alloc(16, 4096, hs + 5, &d) == Status::ok && d == hs + 4096);
  // Without a hint, first fit from the start.
  uint64_t e = 0;
  EXPECT(h->alloc(16, 16, kNoHint, &e) == Status::ok && e == hs);
  // A hint inside the metadata or beyond the region: search from the start / wrap around.
  uint64_t f = 0, g = 0;
  EXPECT(h->alloc(16, 16, 0, &f) == Status::ok && f == hs + 16);
  EXPECT(h->alloc(16, 16, r.size + 4096, &g) == Status::ok && g == hs + 32);
  // Fill everything after a point so that a hint there has to wrap.
  HeapStats st;
  h->stats(&st);
  uint64_t tail = 0;
  const uint64_t tail_start = hs + 64 * 4096;
  // Allocate all blocks from tail_start to the end with hints.
  uint64_t o = 0;
  while (h->alloc(4096, 16, tail_start, &o) == Status::ok && o >= tail_start) tail += 1;
  EXPECT(tail > 0);
  EXPECT(o < tail_start);  // the last one wrapped around
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: refused frees change nothing") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  const BitmapHeader hd = read_header(r);
  const uint64_t hs = hd.region.header_size;
  uint64_t a = 0, b = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(100, 16, kNoHint, &b) == Status::ok);
  REQUIRE(h->free(a) == Status::ok);
  std::vector<uint8_t> before(r.base, r.base + hs);
  auto same = [&]() { return std::memcmp(before.data(), r.base, hs) == 0; };
  EXPECT(h->free(a) == Status::double_free);
  EXPECT(same());
  EXPECT(h->free(b + 16) == Status::foreign);  // interior of a live allocation
  EXPECT(same());
  EXPECT(h->free(b + 8) == Status::foreign);  // misaligned
  EXPECT(h->free(b + 1) == Status::foreign);
  EXPECT(h->free(0) == Status::foreign);  // metadata
  EXPECT(h->free(64) == Status::foreign);
  EXPECT(h->free(hs - 16) == Status::foreign);
  EXPECT(h->free(r.size) == Status::foreign);  // out of range
  EXPECT(h->free(r.size + 4096) == Status::foreign);
  EXPECT(h->free(UINT64_MAX) == Status::foreign);
  EXPECT(h->free(UINT64_MAX - 15) == Status::foreign);
  EXPECT(h->free(b + 4096) == Status::double_free);  // a free block (never allocated)
  EXPECT(same());
  uint64_t u = 0;
  EXPECT(h->usable_size(a, &u) == Status::double_free);
  EXPECT(h->usable_size(b + 16, &u) == Status::foreign);
  EXPECT(h->resize_in_place(a, 32) == Status::double_free);
  EXPECT(h->resize_in_place(b + 16, 32) == Status::foreign);
  EXPECT(h->resize_in_place(b, 0) == Status::invalid_argument);
  EXPECT(h->resize_in_place(b, kMaxRequest + 1) == Status::invalid_argument);
  EXPECT(same());
  HeapStats st;
  h->stats(&st);
  EXPECT(st.live_allocations == 1 && st.used == 112 && st.frees == 1);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(b) == Status::ok);
  EXPECT(h->free(b) == Status::double_free);
}

TEST("bitmap: exhaustion, free, reuse") {
  Region r(256 << 10);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  HeapStats s0;
  h->stats(&s0);
  std::vector<uint64_t> offs;
  uint64_t off = 0;
  Status s;
  while ((s = h->alloc(48, 16, kNoHint, &off)) == Status::ok) offs.push_back(off);
  EXPECT(s == Status::out_of_memory);
  EXPECT(offs.size() == s0.free / 48);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.failed_allocations == 1);
  EXPECT(st.free == s0.free - offs.size() * 48);
  EXPECT(st.largest_free_block == st.free);
  // Fill the remaining bytes with 16-byte blocks.
  while (h->alloc(16, 16, kNoHint, &off) == Status::ok) offs.push_back(off);
  h->stats(&st);
  EXPECT(st.free == 0 && st.largest_free_block == 0);
  EXPECT(st.used == s0.free);
  EXPECT(violations(*h) == 0);
  // Free two neighbours and a far one: a 96-byte request fits only in the neighbours.
  const uint64_t mid = offs[offs.size() / 2];
  EXPECT(h->free(mid) == Status::ok);
  EXPECT(h->free(mid + 48) == Status::ok);
  EXPECT(h->free(offs[3]) == Status::ok);
  h->stats(&st);
  EXPECT(st.largest_free_block == 96);
  EXPECT(h->alloc(96, 16, kNoHint, &off) == Status::ok && off == mid);
  EXPECT(h->alloc(64, 16, kNoHint, &off) == Status::out_of_memory);
  EXPECT(h->alloc(48, 16, kNoHint, &off) == Status::ok && off == offs[3]);
  EXPECT(violations(*h) == 0);
  // Free everything; the whole space comes back as one run.
  EXPECT(h->free(mid) == Status::ok);
  for (uint64_t o : offs) {
    if (o != mid && o != mid + 48) EXPECT(h->free(o) == Status::ok);
  }
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0 && st.free == s0.free && st.largest_free_block == s0.free);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: resize_in_place") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  uint64_t a = 0, b = 0, u = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);  // 112 bytes
  REQUIRE(h->alloc(16, 16, a + 512, &b) == Status::ok);  // leaves a 400-byte gap after a
  EXPECT(b == a + 512);
  fill(r.base + a, 100, 1);
  EXPECT(h->resize_in_place(a, 112) == Status::ok);  // same block count
  EXPECT(h->resize_in_place(a, 500) == Status::ok);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 512);
  EXPECT(h->resize_in_place(a, 513) == Status::out_of_memory);  // b is in the way
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 512);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 512 + 16 && st.peak_used == 528 && st.live_allocations == 2);
  EXPECT(violations(*h) == 0);
  EXPECT(h->resize_in_place(a, 20) == Status::ok);  // shrink to 32
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 32);
  h->stats(&st);
  EXPECT(st.used == 48 && st.peak_used == 528);
  EXPECT(intact(r.base + a, 20, 1));
  uint64_t c = 0;
  EXPECT(h->alloc(16, 16, kNoHint, &c) == Status::ok && c == a + 32);  // the freed tail is reusable
  EXPECT(h->resize_in_place(a, 33) == Status::out_of_memory);
  EXPECT(h->free(c) == Status::ok);
  EXPECT(violations(*h) == 0);
  // Growing to the end of the region and past it.
  EXPECT(h->resize_in_place(b, r.size - b) == Status::ok);
  EXPECT(h->resize_in_place(b, r.size - b + 16) == Status::out_of_memory);
  EXPECT(h->resize_in_place(b, kMaxRequest) == Status::out_of_memory);
  h->stats(&st);
  EXPECT(st.used == 32 + (r.size - b));
  EXPECT(violations(*h) == 0);
  // heap_realloc over the bitmap heap: moves when it cannot grow in place.
  uint64_t moved = 0;
  EXPECT(h->resize_in_place(b, 16) == Status::ok);
  fill(r.base + a, 32, 2);
  EXPECT(heap_realloc(*h, a, 400, 16, &moved) == Status::ok);
  EXPECT(moved == a);  // grows in place into the gap before b
  EXPECT(heap_realloc(*h, a, 600, 16, &moved) == Status::ok && moved != a);
  EXPECT(intact(r.base + moved, 32, 2));
  EXPECT(h->usable_size(a, &u) == Status::double_free);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: check detects corruption") {
  Region r(1 << 20);
  std::vector<uint8_t> pristine;
  const uint64_t hs = [&]() {
    auto h = make_heap(r);
    uint64_t off = 0;
    for (int i = 0; i < 50; ++i) h->alloc(16 + 16 * static_cast<uint64_t>(i), 16, kNoHint, &off);
    return read_header(r).region.header_size;
  }();
  pristine.assign(r.base, r.base + hs);
  const BitmapHeader hd = read_header(r);
  auto reattach = [&]() {
    std::memcpy(r.base, pristine.data(), hs);
    std::unique_ptr<Heap> h;
    if (bitmap_attach(r.base, r.size, &h) != Status::ok) return std::unique_ptr<Heap>();
    return h;
  };
  {
    auto h = reattach();
    REQUIRE(h != nullptr);
    EXPECT(violations(*h) == 0);
  }
  BitmapWords used{r.base + hd.used_offset}, start{r.base + hd.start_offset};
  const uint64_t w = hd.first_block / 64;  // the first data word (fully allocated)
  struct Case {
    const char* what;
    std::function<void()> corrupt;
  };
  std::vector<Case> cases = {
      {"flip a used bit", [&] { used[w] ^= uint64_t(1) << 5; }},
      {"clear a used word", [&] { used[w + 1] = 0; }},
      {"set a used bit in free space", [&] { used[hd.words - 2] |= 1; }},
      {"start bit on a free block", [&] { start[hd.words - 2] |= 1; }},
      {"extra start bit inside an allocation", [&] { start[w + 2] = ~uint64_t(0); }},
      {"metadata block marked free", [&] { used[0] &= ~uint64_t(2); }},
      {"summary", [&] {
         // Node 1 of level 1: bump its max (packed: bits 21..41; wide: the second field).
         uint8_t* node = r.base + hd.level_offset[0] + (bitmap_level_packed(1) ? 8 : sizeof(BitmapSummary));
         uint64_t v;
         std::memcpy(&v, node, 8);
         v += bitmap_level_packed(1) ? uint64_t(1) << kBitmapPackedBits : 0;
         std::memcpy(node, &v, 8);
         if (!bitmap_level_packed(1)) reinterpret_cast<BitmapSummary*>(node)->max += 1;
       }},
      {"root summary", [&] { r.base[hd.level_offset[hd.levels - 1]] ^= 2; }},
      {"used counter", [&] { reinterpret_cast<BitmapHeader*>(r.base)->region.counters.used += 16; }},
      {"live counter", [&] { reinterpret_cast<BitmapHeader*>(r.base)->region.counters.live = 7; }},
      {"free block count", [&] { reinterpret_cast<BitmapHeader*>(r.base)->free_blocks -= 1; }},
      {"geometry field after attach", [&] { reinterpret_cast<BitmapHeader*>(r.base)->words += 1; }},
  };
  for (auto& c : cases) {
    auto h = reattach();
    REQUIRE(h != nullptr);
    c.corrupt();
    std::string first;
    uint64_t v = violations(*h, &first);
    if (v == 0) std::fprintf(stderr, "  not detected: %s\n", c.what);
    EXPECT(v > 0);
    // Operations on the damaged heap stay inside the region and terminate.
    uint64_t off = 0;
    for (int i = 0; i < 20; ++i) {
      if (h->alloc(16 + 48 * static_cast<uint64_t>(i), 16 << (i % 8), kNoHint, &off) == Status::ok) {
        h->free(off);
      }
    }
    HeapStats st;
    h->stats(&st);
    EXPECT(st.capacity == st.used + st.free + st.overhead);
    walk_all(*h);
  }
}

TEST("bitmap: copied region keeps working") {
  const uint64_t size = 2 << 20;
  Region r(size);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  std::mt19937_64 rng(42);
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> live;  // offset -> (size, seed)
  uint64_t seed = 1;
  for (int i = 0; i < 3000; ++i) {
    uint64_t sz = 1 + rng() % 1500, off = 0;
    if (h->alloc(sz, uint64_t(16) << (rng() % 4), kNoHint, &off) == Status::ok) {
      fill(r.base + off, sz, seed);
      live[off] = {sz, seed++};
    }
    if (!live.empty() && rng() % 3 == 0) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      EXPECT(h->free(it->first) == Status::ok);
      live.erase(it);
    }
  }
  HeapStats before;
  h->stats(&before);
  Region copy(size);
  std::memcpy(copy.base, r.base, size);
  std::memset(r.base, 0xee, size);  // the original is gone
  h.reset();
  std::unique_ptr<Heap> c;
  REQUIRE(heap_attach(copy.base, size, &c) == Status::ok);
  EXPECT(violations(*c) == 0);
  HeapStats after;
  c->stats(&after);
  EXPECT(after.used == before.used && after.live_allocations == before.live_allocations);
  EXPECT(after.free == before.free && after.largest_free_block == before.largest_free_block);
  for (auto& kv : live) {
    uint64_t u = 0;
    EXPECT(c->usable_size(kv.first, &u) == Status::ok && u >= kv.second.first);
    EXPECT(intact(copy.base + kv.first, kv.second.first, kv.second.second));
  }
  for (int i = 0; i < 3000; ++i) {
    uint64_t sz = 1 + rng() % 1500, off = 0;
    if (c->alloc(sz, 16, kNoHint, &off) == Status::ok) {
      fill(copy.base + off, sz, seed);
      live[off] = {sz, seed++};
    }
    if (!live.empty() && rng() % 2 == 0) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      EXPECT(c->free(it->first) == Status::ok);
      live.erase(it);
    }
  }
  for (auto& kv : live) EXPECT(intact(copy.base + kv.first, kv.second.first, kv.second.second));
  EXPECT(violations(*c) == 0);
}

namespace {

// Seeded random stress against a model. check() after every step when `check_every` is set.
void stress(uint64_t region_size, uint64_t block_size, uint64_t seed, int ops, bool check_every, bool fills = true,
            uint64_t big = 4000) {
  Region r(region_size);
  auto h = make_heap(r, block_size);
  REQUIRE(h != nullptr);
  HeapStats s0;
  h->stats(&s0);
  const uint64_t hs = read_header(r).region.header_size;
  std::mt19937_64 rng(seed);
  struct Live {
    uint64_t size, usable, seed;
  };
  std::map<uint64_t, Live> live;
  uint64_t used = 0, pat = 1, failures = 0;
  for (int i = 0; i < ops; ++i) {
    const uint64_t op = rng() % 100;
    if (op < 50 || live.empty()) {
      uint64_t sz = rng() % 4 == 0 ? 1 + rng() % big : 1 + rng() % 300;
      uint64_t align = rng() % 4 == 0 ? uint64_t(16) << (rng() % 9) : 16;
      uint64_t hint = rng() % 5 == 0 ? hs + (rng() % (region_size - hs)) : kNoHint;
      // Reference: the first fit at or after the hint (then from the start), from the walk's free runs.
      uint64_t expect = UINT64_MAX;
      if (check_every) {
        const uint64_t u = round_up(sz, block_size);
        auto runs = walk_all(*h);
        auto first_fit = [&](uint64_t from) {
          for (auto& b : runs) {
            if (b.used || b.offset + b.size <= from) continue;
            uint64_t at = round_up(b.offset > from ? b.offset : from, align);
            if (at + u <= b.offset + b.size) return at;
          }
          return UINT64_MAX;
        };
        if (hint != kNoHint) expect = first_fit(round_up(hint, block_size));
        if (expect == UINT64_MAX) expect = first_fit(0);
      }
      uint64_t off = 0;
      Status s = h->alloc(sz, align, hint, &off);
      if (check_every) {
        REQUIRE((s == Status::out_of_memory) == (expect == UINT64_MAX));
        // Exact first fit for block-aligned requests; larger alignments may skip a few candidates.
        if (s == Status::ok && align <= block_size) REQUIRE(off == expect);
      }
      if (s == Status::out_of_memory) {
        ++failures;
      } else {
        REQUIRE(s == Status::ok);
        REQUIRE(off % align == 0 && off >= hs && off + sz <= region_size);
        uint64_t u = round_up(sz, block_size);
        // No overlap with neighbours in the model.
        auto next = live.lower_bound(off);
        if (next != live.end()) REQUIRE(off + u <= next->first);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          REQUIRE(prev->first + prev->second.usable <= off);
        }
        fill(r.base + off, u, pat);
        live[off] = {sz, u, pat++};
        used += u;
      }
    } else if (op < 90) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      REQUIRE(intact(r.base + it->first, it->second.usable, it->second.seed));
      REQUIRE(h->free(it->first) == Status::ok);
      used -= it->second.usable;
      const uint64_t gone = it->first;
      live.erase(it);
      if (rng() % 4 == 0) REQUIRE(h->free(gone) == Status::double_free);
    } else if (op < 97) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      uint64_t nsz = 1 + rng() % 2000;
      Status s = h->resize_in_place(it->first, nsz);
      uint64_t nu = round_up(nsz, block_size);
      if (s == Status::ok) {
        used = used - it->second.usable + nu;
        uint64_t keep = it->second.usable < nu ? it->second.usable : nu;
        REQUIRE(intact(r.base + it->first, keep, it->second.seed));
        fill(r.base + it->first, nu, it->second.seed);
        it->second.usable = nu;
        it->second.size = nsz;
      } else {
        REQUIRE(s == Status::out_of_memory);
        REQUIRE(nu > it->second.usable);
      }
      uint64_t u = 0;
      REQUIRE(h->usable_size(it->first, &u) == Status::ok && u == it->second.usable);
    } else {
      // Interior and misaligned frees are refused.
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      if (it->second.usable > block_size) REQUIRE(h->free(it->first + block_size) == Status::foreign);
      REQUIRE(h->free(it->first + 8) == Status::foreign);
    }
    if (check_every || i % 1000 == 0) {
      HeapStats st;
      h->stats(&st);
      REQUIRE(st.used == used && st.live_allocations == live.size());
      REQUIRE(st.capacity == st.used + st.free + st.overhead);
      REQUIRE(violations(*h) == 0);
    }
  }
  // The walk agrees with the model.
  Status ws;
  auto w = walk_all(*h, &ws);
  REQUIRE(ws == Status::ok);
  uint64_t n_used = 0, expect_off = hs, total = 0;
  for (auto& b : w) {
    REQUIRE(b.offset == expect_off);
    expect_off += b.size;
    total += b.size;
    if (b.used) {
      auto it = live.find(b.offset);
      REQUIRE(it != live.end() && it->second.usable == b.size);
      ++n_used;
    }
  }
  EXPECT(n_used == live.size());
  EXPECT(total == s0.free);
  if (fills) EXPECT(failures > 0);  // the region was small enough to fill up
  for (auto& kv : live) {
    REQUIRE(intact(r.base + kv.first, kv.second.usable, kv.second.seed));
    REQUIRE(h->free(kv.first) == Status::ok);
  }
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0 && st.free == s0.free && st.largest_free_block == s0.free);
  EXPECT(violations(*h) == 0);
}

}  // namespace

TEST("bitmap: random stress against a model (64 KiB, check every step)") { stress(64 << 10, 16, 12345, 150000, true); }

TEST("bitmap: random stress, block_size 64") { stress(256 << 10, 64, 777, 60000, true); }

TEST("bitmap: random stress, 1 MiB (packed summary levels), big runs, check every step") {
  stress(1 << 20, 16, 2024, 40000, true, true, 120000);
}

TEST("bitmap: random stress, 8 MiB (wide summary levels), big runs") {
  stress(8 << 20, 16, 99, 15000, true, false, 400000);
  stress(8 << 20, 16, 98, 60000, false, false);
}

TEST("bitmap: block_size 64") {
  Region r(1 << 20);
  auto h = make_heap(r, 64);
  REQUIRE(h != nullptr);
  BitmapHeader hd = read_header(r);
  EXPECT(hd.block_size == 64 && hd.block_shift == 6 && hd.total_blocks == r.size / 64);
  uint64_t a = 0, b = 0, u = 0;
  EXPECT(h->alloc(1, 16, kNoHint, &a) == Status::ok && a % 64 == 0);
  EXPECT(h->usable_size(a, &u) == Status::ok && u == 64);
  EXPECT(h->alloc(65, 16, kNoHint, &b) == Status::ok && b == a + 64);
  EXPECT(h->usable_size(b, &u) == Status::ok && u == 128);
  EXPECT(h->free(a + 16) == Status::foreign);  // 16-aligned but not a block boundary
  EXPECT(h->free(b + 64) == Status::foreign);
  EXPECT(h->free(b + 128) == Status::double_free);
  std::unique_ptr<Heap> c;
  EXPECT(heap_attach(r.base, r.size, &c) == Status::ok);
  EXPECT(violations(*c) == 0);
  EXPECT(c->free(a) == Status::ok);
  EXPECT(c->free(b) == Status::ok);
  HeapStats st;
  c->stats(&st);
  EXPECT(st.used == 0 && st.allocations == 2 && st.frees == 2);
  // Large block sizes: the data area starts at a block boundary.
  for (uint64_t bs : {uint64_t(8192), uint64_t(65536)}) {
    auto x = make_heap(r, bs);
    REQUIRE(x != nullptr);
    EXPECT(read_header(r).region.header_size == bs);
    EXPECT(x->alloc(1, 4096, kNoHint, &a) == Status::ok && a == bs);
    EXPECT(violations(*x) == 0);
  }
}

TEST("bitmap: layout version 3: interleaved bitmaps; other versions are refused on attach") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  const BitmapHeader hd = read_header(r);
  EXPECT(hd.region.version == 3);
  EXPECT(kBitmapVersion == 3);
  // Word w of the used bitmap at used_offset + 16w, of the start bitmap 8 bytes after it: both words of a
  // block share a cache line (pairs are 16 bytes from a 64-aligned start).
  EXPECT(hd.used_offset % 64 == 0);
  EXPECT(hd.start_offset == hd.used_offset + 8);
  EXPECT(hd.level_offset[0] >= hd.used_offset + hd.words * 16);  // the summaries start after both bitmaps
  uint64_t off = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &off) == Status::ok);
  const uint64_t b = off / 16;
  BitmapWords used{r.base + hd.used_offset}, start{r.base + hd.start_offset};
  EXPECT(((used[b / 64] >> (b % 64)) & 1) == 1);
  EXPECT(((start[b / 64] >> (b % 64)) & 1) == 1);
  EXPECT(((start[(b + 6) / 64] >> ((b + 6) % 64)) & 1) == 0);  // 100 bytes: 7 blocks, one start bit
  h.reset();
  REQUIRE(bitmap_attach(r.base, r.size, &h) == Status::ok);
  h.reset();
  for (uint32_t v : {0u, 1u, 2u, 4u}) {
    reinterpret_cast<BitmapHeader*>(r.base)->region.version = v;
    EXPECT(bitmap_attach(r.base, r.size, &h) == Status::incompatible);
    EXPECT(heap_attach(r.base, r.size, &h) == Status::incompatible);
  }
  reinterpret_cast<BitmapHeader*>(r.base)->region.version = 3;
  // Version 3 with version 2's geometry (the start bitmap after the whole used bitmap) is corrupted.
  reinterpret_cast<BitmapHeader*>(r.base)->start_offset = hd.used_offset + hd.words * 8;
  EXPECT(bitmap_attach(r.base, r.size, &h) == Status::corrupted);
  reinterpret_cast<BitmapHeader*>(r.base)->start_offset = hd.start_offset;
  REQUIRE(bitmap_attach(r.base, r.size, &h) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: attach refuses junk and damaged headers") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 200; ++i) {
    for (uint64_t j = 0; j < 8192; ++j) r.base[j] = static_cast<uint8_t>(rng());
    if (i % 2 == 1) {
      // Valid magic, algorithm, version and size, junk elsewhere.
      auto* hd = reinterpret_cast<BitmapHeader*>(r.base);
      hd->region.magic = kRegionMagic;
      hd->region.algorithm = static_cast<uint32_t>(Algorithm::bitmap);
      hd->region.version = kBitmapVersion;
      hd->region.size = r.size;
      if (i % 4 == 1) hd->block_size = 16;
    }
    Status s = bitmap_attach(r.base, r.size, &h);
    EXPECT(s == Status::incompatible || s == Status::corrupted);
    s = heap_attach(r.base, r.size, &h);
    EXPECT(s == Status::incompatible || s == Status::corrupted);
  }
  EXPECT(bitmap_attach(r.base, 10, &h) == Status::incompatible);
  EXPECT(bitmap_attach(nullptr, r.size, &h) == Status::invalid_argument);

  // Each header field damaged on its own.
  auto fresh = [&]() {
    auto x = make_heap(r);
    return read_header(r);
  };
  struct Case {
    const char* what;
    std::function<void(BitmapHeader*)> damage;
    Status expect;
  };
  std::vector<Case> cases = {
      {"magic", [](BitmapHeader* x) { x->region.magic ^= 1; }, Status::incompatible},
      {"algorithm", [](BitmapHeader* x) { x->region.algorithm = static_cast<uint32_t>(Algorithm::tlsf); }, Status::incompatible},
      {"version", [](BitmapHeader* x) { x->region.version = 99; }, Status::incompatible},
      {"size", [](BitmapHeader* x) { x->region.size -= 4096; }, Status::incompatible},
      {"header_size", [](BitmapHeader* x) { x->region.header_size += 4096; }, Status::corrupted},
      {"block_size", [](BitmapHeader* x) { x->block_size = 32; }, Status::corrupted},
      {"block_size zero", [](BitmapHeader* x) { x->block_size = 0; }, Status::corrupted},
      {"block_size odd", [](BitmapHeader* x) { x->block_size = 17; }, Status::corrupted},
      {"block_shift", [](BitmapHeader* x) { x->block_shift = 5; }, Status::corrupted},
      {"fanout", [](BitmapHeader* x) { x->fanout_shift += 1; }, Status::corrupted},
      {"total_blocks", [](BitmapHeader* x) { x->total_blocks += 1; }, Status::corrupted},
      {"first_block", [](BitmapHeader* x) { x->first_block = 0; }, Status::corrupted},
      {"words", [](BitmapHeader* x) { x->words = UINT64_MAX; }, Status::corrupted},
      {"used_offset", [](BitmapHeader* x) { x->used_offset = 1 << 30; }, Status::corrupted},
      {"start_offset", [](BitmapHeader* x) { x->start_offset += 8; }, Status::corrupted},
      {"free_blocks", [](BitmapHeader* x) { x->free_blocks = x->total_blocks; }, Status::corrupted},
      {"levels", [](BitmapHeader* x) { x->levels = 40; }, Status::corrupted},
      {"level_offset", [](BitmapHeader* x) { x->level_offset[0] = 0; }, Status::corrupted},
      {"level_count", [](BitmapHeader* x) { x->level_count[0] += 1; }, Status::corrupted},
      {"unused level slot", [](BitmapHeader* x) { x->level_count[kBitmapMaxLevels - 1] = 1; }, Status::corrupted},
  };
  for (auto& c : cases) {
    fresh();
    c.damage(reinterpret_cast<BitmapHeader*>(r.base));
    Status s = bitmap_attach(r.base, r.size, &h);
    if (s != c.expect) std::fprintf(stderr, "  %s: got %s\n", c.what, status_name(s));
    EXPECT(s == c.expect);
  }
  fresh();
  EXPECT(bitmap_attach(r.base, r.size, &h) == Status::ok);
}

TEST("bitmap: scribbled metadata never crashes") {
  Region r(256 << 10);
  std::mt19937_64 rng(11);
  for (int round = 0; round < 300; ++round) {
    auto h = make_heap(r);
    REQUIRE(h != nullptr);
    const BitmapHeader hd = read_header(r);
    std::vector<uint64_t> offs;
    uint64_t off = 0;
    for (int i = 0; i < 100; ++i) {
      if (h->alloc(1 + rng() % 2000, 16, kNoHint, &off) == Status::ok) offs.push_back(off);
    }
    // Scribble over bitmaps and summaries (not the geometry: attach would refuse it; the heap object
    // keeps its own copy anyway, so scribble the geometry too on odd rounds).
    const uint64_t lo = round % 2 ? 0 : sizeof(BitmapHeader);
    for (int k = 0; k < 1 + round % 40; ++k) {
      uint64_t at = lo + rng() % (hd.region.header_size - lo - 8);
      uint64_t v = rng() % 3 == 0 ? ~uint64_t(0) : rng() % 2 == 0 ? 0 : rng();
      std::memcpy(r.base + at, &v, 8);
    }
    for (int i = 0; i < 200; ++i) {
      switch (rng() % 5) {
        case 0:
        case 1:
          if (h->alloc(1 + rng() % 5000, uint64_t(16) << (rng() % 9), rng() % 2 ? kNoHint : rng() % r.size, &off) ==
              Status::ok) {
            EXPECT(off >= hd.region.header_size && off < r.size);
            offs.push_back(off);
          }
          break;
        case 2:
          if (!offs.empty()) h->free(offs[rng() % offs.size()]);
          break;
        case 3:
          if (!offs.empty()) h->resize_in_place(offs[rng() % offs.size()], 1 + rng() % 5000);
          break;
        default: {
          uint64_t u = 0;
          if (!offs.empty()) h->usable_size(offs[rng() % offs.size()], &u);
          h->free(rng() % (r.size + 100));
        }
      }
    }
    HeapStats st;
    h->stats(&st);
    EXPECT(st.capacity == st.used + st.free + st.overhead);
    CheckResult cr;
    h->check(&cr);
    walk_all(*h);
  }
}

TEST("bitmap: large nearly full region stays fast") {
  const uint64_t size = 256ull << 20;
  Region r(size);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  HeapStats s0;
  h->stats(&s0);
  std::mt19937_64 rng(3);
  std::vector<uint64_t> offs;
  offs.reserve(2000000);
  uint64_t off = 0;
  // Fill to about 97% with 16..512-byte blocks.
  uint64_t used = 0;
  while (used < s0.free / 100 * 97) {
    uint64_t sz = 16 + rng() % 497;
    REQUIRE(h->alloc(sz, 16, kNoHint, &off) == Status::ok);
    offs.push_back(off);
    used += round_up(sz, 16);
  }
  // Punch holes: free every third block.
  std::vector<uint64_t> keep;
  for (size_t i = 0; i < offs.size(); ++i) {
    if (i % 3 == 0) {
      REQUIRE(h->free(offs[i]) == Status::ok);
    } else {
      keep.push_back(offs[i]);
    }
  }
  offs.swap(keep);
  // Timed free+alloc pairs.
  const int pairs = 100000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < pairs; ++i) {
    size_t k = rng() % offs.size();
    REQUIRE(h->free(offs[k]) == Status::ok);
    REQUIRE(h->alloc(16 + rng() % 497, 16, kNoHint, &offs[k]) == Status::ok);
  }
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / pairs;
  std::printf("  bitmap 256 MiB, %zu live: %.0f ns per free+alloc pair (sanitized build)\n", offs.size(), ns);
  EXPECT(ns < 50000);  // generous: sanitizers, shared machines; an O(live) search would be far slower
  // Requests bigger than any hole fail fast too.
  HeapStats st;
  h->stats(&st);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) EXPECT(h->alloc(st.largest_free_block + 16, 16, kNoHint, &off) == Status::out_of_memory);
  ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / 1000;
  EXPECT(ns < 50000);
  EXPECT(h->alloc(st.largest_free_block, 16, kNoHint, &off) == Status::ok);
  EXPECT(violations(*h) == 0);
}

// ---- rebuild() ----
namespace {

// Sets (value true) or clears blocks [b0, b1) of one of the heap's bitmaps, as a dying writer would have.
void poke_bits(uint8_t* base, uint64_t bitmap_offset, uint64_t b0, uint64_t b1, bool value) {
  BitmapWords bm{base + bitmap_offset};
  for (uint64_t b = b0; b < b1; ++b) {
    const uint64_t bit = uint64_t(1) << (b & 63);
    if (value) {
      bm[b >> 6] |= bit;
    } else {
      bm[b >> 6] &= ~bit;
    }
  }
}

bool stats_equal(const HeapStats& a, const HeapStats& b) {
  return a.capacity == b.capacity && a.used == b.used && a.free == b.free && a.overhead == b.overhead &&
         a.peak_used == b.peak_used && a.live_allocations == b.live_allocations && a.allocations == b.allocations &&
         a.frees == b.frees && a.failed_allocations == b.failed_allocations &&
         a.largest_free_block == b.largest_free_block;
}

}  // namespace

TEST("bitmap: rebuild repairs damaged derived structures, live data intact") {
  Region r(1 << 20);
  auto h = make_heap(r);
  REQUIRE(h != nullptr);
  const BitmapHeader hd = read_header(r);
  std::mt19937_64 rng(8);
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> live;  // offset -> (size, seed)
  uint64_t seed = 1, off = 0;
  for (int i = 0; i < 120; ++i) {
    const uint64_t sz = i % 10 == 0 ? 2000 + rng() % 6000 : 1 + rng() % 600;  // both run index and tree sizes
    REQUIRE(h->alloc(sz, 16, kNoHint, &off) == Status::ok);
    fill(r.base + off, sz, seed);
    live[off] = {sz, seed++};
  }
  for (auto it = live.begin(); it != live.end();) {  // holes of every size
    if (rng() % 3 == 0) {
      REQUIRE(h->free(it->first) == Status::ok);
      it = live.erase(it);
    } else {
      ++it;
    }
  }
  REQUIRE(violations(*h) == 0);
  HeapStats s0;
  h->stats(&s0);
  auto* hdr = reinterpret_cast<BitmapHeader*>(r.base);
  const uint64_t data_word = (hd.first_block + 70) / 64;
  struct Case {
    const char* what;
    std::function<void()> damage;
  };
  std::vector<Case> cases = {
      {"summary node", [&] { r.base[hd.level_offset[0] + 8 * (data_word / 8) + 3] ^= 0x10; }},
      {"root summary", [&] { r.base[hd.level_offset[hd.levels - 1]] ^= 2; }},
      {"run index byte", [&] { r.base[hd.run_offset[0] + data_word] ^= 5; }},
      {"run index root", [&] { r.base[hd.run_offset[hd.run_levels - 1]] = 1; }},
      {"run index padding", [&] { r.base[hd.run_offset[1] + hd.run_count[1]] = 9; }},
      {"free block count", [&] { hdr->free_blocks -= 3; }},
      {"used counter", [&] { hdr->region.counters.used += 48; }},
      {"live counter", [&] { hdr->region.counters.live = 7; }},
      {"everything derived at once", [&] {
         std::memset(r.base + hd.level_offset[0], 0xff, hd.level_count[0] * 8);
         std::memset(r.base + hd.run_offset[0], 0x33, hd.run_count[0]);
         hdr->free_blocks = 0;
         hdr->region.counters.used = 0;
         hdr->region.counters.live = 0;
       }},
  };
  for (auto& c : cases) {
    c.damage();
    std::string first;
    const uint64_t v = violations(*h, &first);
    if (v == 0) std::fprintf(stderr, "  not detected: %s\n", c.what);
    EXPECT(v > 0);
    EXPECT(h->rebuild() == Status::ok);
    EXPECT(violations(*h) == 0);
    HeapStats s1;
    h->stats(&s1);
    if (!stats_equal(s0, s1)) std::fprintf(stderr, "  stats changed after rebuild: %s\n", c.what);
    EXPECT(stats_equal(s0, s1));
    for (auto& kv : live) {
      uint64_t u = 0;
      EXPECT(h->usable_size(kv.first, &u) == Status::ok && u == round_up(kv.second.first, 16));
      EXPECT(intact(r.base + kv.first, kv.second.first, kv.second.second));
    }
  }
  // The rebuilt heap keeps working, first fit included.
  for (int i = 0; i < 200; ++i) {
    const uint64_t sz = 1 + rng() % 3000;
    if (h->alloc(sz, 16, kNoHint, &off) == Status::ok) {
      fill(r.base + off, sz, seed);
      live[off] = {sz, seed++};
    }
    if (rng() % 2 == 0 && !live.empty()) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      EXPECT(intact(r.base + it->first, it->second.first, it->second.second));
      EXPECT(h->free(it->first) == Status::ok);
      live.erase(it);
    }
  }
  EXPECT(violations(*h) == 0);
  // Damaged geometry is not something rebuild can repair.
  hdr->words += 1;
  EXPECT(h->rebuild() == Status::corrupted);
  hdr->words -= 1;
  hdr->region.magic ^= 1;
  EXPECT(h->rebuild() == Status::corrupted);
  hdr->region.magic ^= 1;
  EXPECT(h->rebuild() == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("bitmap: rebuild frees orphan runs, clears stray start bits, restores reserved bits") {
  // 10 blocks short of a whole bitmap word, so the last word has padding bits.
  Region r(1 << 20);
  HeapOptions o;
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::bitmap, r.base, r.size - 160, o, &h) == Status::ok);
  const BitmapHeader hd = read_header(r);
  REQUIRE(hd.total_blocks % 64 != 0);
  const uint64_t fb = hd.first_block;
  uint64_t a = 0, b = 0, c = 0;
  REQUIRE(h->alloc(200, 16, kNoHint, &a) == Status::ok);     // blocks [fb, fb + 13)
  REQUIRE(h->alloc(3000, 16, kNoHint, &b) == Status::ok);    // [fb + 13, fb + 201)
  REQUIRE(h->alloc(40, 16, kNoHint, &c) == Status::ok);      // [fb + 201, fb + 204)
  fill(r.base + a, 200, 1);
  fill(r.base + c, 40, 3);
  REQUIRE(h->free(b) == Status::ok);                         // a 188-block hole between a and c
  const uint64_t hole = b / 16;
  HeapStats s0;
  h->stats(&s0);
  auto expect_repaired = [&](const char* what, bool detected) {
    std::string first;
    const uint64_t v = violations(*h, &first);
    if (detected && v == 0) std::fprintf(stderr, "  not detected: %s\n", what);
    if (detected) EXPECT(v > 0);
    EXPECT(h->rebuild() == Status::ok);
    EXPECT(violations(*h) == 0);
    HeapStats s1;
    h->stats(&s1);
    if (!stats_equal(s0, s1)) std::fprintf(stderr, "  stats differ after rebuild: %s\n", what);
    EXPECT(stats_equal(s0, s1));
    uint64_t u = 0;
    EXPECT(h->usable_size(a, &u) == Status::ok && u == 208);
    EXPECT(h->usable_size(c, &u) == Status::ok && u == 48);
    EXPECT(h->usable_size(b, &u) == Status::double_free);
    EXPECT(intact(r.base + a, 200, 1) && intact(r.base + c, 40, 3));
    Status ws;
    auto w = walk_all(*h, &ws);
    EXPECT(ws == Status::ok && w.size() == 4);  // a, the hole, c, the rest
  };
  // Stray start bit on a free block (an alloc that died before its used bits, or a free after them).
  poke_bits(r.base, hd.start_offset, hole + 7, hole + 8, true);
  expect_repaired("stray start bit", true);
  // Orphan used runs: inside one word, across a word boundary, and reaching the next allocation (it ends
  // at c's start bit; c keeps its size).
  poke_bits(r.base, hd.used_offset, hole + 3, hole + 9, true);
  expect_repaired("orphan run in a word", true);
  poke_bits(r.base, hd.used_offset, hole + 40, hole + 150, true);
  expect_repaired("orphan run across words", true);
  poke_bits(r.base, hd.used_offset, hole + 100, c / 16, true);
  expect_repaired("orphan run up to an allocation", true);
  // Both at once, plus a start bit on an orphan's interior block (that part is a small allocation, then).
  poke_bits(r.base, hd.used_offset, hole + 20, hole + 30, true);
  poke_bits(r.base, hd.start_offset, hole + 60, hole + 61, true);
  expect_repaired("orphan and stray start", true);
  // Reserved blocks: a metadata block marked free, a start bit on metadata, a padding bit cleared.
  poke_bits(r.base, hd.used_offset, 1, 2, false);
  poke_bits(r.base, hd.start_offset, 2, 3, true);
  poke_bits(r.base, hd.used_offset, hd.total_blocks + 3, hd.total_blocks + 4, false);
  expect_repaired("reserved bits", true);
  // A used block right after the metadata without a start bit is an orphan too.
  REQUIRE(h->free(a) == Status::ok);
  h->stats(&s0);
  poke_bits(r.base, hd.used_offset, fb, fb + 2, true);
  std::string first;
  EXPECT(violations(*h, &first) > 0);
  EXPECT(h->rebuild() == Status::ok);
  EXPECT(violations(*h) == 0);
  HeapStats s1;
  h->stats(&s1);
  EXPECT(stats_equal(s0, s1));
}

TEST("bitmap: rebuild after any prefix of the stores of alloc, free, resize") {
  // Each case lays out x | target run | y, replays a prefix of one operation's stores on the target run
  // directly in the bitmaps, in the order the heap issues them (alloc: start bit, then used bits; free:
  // used bits, then start bit; resize: used bits), and checks that rebuild() yields a consistent heap in
  // which x and y are untouched.
  Region r(1 << 20);
  const uint64_t n = 150;  // target run: three bitmap words
  struct Prefix {
    const char* what;
    bool live_target;              // the target starts live (free, shrink) or free (alloc, grow)
    std::function<void(uint8_t*, const BitmapHeader&, uint64_t p)> stores;
    uint64_t expect_blocks;        // the target's blocks after rebuild, 0 = free
  };
  auto first_word_end = [](uint64_t p) { return (p | 63) + 1; };
  std::vector<Prefix> cases = {
      {"alloc: nothing stored", false, [](uint8_t*, const BitmapHeader&, uint64_t) {}, 0},
      {"alloc: start bit only", false,
       [](uint8_t* base, const BitmapHeader& hd, uint64_t p) { poke_bits(base, hd.start_offset, p, p + 1, true); }, 0},
      {"alloc: start bit and the first used word", false,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.start_offset, p, p + 1, true);
         poke_bits(base, hd.used_offset, p, first_word_end(p), true);
       },
       0 /* computed below */},
      {"alloc: start bit and the later used words only", false,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.start_offset, p, p + 1, true);
         poke_bits(base, hd.used_offset, first_word_end(p), p + n, true);
       },
       0},
      {"alloc: every store", false,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.start_offset, p, p + 1, true);
         poke_bits(base, hd.used_offset, p, p + n, true);
       },
       n},
      {"free: first used word cleared", true,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) { poke_bits(base, hd.used_offset, p, first_word_end(p), false); }, 0},
      {"free: last used word cleared", true,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.used_offset, round_down(p + n - 1, 64), p + n, false);
       },
       0},
      {"free: used bits cleared, start bit not yet", true,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) { poke_bits(base, hd.used_offset, p, p + n, false); }, 0},
      {"free: every store", true,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.used_offset, p, p + n, false);
         poke_bits(base, hd.start_offset, p, p + 1, false);
       },
       0},
      {"shrink to 10 blocks: middle word cleared first", true,
       [&](uint8_t* base, const BitmapHeader& hd, uint64_t p) {
         poke_bits(base, hd.used_offset, first_word_end(p), first_word_end(p) + 64, false);
       },
       0},
  };
  for (auto& c : cases) {
    HeapOptions o;
    std::unique_ptr<Heap> h;
    REQUIRE(heap_format(Algorithm::bitmap, r.base, r.size, o, &h) == Status::ok);
    const BitmapHeader hd = read_header(r);
    const uint64_t fb = hd.first_block;
    const uint64_t p = fb + 100;  // x = [fb, fb + 100), target = [p, p + n), y = [p + n, p + n + 16)
    uint64_t x = 0, y = 0, t = 0;
    REQUIRE(h->alloc(100 * 16, 16, kNoHint, &x) == Status::ok && x == fb * 16);
    REQUIRE(h->alloc(16 * 16, 16, (p + n) * 16, &y) == Status::ok && y == (p + n) * 16);
    if (c.live_target) REQUIRE(h->alloc(n * 16, 16, p * 16, &t) == Status::ok && t == p * 16);
    fill(r.base + x, 100 * 16, 11);
    fill(r.base + y, 16 * 16, 12);
    c.stores(r.base, hd, p);
    EXPECT(h->rebuild() == Status::ok);
    std::string first;
    const uint64_t v = violations(*h, &first);
    if (v != 0) std::fprintf(stderr, "  %s: %s\n", c.what, first.c_str());
    EXPECT(v == 0);
    uint64_t u = 0;
    EXPECT(h->usable_size(x, &u) == Status::ok && u == 100 * 16);
    EXPECT(h->usable_size(y, &u) == Status::ok && u == 16 * 16);
    EXPECT(intact(r.base + x, 100 * 16, 11) && intact(r.base + y, 16 * 16, 12));
    // The target: free, or one allocation starting at p (shorter when the operation died half-way).
    uint64_t expect = c.expect_blocks;
    if (std::strcmp(c.what, "alloc: start bit and the first used word") == 0) expect = first_word_end(p) - p;
    if (std::strcmp(c.what, "free: last used word cleared") == 0) expect = round_down(p + n - 1, 64) - p;
    if (std::strncmp(c.what, "shrink", 6) == 0) expect = first_word_end(p) - p;
    const Status s = h->usable_size(p * 16, &u);
    if (expect == 0) {
      EXPECT(s == Status::double_free);
    } else {
      EXPECT(s == Status::ok && u == expect * 16);
    }
    HeapStats st;
    h->stats(&st);
    EXPECT(st.live_allocations == (expect == 0 ? 2u : 3u));
    EXPECT(st.used == (100 + 16 + expect) * 16);
    // The region is usable again: the target run (or what is left of it) can be allocated.
    EXPECT(h->alloc(16, 16, kNoHint, &t) == Status::ok);
    EXPECT(violations(*h) == 0);
  }
}
