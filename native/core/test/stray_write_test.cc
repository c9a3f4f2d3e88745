// Issue 15, item 6: a stray write cannot take the segment down for everyone. In a shared segment, blocks are
// freed, every byte of their old payloads is overwritten with random bytes (a process writing through views
// of blocks it no longer owns: the free-list links tlsf and buddy keep there are gone), then alloc/free
// storms run: every operation succeeds or fails with out_of_memory, the live blocks keep their patterns,
// check() is clean, and the heap was healed (Segment::heal, counted in heap_repairs) where it had to be.
// bitmap keeps nothing inside blocks: nothing to heal, and the counter stays at zero.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../shared_pool.h"
#include "check.h"
#include "pool_support.h"

using namespace mempool;

namespace {

struct Live {
  uint64_t off;
  uint32_t gen;
  uint64_t size;
  uint8_t seed;
};

// The pattern of a live block: bytes that depend on the block's seed and position.
uint8_t pattern(uint8_t seed, uint64_t i) { return static_cast<uint8_t>(seed + i * 31 + (i >> 8)); }
void fill(SharedPool& p, const Live& b) {
  for (uint64_t i = 0; i < b.size; ++i) p.base()[b.off + i] = pattern(b.seed, i);
}
bool intact(SharedPool& p, const Live& b) {
  for (uint64_t i = 0; i < b.size; ++i) {
    if (p.base()[b.off + i] != pattern(b.seed, i)) return false;
  }
  return true;
}

// Sizes above the slab caches' largest slot (heap blocks, where the heap's metadata is), with some small
// ones (slots, or tlsf's quick blocks) among them.
uint64_t pick_size(std::mt19937_64& rng) {
  return rng() % 4 == 0 ? 16 + rng() % 1000 : 1200 + rng() % 12000;
}

// One round: alloc, free half, scribble every freed payload, storm. Returns heap_repairs at the end.
uint64_t stray_round(Algorithm algo, uint64_t seed, bool* ok) {
  *ok = false;
  const std::string name = coretest::unique_segment_name("stray");
  coretest::Unlinker unlink(name);
  SegmentOptions o;
  o.algorithm = algo;
  auto pool = coretest::create_pool(name, 8 << 20, o);
  auto other = coretest::open_pool(name);  // a second attachment, as a second process
  if (!pool || !other) return 0;
  std::mt19937_64 rng(seed);
  std::vector<Live> live;
  uint8_t serial = 1;
  auto alloc_one = [&](SharedPool& p) {
    Live b{0, 0, pick_size(rng), serial++};
    Status s = p.alloc(b.size, 16, kNoHint, 0, &b.off, &b.gen);
    if (s == Status::out_of_memory) return true;
    if (s != Status::ok) {
      std::fprintf(stderr, "  %s: alloc %llu: %s\n", algorithm_name(algo), (unsigned long long)b.size, status_name(s));
      return false;
    }
    fill(p, b);
    live.push_back(b);
    return true;
  };
  for (int i = 0; i < 600; ++i) {
    if (!alloc_one(*pool)) return 0;
  }
  // Free every other block, keeping where it was and how many bytes its view covered.
  std::vector<std::pair<uint64_t, uint64_t>> freed;
  std::vector<Live> kept;
  for (size_t i = 0; i < live.size(); ++i) {
    if (i % 2 == 0) {
      kept.push_back(live[i]);
      continue;
    }
    uint64_t usable = coretest::pool_usable(*pool, live[i].off);
    if (pool->free(live[i].off, live[i].gen) != Status::ok) return 0;
    freed.emplace_back(live[i].off, usable);
  }
  live.swap(kept);
  // The stray writes: all of every freed payload, random bytes.
  for (const auto& f : freed) {
    for (uint64_t i = 0; i < f.second; ++i) pool->base()[f.first + i] = static_cast<uint8_t>(rng());
  }
  // The storm, from both attachments.
  for (int op = 0; op < 6000; ++op) {
    SharedPool& p = (op & 1) ? *other : *pool;
    if (live.empty() || rng() % 2 == 0) {
      if (!alloc_one(p)) return 0;
      continue;
    }
    size_t i = rng() % live.size();
    if (!intact(p, live[i])) {
      std::fprintf(stderr, "  %s: live block at %llu lost its pattern\n", algorithm_name(algo), (unsigned long long)live[i].off);
      return 0;
    }
    Status s = p.free(live[i].off, live[i].gen);
    if (s != Status::ok) {
      std::fprintf(stderr, "  %s: free: %s\n", algorithm_name(algo), status_name(s));
      return 0;
    }
    live[i] = live.back();
    live.pop_back();
  }
  for (const Live& b : live) {
    if (!intact(*pool, b)) {
      std::fprintf(stderr, "  %s: live block at %llu lost its pattern\n", algorithm_name(algo), (unsigned long long)b.off);
      return 0;
    }
  }
  uint64_t repairs = pool->segment().header()->heap_repairs;
  if (coretest::violations(*pool, algorithm_name(algo)) != 0) return repairs;
  // Everything back: the heap holds only the slabs again.
  for (const Live& b : live) {
    if (pool->free(b.off, b.gen) != Status::ok) return repairs;
  }
  *ok = coretest::violations(*pool, algorithm_name(algo)) == 0;
  return pool->segment().header()->heap_repairs;
}

}  // namespace

