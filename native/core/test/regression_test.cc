// Regression tests from fuzzing and hostile-segment work (native/fuzz, docs/reliability.md), plus an
// opt-in long stress.
//
// Inputs that crashed a harness become tests here. A test whose bug would crash the process (an ASan
// report, a SIGSEGV) runs the dangerous part in a forked child, so that it fails as one test case and
// the rest of the suite still runs.
//
//   MEMPOOL_STRESS_OPS=1000000 make -C native/core test FILTER=stress
// runs a model stress of that many random operations per heap (alloc with alignments and hints, free,
// resize_in_place, realloc, refused calls) on a 64 KiB region with check() after every step. Unset, the
// stress case runs nothing (the conformance stress already runs 200k + 200k steps per heap in CI).
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "support.h"
#include "heap.h"
#include "segment.h"

using namespace mempool;
using coretest::Region;

namespace {

// Runs body in a child process; true when the child exits 0 (a sanitizer report or a signal is false).
bool survives(const std::function<bool()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) _exit(body() ? 0 : 1);
  if (pid < 0) return false;
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) std::fprintf(stderr, "  child died of signal %d\n", WTERMSIG(status));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Everything a user (or the addon) may call on a heap, whatever its metadata holds.
void poke(Heap& h) {
  CheckResult r;
  h.check(&r);
  HeapStats st;
  h.stats(&st);
  h.walk([](const BlockInfo&) { return true; });
  uint64_t off = 0, u = 0;
  for (uint64_t size : {16ull, 100ull, 1000ull}) {
    if (h.alloc(size, kDefaultAlign, kNoHint, &off) == Status::ok) {
      h.usable_size(off, &u);
      h.resize_in_place(off, size * 3);
      uint64_t moved = 0;
      if (heap_realloc(h, off, size * 9, kDefaultAlign, &moved) == Status::ok) off = moved;
      h.free(off);
    }
  }
  h.alloc(64, 256, 4096, &off);
  h.rebuild();
  h.check(&r);
}

// Found by native/fuzz/heap_attach (and scribble, through the quick lists): a free-list head (or quick
// list head, or next link) holding an offset near 2^64, e.g. 0xffffffffffffffe0, passes
// TlsfHeap::valid_block_offset because `b + kMinFootprint <= sentinel_` wraps; read_block then loads
// base_ + b + 8, 24 bytes *before* the region (heap-buffer-overflow under ASan; for a shared segment,
// bytes of the directory; for writes on the unlink path, memory outside the pool). Every 8-byte word of
// each heap's metadata is set in turn to values that wrap such sums; every call must stay in bounds.
void wrapping_words(Algorithm a) {
  const uint64_t size = 64 * 1024;
  Region r(size, 0);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(a, r.bytes, size, HeapOptions{}, &h) == Status::ok);
  std::vector<uint64_t> offs;
  for (uint64_t i = 0; i < 40; ++i) {
    uint64_t off = 0;
    if (h->alloc(16 + (i * 37) % 900, kDefaultAlign, kNoHint, &off) == Status::ok) offs.push_back(off);
  }
  for (size_t i = 0; i < offs.size(); i += 3) h->free(offs[i]);
  uint64_t meta = reinterpret_cast<const RegionHeader*>(r.bytes)->header_size;
  if (meta > 16384 || meta < sizeof(RegionHeader)) meta = 16384;
  h.reset();
  std::vector<uint8_t> pristine(r.bytes, r.bytes + size);
  const uint64_t values[] = {~uint64_t(0), ~uint64_t(0) - 7, ~uint64_t(0) - 15, ~uint64_t(0) - 31, uint64_t(1) << 63,
                             ~uint64_t(0) - 4095};
  bool survived = survives([&] {
    for (uint64_t at = sizeof(RegionHeader); at + 8 <= meta; at += 8) {
      for (uint64_t v : values) {
        std::memcpy(r.bytes, pristine.data(), size);
        std::memcpy(r.bytes + at, &v, 8);
        std::unique_ptr<Heap> hh;
        if (heap_attach(r.bytes, size, &hh) == Status::ok) poke(*hh);
      }
    }
    // The same values in the links inside blocks (free-list and quick-list next/prev words).
    for (uint64_t off : offs) {
      for (uint64_t k = 0; k < 32; k += 8) {
        for (uint64_t v : values) {
          std::memcpy(r.bytes, pristine.data(), size);
          std::memcpy(r.bytes + off - 16 + k, &v, 8);
          std::unique_ptr<Heap> hh;
          if (heap_attach(r.bytes, size, &hh) == Status::ok) poke(*hh);
        }
      }
    }
    return true;
  });
  EXPECT(survived);
}

