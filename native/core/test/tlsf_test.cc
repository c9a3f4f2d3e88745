// TLSF specifics the conformance suite does not reach: the layout version, the interleaved live/freed
// maps across their word boundaries, and the quick-list fast paths against refused and hostile input.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "check.h"
#include "support.h"
#include "heap.h"

using namespace mempool;
using coretest::Region;

namespace {

uint64_t violations(const Heap& h) {
  CheckResult r;
  h.check(&r);
  if (r.violations) std::fprintf(stderr, "  check: %llu violation(s), first: %s\n", (unsigned long long)r.violations, r.first.c_str());
  return r.violations;
}

uint64_t word_at(const Region& r, uint64_t off) {
  uint64_t v;
  std::memcpy(&v, r.bytes + off, 8);
  return v;
}

// TlsfHeader (tlsf.cc): live_map at 96, freed_map at 104, map_words at 112; quick_count[64] (u32) at 10808,
// then the quick stacks quick[64][64] (u64) at 11064.
constexpr uint64_t kLiveMapField = 96, kFreedMapField = 104, kMapWordsField = 112;
constexpr uint64_t kQuickCounts = 10808, kQuickStacks = 11064, kQuickLimit = 64;

void put_word(Region& r, uint64_t off, uint64_t v) { std::memcpy(r.bytes + off, &v, 8); }
void put_u32(Region& r, uint64_t off, uint32_t v) { std::memcpy(r.bytes + off, &v, 4); }

// The (L, F) bits of the granule at offset `at` (see tlsf.cc): 2 = live start, 1 = freed start, 3 = end mark.
uint32_t granule_state(const Region& r, uint64_t at) {
  const uint64_t start = reinterpret_cast<const RegionHeader*>(r.bytes)->header_size;
  const uint64_t i = (at - start) / 16, pair = word_at(r, kLiveMapField) + (i / 64) * 16;
  return static_cast<uint32_t>(((word_at(r, pair) >> (i % 64)) & 1) << 1 | ((word_at(r, pair + 8) >> (i % 64)) & 1));
}
void set_granule_state(Region& r, uint64_t at, uint32_t state) {
  const uint64_t start = reinterpret_cast<const RegionHeader*>(r.bytes)->header_size;
  const uint64_t i = (at - start) / 16, pair = word_at(r, kLiveMapField) + (i / 64) * 16, bit = uint64_t(1) << (i % 64);
  put_word(r, pair, (state & 2) ? word_at(r, pair) | bit : word_at(r, pair) & ~bit);
  put_word(r, pair + 8, (state & 1) ? word_at(r, pair + 8) | bit : word_at(r, pair + 8) & ~bit);
}

}  // namespace

TEST("tlsf: layout version 4: interleaved maps, quick stacks; other versions are refused on attach") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  const RegionHeader* rh = reinterpret_cast<const RegionHeader*>(r.bytes);
  EXPECT(rh->version == 4);
  const uint64_t live = word_at(r, kLiveMapField), freed = word_at(r, kFreedMapField), words = word_at(r, kMapWordsField);
  EXPECT(freed == live + 8);
  EXPECT(live >= kQuickStacks + 64 * kQuickLimit * 8);  // the maps start after the quick stacks
  EXPECT(rh->header_size >= live + words * 16);         // the area starts after both maps
  h.reset();
  REQUIRE(heap_attach(r.bytes, r.size, &h) == Status::ok);
  h.reset();
  for (uint32_t v : {0u, 1u, 2u, 3u, 5u}) {
    reinterpret_cast<RegionHeader*>(r.bytes)->version = v;
    EXPECT(heap_attach(r.bytes, r.size, &h) == Status::incompatible);
  }
  reinterpret_cast<RegionHeader*>(r.bytes)->version = 4;
  // Version 4 with version 1's geometry (separate maps) is corrupted, not attached.
  const uint64_t separate = live + words * 8;
  std::memcpy(r.bytes + kFreedMapField, &separate, 8);
  EXPECT(heap_attach(r.bytes, r.size, &h) == Status::corrupted);
}

