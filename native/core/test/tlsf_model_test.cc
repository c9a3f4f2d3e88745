// A seeded randomized model of the TLSF heap (layout version 4: quick stacks, end marks): allocations of
// every size, aligned and hinted ones, frees, resizes in place and through heap_realloc, double and foreign
// frees at random offsets, and every few hundred steps rebuild(). After every step check() must find
// nothing, the counters must agree with the model, and every live allocation keeps its bytes.
//   MEMPOOL_MODEL_STEPS   steps per seed (default 6000)
//   MEMPOOL_MODEL_SEEDS   number of seeds (default 6)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "check.h"
#include "support.h"
#include "heap.h"

using namespace mempool;
using coretest::env_or;
using coretest::Rng;

namespace {

// The payload size the heap gives a request (tlsf.cc's adjust_request).
uint64_t adjusted(uint64_t size) {
  uint64_t s = round_up(size + 8, 16) - 8;
  return s < 24 ? 24 : s;
}

struct Live {
  uint64_t usable;
  uint8_t tag;
};

struct Model {
  uint8_t* base = nullptr;
  uint64_t size = 0, area_start = 0, area_end = 0;
  std::unique_ptr<Heap> heap;
  std::map<uint64_t, Live> live;
  std::set<uint64_t> freed;  // payload offsets a free() must call double_free
  uint8_t next_tag = 1;
  std::string where;
  bool failed = false;
  std::map<std::string, uint64_t> seen_ops;  // what the run covered, printed with MEMPOOL_MODEL_VERBOSE
  void saw(const std::string& what) { ++seen_ops[what]; }

  std::vector<std::string> history;  // the last steps, printed on the first failure
  void fail(const std::string& what) {
    if (!failed) {
      for (const std::string& h : history) std::fprintf(stderr, "    before: %s\n", h.c_str());
      std::fprintf(stderr, "  model %s: %s\n", where.c_str(), what.c_str());
    }
    failed = true;
    ++coretest::failures();
  }

  uint64_t word(uint64_t off) const {
    uint64_t v;
    std::memcpy(&v, base + off, 8);
    return v;
  }

  void fill(uint64_t off) {
    Live& l = live[off];
    std::memset(base + off, l.tag, l.usable);
  }
  bool intact(uint64_t off, uint64_t n) const {
    const Live& l = live.at(off);
    for (uint64_t i = 0; i < n; ++i) {
      if (base[off + i] != l.tag) return false;
    }
    return true;
  }
  // A new or grown payload [p, p + usable): the heap clears F over it and its end granule.
  void covered(uint64_t p, uint64_t last_granule) {
    freed.erase(freed.lower_bound(p), freed.upper_bound(last_granule));
  }
  bool overlaps(uint64_t p, uint64_t n) const {
    auto it = live.upper_bound(p);
    if (it != live.end() && it->first < p + n) return true;
    if (it != live.begin()) {
      --it;
      if (it->first + it->second.usable > p) return true;
    }
    return false;
  }

  void verify_state() {
    CheckResult r;
    heap->check(&r);
    if (r.violations) fail("check: " + std::to_string(r.violations) + " violation(s), first: " + r.first);
    HeapStats st;
    heap->stats(&st);
    uint64_t used = 0;
    for (auto& kv : live) used += kv.second.usable;
    if (st.used != used) fail("stats.used " + std::to_string(st.used) + " model " + std::to_string(used));
    if (st.live_allocations != live.size()) {
      fail("stats.live " + std::to_string(st.live_allocations) + " model " + std::to_string(live.size()));
    }
  }

  void verify_walk_and_bytes() {
    std::map<uint64_t, uint64_t> seen;
    Status s = heap->walk([&](const BlockInfo& b) {
      if (b.used) seen[b.offset] = b.size;
      return true;
    });
    if (s != Status::ok) fail("walk: " + std::string(status_name(s)));
    if (seen.size() != live.size()) fail("walk sees " + std::to_string(seen.size()) + " used, model " + std::to_string(live.size()));
    for (auto& kv : live) {
      auto it = seen.find(kv.first);
      if (it == seen.end() || it->second != kv.second.usable) fail("walk disagrees at " + std::to_string(kv.first));
      if (!intact(kv.first, kv.second.usable)) fail("bytes of " + std::to_string(kv.first) + " changed");
      uint64_t u = 0;
      if (heap->usable_size(kv.first, &u) != Status::ok || u != kv.second.usable) fail("usable_size at " + std::to_string(kv.first));
    }
  }

