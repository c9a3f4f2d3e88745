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

using namespace mempool;

namespace {

constexpr uint64_t kSize = 256 * 1024;

struct Stats {
  uint64_t rounds = 0, writes = 0, ops = 0, refused = 0, recreated = 0, reopened = 0, corrupted_checks = 0;
};

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
      Segment::unlink(name, &err);
      SegmentOptions o;
      o.algorithm = algorithm;
      o.directory_capacity = 16;
      o.lock_timeout_ms = 5;
      bool created = false;
      if (Segment::create(name, kSize, o, &seg, &err, &created) != Status::ok) FUZZ_FAIL("create");
      int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
      attacker = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
      close(fd);
      if (attacker == MAP_FAILED) FUZZ_FAIL("attacker mmap");
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
  }
  return 0;
}