// TlsfHeader.free_bytes (tlsf.cc): from layout 4 the bytes on the free lists only.
constexpr uint64_t kFreeBytesField = 120;

TEST("tlsf: stats().free counts quick blocks from the stacks: a small free adds its payload, its reuse takes it away") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t a = 0, b = 0, usable = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &a) == Status::ok);
  REQUIRE(h->alloc(100, 16, kNoHint, &b) == Status::ok);  // keeps a from touching the free rest
  REQUIRE(h->usable_size(a, &usable) == Status::ok);
  HeapStats s0, s1, s2, s3;
  h->stats(&s0);
  const uint64_t listed = word_at(r, kFreeBytesField);
  REQUIRE(h->free(a) == Status::ok);  // onto its quick stack, not coalesced
  h->stats(&s1);
  EXPECT(s1.free == s0.free + usable && s1.used == s0.used - usable && s1.overhead == s0.overhead);
  EXPECT(word_at(r, kFreeBytesField) == listed);  // the fast path leaves the list counter alone
  EXPECT(violations(*h) == 0);
  uint64_t c = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &c) == Status::ok);
  EXPECT(c == a);
  h->stats(&s2);
  EXPECT(s2.free == s0.free && s2.used == s0.used);
  // A scribbled list counter is a violation; a scribbled quick count counts as the limit, no more.
  put_word(r, kFreeBytesField, listed + 16);
  EXPECT(violations(*h) == 1);
  put_word(r, kFreeBytesField, listed);
  put_u32(r, kQuickCounts, 0xffffffffu);  // class 0: 24-byte payloads
  h->stats(&s3);
  EXPECT(s3.free == s2.free + kQuickLimit * 24);
  EXPECT(violations(*h) >= 1);
  put_u32(r, kQuickCounts, 0);
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: check() reports a freed bit inside a used or a quick block") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t used = 0, quick = 0, guard = 0, large = 0;
  REQUIRE(h->alloc(200, 16, kNoHint, &used) == Status::ok);
  REQUIRE(h->alloc(200, 16, kNoHint, &quick) == Status::ok);
  REQUIRE(h->alloc(4000, 16, kNoHint, &large) == Status::ok);
  REQUIRE(h->alloc(200, 16, kNoHint, &guard) == Status::ok);
  REQUIRE(h->free(quick) == Status::ok);  // onto its quick stack
  EXPECT(violations(*h) == 0);
  for (uint64_t at : {used + 16, used + 176, quick + 96, large + 16, large + 3984}) {  // interiors: payload granules after the first
    EXPECT(granule_state(r, at) == 0);
    set_granule_state(r, at, 1);  // a freed start where none can be
    EXPECT(violations(*h) == 1);
    set_granule_state(r, at, 0);
  }
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: end marks: a small block's size is in the maps, a large block has none") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t small = 0, big = 0, last = 0;
  REQUIRE(h->alloc(100, 16, kNoHint, &small) == Status::ok);  // payload 104 = 16 * 6 + 8
  REQUIRE(h->alloc(2000, 16, kNoHint, &big) == Status::ok);
  REQUIRE(h->alloc(1032, 16, kNoHint, &last) == Status::ok);  // the largest quick size: 64 granules
  EXPECT(granule_state(r, small) == 2);
  EXPECT(granule_state(r, small + 16 * 6) == 3);  // the next block's header granule
  for (uint64_t g = 1; g < 6; ++g) EXPECT(granule_state(r, small + 16 * g) == 0);
  EXPECT(granule_state(r, big) == 2);
  uint64_t big_size = 0;
  REQUIRE(h->usable_size(big, &big_size) == Status::ok);
  EXPECT(granule_state(r, big + big_size - 8) != 3);
  EXPECT(granule_state(r, last + 16 * 64) == 3);  // crosses a map word whatever the start
  EXPECT(violations(*h) == 0);
  // Freed small blocks keep the mark and go (0, 1) at the payload; a large one is coalesced, unmarked.
  EXPECT(h->free(small) == Status::ok);
  EXPECT(granule_state(r, small) == 1 && granule_state(r, small + 16 * 6) == 3);
  EXPECT(h->free(last) == Status::ok);
  EXPECT(granule_state(r, last) == 1 && granule_state(r, last + 16 * 64) == 3);
  EXPECT(violations(*h) == 0);
  // Growing and shrinking in place move the mark.
  uint64_t a = 0;
  REQUIRE(h->alloc(40, 16, kNoHint, &a) == Status::ok);  // 40 = 16 * 2 + 8: no quick block of that size
  uint64_t a_size = 0;
  REQUIRE(h->usable_size(a, &a_size) == Status::ok && a_size == 40);
  EXPECT(granule_state(r, a + 32) == 3);
  REQUIRE(h->resize_in_place(a, 300) == Status::ok);  // into the free space after it
  EXPECT(granule_state(r, a + 32) != 3);
  EXPECT(granule_state(r, a + 16 * 19) == 3);  // 312 = 16 * 19 + 8
  EXPECT(violations(*h) == 0);
  REQUIRE(h->resize_in_place(a, 8) == Status::ok);
  EXPECT(granule_state(r, a + 16) == 3);
  EXPECT(violations(*h) == 0);
  REQUIRE(h->resize_in_place(a, 5000) == Status::ok);
  uint64_t now = 0;
  REQUIRE(h->usable_size(a, &now) == Status::ok && now >= 5000);
  EXPECT(granule_state(r, a + now - 8) != 3);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(a) == Status::ok && h->free(big) == Status::ok);
  EXPECT(violations(*h) == 0);
  // A small live block whose mark was wiped: free refuses it (the chain and the maps disagree).
  uint64_t c = 0;
  REQUIRE(h->alloc(60, 16, kNoHint, &c) == Status::ok);
  uint64_t c_size = 0;
  REQUIRE(h->usable_size(c, &c_size) == Status::ok);
  set_granule_state(r, c + c_size - 8, 0);
  EXPECT(violations(*h) > 0);
  EXPECT(h->free(c) == Status::corrupted);
  set_granule_state(r, c + c_size - 8, 3);
  EXPECT(h->free(c) == Status::ok);
  EXPECT(h->free(c + c_size - 8) == Status::foreign);  // an end-mark granule is never a payload
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: quick paths: double and foreign frees exact across map words") {
  Region r(1 << 22);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  // 400 blocks of 24..120 bytes span several 64-granule map words; their neighbours in each word are live.
  std::vector<uint64_t> offs;
  for (int i = 0; i < 400; ++i) {
    uint64_t off = 0;
    REQUIRE(h->alloc(1 + static_cast<uint64_t>(i % 7) * 16, 16, kNoHint, &off) == Status::ok);
    offs.push_back(off);
  }
  // Free every other block: the first 64 of each class go to the quick lists, the rest are coalesced.
  for (size_t i = 0; i < offs.size(); i += 2) REQUIRE(h->free(offs[i]) == Status::ok);
  EXPECT(violations(*h) == 0);
  for (size_t i = 0; i < offs.size(); i += 2) {
    EXPECT(h->free(offs[i]) == Status::double_free);
    uint64_t n = 0;
    EXPECT(h->usable_size(offs[i], &n) == Status::double_free);
  }
  for (size_t i = 1; i < offs.size(); i += 2) {
    EXPECT(h->free(offs[i] + 16) == Status::foreign);  // interior of a live block
    EXPECT(h->free(offs[i] + 8) == Status::foreign);   // misaligned
    EXPECT(h->free(offs[i] - 16) == Status::foreign);  // a header
  }
  EXPECT(violations(*h) == 0);
  // Reuse: quick blocks come back; a block handed out again is live, so freeing it is ok once.
  std::vector<uint64_t> again;
  for (int i = 0; i < 200; ++i) {
    uint64_t off = 0;
    REQUIRE(h->alloc(1 + static_cast<uint64_t>(i % 7) * 16, 16, kNoHint, &off) == Status::ok);
    again.push_back(off);
  }
  EXPECT(violations(*h) == 0);
  for (uint64_t off : again) {
    EXPECT(h->free(off) == Status::ok);
    EXPECT(h->free(off) == Status::double_free);
  }
  for (size_t i = 1; i < offs.size(); i += 2) EXPECT(h->free(offs[i]) == Status::ok);
  HeapStats st;
  h->stats(&st);
  EXPECT(st.used == 0 && st.live_allocations == 0);
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: quick paths: an untrustworthy quick stack entry or count is refused, never followed") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t a = 0, b = 0, c = 0;
  REQUIRE(h->alloc(8, 16, kNoHint, &a) == Status::ok);  // quick class 0 (24-byte payload)
  REQUIRE(h->alloc(8, 16, kNoHint, &b) == Status::ok);
  REQUIRE(h->alloc(40, 16, kNoHint, &c) == Status::ok);  // quick class 2
  REQUIRE(h->free(a) == Status::ok);
  REQUIRE(h->free(c) == Status::ok);
  REQUIRE(word_at(r, kQuickStacks) == a - 16);  // the field offsets above are right
  uint32_t count = 0;
  std::memcpy(&count, r.bytes + kQuickCounts, 4);
  REQUIRE(count == 1);
  // Outside the area, misaligned, a live block, a payload (its "payload" would be an interior granule).
  const uint64_t bad[] = {1, a - 8, r.size, r.size - 16, UINT64_MAX - 15, b - 16, 16, a};
  for (uint64_t v : bad) {
    put_word(r, kQuickStacks, v);
    uint64_t off = 12345;
    EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::corrupted);
    EXPECT(off == 12345);
  }
  // Another class's quick block: the fast path checks only that the entry is a freed block (tlsf.cc),
  // check() finds it on the wrong stack.
  put_word(r, kQuickStacks, c - 16);
  EXPECT(violations(*h) > 0);
  put_word(r, kQuickStacks, a - 16);
  // A count beyond the stack is refused too; so is, on the general path, a quick block whose end mark was
  // wiped.
  for (uint64_t n : {kQuickLimit + 1, uint64_t(1000), uint64_t(UINT32_MAX)}) {
    put_u32(r, kQuickCounts, static_cast<uint32_t>(n));
    uint64_t off = 12345;
    EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::corrupted && off == 12345);
  }
  put_u32(r, kQuickCounts, 1);
  set_granule_state(r, a + 16, 0);
  EXPECT(violations(*h) > 0);
  uint64_t off = 0;
  uint64_t big = 0;
  HeapStats st;
  h->stats(&st);
  // Larger than any free block: the heap flushes the quick stacks before it says out_of_memory.
  EXPECT(h->alloc(st.largest_free_block + 64, 16, kNoHint, &big) == Status::corrupted);
  set_granule_state(r, a + 16, 3);
  EXPECT(violations(*h) == 0);
  EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::ok && off == a);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(h->free(b) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: a scribbled size word: refused on the free of a large block, found by check() for a small one") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t a = 0;
  REQUIRE(h->alloc(2000, 16, kNoHint, &a) == Status::ok);
  const uint64_t sf = word_at(r, a - 8);
  // Sizes that are not 16k + 8, too small, flagged free or reserved, or reaching past the area.
  const uint64_t bad[] = {sf | 1, sf | 4, 16, 8, (r.size & ~uint64_t(15)) + 8, 0, UINT64_MAX & ~uint64_t(2)};
  for (uint64_t v : bad) {
    std::memcpy(r.bytes + a - 8, &v, 8);
    EXPECT(h->free(a) == Status::corrupted);
  }
  std::memcpy(r.bytes + a - 8, &sf, 8);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(violations(*h) == 0);
  // A small block's free reads the maps, not its size word (tlsf.cc, "Quick blocks"): the overwrite goes
  // unnoticed by the free, check() reports it, and so does the coalescing that reads the word later.
  uint64_t s = 0;
  REQUIRE(h->alloc(40, 16, kNoHint, &s) == Status::ok);
  const uint64_t ssf = word_at(r, s - 8);
  put_word(r, s - 8, ssf + 16);
  EXPECT(h->free(s) == Status::ok);
  EXPECT(violations(*h) > 0);
  put_word(r, s - 8, ssf);
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: quick paths never touch the block: free and reuse with its pages unreadable") {
  const uint64_t size = 1 << 20, page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(m != MAP_FAILED);
  uint8_t* base = static_cast<uint8_t*>(m);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, base, size, HeapOptions{}, &h) == Status::ok);
  const uint64_t area = reinterpret_cast<const RegionHeader*>(base)->header_size;
  // Blocks until one lies wholly on pages past the metadata, away from its neighbours' pages' use.
  std::vector<uint64_t> offs;
  uint64_t victim = 0;
  for (int i = 0; i < 600 && victim == 0; ++i) {  // 1008-byte footprints: some block starts on a page
    uint64_t off = 0;
    REQUIRE(h->alloc(1000, 16, kNoHint, &off) == Status::ok);
    offs.push_back(off);
    if (off - 16 >= area + 2 * page && (off - 16) % page == 0) victim = off;
  }
  REQUIRE(victim != 0);
  uint64_t spare = 0;
  REQUIRE(h->alloc(1000, 16, kNoHint, &spare) == Status::ok);  // something after the victim stays live
  uint8_t* lo = base + (victim - 16);
  const uint64_t span = round_up(1000 + 24, page);
  REQUIRE(mprotect(lo, span, PROT_NONE) == 0);
  EXPECT(h->free(victim) == Status::ok);  // a SIGSEGV here would end the test binary
  uint64_t again = 0;
  EXPECT(h->alloc(1000, 16, kNoHint, &again) == Status::ok && again == victim);
  EXPECT(h->free(victim) == Status::ok);
  EXPECT(h->free(victim) == Status::double_free);
  REQUIRE(mprotect(lo, span, PROT_READ | PROT_WRITE) == 0);
  EXPECT(violations(*h) == 0);
  h.reset();
  munmap(m, size);
}

