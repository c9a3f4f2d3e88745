// Threads on one segment through the facade, each with its own attachment (SharedPool::open), as
// processes use it: two holders of one handle racing, and a random stress of every operation with
// checksummed values. Lengths: MEMPOOL_POOL_STRESS_MS (default 1500 per configuration),
// MEMPOOL_POOL_STRESS_THREADS (default 4), MEMPOOL_POOL_RACE_ROUNDS (default 200000).
// Builds under ThreadSanitizer too: make -C native/fuzz tsan.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../shared_pool.h"
#include "check.h"
#include "pool_support.h"
#include "support.h"

using namespace mempool;
using coretest::pool_stats;
using coretest::violations;

namespace {

// A value that carries its own checksum: [u64 seed][u64 length][bytes derived from seed], so any copy of a
// named block can be verified without knowing who wrote it.
constexpr uint64_t kValueHeader = 16;
uint8_t value_byte(uint64_t seed, uint64_t i) { return static_cast<uint8_t>((seed * 0x9E3779B97F4A7C15ULL + i * 131) >> 56); }
void write_value(uint8_t* p, uint64_t n, uint64_t seed) {
  std::memcpy(p, &seed, 8);
  std::memcpy(p + 8, &n, 8);
  for (uint64_t i = kValueHeader; i < n; ++i) p[i] = value_byte(seed, i);
}
bool value_ok(const uint8_t* p, uint64_t n) {
  if (n < kValueHeader) return false;
  uint64_t seed = 0, len = 0;
  std::memcpy(&seed, p, 8);
  std::memcpy(&len, p + 8, 8);
  if (len != n) return false;
  for (uint64_t i = kValueHeader; i < n; ++i) {
    if (p[i] != value_byte(seed, i)) return false;
  }
  return true;
}

struct Config {
  Algorithm algo;
  uint64_t size;
  const char* what;
};

std::unique_ptr<SharedPool> make_segment(const Config& c, const std::string& name) {
  SegmentOptions o;
  o.algorithm = c.algo;
  o.lock_timeout_ms = 10000;
  if (c.size < (1 << 20)) o.directory_capacity = 64;
  return coretest::create_pool(name, c.size, o);
}

// Two holders of one handle (the same (offset, gen) in two attachments) free it at once; the first holder
// then allocates again at once, which reuses the slot from its lock-free stack. Rule: exactly one of the
// two frees succeeds; the loser changes nothing: the block allocated afterwards stays its owner's.
void race_free(const Config& c, uint64_t size) {
  std::string name = coretest::unique_segment_name("race");
  coretest::Unlinker ul(name);
  auto view = make_segment(c, name);
  REQUIRE(view);
  auto pa = coretest::open_pool(name), pb = coretest::open_pool(name);
  REQUIRE(pa && pb);
  uint64_t rounds = coretest::env_or("MEMPOOL_POOL_RACE_ROUNDS", 200000);
  std::atomic<uint64_t> shared_off{0};
  std::atomic<uint32_t> shared_gen{0};
  std::atomic<uint64_t> go{0}, done_b{0};
  std::atomic<int> b_result{0};
  std::thread tb([&] {
    for (uint64_t r = 1; r <= rounds; ++r) {
      while (go.load(std::memory_order_acquire) < r) {
      }
      Status s = pb->free(shared_off.load(std::memory_order_relaxed), shared_gen.load(std::memory_order_relaxed));
      b_result.store(static_cast<int>(s), std::memory_order_relaxed);
      done_b.store(r, std::memory_order_release);
    }
  });
  uint64_t both_ok = 0, none_ok = 0, lost_next = 0;
  for (uint64_t r = 1; r <= rounds; ++r) {
    uint64_t off = 0, off2 = 0;
    uint32_t gen = 0, gen2 = 0;
    if (pa->alloc(size, 16, kNoHint, 0, &off, &gen) != Status::ok) {
      REQUIRE(!"alloc failed");
    }
    shared_off.store(off, std::memory_order_relaxed);
    shared_gen.store(gen, std::memory_order_relaxed);
    go.store(r, std::memory_order_release);
    Status sa = pa->free(off, gen);
    Status sn = pa->alloc(size, 16, kNoHint, 0, &off2, &gen2);  // likely the same slot, a new handle
    while (done_b.load(std::memory_order_acquire) < r) {
    }
    Status sb = static_cast<Status>(b_result.load(std::memory_order_relaxed));
    int oks = (sa == Status::ok) + (sb == Status::ok);
    both_ok += oks == 2;
    none_ok += oks == 0;
    if (sn == Status::ok) {
      Status sf = pa->free(off2, gen2);  // the new owner's block must still be its own
      lost_next += sf != Status::ok;
    }
  }
  tb.join();
  if (both_ok + none_ok + lost_next != 0) {
    std::fprintf(stderr, "  race (%s, %llu bytes): %llu rounds: both frees ok %llu, none ok %llu, next owner's block lost %llu\n",
                 c.what, (unsigned long long)size, (unsigned long long)rounds, (unsigned long long)both_ok,
                 (unsigned long long)none_ok, (unsigned long long)lost_next);
  }
  EXPECT(both_ok == 0);
  EXPECT(none_ok == 0);
  EXPECT(lost_next == 0);
  EXPECT(violations(*view) == 0);
  EXPECT(pool_stats(*view).live_allocations == 0);
}

struct Held {
  uint64_t off;
  uint32_t gen;
  uint64_t length;  // bytes of the value
};

struct Totals {
  std::atomic<uint64_t> ops{0}, refused{0}, failures{0};
};

#define STRESS_FAIL(...)                                     \
  do {                                                       \
    std::fprintf(stderr, "  stress thread %d: ", id);        \
    std::fprintf(stderr, __VA_ARGS__);                       \
    std::fprintf(stderr, "\n");                              \
    tot->failures.fetch_add(1);                              \
  } while (0)

constexpr int kKeys = 24;

void stress_thread(int id, const std::string& name, std::chrono::steady_clock::time_point until, Totals* tot,
                   std::vector<Held>* left, std::unique_ptr<SharedPool>* keep) {
  auto pool = coretest::open_pool(name);
  if (!pool) {
    tot->failures.fetch_add(1);
    return;
  }
  SharedPool& p = *pool;
  coretest::Rng rng{0x1234u + uint64_t(id) * 7919u};
  std::vector<Held> held, dead;
  struct Pin {
    uint32_t id;
    uint64_t off, length;
  };
  std::vector<Pin> pins;
  auto key = [&] { return "k" + std::to_string(rng.below(kKeys)); };
  auto take_held = [&](size_t i) {
    Held h = held[i];
    held[i] = held.back();
    held.pop_back();
    return h;
  };
  auto check_block = [&](uint64_t off, uint64_t length, const char* what) {
    if (!value_ok(p.base() + off, length)) STRESS_FAIL("%s: the value at %llu (%llu bytes) is torn", what, (unsigned long long)off, (unsigned long long)length);
  };
  uint64_t n = 0;
  while ((n++ & 63) != 0 || std::chrono::steady_clock::now() < until) {
    if (tot->failures.load(std::memory_order_relaxed) > 20) break;
    tot->ops.fetch_add(1, std::memory_order_relaxed);
    uint64_t r = rng.below(100);
    NamedBlock nb;
    bool had = false;
    if (r < 22 && held.size() < 64) {  // alloc
      uint64_t size = rng.chance(80) ? kValueHeader + rng.below(600) : kValueHeader + rng.below(6000);
      Held h{0, 0, size};
      Status s = p.alloc(size, 16, kNoHint, 0, &h.off, &h.gen);
      if (s == Status::out_of_memory) {
        tot->refused.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (s != Status::ok) STRESS_FAIL("alloc: %s", status_name(s));
      if (s != Status::ok) continue;
      write_value(p.base() + h.off, size, rng.next());
      held.push_back(h);
    } else if (r < 34 && !held.empty()) {  // free what we own: must succeed
      Held h = take_held(rng.below(held.size()));
      check_block(h.off, h.length, "free");
      Status s = p.free(h.off, h.gen);
      if (s != Status::ok) STRESS_FAIL("free of an owned block: %s", status_name(s));
      dead.push_back(h);
    } else if (r < 44 && !held.empty()) {  // set
      size_t i = rng.below(held.size());
      Status s = p.set(key(), held[i].off, held[i].gen, held[i].length);
      if (s == Status::ok) dead.push_back(take_held(i));
      else if (s != Status::directory_full) STRESS_FAIL("set of an owned block: %s", status_name(s));
    } else if (r < 52 && !held.empty()) {  // replace
      size_t i = rng.below(held.size());
      Status s = p.replace(key(), held[i].off, held[i].gen, held[i].length, &nb, &had);
      if (s == Status::ok) {
        dead.push_back(take_held(i));
        if (had) {
          check_block(nb.offset, nb.length, "replace's old block");
          held.push_back({nb.offset, nb.gen, nb.length});
        }
      } else if (s != Status::directory_full) {
        STRESS_FAIL("replace of an owned block: %s", status_name(s));
      }
    } else if (r < 60) {  // take
      Status s = p.take(key(), &nb, &had);
      if (s != Status::ok) STRESS_FAIL("take: %s", status_name(s));
      if (s == Status::ok && had) {
        check_block(nb.offset, nb.length, "take");
        held.push_back({nb.offset, nb.gen, nb.length});
      }
    } else if (r < 66) {  // remove
      Status s = p.remove(key(), &had);
      if (s != Status::ok) STRESS_FAIL("remove: %s", status_name(s));
    } else if (r < 74) {  // copy
      std::string bytes;
      Status s = p.copy(key(), &bytes, &had);
      if (s != Status::ok) STRESS_FAIL("copy: %s", status_name(s));
      if (s == Status::ok && had && !value_ok(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())) {
        STRESS_FAIL("copy: a named value is torn (%zu bytes)", bytes.size());
      }
    } else if (r < 82) {  // pin (held for a while), read in place
      if (pins.size() < 6) {
        uint32_t pin = 0;
        Status s = p.pin(key(), &nb, &pin, &had);
        if (s == Status::ok && had) {
          check_block(nb.offset, nb.length, "pin");
          pins.push_back({pin, nb.offset, nb.length});
        } else if (s != Status::ok && s != Status::pins_full) {
          STRESS_FAIL("pin: %s", status_name(s));
        }
      }
    } else if (r < 88) {  // unpin
      if (!pins.empty()) {
        size_t i = rng.below(pins.size());
        check_block(pins[i].off, pins[i].length, "pinned block before unpin");
        Status s = p.unpin(pins[i].id, pins[i].off);
        if (s != Status::ok) STRESS_FAIL("unpin: %s", status_name(s));
        pins[i] = pins.back();
        pins.pop_back();
      }
    } else if (r < 92 && !held.empty()) {  // realloc (values keep their length; only the block moves or grows)
      size_t i = rng.below(held.size());
      uint64_t moved = 0;
      uint32_t ng = 0;
      Status s = p.realloc(held[i].off, held[i].gen, held[i].length + rng.below(3000), 16, &moved, &ng);
      if (s == Status::ok) {
        if (moved != held[i].off) dead.push_back(held[i]);
        held[i].off = moved;
        held[i].gen = ng;
        check_block(moved, held[i].length, "realloc");
      } else if (s != Status::out_of_memory) {
        STRESS_FAIL("realloc of an owned block: %s", status_name(s));
      }
    } else if (r < 97 && !dead.empty()) {  // a handle from before a transfer: refused, nothing changes
      Held h = dead[rng.below(dead.size())];
      Status s = rng.chance(50) ? p.free(h.off, h.gen) : p.set(key(), h.off, h.gen, 16);
      if (s == Status::ok) STRESS_FAIL("a stale handle (%llu, %u) was accepted", (unsigned long long)h.off, h.gen);
    } else if (rng.chance(10)) {
      CheckResult cr;
      if (p.check(&cr) != Status::ok || cr.violations != 0) STRESS_FAIL("check: %s", cr.first.c_str());
    }
    if (dead.size() > 256) dead.erase(dead.begin(), dead.begin() + 128);
  }
  for (const Pin& pn : pins) {
    check_block(pn.off, pn.length, "pinned block at the end");
    if (p.unpin(pn.id, pn.off) != Status::ok) STRESS_FAIL("final unpin");
  }
  *left = held;
  *keep = std::move(pool);  // stays attached (its cache keeps its slabs) until the main thread has counted
}

void run_stress(const Config& c) {
  std::string name = coretest::unique_segment_name("pstress");
  coretest::Unlinker ul(name);
  auto view = make_segment(c, name);
  REQUIRE(view);
  int threads = static_cast<int>(coretest::env_or("MEMPOOL_POOL_STRESS_THREADS", 4));
  uint64_t ms = coretest::env_or("MEMPOOL_POOL_STRESS_MS", 1500);
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  Totals tot;
  std::vector<std::vector<Held>> left(static_cast<size_t>(threads));
  std::vector<std::unique_ptr<SharedPool>> pools(static_cast<size_t>(threads));
  std::vector<std::thread> ts;
  for (int i = 0; i < threads; ++i) {
    ts.emplace_back(stress_thread, i, name, until, &tot, &left[static_cast<size_t>(i)], &pools[static_cast<size_t>(i)]);
  }
  for (auto& t : ts) t.join();
  EXPECT(tot.failures.load() == 0);
  EXPECT(violations(*view, "after the stress") == 0);
  // Every named value intact; live allocations = named blocks + blocks the threads still hold.
  std::vector<std::string> keys;
  REQUIRE(view->keys(&keys) == Status::ok);
  for (const std::string& k : keys) {
    std::string bytes;
    bool had = false;
    EXPECT(view->copy(k, &bytes, &had) == Status::ok && had);
    EXPECT(value_ok(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
  uint64_t held = 0;
  for (auto& l : left) {
    held += l.size();
    for (const Held& h : l) EXPECT(value_ok(view->base() + h.off, h.length));
  }
  HeapStats st = pool_stats(*view);
  if (st.live_allocations != keys.size() + held) {
    std::fprintf(stderr, "  %s: live %llu, named %zu + held %llu\n", c.what, (unsigned long long)st.live_allocations,
                 keys.size(), (unsigned long long)held);
  }
  EXPECT(st.live_allocations == keys.size() + held);
  // The threads' attachments close (their slabs with lent slots go ownerless); everything is given back
  // through the facade.
  pools.clear();
  for (auto& l : left) {
    for (const Held& h : l) EXPECT(view->free(h.off, h.gen) == Status::ok);
  }
  for (const std::string& k : keys) {
    bool had = false;
    EXPECT(view->remove(k, &had) == Status::ok && had);
  }
  EXPECT(pool_stats(*view).live_allocations == 0);
  EXPECT(violations(*view, "after the clean-up") == 0);
  std::printf("  %s: %d threads, %llu ops in %llu ms (%llu refused for memory)\n", c.what, threads,
              (unsigned long long)tot.ops.load(), (unsigned long long)ms, (unsigned long long)tot.refused.load());
}

const Config kConfigs[] = {
    {Algorithm::tlsf, 16 << 20, "tlsf, slabs"},       {Algorithm::buddy, 16 << 20, "buddy, slabs"},
    {Algorithm::bitmap, 16 << 20, "bitmap, slabs"},   {Algorithm::tlsf, 240 << 10, "tlsf, no slabs"},
};

}  // namespace

TEST("pool regression: race: two holders of one slot handle free it at once, the owner re-allocates (tlsf, slabs)") { race_free(kConfigs[0], 48); }
TEST("pool race: two holders of one heap-block handle free it at once (tlsf, slabs)") { race_free(kConfigs[0], 3000); }
TEST("pool race: two holders of one handle free it at once (bitmap, no slabs)") { race_free({Algorithm::bitmap, 240 << 10, "bitmap, no slabs"}, 48); }
TEST("pool stress: threads, each its own attachment, every operation (tlsf, slabs)") { run_stress(kConfigs[0]); }
TEST("pool stress: threads, each its own attachment, every operation (buddy, slabs)") { run_stress(kConfigs[1]); }
TEST("pool stress: threads, each its own attachment, every operation (bitmap, slabs)") { run_stress(kConfigs[2]); }
TEST("pool stress: threads, each its own attachment, every operation (tlsf, no slabs)") { run_stress(kConfigs[3]); }
