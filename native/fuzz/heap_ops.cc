// libFuzzer harness 1: operation sequences on each heap, against a model.
//
// Input: [algorithm + options][region size] then ops until the input ends (at most kMaxOps):
//   alloc(size, align, hint) | free(i) | resize_in_place(i, size) | heap_realloc(i, size, align)
//   | a refused call at an offset that is not a live allocation (must change nothing)
//   | a double free of an offset freed earlier
// The model keeps every live block's offset, requested size, usable size and the seed of the pattern
// written over it. After every op: check() has no violation, stats agree with the model (live count,
// used = sum of usable sizes, capacity = used + free + overhead), the walk lists exactly the model's
// blocks. A new block must lie inside the region, be aligned and not overlap any live block's usable
// bytes. Freed and moved blocks must still hold their pattern (nobody wrote over them). At the end,
// everything is freed and the heap must give back all it had at the start (no lost bytes).
#include <map>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "heap.h"

using namespace mempool;

namespace {

constexpr int kMaxOps = 3000;

struct Block {
  uint64_t size;    // requested
  uint64_t usable;  // usable_size() at allocation time (may change by resize)
  uint64_t seed;
};

struct Harness {
  Heap& heap;
  uint8_t* base;
  uint64_t region;
  std::map<uint64_t, Block> live;
  std::vector<uint64_t> freed;  // offsets freed earlier (for double frees)
  uint64_t next_seed = 1;

  void fill(uint64_t off, uint64_t n, uint64_t seed) {
    for (uint64_t i = 0; i < n; ++i) base[off + i] = fuzz::pattern(seed, i);
  }
  void verify(uint64_t off, uint64_t n, uint64_t seed, const char* when) {
    for (uint64_t i = 0; i < n; ++i) {
      if (base[off + i] != fuzz::pattern(seed, i)) {
        FUZZ_FAIL("%s: block at %llu lost its byte %llu of %llu", when, (unsigned long long)off,
                  (unsigned long long)i, (unsigned long long)n);
      }
    }
  }

  void expect_placed(uint64_t off, uint64_t size, uint64_t align, uint64_t* usable_out) {
    FUZZ_ASSERT(off % align == 0, "alloc returned a misaligned offset");
    FUZZ_ASSERT(off >= sizeof(RegionHeader), "alloc returned an offset inside the region header");
    FUZZ_ASSERT(off < region && size <= region - off, "alloc returned a block outside the region");
    uint64_t usable = 0;
    FUZZ_ASSERT(heap.usable_size(off, &usable) == Status::ok, "usable_size refused a fresh block");
    FUZZ_ASSERT(usable >= size, "usable_size smaller than the request");
    FUZZ_ASSERT(usable <= region - off, "usable bytes run past the region");
    auto next = live.lower_bound(off);
    if (next != live.end()) FUZZ_ASSERT(next->first >= off + usable, "new block overlaps the next live block");
    if (next != live.begin()) {
      auto prev = std::prev(next);
      FUZZ_ASSERT(prev->first + prev->second.usable <= off, "new block overlaps the previous live block");
    }
    *usable_out = usable;
  }

  void remember_freed(uint64_t off) {
    if (freed.size() >= 64) freed.erase(freed.begin());
    freed.push_back(off);
  }

  void invariants() {
    CheckResult r;
    heap.check(&r);
    if (r.violations) FUZZ_FAIL("check(): %llu violation(s): %s", (unsigned long long)r.violations, r.first.c_str());
    HeapStats st;
    heap.stats(&st);
    FUZZ_ASSERT(st.capacity == region, "stats capacity");
    FUZZ_ASSERT(st.capacity == st.used + st.free + st.overhead, "capacity == used + free + overhead");
    FUZZ_ASSERT(st.live_allocations == live.size(), "stats live count disagrees with the model");
    uint64_t used = 0;
    for (auto& [off, b] : live) {
      uint64_t u = 0;
      FUZZ_ASSERT(heap.usable_size(off, &u) == Status::ok, "a live block is not live for the heap");
      FUZZ_ASSERT(u == b.usable, "usable size of a live block changed by itself");
      used += u;
    }
    FUZZ_ASSERT(st.used == used, "stats used != sum of usable sizes of live blocks (lost or phantom bytes)");
    FUZZ_ASSERT(st.largest_free_block <= st.free, "largest free block larger than free");
    size_t seen = 0;
    uint64_t last_end = 0;
    Status w = heap.walk([&](const BlockInfo& b) {
      FUZZ_ASSERT(b.offset >= last_end, "walk is not in address order or blocks overlap");
      FUZZ_ASSERT(b.offset < region && b.size <= region - b.offset, "walk block outside the region");
      last_end = b.offset + b.size;
      if (b.used) {
        auto it = live.find(b.offset);
        FUZZ_ASSERT(it != live.end(), "walk shows a used block the model does not have");
        FUZZ_ASSERT(b.size == it->second.usable, "walk size differs from usable_size");
        ++seen;
      }
      return true;
    });
    FUZZ_ASSERT(w == Status::ok, "walk failed on a healthy heap");
    FUZZ_ASSERT(seen == live.size(), "walk misses live blocks");
  }

