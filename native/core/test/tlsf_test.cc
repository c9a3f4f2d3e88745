// TLSF specifics the conformance suite does not reach: the layout version, the interleaved live/freed
// maps across their word boundaries, and the quick-list fast paths against refused and hostile input.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "check.h"
#include "heap.h"

using namespace mempool;

namespace {

struct Region {
  uint8_t* bytes;
  uint64_t size;
  explicit Region(uint64_t n) : bytes(static_cast<uint8_t*>(std::aligned_alloc(kMaxAlign, n))), size(n) {
    std::memset(bytes, 0xA5, n);
  }
  ~Region() { std::free(bytes); }
};

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

// TlsfHeader (tlsf.cc): live_map at 96, freed_map at 104, map_words at 112; quick heads at 10808.
constexpr uint64_t kLiveMapField = 96, kFreedMapField = 104, kMapWordsField = 112, kQuickHeads = 10808;

}  // namespace

TEST("tlsf: layout version 2: interleaved maps; other versions are refused on attach") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  const RegionHeader* rh = reinterpret_cast<const RegionHeader*>(r.bytes);
  EXPECT(rh->version == 2);
  const uint64_t live = word_at(r, kLiveMapField), freed = word_at(r, kFreedMapField), words = word_at(r, kMapWordsField);
  EXPECT(freed == live + 8);
  EXPECT(rh->header_size >= live + words * 16);  // the area starts after both maps
  h.reset();
  REQUIRE(heap_attach(r.bytes, r.size, &h) == Status::ok);
  h.reset();
  for (uint32_t v : {0u, 1u, 3u}) {
    reinterpret_cast<RegionHeader*>(r.bytes)->version = v;
    EXPECT(heap_attach(r.bytes, r.size, &h) == Status::incompatible);
  }
  reinterpret_cast<RegionHeader*>(r.bytes)->version = 2;
  // Version 2 with version 1's geometry (separate maps) is corrupted, not attached.
  const uint64_t separate = live + words * 8;
  std::memcpy(r.bytes + kFreedMapField, &separate, 8);
  EXPECT(heap_attach(r.bytes, r.size, &h) == Status::corrupted);
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

TEST("tlsf: quick paths: an untrustworthy quick head is refused, never followed") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t a = 0, b = 0;
  REQUIRE(h->alloc(8, 16, kNoHint, &a) == Status::ok);  // quick class 0 (24-byte payload)
  REQUIRE(h->alloc(8, 16, kNoHint, &b) == Status::ok);
  REQUIRE(h->free(a) == Status::ok);
  REQUIRE(word_at(r, kQuickHeads) == a - 16);  // the field offset above is right
  const uint64_t bad[] = {1, a - 8, r.size, r.size - 16, UINT64_MAX - 15, b - 16, 16};
  for (uint64_t v : bad) {
    std::memcpy(r.bytes + kQuickHeads, &v, 8);
    uint64_t off = 12345;
    EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::corrupted);
    EXPECT(off == 12345);
  }
  uint64_t good = a - 16;
  std::memcpy(r.bytes + kQuickHeads, &good, 8);
  // A next link that points outside the area is refused too.
  uint64_t link = r.size + 64;
  std::memcpy(r.bytes + a, &link, 8);
  uint64_t off = 0;
  EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::corrupted);
  uint64_t zero = 0;
  std::memcpy(r.bytes + a, &zero, 8);
  EXPECT(h->alloc(8, 16, kNoHint, &off) == Status::ok && off == a);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(h->free(b) == Status::ok);
  EXPECT(violations(*h) == 0);
}

TEST("tlsf: quick paths: a scribbled size word of a live block is refused on free") {
  Region r(1 << 20);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, r.size, HeapOptions{}, &h) == Status::ok);
  uint64_t a = 0;
  REQUIRE(h->alloc(40, 16, kNoHint, &a) == Status::ok);
  const uint64_t sf = word_at(r, a - 8);
  // Sizes that are not 16k + 8, too small, flagged free or quick, or reaching past the area.
  const uint64_t bad[] = {sf | 1, sf | 4, 16, 8, (r.size & ~uint64_t(15)) + 8, 0, UINT64_MAX & ~uint64_t(2)};
  for (uint64_t v : bad) {
    std::memcpy(r.bytes + a - 8, &v, 8);
    EXPECT(h->free(a) == Status::corrupted);
  }
  std::memcpy(r.bytes + a - 8, &sf, 8);
  EXPECT(h->free(a) == Status::ok);
  EXPECT(violations(*h) == 0);
}