  uint64_t random_live(Rng& rng) const {
    auto it = live.lower_bound(area_start + rng.below(area_end - area_start));
    if (it == live.end()) it = live.begin();
    return it->first;
  }

  uint64_t request_size(Rng& rng) const {
    uint64_t r = rng.below(100);
    if (r < 45) return 1 + rng.below(200);       // the common small classes: quick reuse
    if (r < 65) return 1 + rng.below(1032);      // every quick class
    if (r < 72) return 1025 + rng.below(24);     // around the quick boundary
    if (r < 90) return 1033 + rng.below(4000);
    if (r < 98) return 4096 + rng.below(30000);
    return 1 + rng.below(size / 2);
  }

  void do_alloc(Rng& rng) {
    uint64_t n = request_size(rng);
    uint64_t align = 16, hint = kNoHint;
    if (rng.chance(15)) align = uint64_t(32) << rng.below(8);  // 32..4096
    if (rng.chance(10)) {
      hint = rng.chance(50) ? area_start + rng.below(area_end - area_start) : (live.empty() ? 0 : random_live(rng));
      if (rng.chance(20)) hint = rng.next();
    }
    uint64_t off = 0;
    Status s = heap->alloc(n, align, hint, &off);
    where += " alloc(" + std::to_string(n) + "," + std::to_string(align) + "," +
             (hint == kNoHint ? std::string("-") : std::to_string(hint)) + ")=" + status_name(s);
    saw(std::string("alloc ") + (align > 16 ? "aligned " : "") + (hint != kNoHint ? "hinted " : "") + status_name(s));
    if (s == Status::out_of_memory) return;
    if (s != Status::ok) return fail("alloc: " + std::string(status_name(s)));
    uint64_t u = 0;
    if (heap->usable_size(off, &u) != Status::ok) return fail("usable_size of a new block");
    where += "@" + std::to_string(off) + "/" + std::to_string(u);
    if (off % align != 0 || off < area_start + 16 || off + u > area_end - 8) return fail("misplaced block");
    if (u < adjusted(n) || u > adjusted(n) + 16) return fail("usable " + std::to_string(u) + " for " + std::to_string(n));
    if (overlaps(off, u)) return fail("overlaps a live block");
    live[off] = Live{u, next_tag};
    next_tag = static_cast<uint8_t>(next_tag == 255 ? 1 : next_tag + 1);
    covered(off, off + u - 8);
    fill(off);
  }

  void do_free(Rng& rng) {
    if (live.empty()) return;
    uint64_t off = random_live(rng);
    where += " free(" + std::to_string(off) + ")";
    if (!intact(off, live[off].usable)) return fail("bytes changed before free");
    Status s = heap->free(off);
    if (s != Status::ok) return fail("free: " + std::string(status_name(s)));
    live.erase(off);
    freed.insert(off);
  }