namespace {

// Payload bytes of the blocks walk() does not call used: free blocks and quick blocks.
uint64_t walked_free(const Heap& h) {
  uint64_t bytes = 0;
  h.walk([&](const BlockInfo& b) {
    if (!b.used) bytes += b.size;
    return true;
  });
  return bytes;
}

}  // namespace

TEST("tlsf: stats().free is the payload of every free and quick block after any sequence (full stacks, flushes, rebuild)") {
  const uint64_t seeds = coretest::env_or("MEMPOOL_FREE_SEEDS", 4), steps = coretest::env_or("MEMPOOL_FREE_STEPS", 3000);
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    Region r(seed % 2 ? (1 << 16) : (1 << 18));
    std::unique_ptr<Heap> h;
    REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
    const uint64_t start = reinterpret_cast<const RegionHeader*>(r.bytes)->header_size;
    coretest::Rng rng{seed * 7717};
    std::vector<uint64_t> live, freed;
    bool failed = false;
    for (uint64_t step = 0; step < steps && !failed; ++step) {
      const uint64_t c = rng.below(100);
      const char* what = "";
      if (c < 40 || live.empty()) {
        what = "alloc";
        uint64_t size = rng.chance(70) ? 1 + rng.below(200) : rng.chance(80) ? 1 + rng.below(1032) : 1033 + rng.below(4000);
        uint64_t align = rng.chance(10) ? uint64_t(32) << rng.below(6) : 16;
        // Now and then a hint at a payload freed earlier: a block's header then lands on a freed granule.
        uint64_t hint = rng.chance(5) ? start + rng.below(r.size - start) : kNoHint;
        if (!freed.empty() && rng.chance(5)) hint = freed[rng.below(freed.size())] + 16 * rng.below(3);
        uint64_t off = 0;
        if (h->alloc(size, align, hint, &off) == Status::ok) live.push_back(off);
      } else if (c < 43) {
        // A burst of one small size, all freed: more than a quick stack holds, so the rest is released.
        what = "burst";
        uint64_t size = 1 + rng.below(120), off = 0;
        std::vector<uint64_t> burst;
        for (int i = 0; i < 90 && h->alloc(size, 16, kNoHint, &off) == Status::ok; ++i) burst.push_back(off);
        for (uint64_t o : burst) EXPECT(h->free(o) == Status::ok);
      } else if (c < 46) {
        // More than the largest free block: flush_quick() runs, then it may or may not fit.
        what = "flush";
        HeapStats st;
        h->stats(&st);
        uint64_t off = 0;
        if (h->alloc(st.largest_free_block + 16 + rng.below(4096), 16, kNoHint, &off) == Status::ok) live.push_back(off);
      } else if (c < 80) {
        what = "free";
        uint64_t i = rng.below(live.size());
        EXPECT(h->free(live[i]) == Status::ok);
        freed.push_back(live[i]);
        if (freed.size() > 64) freed.erase(freed.begin());
        live[i] = live.back();
        live.pop_back();
      } else if (c < 88) {
        what = "resize";
        uint64_t i = rng.below(live.size());
        Status s = h->resize_in_place(live[i], 1 + rng.below(rng.chance(50) ? 300 : 3000));
        EXPECT(s == Status::ok || s == Status::out_of_memory);
      } else if (c < 97) {
        what = "realloc";
        uint64_t i = rng.below(live.size()), moved = 0;
        Status s = heap_realloc(*h, live[i], 1 + rng.below(2000), rng.chance(20) ? 64 : 16, &moved);
        EXPECT(s == Status::ok || s == Status::out_of_memory);
        if (s == Status::ok) live[i] = moved;
      } else {
        what = "rebuild";
        EXPECT(h->rebuild() == Status::ok);
      }
      HeapStats st;
      h->stats(&st);
      const uint64_t walked = walked_free(*h);
      if (st.free != walked || st.used + st.free + st.overhead != st.capacity || violations(*h) != 0) {
        std::fprintf(stderr, "  seed %llu step %llu (%s): stats().free %llu, free and quick blocks hold %llu\n",
                     (unsigned long long)seed, (unsigned long long)step, what, (unsigned long long)st.free,
                     (unsigned long long)walked);
        EXPECT(false);
        failed = true;
      }
    }
  }
}