  uint64_t pick_size(fuzz::Reader& in) {
    uint8_t k = in.u8();
    switch (k & 3) {
      case 0: return 1 + (k >> 2);                    // tiny: 1..64
      case 1: return 1 + in.u8() * 4u;                // small: up to ~1 KiB
      case 2: return 1 + in.u16() % (region / 2 + 1);  // anything up to half the region
      default: {
        uint8_t e = in.u8();
        if (e & 0x80) return UINT64_C(1) << (e % 64);  // powers of two, including absurd ones
        return region - (e % 64) * 16;                // near the whole region
      }
    }
  }
  uint64_t pick_align(fuzz::Reader& in) {
    uint8_t a = in.u8();
    return (a & 0xf0) ? kDefaultAlign : kDefaultAlign << (a % 9);
  }
  std::map<uint64_t, Block>::iterator pick_live(fuzz::Reader& in) {
    auto it = live.begin();
    std::advance(it, static_cast<long>(in.u16() % live.size()));
    return it;
  }

  void op_alloc(fuzz::Reader& in) {
    uint64_t size = pick_size(in), align = pick_align(in), hint = kNoHint;
    uint8_t h = in.u8();
    if (h % 4 == 1 && !live.empty()) hint = pick_live(in)->first;
    else if (h % 4 == 2) hint = in.u32() % (region + 64);
    HeapStats before;
    heap.stats(&before);
    uint64_t off = 0;
    Status s = heap.alloc(size, align, hint, &off);
    if (size > kMaxRequest) {
      FUZZ_ASSERT(s == Status::invalid_argument, "an oversize request must be invalid_argument");
      return;
    }
    if (s != Status::ok) {
      FUZZ_ASSERT(s == Status::out_of_memory, "alloc failed with something else than out_of_memory");
      FUZZ_ASSERT(size > before.largest_free_block || align > kDefaultAlign || hint != kNoHint,
                  "alloc refused a default request no larger than largest_free_block");
      return;
    }
    uint64_t usable = 0;
    expect_placed(off, size, align, &usable);
    uint64_t seed = next_seed++;
    fill(off, size, seed);
    live[off] = Block{size, usable, seed};
  }

  void op_free(fuzz::Reader& in) {
    if (live.empty()) return;
    auto it = pick_live(in);
    verify(it->first, it->second.size, it->second.seed, "before free");
    Status s = heap.free(it->first);
    FUZZ_ASSERT(s == Status::ok, "free of a live block failed");
    remember_freed(it->first);
    live.erase(it);
  }

  void op_resize(fuzz::Reader& in) {
    if (live.empty()) return;
    auto it = pick_live(in);
    uint64_t size = pick_size(in);
    uint64_t off = it->first;
    Block b = it->second;
    Status s = heap.resize_in_place(off, size);
    if (size > kMaxRequest) {
      FUZZ_ASSERT(s == Status::invalid_argument || s == Status::out_of_memory, "oversize resize");
      verify(off, b.size, b.seed, "after a refused resize");
      return;
    }
    if (s != Status::ok) {
      FUZZ_ASSERT(s == Status::out_of_memory, "resize failed with something else than out_of_memory");
      uint64_t u = 0;
      FUZZ_ASSERT(heap.usable_size(off, &u) == Status::ok && u == b.usable, "a refused resize changed the block");
      verify(off, b.size, b.seed, "after a refused resize");
      return;
    }
    uint64_t kept = b.size < size ? b.size : size;
    verify(off, kept, b.seed, "after resize_in_place");
    live.erase(it);
    uint64_t usable = 0;
    expect_placed(off, size, kDefaultAlign, &usable);
    fill(off, size, b.seed);
    live[off] = Block{size, usable, b.seed};
  }

  void op_realloc(fuzz::Reader& in) {
    if (live.empty()) return;
    auto it = pick_live(in);
    uint64_t size = pick_size(in), align = pick_align(in);
    uint64_t off = it->first;
    Block b = it->second;
    uint64_t moved = 0;
    Status s = heap_realloc(heap, off, size, align, &moved);
    if (s != Status::ok) {
      FUZZ_ASSERT(s == Status::out_of_memory || (size > kMaxRequest && s == Status::invalid_argument),
                  "realloc failed with something else than out_of_memory");
      verify(off, b.size, b.seed, "after a refused realloc");
      return;
    }
    uint64_t kept = b.size < size ? b.size : size;
    verify(moved, kept, b.seed, "after realloc (bytes must move with the block)");
    live.erase(it);
    if (moved != off) remember_freed(off);
    uint64_t usable = 0;
    expect_placed(moved, size, align, &usable);
    fill(moved, size, b.seed);
    live[moved] = Block{size, usable, b.seed};
  }