  void do_resize(Rng& rng, bool via_realloc) {
    if (live.empty()) return;
    uint64_t off = random_live(rng);
    Live old = live[off];
    uint64_t n;
    switch (rng.below(4)) {
      case 0: n = 1 + rng.below(old.usable); break;
      case 1: n = old.usable + 1 + rng.below(64); break;
      case 2: n = old.usable + 1 + rng.below(4000); break;
      default: n = request_size(rng); break;
    }
    // What a grow will consume: the free block after this one (tlsf.cc: the block after ends at
    // off + usable - 8; its size word is 8 bytes on).
    uint64_t next = off + old.usable - 8, grown_end = 0;
    if (next != area_end - 16) {
      uint64_t sf = word(next + 8);
      if (sf & 1) grown_end = next + 8 + (sf & ~uint64_t(7));
    }
    uint64_t align = via_realloc && rng.chance(20) ? uint64_t(32) << rng.below(8) : 16;
    uint64_t now_off = off;
    Status s = via_realloc ? heap_realloc(*heap, off, n, align, &now_off) : heap->resize_in_place(off, n);
    where += std::string(via_realloc ? " realloc(" : " resize(") + std::to_string(off) + "," + std::to_string(n) + "," +
             std::to_string(align) + ")=" + status_name(s) + "@" + std::to_string(now_off) + " old " + std::to_string(old.usable) +
             " merged-to " + std::to_string(grown_end);
    saw(std::string(via_realloc ? "realloc " : "resize ") + (n > old.usable ? "grow " : "shrink ") + status_name(s));
    if (s == Status::out_of_memory) {
      uint64_t u = 0;
      if (heap->usable_size(off, &u) != Status::ok || u != old.usable) fail("a refused resize changed the block");
      return;
    }
    if (s != Status::ok) return fail("resize: " + std::string(status_name(s)));
    uint64_t u = 0;
    if (heap->usable_size(now_off, &u) != Status::ok) return fail("usable_size after resize");
    if (u < adjusted(n)) return fail("resized block too small");
    if (now_off % align != 0) return fail("realloc misaligned");
    const uint64_t keep = old.usable < n ? old.usable : n;
    live.erase(off);
    if (now_off != off) {
      // Moved: the old one was freed, the new one is a fresh allocation.
      if (overlaps(now_off, u)) return fail("moved block overlaps a live block");
      freed.insert(off);
      if (u > adjusted(n) + 16) return fail("moved block too large");
      covered(now_off, now_off + u - 8);
    } else {
      if (u > (old.usable > adjusted(n) + 16 ? old.usable : adjusted(n) + 16) && u > adjusted(n) + 16) {
        return fail("resized block too large: " + std::to_string(u));
      }
      if (overlaps(now_off, u)) return fail("resized block overlaps a live block");
      if (u > old.usable) {
        if (grown_end == 0) return fail("grew without a free block after it");
        // F cleared over the merged block and the header granule of the block after it (tlsf.cc's
        // resize_in_place clears [payload + cur, payload + grown) rounded out to granules).
        covered(off, grown_end);
      }
    }
    live[now_off] = Live{u, old.tag};
    for (uint64_t i = 0; i < keep; ++i) {
      if (base[now_off + i] != old.tag) return fail("resize lost bytes");
    }
    fill(now_off);
  }

  // A free() (or usable_size or resize) of something that is not a live payload: exact status, nothing
  // changes.
  void do_probe(Rng& rng) {
    uint64_t off;
    uint64_t r = rng.below(100);
    if (r < 30 && !freed.empty()) {
      auto it = freed.lower_bound(area_start + rng.below(area_end - area_start));
      off = it == freed.end() ? *freed.begin() : *it;
    } else if (r < 60 && !live.empty()) {
      uint64_t p = random_live(rng), u = live[p].usable;
      // An interior granule, the end (mark) granule, the header granule, just past the end.
      switch (rng.below(4)) {
        case 0: off = p + 16 * (1 + rng.below((u + 8) / 16)); break;
        case 1: off = p + u - 8; break;
        case 2: off = p - 16; break;
        default: off = p + u + 8; break;
      }
    } else if (r < 90) {
      off = area_start + 16 * rng.below((area_end - area_start) / 16 + 2);
    } else {
      off = rng.chance(50) ? rng.next() : area_start + rng.below(area_end - area_start);
    }
    if (live.count(off)) return;
    Status want = off >= area_start && (off - area_start) % 16 == 0 && freed.count(off) ? Status::double_free : Status::foreign;
    where += " probe(" + std::to_string(off) + ")";
    saw(std::string("probe ") + status_name(want));
    Status s = heap->free(off);
    if (s != want) fail("free of " + std::to_string(off) + ": " + status_name(s) + ", want " + status_name(want));
    uint64_t u = 0;
    s = heap->usable_size(off, &u);
    if (s != want) fail("usable_size of " + std::to_string(off) + ": " + status_name(s) + ", want " + status_name(want));
    s = heap->resize_in_place(off, 1 + rng.below(2000));
    if (s != want) fail("resize of " + std::to_string(off) + ": " + status_name(s) + ", want " + status_name(want));
  }