TEST("tlsf: regression: metadata words near 2^64 are never followed outside the region") { wrapping_words(Algorithm::tlsf); }
TEST("buddy: regression: metadata words near 2^64 are never followed outside the region") { wrapping_words(Algorithm::buddy); }
TEST("bitmap: regression: metadata words near 2^64 are never followed outside the region") { wrapping_words(Algorithm::bitmap); }

// The exact input native/fuzz/heap_attach first crashed on (tlsf template, one patch): a list head of
// 0xffffffffffffffe0 written at region offset 7936; check() alone read 24 bytes before the region.
TEST("tlsf: regression: fuzz crash-6b8575e7, list head 0xffffffffffffffe0, check() reads before the region") {
  const uint64_t size = 64 * 1024;
  Region r(size, 0);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(Algorithm::tlsf, r.bytes, size, HeapOptions{}, &h) == Status::ok);
  uint64_t v = 0xffffffffffffffe0ULL;
  std::memcpy(r.bytes + 7936, &v, 8);
  bool survived = survives([&] {
    CheckResult cr;
    h->check(&cr);
    uint64_t off = 0;
    for (uint64_t n = 1; n < 20000; n += 97) h->alloc(n, kDefaultAlign, kNoHint, &off);
    return true;
  });
  EXPECT(survived);
}