TEST("stray writes: tlsf and buddy heal free lists scribbled through views of freed blocks; storms see no corrupted") {
  for (Algorithm algo : {Algorithm::tlsf, Algorithm::buddy}) {
    uint64_t repairs = 0;
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      bool ok = false;
      repairs += stray_round(algo, seed * 7919, &ok);
      EXPECT(ok);
    }
    if (repairs == 0) std::fprintf(stderr, "  %s: no heap repair counted\n", algorithm_name(algo));
    EXPECT(repairs > 0);
  }
}

TEST("stray writes: bitmap keeps no metadata inside blocks: scribbled freed blocks change nothing, nothing to heal") {
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    bool ok = false;
    uint64_t repairs = stray_round(Algorithm::bitmap, seed * 104729, &ok);
    EXPECT(ok);
    EXPECT(repairs == 0);
  }
}

TEST("stray writes: a damaged primary record is still reported (tlsf size word, buddy side table)") {
  for (Algorithm algo : {Algorithm::tlsf, Algorithm::buddy}) {
    const std::string name = coretest::unique_segment_name("stray-primary");
    coretest::Unlinker unlink(name);
    SegmentOptions o;
    o.algorithm = algo;
    auto pool = coretest::create_pool(name, 8 << 20, o);
    REQUIRE(pool);
    Live a{0, 0, 20000, 1}, b{0, 0, 20000, 2};
    REQUIRE(pool->alloc(a.size, 16, kNoHint, 0, &a.off, &a.gen) == Status::ok);
    REQUIRE(pool->alloc(b.size, 16, kNoHint, 0, &b.off, &b.gen) == Status::ok);
    // Hostile writer: the heap's own primary record, not a payload (beyond what a stray write through a
    // view can reach unless the memory was reused by other sizes).
    Heap& heap = pool->segment().heap();
    uint8_t* hb = heap.base();
    uint64_t hoff = b.off - pool->heap_offset();
    if (algo == Algorithm::tlsf) {
      std::memset(hb + hoff - 8, 0xff, 8);  // b's size word
    } else {
      // b's side-table byte (BuddyHeader: min_block at 80, table_offset at 120, area_offset at 144).
      uint64_t min_block = 0, table = 0, area = 0;
      std::memcpy(&min_block, hb + 80, 8);
      std::memcpy(&table, hb + 120, 8);
      std::memcpy(&area, hb + 144, 8);
      REQUIRE(min_block != 0 && hoff >= area);
      hb[table + (hoff - area) / min_block] = 0;
    }
    CheckResult r;
    pool->check(&r);
    if (r.violations == 0) std::fprintf(stderr, "  %s: check() is clean\n", algorithm_name(algo));
    EXPECT(r.violations > 0);
  }
}
