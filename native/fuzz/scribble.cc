// A hostile writer over a live segment, under ASan + UBSan (not a libFuzzer target: seeded, repeatable).
//
//   out/scribble [--seed N] [--rounds N] [--spare-lock] [--algorithm tlsf|buddy|bitmap]
//
// Creates a segment, maps the same object a second time as "the attacker" and, round after round,
// writes random words anywhere in it (half of them aimed at the header and the lock, the directory and
// the first 16 KiB of the heap's metadata), sometimes while the victim holds the lock; the victim goes
// on using the segment as the addon does: lock, alloc / free / realloc / usable_size, directory set /
// get / delete / forget, check, stats, walk, unlock, and now and then re-opens the segment by name. The
// victim may get statuses (corrupted, lock_timeout, ...); it must never crash or touch memory outside
// the segment. When the damage makes the segment unusable it is re-created and the rounds go on.
//
// Then the same for the slab caches of shared_cache.h (attack_caches): rounds / 2 more per algorithm.
//
// --spare-lock keeps the attacker off the 64-byte lock slot. It was needed while the lock was a glibc
// robust pthread mutex (glibc follows pointers stored in it: docs/reliability.md, F2); with the futex
// word lock the attacker may write the lock too, and scripts/fuzz.sh lets it.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "segment.h"
#include "shared_cache.h"

using namespace mempool;

namespace {

constexpr uint64_t kSize = 256 * 1024;

struct Stats {
  uint64_t rounds = 0, writes = 0, ops = 0, refused = 0, recreated = 0, reopened = 0, corrupted_checks = 0;
};

// A new segment `name` (any old one unlinked first): a small directory, a lock that times out quickly.
std::unique_ptr<Segment> fresh_segment(const std::string& name, Algorithm algorithm, uint64_t size) {
  int err = 0;
  Segment::unlink(name, &err);
  SegmentOptions o;
  o.algorithm = algorithm;
  o.directory_capacity = 16;
  o.lock_timeout_ms = 5;
  bool created = false;
  std::unique_ptr<Segment> seg;
  if (Segment::create(name, size, o, &seg, &err, &created) != Status::ok) FUZZ_FAIL("create");
  return seg;
}

// The attacker's own mapping of the same shared memory object.
uint8_t* map_attacker(const std::string& name, uint64_t size) {
  int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) FUZZ_FAIL("attacker mmap");
  return static_cast<uint8_t*>(p);
}

