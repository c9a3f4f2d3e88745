// A hostile writer over a live segment, under ASan + UBSan (not a libFuzzer target: seeded, repeatable).
//
//   out/scribble [--seed N] [--rounds N] [--spare-lock] [--algorithm tlsf|buddy|bitmap]
//
// Creates a segment, maps the same object a second time as "the attacker" and, round after round,
// writes random words anywhere in it (half of them aimed at the header and the lock, the pin table, the
// directory and the first 16 KiB of the heap's metadata), sometimes while the victim holds the lock; the
// victim goes on using the segment as the addon does, through the facade (shared_pool.h): alloc / free /
// realloc / usable_size with handles (and kAnyGen, the offset API), set / replace / take / get / copy /
// remove, pin / unpin, keys, check, stats, walk, and now and then re-opens the segment by name. The victim
// may get statuses (corrupted, lock_timeout, stale, named, ...); it must never crash or touch memory
// outside the segment. When the damage makes the segment unusable it is re-created and the rounds go on.
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
#include "shared_pool.h"

using namespace mempool;

namespace {

constexpr uint64_t kSize = 256 * 1024;

struct Stats {
  uint64_t rounds = 0, writes = 0, ops = 0, refused = 0, recreated = 0, reopened = 0, corrupted_checks = 0;
};

struct Handle {
  uint64_t off;
  uint32_t gen;
};

// A new segment `name` (any old one unlinked first): a small directory, a lock that times out quickly.
std::unique_ptr<SharedPool> fresh_pool(const std::string& name, Algorithm algorithm, uint64_t size) {
  int err = 0;
  Segment::unlink(name, &err);
  SegmentOptions o;
  o.algorithm = algorithm;
  o.directory_capacity = 16;
  o.lock_timeout_ms = 5;
  bool created = false;
  std::unique_ptr<SharedPool> pool;
  if (SharedPool::create(name, size, o, &pool, &err, &created) != Status::ok) FUZZ_FAIL("create");
  return pool;
}

// The attacker's own mapping of the same shared memory object.
uint8_t* map_attacker(const std::string& name, uint64_t size) {
  int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) FUZZ_FAIL("attacker mmap");
  return static_cast<uint8_t*>(p);
}

bool inside(const SharedPool& p, uint64_t off, uint64_t n) {
  return off >= p.heap_offset() && off < p.size() && n <= p.size() - off;
}

// One facade operation picked by `rng` on `pool`, with the handles the victim holds. Returns its status
// (lock_timeout tells the caller the lock is held by someone who does not let go).
Status victim_op(SharedPool& pool, std::mt19937_64& rng, std::vector<Handle>* mine, std::vector<std::pair<uint32_t, uint64_t>>* pins,
                 uint64_t max_size, Stats* st, bool* damaged) {
  auto pick = [&](Handle* h) {
    if (mine->empty()) return false;
    *h = (*mine)[rng() % mine->size()];
    if (rng() % 8 == 0) h->gen = kAnyGen;            // the offset API
    if (rng() % 16 == 0) h->off += 16;               // an interior offset
    if (rng() % 32 == 0) h->gen ^= 1;                // a stale handle
    return true;
  };
  std::string key = "k" + std::to_string(rng() % 12);
  uint64_t size = rng() % 8 == 0 ? 1 + rng() % max_size : 1 + rng() % 1024;
  NamedBlock nb;
  bool had = false;
  Handle h{0, 0};
  Status s = Status::ok;
  switch (rng() % 16) {
    case 0: case 1: case 2: {
      s = pool.alloc(size, kDefaultAlign << (rng() % 8 == 0 ? rng() % 4 : 0), kNoHint, 0, &h.off, &h.gen);
      if (s == Status::ok) {
        if (!inside(pool, h.off, size)) FUZZ_FAIL("alloc returned a block outside the heap");
        std::memset(pool.base() + h.off, 0x11, size);
        mine->push_back(h);
      }
      break;
    }
    case 3: case 4:
      if (!mine->empty()) {
        size_t k = rng() % mine->size();
        h = (*mine)[k];
        if (rng() % 8 == 0) h.gen = kAnyGen;
        s = pool.free(h.off + (rng() % 16 == 0 ? 16 : 0), h.gen);
        (*mine)[k] = mine->back();
        mine->pop_back();
      }
      break;
    case 5:
      if (!mine->empty()) {
        size_t k = rng() % mine->size();
        uint64_t moved = 0;
        uint32_t gen = 0;
        s = pool.realloc((*mine)[k].off, (*mine)[k].gen, size, kDefaultAlign, &moved, &gen);
        if (s == Status::ok) {
          if (!inside(pool, moved, size)) FUZZ_FAIL("realloc returned a block outside the heap");
          (*mine)[k] = {moved, gen};
        }
      }
      break;
    case 6:
      if (pick(&h)) {
        uint64_t u = 0;
        s = pool.usable_size(h.off, &u);
        if (s == Status::ok && !inside(pool, h.off, u)) FUZZ_FAIL("usable_size runs past the segment");
      }
      break;
    case 7:
      if (pick(&h)) s = pool.set(key, h.off, h.gen, 1 + rng() % 16);
      break;
    case 8:
      if (pick(&h)) {
        s = pool.replace(key, h.off, h.gen, 1 + rng() % 16, &nb, &had);
        if (s == Status::ok && had) {
          if (!inside(pool, nb.offset, nb.length)) FUZZ_FAIL("replace handed back bytes outside the heap");
          mine->push_back({nb.offset, nb.gen});
        }
      }
      break;
    case 9:
      s = pool.take(key, &nb, &had);
      if (s == Status::ok && had) {
        if (!inside(pool, nb.offset, nb.length)) FUZZ_FAIL("take handed out bytes outside the heap");
        mine->push_back({nb.offset, nb.gen});
      }
      break;
    case 10: {
      s = pool.get(key, &nb, &had);
      if (s == Status::ok && had && !inside(pool, nb.offset, nb.length)) FUZZ_FAIL("get names bytes outside the heap");
      std::string bytes;
      if (pool.copy(key, &bytes, &had) == Status::ok && had && bytes.size() > pool.size()) FUZZ_FAIL("copy too long");
      if (rng() % 4 == 0) s = pool.remove(key, &had);
      break;
    }
    case 11: {
      uint32_t pin = 0;
      if (pins->size() < 8) {
        s = pool.pin(key, &nb, &pin, &had);
        if (s == Status::ok && had) {
          if (!inside(pool, nb.offset, nb.length)) FUZZ_FAIL("pin names bytes outside the heap");
          pins->push_back({pin, nb.offset});
        }
      }
      break;
    }
    case 12:
      if (!pins->empty()) {
        size_t k = rng() % pins->size();
        s = pool.unpin((*pins)[k].first, (*pins)[k].second);
        (*pins)[k] = pins->back();
        pins->pop_back();
      }
      break;
    case 13: {
      std::vector<std::string> keys;
      s = pool.keys(&keys);
      HeapStats hs;
      pool.stats(&hs);
      pool.walk([&](const BlockInfo& b) {
        if (!inside(pool, b.offset, b.size)) FUZZ_FAIL("walk left the heap");
        return true;
      });
      break;
    }
    case 14:
      s = pool.locked([&] {
        pool.collect_dead_locked();
        return Status::ok;
      });
      break;
    default: {
      CheckResult r;
      s = pool.check(&r);
      if (r.violations) ++st->corrupted_checks;
      *damaged = *damaged || r.violations != 0 || s != Status::ok;
    }
  }
  return s;
}