// The segment's lock slot (64 bytes at offsetof(SegmentHeader, lock)) is as writable by other processes
// as the rest of the segment. Found by native/fuzz/scribble and segment_open while the lock was a glibc
// robust pthread mutex: glibc keeps a thread's held robust mutexes on a list linked *through the mutex*
// (__data.__list at bytes 24..40 of the slot) and unlock runs *(next - 8) = prev; *prev = next with the
// values it finds there, so a scribbler made the holder write chosen values at chosen addresses of its
// own memory (scribble: SIGSEGV in __pthread_mutex_unlock_full); and the kind word (byte 16 of the slot)
// steered trylock into lock elision (segment_open crash-64f0f0d4: `xbegin` in __lll_trylock_elision,
// SIGILL on CPUs without TSX). These cases fill the slot with pointers into this process and with flag
// patterns, while the lock is held and while it is free: lock and unlock may report statuses, never
// crash or write outside the segment. Layout-independent, so they hold for any lock implementation.
// While the pthread mutex is what the tree has, they are known gaps: they print what they found and fail
// only with MEMPOOL_KNOWN_GAPS=1 (docs/security.md).
void lock_slot_case(const char* what, bool pointers) {
  const bool strict = std::getenv("MEMPOOL_KNOWN_GAPS") != nullptr;
  std::string name = "mempool-regress-" + std::to_string(getpid());
  int err = 0;
  Segment::unlink(name, &err);
  bool survived = survives([&] {
    std::unique_ptr<Segment> seg;
    SegmentOptions o;
    o.lock_timeout_ms = 20;
    bool created = false;
    if (Segment::create(name, 1 << 20, o, &seg, &err, &created) != Status::ok) return false;
    static uint64_t targets[8];  // memory of this process, outside the segment
    uint8_t* slot = seg->base() + offsetof(SegmentHeader, lock);
    const uint32_t flags[] = {0x100, 0x1ff, 0x40000000, 0x7fffffff, 0xffffffff, 0x10, 0x3};
    // One word at a time, from the pristine slot each time (a scribbler that changes every word also
    // changes the owner word, and unlock then refuses before following anything): every word of the
    // slot with a pointer while the lock is held, then every 4-byte word with each flag pattern before
    // a lock.
    std::vector<uint8_t> pristine(slot, slot + 64);
    for (uint64_t k = 0; pointers && k < 64; k += 8) {
      std::memcpy(slot, pristine.data(), 64);
      bool recovered = false;
      if (seg->lock(&recovered) != Status::ok) continue;
      uint64_t p = reinterpret_cast<uint64_t>(&targets[k / 8]) + 8;
      std::memcpy(slot + k, &p, 8);  // what another process may write at any time
      seg->unlock();
      if (seg->lock(&recovered) == Status::ok) seg->unlock();
    }
    for (uint64_t k = 0; !pointers && k < 64; k += 4) {
      for (uint32_t f : flags) {
        std::memcpy(slot, pristine.data(), 64);
        std::memcpy(slot + k, &f, 4);
        bool recovered = false;
        if (seg->lock(&recovered) == Status::ok) seg->unlock();
      }
    }
    std::memcpy(slot, pristine.data(), 64);
    bool untouched = true;
    for (uint64_t t : targets) untouched = untouched && t == 0;
    if (!untouched) std::fprintf(stderr, "  lock/unlock wrote into this process's memory outside the segment\n");
    Segment::unlink(name, &err);
    _exit(untouched ? 0 : 1);  // a robust list may point into the segment now: leave without unmapping
  });
  Segment::unlink(name, &err);
  if (strict) {
    EXPECT(survived);
  } else if (!survived) {
    std::printf("  KNOWN GAP (docs/security.md): %s; MEMPOOL_KNOWN_GAPS=1 makes this a failure\n", what);
  }
}

TEST("segment: regression: pointers scribbled over the lock never make lock/unlock write outside the segment") {
  lock_slot_case("a scribbled lock made unlock write outside the segment", true);
}
TEST("segment: regression: flag words scribbled over the lock never crash the next locker") {
  lock_slot_case("a scribbled lock word crashed the next locker", false);
}