  void do_rebuild() {
    where += " rebuild";
    Status s = heap->rebuild();
    if (s != Status::ok) fail("rebuild: " + std::string(status_name(s)));
    verify_walk_and_bytes();
  }
};

void run_model(uint64_t seed, uint64_t region, uint64_t steps) {
  Model m;
  m.size = region;
  m.base = static_cast<uint8_t*>(std::aligned_alloc(kMaxAlign, round_up(region, kMaxAlign)));
  std::memset(m.base, 0x5A, region);
  REQUIRE(heap_format(Algorithm::tlsf, m.base, region, HeapOptions{}, &m.heap) == Status::ok);
  m.area_start = reinterpret_cast<const RegionHeader*>(m.base)->header_size;
  m.area_end = region & ~uint64_t(15);
  Rng rng{seed};
  const uint64_t watch = env_or("MEMPOOL_MODEL_WATCH", 0);
  uint32_t watch_state = 0;
  bool watch_freed = false;
  // Phases: fill up (more allocations), drain (more frees), churn.
  for (uint64_t step = 0; step < steps && !m.failed; ++step) {
    if (step) m.history.push_back(m.where);
    if (m.history.size() > 12) m.history.erase(m.history.begin());
    m.where = "seed " + std::to_string(seed) + " step " + std::to_string(step) + ":";
    uint64_t phase = (step / 700) % 3;
    uint64_t alloc_pct = phase == 0 ? 55 : phase == 1 ? 25 : 40;
    uint64_t r = rng.below(100);
    if (r < alloc_pct) {
      m.do_alloc(rng);
    } else if (r < 80) {
      m.do_free(rng);
    } else if (r < 86) {
      m.do_resize(rng, false);
    } else if (r < 91) {
      m.do_resize(rng, true);
    } else {
      m.do_probe(rng);
    }
    if (rng.below(300) == 0) m.do_rebuild();
    if (watch) {
      uint64_t i = (watch - m.area_start) / 16, pair = m.word(96) + (i / 64) * 16;
      uint32_t st = static_cast<uint32_t>(((m.word(pair) >> (i % 64)) & 1) << 1 | ((m.word(pair + 8) >> (i % 64)) & 1));
      bool in_model = m.freed.count(watch) != 0;
      if (st != watch_state || in_model != watch_freed) {
        std::fprintf(stderr, "  watch %llu: state %u freed-in-model %d after %s\n", (unsigned long long)watch, st, in_model, m.where.c_str());
      }
      watch_state = st;
      watch_freed = in_model;
    }
    m.verify_state();
    if (step % 128 == 0) m.verify_walk_and_bytes();
    // A heap attached again at the same bytes sees the same heap.
    if (step % 1000 == 999) {
      std::unique_ptr<Heap> again;
      if (heap_attach(m.base, region, &again) != Status::ok) m.fail("attach");
      else m.heap = std::move(again);
    }
  }
  if (!m.failed) {
    // Drain: everything frees, the heap is one free block again (after a flush via a large request).
    for (auto it = m.live.begin(); it != m.live.end();) {
      if (m.heap->free(it->first) != Status::ok) m.fail("drain free");
      it = m.live.erase(it);
    }
    m.verify_state();
    uint64_t big = 0;
    HeapStats st;
    m.heap->stats(&st);
    if (m.heap->alloc(st.free - 64, 16, kNoHint, &big) != Status::ok) m.fail("after draining, the whole heap is not one block");
    else if (m.heap->free(big) != Status::ok) m.fail("free of the whole heap");
    m.verify_state();
  }
  if (env_or("MEMPOOL_MODEL_VERBOSE", 0)) {
    for (auto& kv : m.seen_ops) std::fprintf(stderr, "  seed %llu: %s x %llu\n", (unsigned long long)seed, kv.first.c_str(), (unsigned long long)kv.second);
  }
  m.heap.reset();
  std::free(m.base);
}

}  // namespace

TEST("tlsf: model: random alloc/free/resize/realloc/probes/rebuild agree with a model, check() every step") {
  const uint64_t steps = env_or("MEMPOOL_MODEL_STEPS", 6000), seeds = env_or("MEMPOOL_MODEL_SEEDS", 6);
  const uint64_t regions[] = {uint64_t(1) << 16, 3 * (uint64_t(1) << 16) + 4096 + 51, uint64_t(1) << 20};
  const uint64_t first = env_or("MEMPOOL_MODEL_FIRST", 1);
  for (uint64_t seed = first; seed < first + seeds; ++seed) run_model(seed * 7919, regions[seed % 3], steps);
}