// The slab caches (shared_cache.h) under the same attack. A 1 MiB segment, so that its heap has slabs;
// two attachments (two SharedPools, each with its own cache) allocate small and large blocks, free their
// own (the owner's lock-free path) and each other's (the locked remote path), name, take, pin and check,
// while the attacker writes anywhere, a third of the time into the cache table and slab headers and
// state bytes. Blocks handed out must lie in the heap.
void attack_caches(Algorithm algorithm, uint64_t rounds, std::mt19937_64& rng, const std::string& name) {
  constexpr uint64_t kCacheSize = 1 << 20;
  int err = 0;
  Stats st;
  std::unique_ptr<SharedPool> pool[2];
  uint8_t* attacker = nullptr;
  std::vector<Handle> mine;
  std::vector<std::pair<uint32_t, uint64_t>> pins[2];
  auto recreate = [&] {
    pool[0].reset();
    pool[1].reset();
    if (attacker) munmap(attacker, kCacheSize);
    pool[0] = fresh_pool(name, algorithm, kCacheSize);
    if (SharedPool::open(name, 5, &pool[1], &err) != Status::ok) FUZZ_FAIL("open");
    if (pool[0]->segment().slab_size() == 0) FUZZ_FAIL("a 1 MiB segment should have slabs");
    attacker = map_attacker(name, kCacheSize);
    mine.clear();
    pins[0].clear();
    pins[1].clear();
    ++st.recreated;
  };
  recreate();
  auto scribble = [&] {
    int writes = 1 + static_cast<int>(rng() % 4);
    for (int w = 0; w < writes; ++w) {
      uint64_t at;
      switch (rng() % 7) {
        case 0: at = kCacheTableOffset + rng() % (kSegmentHeaderSize - kCacheTableOffset); break;  // the cache table
        case 1: at = 128 + rng() % 128; break;                                                      // slab totals, generations, pins
        case 2:                                                                                     // near a block: a slab's header, states, words
          at = mine.empty() ? rng() % kCacheSize : (mine[rng() % mine.size()].off & ~uint64_t(4095)) + rng() % 1024;
          break;
        case 3: at = kPinTableOffset + rng() % 4096; break;  // the pin table
        default: at = rng() % (kCacheSize - 8);
      }
      if (at > kCacheSize - 8) at = kCacheSize - 8;
      uint64_t v;
      switch (rng() % 5) {
        case 0: v = rng(); break;
        case 1: v = rng() % kCacheSize; break;
        case 2: v = ~uint64_t(0) - rng() % 64; break;
        case 3: v = rng() % 4; break;  // slot states: free, lent, remote
        default: v = mine.empty() ? 0 : mine[rng() % mine.size()].off;
      }
      std::memcpy(attacker + at, &v, size_t(1) << (rng() % 4));
      ++st.writes;
    }
  };
  for (uint64_t round = 0; round < rounds; ++round) {
    ++st.rounds;
    if (rng() % 3 == 0) scribble();
    bool damaged = false, stuck = false;
    for (int i = 0; i < 8 && !stuck; ++i) {
      ++st.ops;
      int who = static_cast<int>(rng() % 2);
      Status s = victim_op(*pool[who], rng, &mine, &pins[who], 3000, &st, &damaged);
      if (s == Status::lock_timeout) {
        ++st.refused;
        stuck = true;
      }
    }
    // Damage found: usually start over, so that most rounds hit a healthy segment; and now and then
    // anyway, which closes both caches on whatever state the attack left.
    if ((damaged && rng() % 4 != 0) || (stuck && rng() % 4 == 0) || rng() % 512 == 0) recreate();
    if (mine.size() > 300) mine.erase(mine.begin(), mine.begin() + 150);
  }
  std::printf("scribble %s with slab caches: %llu rounds, %llu attacker writes, %llu ops, %llu lock refusals, "
              "%llu checks found damage, %llu segments: no crash\n",
              algorithm_name(algorithm), (unsigned long long)st.rounds, (unsigned long long)st.writes,
              (unsigned long long)st.ops, (unsigned long long)st.refused, (unsigned long long)st.corrupted_checks,
              (unsigned long long)st.recreated);
  pool[0].reset();
  pool[1].reset();
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
    std::unique_ptr<SharedPool> pool;
    uint8_t* attacker = nullptr;
    std::vector<Handle> mine;
    std::vector<std::pair<uint32_t, uint64_t>> pins;
    auto recreate = [&] {
      pool.reset();
      if (attacker) munmap(attacker, kSize);
      pool = fresh_pool(name, algorithm, kSize);
      attacker = map_attacker(name, kSize);
      mine.clear();
      pins.clear();
      ++st.recreated;
    };
    recreate();
    auto scribble = [&] {
      int writes = 1 + static_cast<int>(rng() % 4);
      uint64_t heap_meta = pool->heap_offset() + 16384;
      for (int w = 0; w < writes; ++w) {
        uint64_t at;
        switch (rng() % 4) {
          case 0: at = rng() % 512; break;                        // segment header and the lock
          case 1: at = 4096 + rng() % (heap_meta - 4096); break;  // pins, directory, index, words, heap metadata
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
          default: v = mine.empty() ? 0 : mine[rng() % mine.size()].off + (rng() % 3) * 16 - 16;
        }
        std::memcpy(attacker + at, &v, size_t(1) << (rng() % 4));  // 1, 2, 4 or 8 bytes, little-endian
        ++st.writes;
      }
    };
    for (uint64_t round = 0; round < rounds; ++round) {
      ++st.rounds;
      if (rng() % 3 == 0) scribble();
      if (rng() % 64 == 0) {  // another process attaching now: validation must hold
        std::unique_ptr<SharedPool> other;
        if (SharedPool::open(name, 5, &other, &err) == Status::ok) ++st.reopened;
      }
      bool damaged = false, stuck = false;
      for (int i = 0; i < 8 && !stuck; ++i) {
        ++st.ops;
        if (rng() % 16 == 0) {  // while the victim holds the lock
          pool->locked([&] {
            scribble();
            return Status::ok;
          });
        }
        Status s = victim_op(*pool, rng, &mine, &pins, 3000, &st, &damaged);
        if (s == Status::lock_timeout) {
          ++st.refused;
          stuck = true;
        }
      }
      // Damage found: usually start over on a fresh segment, so that most rounds hit a healthy one.
      if (!damaged && !stuck) {
        CheckResult after;
        damaged = pool->check(&after) != Status::ok || after.violations != 0;
      }
      if ((damaged && rng() % 4 != 0) || (stuck && rng() % 8 == 0)) recreate();
      if (mine.size() > 200) mine.erase(mine.begin(), mine.begin() + 100);
    }
    std::printf("scribble %s: %llu rounds, %llu attacker writes, %llu ops, %llu lock refusals, %llu checks found damage, "
                "%llu re-opens, %llu segments: no crash\n",
                algorithm_name(algorithm), (unsigned long long)st.rounds, (unsigned long long)st.writes,
                (unsigned long long)st.ops, (unsigned long long)st.refused, (unsigned long long)st.corrupted_checks,
                (unsigned long long)st.reopened, (unsigned long long)st.recreated);
    pool.reset();
    munmap(attacker, kSize);
    Segment::unlink(name, &err);
    attack_caches(algorithm, rounds / 2, rng, name);
  }
  return 0;
}