TEST("tlsf: check() stays clean when a freed bit sits on a block boundary (a header placed on a freed payload), and the codes stay exact") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t x1 = 0, x2 = 0, g = 0;
  REQUIRE(h->alloc(2000, 16, kNoHint, &x1) == Status::ok && h->alloc(2000, 16, kNoHint, &x2) == Status::ok);
  REQUIRE(h->alloc(100, 16, kNoHint, &g) == Status::ok);
  REQUIRE(h->free(x1) == Status::ok && h->free(x2) == Status::ok);  // one free block, F at x1 and x2
  // A hinted allocation right after x2: its header is x2's (freed) payload granule, its gap block holds x1.
  uint64_t u = 0;
  REQUIRE(h->alloc(100, 16, x2 + 16, &u) == Status::ok);
  REQUIRE(u == x2 + 16);
  EXPECT(granule_state(r, x2) == 1);
  EXPECT(violations(*h) == 0);
  EXPECT(h->free(x2) == Status::double_free);  // x2 was freed and no payload covered it since
  EXPECT(h->free(x2 + 32) == Status::foreign);  // u's interior
  // Grow u in place, shrink it, fill the gap block, free u onto its quick stack, rebuild, allocate across it.
  REQUIRE(h->resize_in_place(u, 1500) == Status::ok);
  EXPECT(violations(*h) == 0);
  REQUIRE(h->resize_in_place(u, 200) == Status::ok);
  EXPECT(violations(*h) == 0);
  uint64_t v = 0;
  REQUIRE(h->alloc(1900, 16, kNoHint, &v) == Status::ok);
  EXPECT(v == x1);
  EXPECT(violations(*h) == 0);
  REQUIRE(h->free(u) == Status::ok);
  EXPECT(violations(*h) == 0);
  REQUIRE(h->rebuild() == Status::ok);
  EXPECT(violations(*h) == 0);
  uint64_t w = 0;
  REQUIRE(h->alloc(3000, 16, kNoHint, &w) == Status::ok);
  EXPECT(violations(*h) == 0);
  REQUIRE(h->free(v) == Status::ok && h->free(w) == Status::ok && h->free(g) == Status::ok);
  EXPECT(violations(*h) == 0);
}