  // A call with an offset that is not the start of a live block: refused, nothing changes.
  void op_bogus(fuzz::Reader& in) {
    uint8_t k = in.u8();
    uint64_t off;
    if (k & 0x80 && !live.empty()) off = pick_live(in)->first + 1 + in.u8() % 64;  // interior
    else if (k & 0x40) off = in.u64();                                              // anything
    else off = in.u32() % (region + 64);
    if (live.count(off)) return;
    HeapStats before, after;
    heap.stats(&before);
    uint64_t u = 0;
    Status s;
    switch (k % 3) {
      case 0: s = heap.free(off); break;
      case 1: s = heap.usable_size(off, &u); break;
      default: s = heap.resize_in_place(off, 1 + in.u8()); break;
    }
    FUZZ_ASSERT(s == Status::foreign || s == Status::double_free || s == Status::invalid_argument,
                "a call on an offset that is no live block was not refused as foreign/double_free");
    heap.stats(&after);
    FUZZ_ASSERT(before.used == after.used && before.free == after.free && before.live_allocations == after.live_allocations,
                "a refused call changed the heap");
  }

  void op_double_free(fuzz::Reader& in) {
    if (freed.empty()) return;
    uint64_t off = freed[in.u8() % freed.size()];
    if (live.count(off)) return;
    Status s = heap.free(off);
    FUZZ_ASSERT(s == Status::double_free || s == Status::foreign, "a double free was not refused");
  }

  void run(fuzz::Reader& in) {
    HeapStats initial;
    heap.stats(&initial);
    invariants();
    for (int n = 0; n < kMaxOps && !in.empty(); ++n) {
      uint8_t op = in.u8();
      switch (op % 10) {
        case 0: case 1: case 2: op_alloc(in); break;
        case 3: case 4: op_free(in); break;
        case 5: op_resize(in); break;
        case 6: op_realloc(in); break;
        case 7: op_bogus(in); break;
        case 8: op_double_free(in); break;
        default: {  // a burst of small allocations, to reach exhaustion quickly
          uint8_t count = in.u8() % 32;
          for (uint8_t i = 0; i < count; ++i) {
            uint64_t off = 0, size = 1 + (in.u8() % 64) * 8, usable = 0;
            if (heap.alloc(size, kDefaultAlign, kNoHint, &off) != Status::ok) break;
            expect_placed(off, size, kDefaultAlign, &usable);
            fill(off, size, next_seed);
            live[off] = Block{size, usable, next_seed++};
          }
        }
      }
      invariants();
    }
    for (auto& [off, b] : live) verify(off, b.size, b.seed, "at the end");
    while (!live.empty()) {
      FUZZ_ASSERT(heap.free(live.begin()->first) == Status::ok, "final free");
      live.erase(live.begin());
    }
    invariants();
    HeapStats st;
    heap.stats(&st);
    FUZZ_ASSERT(st.used == 0 && st.live_allocations == 0, "an empty heap reports used bytes");
    // No lost bytes: the largest request the fresh heap could serve is served again. (stats.free may
    // differ: TLSF keeps freed small blocks on quick lists, uncoalesced, until it runs out.)
    uint64_t off = 0;
    Status s = heap.alloc(initial.largest_free_block, kDefaultAlign, kNoHint, &off);
    if (s != Status::ok) {
      FUZZ_FAIL("an empty heap cannot serve its initial largest block of %llu bytes (%s): free %llu (was %llu), largest %llu",
                (unsigned long long)initial.largest_free_block, status_name(s), (unsigned long long)st.free,
                (unsigned long long)initial.free, (unsigned long long)st.largest_free_block);
    }
    FUZZ_ASSERT(heap.free(off) == Status::ok, "free of the whole-heap block");
    invariants();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader in(data, size);
  uint8_t a = in.u8();
  Algorithm algorithm = static_cast<Algorithm>(1 + a % 3);
  HeapOptions options;
  uint8_t variant = static_cast<uint8_t>((a / 3) % 4);
  if (algorithm == Algorithm::bitmap) options.block_size = uint64_t(16) << variant;
  if (algorithm == Algorithm::buddy) {
    options.min_block = uint64_t(16) << (variant % 2);
    options.max_block = variant >= 2 ? uint64_t(1) << 14 : 0;
  }
  uint64_t min = heap_min_region_size(algorithm, options);
  if (min == 0) FUZZ_FAIL("heap_min_region_size refused default-like options");
  uint64_t region = round_up(min, kMaxAlign) + uint64_t(in.u8() % 48) * kMaxAlign;
  fuzz::AlignedBuffer buf(region);
  std::memset(buf.bytes, 0xA5, region);
  std::unique_ptr<Heap> heap;
  Status s = heap_format(algorithm, buf.bytes, region, options, &heap);
  if (s != Status::ok) FUZZ_FAIL("heap_format(%s, %llu) failed: %s", algorithm_name(algorithm), (unsigned long long)region, status_name(s));
  Harness h{*heap, buf.bytes, region, {}, {}, 1};
  h.run(in);
  return 0;
}