// The slab caches (shared_cache.h) under the same attack. A 1 MiB segment, so that its heap has slabs;
// two attachments, each with its own SharedCache, allocate small and large blocks, free their own (the
// owner's lock-free path) and each other's (the locked remote path), name slots, and now and then check,
// walk, count and collect dead caches under the lock, while the attacker writes anywhere, a third of the
// time into the cache table and slab headers and state bytes. Blocks handed out must lie in the heap.
void attack_caches(Algorithm algorithm, uint64_t rounds, std::mt19937_64& rng, const std::string& name) {
  constexpr uint64_t kCacheSize = 1 << 20;
  int err = 0;
  Stats st;
  std::unique_ptr<Segment> seg[2];
  std::unique_ptr<SharedCache> cache[2];
  uint8_t* attacker = nullptr;
  std::vector<uint64_t> mine;  // heap offsets handed out
  auto recreate = [&] {
    cache[0].reset();
    cache[1].reset();
    seg[0].reset();
    seg[1].reset();
    if (attacker) munmap(attacker, kCacheSize);
    seg[0] = fresh_segment(name, algorithm, kCacheSize);
    if (Segment::open(name, 5, &seg[1], &err) != Status::ok) FUZZ_FAIL("open");
    if (seg[0]->slab_size() == 0) FUZZ_FAIL("a 1 MiB segment should have slabs");
    cache[0].reset(new SharedCache(seg[0].get()));
    cache[1].reset(new SharedCache(seg[1].get()));
    attacker = map_attacker(name, kCacheSize);
    mine.clear();
    ++st.recreated;
  };
  recreate();
  auto inside = [&](uint64_t off, uint64_t size) { return off < seg[0]->heap().size() && size <= seg[0]->heap().size() - off; };
  auto scribble = [&] {
    int writes = 1 + static_cast<int>(rng() % 4);
    uint64_t bias = seg[0]->heap_offset();
    for (int w = 0; w < writes; ++w) {
      uint64_t at;
      switch (rng() % 6) {
        case 0: at = kCacheTableOffset + rng() % (kSegmentHeaderSize - kCacheTableOffset); break;  // the cache table
        case 1: at = 128 + rng() % 96; break;                                                       // slab totals
        case 2:                                                                                     // near a block: a slab's header and state bytes
          at = mine.empty() ? rng() % kCacheSize : bias + (mine[rng() % mine.size()] & ~uint64_t(4095)) + rng() % 256;
          break;
        default: at = rng() % (kCacheSize - 8);
      }
      if (at > kCacheSize - 8) at = kCacheSize - 8;
      uint64_t v;
      switch (rng() % 5) {
        case 0: v = rng(); break;
        case 1: v = rng() % kCacheSize; break;
        case 2: v = ~uint64_t(0) - rng() % 64; break;
        case 3: v = rng() % 4; break;  // slot states: free, lent, remote
        default: v = mine.empty() ? 0 : mine[rng() % mine.size()];
      }
      std::memcpy(attacker + at, &v, size_t(1) << (rng() % 4));
      ++st.writes;
    }
  };
  for (uint64_t round = 0; round < rounds; ++round) {
    ++st.rounds;
    if (rng() % 3 == 0) scribble();
    bool damaged = false;
    for (int i = 0; i < 8; ++i) {
      ++st.ops;
      int who = static_cast<int>(rng() % 2);
      SharedCache& c = *cache[who];
      uint64_t off = 0;
      switch (rng() % 8) {
        case 0: case 1: case 2: {
          uint64_t size = rng() % 8 == 0 ? 1 + rng() % 3000 : 1 + rng() % 1024;
          if (c.alloc(size, kDefaultAlign, kNoHint, &off) == Status::ok) {
            if (!inside(off, size)) FUZZ_FAIL("a cache handed out a block outside the heap");
            std::memset(seg[who]->base() + seg[who]->heap_offset() + off, 0x22, size);
            mine.push_back(off);
          }
          break;
        }
        case 3: case 4:  // free by either attachment: its own slot, another's, or a heap block
          if (!mine.empty()) {
            size_t k = rng() % mine.size();
            c.free(mine[k] + (rng() % 16 == 0 ? 16 : 0));  // now and then an interior offset
            mine[k] = mine.back();
            mine.pop_back();
          }
          break;
        default: {
          bool recovered = false;
          Segment& s = *seg[who];
          if (s.lock(&recovered) != Status::ok) {
            ++st.refused;
            break;
          }
          switch (rng() % 6) {
            case 0:
              if (!mine.empty()) {
                uint64_t u = 0, o = mine[rng() % mine.size()];
                if (shared_usable_size(s, o, &u) == Status::ok && !inside(o, u)) FUZZ_FAIL("usable size runs past the heap");
                if (shared_mark_named(s, o) == Status::ok) s.dir_set("k" + std::to_string(rng() % 12), o + s.heap_offset(), 1);
              }
              break;
            case 1:
              shared_walk(s, [&](const BlockInfo& b) {
                if (!inside(b.offset, b.size)) FUZZ_FAIL("shared_walk left the heap");
                return true;
              });
              break;
            case 2: {
              CheckResult r;
              s.heap().check(&r);
              shared_check(s, &r);
              s.dir_check(&r);
              if (r.violations) ++st.corrupted_checks;
              damaged = r.violations != 0;
              break;
            }
            case 3: {
              HeapStats hs;
              s.heap().stats(&hs);
              shared_adjust_stats(s, &hs);
              break;
            }
            case 4: shared_collect_dead(s); break;
            default: {
              uint64_t moved = 0, size = 1 + rng() % 2000;
              if (!mine.empty()) {
                size_t k = rng() % mine.size();
                if (cache[who]->realloc_locked(mine[k], size, kDefaultAlign, &moved) == Status::ok) {
                  if (!inside(moved, size)) FUZZ_FAIL("realloc returned a block outside the heap");
                  mine[k] = moved;
                }
              }
            }
          }
          s.unlock();
        }
      }
    }
    // Damage found: usually start over, so that most rounds hit a healthy segment; and now and then
    // anyway, which closes both caches on whatever state the attack left.
    if ((damaged && rng() % 4 != 0) || rng() % 512 == 0) recreate();
    if (mine.size() > 300) mine.erase(mine.begin(), mine.begin() + 150);
  }
  std::printf("scribble %s with slab caches: %llu rounds, %llu attacker writes, %llu ops, %llu lock refusals, "
              "%llu checks found damage, %llu segments: no crash\n",
              algorithm_name(algorithm), (unsigned long long)st.rounds, (unsigned long long)st.writes,
              (unsigned long long)st.ops, (unsigned long long)st.refused, (unsigned long long)st.corrupted_checks,
              (unsigned long long)st.recreated);
  cache[0].reset();
  cache[1].reset();
  seg[0].reset();
  seg[1].reset();
  munmap(attacker, kCacheSize);
  Segment::unlink(name, &err);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 1, rounds = 20000;
  bool spare_lock = false;
  std::vector<Algorithm> algorithms = {Algorithm::tlsf, Algorithm::buddy, Algorithm::bitmap};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = std::stoull(argv[++i]);
    else if (a == "--spare-lock") spare_lock = true;
    else if (a == "--algorithm" && i + 1 < argc) {
      Algorithm al;
      if (!algorithm_from_name(argv[++i], &al)) FUZZ_FAIL("unknown algorithm %s", argv[i]);
      algorithms = {al};
    } else {
      std::fprintf(stderr, "usage: scribble [--seed N] [--rounds N] [--spare-lock] [--algorithm A]\n");
      return 2;
    }
  }
  std::string name = "mempool-scribble-" + std::to_string(getpid());
  std::mt19937_64 rng(seed);
  int err = 0;
  for (Algorithm algorithm : algorithms) {
    Stats st;
    std::unique_ptr<Segment> seg;
    uint8_t* attacker = nullptr;
    std::vector<uint64_t> mine;
    auto recreate = [&] {
      seg.reset();
      if (attacker) munmap(attacker, kSize);
      seg = fresh_segment(name, algorithm, kSize);
      attacker = map_attacker(name, kSize);
      mine.clear();
      ++st.recreated;
    };
    recreate();
    auto scribble = [&] {
      int writes = 1 + static_cast<int>(rng() % 4);
      uint64_t heap_meta = seg->heap_offset() + 16384;
      for (int w = 0; w < writes; ++w) {
        uint64_t at;
        switch (rng() % 4) {
          case 0: at = rng() % 512; break;                 // segment header and the lock
          case 1: at = 4096 + rng() % (heap_meta - 4096); break;  // directory, index, heap metadata
          default: at = rng() % (kSize - 8);
        }
        at &= ~uint64_t(rng() % 2 ? 7 : 0);
        if (spare_lock && at + 8 > 256 && at < 256 + 64) continue;
        uint64_t v;
        switch (rng() % 5) {
          case 0: v = rng(); break;
          case 1: v = rng() % kSize; break;
          case 2: v = ~uint64_t(0) - rng() % 64; break;
          case 3: v = rng() % 64; break;
          default: v = mine.empty() ? 0 : mine[rng() % mine.size()] + (rng() % 3) * 16 - 16;
        }
        std::memcpy(attacker + at, &v, size_t(1) << (rng() % 4));  // 1, 2, 4 or 8 bytes, little-endian
        ++st.writes;
      }
    };
    for (uint64_t round = 0; round < rounds; ++round) {
      ++st.rounds;
      if (rng() % 3 == 0) scribble();
      if (rng() % 64 == 0) {  // another process attaching now: validation must hold
        std::unique_ptr<Segment> other;
        if (Segment::open(name, 5, &other, &err) == Status::ok) ++st.reopened;
      }
      bool recovered = false;
      Status ls = seg->lock(&recovered);
      if (ls != Status::ok) {
        ++st.refused;
        if (rng() % 8 == 0) recreate();
        continue;
      }
      Heap& h = seg->heap();
      uint64_t bias = seg->heap_offset();
      for (int i = 0; i < 8; ++i) {
        ++st.ops;
        if (rng() % 16 == 0) scribble();  // while the victim holds the lock
        uint64_t size = 1 + rng() % 3000, off = 0;
        switch (rng() % 9) {
          case 0: case 1:
            if (h.alloc(size, kDefaultAlign << (rng() % 4), kNoHint, &off) == Status::ok) {
              if (off >= h.size() || size > h.size() - off) FUZZ_FAIL("alloc returned a block outside the heap");
              std::memset(seg->base() + bias + off, 0x11, size);
              mine.push_back(off + bias);
            }
            break;
          case 2:
            if (!mine.empty()) {
              size_t k = rng() % mine.size();
              if (h.free(mine[k] - bias) == Status::ok) seg->dir_forget_offset(mine[k]);
              mine[k] = mine.back();
              mine.pop_back();
            }
            break;
          case 3:
            if (!mine.empty()) {
              size_t k = rng() % mine.size();
              uint64_t moved = 0;
              if (heap_realloc(h, mine[k] - bias, size, kDefaultAlign, &moved) == Status::ok) {
                if (moved >= h.size() || size > h.size() - moved) FUZZ_FAIL("realloc returned a block outside the heap");
                if (moved + bias != mine[k]) seg->dir_forget_offset(mine[k]);
                mine[k] = moved + bias;
              }
            }
            break;
          case 4:
            if (!mine.empty()) {
              uint64_t u = 0, o = mine[rng() % mine.size()];
              if (h.usable_size(o - bias, &u) == Status::ok && (o >= seg->size() || u > seg->size() - o)) {
                FUZZ_FAIL("usable_size runs past the segment");
              }
            }
            break;
          case 5:
            if (!mine.empty()) seg->dir_set("k" + std::to_string(rng() % 24), mine[rng() % mine.size()], 1 + rng() % 16);
            break;
          case 6: {
            uint64_t o = 0, l = 0;
            if (seg->dir_get("k" + std::to_string(rng() % 24), &o, &l) == Status::ok &&
                (o < bias || o >= seg->size() || l > seg->size() - o)) {
              FUZZ_FAIL("dir_get names bytes outside the segment's heap");
            }
            if (rng() % 4 == 0) seg->dir_delete("k" + std::to_string(rng() % 24));
            break;
          }
          case 7: {
            std::vector<std::string> keys;
            seg->dir_keys(&keys);
            HeapStats hs;
            h.stats(&hs);
            h.walk([&](const BlockInfo& b) {
              if (b.offset >= h.size() || b.size > h.size() - b.offset) FUZZ_FAIL("walk left the heap");
              return true;
            });
            break;
          }
          default: {
            CheckResult r;
            h.check(&r);
            seg->dir_check(&r);
            if (r.violations) ++st.corrupted_checks;
          }
        }
      }
      seg->unlock();
      // Damage found: usually start over on a fresh segment, so that most rounds hit a healthy one.
      CheckResult after;
      seg->heap().check(&after);
      if (after.violations && rng() % 4 != 0) recreate();
      if (mine.size() > 200) mine.erase(mine.begin(), mine.begin() + 100);
    }
    std::printf("scribble %s: %llu rounds, %llu attacker writes, %llu ops, %llu lock refusals, %llu checks found damage, "
                "%llu re-opens, %llu segments: no crash\n",
                algorithm_name(algorithm), (unsigned long long)st.rounds, (unsigned long long)st.writes,
                (unsigned long long)st.ops, (unsigned long long)st.refused, (unsigned long long)st.corrupted_checks,
                (unsigned long long)st.reopened, (unsigned long long)st.recreated);
    seg.reset();
    munmap(attacker, kSize);
    Segment::unlink(name, &err);
    attack_caches(algorithm, rounds / 2, rng, name);
  }
  return 0;
}