// An opt-in long model stress (MEMPOOL_STRESS_OPS operations per heap, small region, check() every step).
void long_stress(Algorithm a, uint64_t ops) {
  const uint64_t region = 64 * 1024;
  Region r(region, 0);
  std::unique_ptr<Heap> h;
  REQUIRE(heap_format(a, r.bytes, region, HeapOptions{}, &h) == Status::ok);
  std::mt19937_64 rng(static_cast<uint64_t>(a) * 1315423911ULL + ops);
  struct Live {
    uint64_t size, seed;
  };
  std::map<uint64_t, Live> live;
  auto fill = [&](uint64_t off, uint64_t n, uint64_t seed) {
    for (uint64_t i = 0; i < n; ++i) r.bytes[off + i] = static_cast<uint8_t>(seed * 131 + i * 7);
  };
  auto intact = [&](uint64_t off, uint64_t n, uint64_t seed) {
    for (uint64_t i = 0; i < n; ++i) {
      if (r.bytes[off + i] != static_cast<uint8_t>(seed * 131 + i * 7)) return false;
    }
    return true;
  };
  auto pick = [&] {
    auto it = live.begin();
    std::advance(it, static_cast<long>(rng() % live.size()));
    return it;
  };
  for (uint64_t step = 0; step < ops; ++step) {
    uint64_t op = rng() % 16;
    uint64_t size = rng() % 4 == 0 ? 1 + rng() % 4000 : 1 + rng() % 300;
    if (op < 7 || live.empty()) {
      uint64_t align = rng() % 6 == 0 ? kDefaultAlign << (rng() % 9) : kDefaultAlign;
      uint64_t hint = rng() % 10 == 0 ? rng() % region : kNoHint;
      uint64_t off = 0;
      Status s = h->alloc(size, align, hint, &off);
      if (s == Status::ok) {
        REQUIRE(off % align == 0 && off < region && size <= region - off);
        auto next = live.lower_bound(off);
        REQUIRE(next == live.end() || next->first >= off + size);
        if (next != live.begin()) REQUIRE(std::prev(next)->first + std::prev(next)->second.size <= off);
        fill(off, size, step);
        live[off] = Live{size, step};
      } else {
        REQUIRE(s == Status::out_of_memory);
      }
    } else if (op < 13) {
      auto it = pick();
      REQUIRE(intact(it->first, it->second.size, it->second.seed));
      REQUIRE(h->free(it->first) == Status::ok);
      REQUIRE(h->free(it->first) != Status::ok);
      live.erase(it);
    } else if (op == 13) {
      auto it = pick();
      Status s = h->resize_in_place(it->first, size);
      uint64_t kept = it->second.size < size ? it->second.size : size;
      if (s == Status::ok) {
        REQUIRE(intact(it->first, kept, it->second.seed));
        // The block grew in place: the bytes after it must not belong to a neighbour.
        auto next = std::next(it);
        REQUIRE(next == live.end() || next->first >= it->first + size);
        fill(it->first, size, it->second.seed);
        it->second.size = size;
      } else {
        REQUIRE(s == Status::out_of_memory);
        REQUIRE(intact(it->first, it->second.size, it->second.seed));
      }
    } else {
      auto it = pick();
      uint64_t moved = 0, old = it->first;
      Live b = it->second;
      Status s = heap_realloc(*h, old, size, kDefaultAlign, &moved);
      if (s == Status::ok) {
        REQUIRE(intact(moved, b.size < size ? b.size : size, b.seed));
        live.erase(it);
        auto next = live.lower_bound(moved);
        REQUIRE(next == live.end() || next->first >= moved + size);
        if (next != live.begin()) REQUIRE(std::prev(next)->first + std::prev(next)->second.size <= moved);
        fill(moved, size, b.seed);
        live[moved] = Live{size, b.seed};
      } else {
        REQUIRE(s == Status::out_of_memory);
        REQUIRE(intact(old, b.size, b.seed));
      }
    }
    CheckResult cr;
    h->check(&cr);
    if (cr.violations) std::fprintf(stderr, "  step %llu: %s\n", (unsigned long long)step, cr.first.c_str());
    REQUIRE(cr.violations == 0);
    HeapStats st;
    h->stats(&st);
    REQUIRE(st.live_allocations == live.size());
    REQUIRE(st.capacity == st.used + st.free + st.overhead);
  }
  for (auto& [off, b] : live) {
    REQUIRE(intact(off, b.size, b.seed));
    REQUIRE(h->free(off) == Status::ok);
  }
  CheckResult cr;
  h->check(&cr);
  EXPECT(cr.violations == 0);
}

uint64_t stress_ops() {
  const char* v = std::getenv("MEMPOOL_STRESS_OPS");
  return v ? std::strtoull(v, nullptr, 10) : 0;
}

void timed_stress(Algorithm a) {
  uint64_t ops = stress_ops();
  if (ops == 0) return;  // opt-in
  auto t0 = std::chrono::steady_clock::now();
  long_stress(a, ops);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  %s: %llu operations, check() after each, %.1f s\n", algorithm_name(a), (unsigned long long)ops, s);
}

TEST("tlsf: stress: MEMPOOL_STRESS_OPS random operations, check every step") { timed_stress(Algorithm::tlsf); }
TEST("buddy: stress: MEMPOOL_STRESS_OPS random operations, check every step") { timed_stress(Algorithm::buddy); }
TEST("bitmap: stress: MEMPOOL_STRESS_OPS random operations, check every step") { timed_stress(Algorithm::bitmap); }

}  // namespace
