// Two-level segregated fit over a region, with every link stored as an offset from the region's base.
//
// Region layout (all offsets from base):
//   [0, sizeof(TlsfHeader))        header: RegionHeader, geometry, free-list heads and their bitmaps, the
//                                  quick stacks
//   [live_map, +map_words*16)      two interleaved bitmaps, one bit per 16-byte granule of the area each:
//                                  word 2k (at live_map + 16k) holds the L bits of granules 64k..64k+63,
//                                  word 2k + 1 (at freed_map + 16k, freed_map = live_map + 8) their F bits,
//                                  so both bits of a granule share one cache line. A granule's (L, F) says:
//                                    (1, 0) a live payload starts here;
//                                    (0, 1) a payload was freed here and no allocation has covered it since
//                                           (tells a double free from a foreign offset);
//                                    (1, 1) an end mark: this granule holds the header of the block after a
//                                           used block of at most kQuickMaxPayload bytes, whose payload starts
//                                           k granules earlier (size 16k + 8). Header granules never hold a
//                                           payload, so a mark is never mistaken for a start;
//                                    (0, 0) nothing.
//   [area_start, area_end)         the blocks, ending with a zero-size sentinel block marked used
//
// A block at offset b (b % 16 == 0):
//   b + 0   prev_phys   offset of the previous physical block; only valid when that block is free,
//                       and stored in the last 8 bytes of that block's payload (tlsf.c's trick)
//   b + 8   size_flags  payload size | kFree | kPrevFree; payload sizes are 16k + 8 so payloads stay
//                       16-aligned: next block = b + 8 + size, payload = b + 16
//   b + 16  payload; when the block is free it starts with next_free, prev_free (offsets, 0 = none)
//
// Quick blocks (version 3). A freed block of at most kQuickMaxPayload bytes goes onto the quick stack of its
// exact size (an array of block offsets in the header) without coalescing, and the next request of that size
// takes it back. Neither the free nor the allocation touches the block itself: the size comes from the end
// mark and the state from the maps, so with a large live set (the benchmark's W4: a million blocks) an
// operation reads a map line and the header, not a block that is far out of cache. A quick block is "used"
// in the physical chain (neighbours do not coalesce with it) and (0, 1) at its payload in the maps; it keeps
// its end mark. The price: a free of a small block no longer reads its size word, so an overwritten size word
// (a buffer underflow) is found when the block is coalesced or by check(), not by the free itself.
//
// Invariants (check() verifies them):
//   - the blocks tile [area_start, area_end - 16) exactly, then the sentinel;
//   - no two free blocks are physical neighbours (coalescing is immediate);
//   - kPrevFree of a block equals kFree of its physical predecessor, and prev_phys is right when set;
//   - every free block is on exactly the list mapping_insert(size) names; a list is non-empty iff its
//     bits in fl_bitmap / sl_bitmap are set;
//   - L is set exactly at the payload of every used block and at the end of every small used or quick
//     block; F is clear at the payload of a used block and set at the payload of a quick block, and clear
//     everywhere else inside a used or quick block (take() and resize clear it);
//   - the quick stacks hold exactly the quick blocks, each on the stack of its size.
// Nothing read from the region is followed before it is bounds-checked (see the class comment in heap.h).
//
// Stray writes (a process writing through a view of a block it freed; issue 15, item 6). What such a write
// can reach and what becomes of it:
//   - a free block's links (next_free, prev_free) and the prev_phys word in its last 8 bytes: derived.
//     An operation that meets them refuses (corrupted, before any store) or drops the list (insert_free:
//     `damaged`, Heap::damage()); a shared segment then rebuilds (Segment::heal) and retries.
//   - a quick block's payload: nothing; quick blocks are known from the maps and the stacks in the header.
//   - a size word: the primary record. It sits between payloads, so a write within one block's old range
//     reaches it only after that memory was coalesced and split again, which places new headers anywhere
//     in the old range (measured: a vandal writing whole old views hit one within 2 s, every run). Then
//     rebuild() refuses and the heap reports corrupted for every process. Not solved: the remedy is an end
//     mark for every used block (today only small ones), so that rebuild() can recompute sizes from the
//     maps alone; the crash-prefix rule below would then have to hold for the maps as the record.
#include "tlsf.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace mempool {
namespace {

// 2: live and freed map words interleaved. 3: quick stacks in the header and end marks in the maps.
// 4: free_bytes counts the blocks on the free lists only; quick bytes are counted from the stacks.
constexpr uint32_t kTlsfVersion = 4;
constexpr uint32_t kSlLog2 = 5;
constexpr uint32_t kSlCount = 1u << kSlLog2;
// Footprints up to 2^48 bytes = 2^44 granules map to first levels up to 40.
constexpr uint32_t kFlCount = 41;
constexpr uint64_t kGranule = 16;
constexpr uint64_t kMinPayload = 24;    // next_free + prev_free + the next block's prev_phys
constexpr uint64_t kMinFootprint = 32;  // kMinPayload + the size word
constexpr uint64_t kFree = 1;
constexpr uint64_t kPrevFree = 2;
constexpr uint64_t kReservedFlag = 4;  // version 2's quick flag; must be clear from version 3 on
constexpr uint64_t kFlagMask = 7;
// The live and freed maps interleave: word k of either is 16 bytes after word k - 1.
constexpr uint64_t kMapStride = 16;
// Quick stacks (dlmalloc's fastbins, glibc's tcache): a freed small block goes onto a LIFO stack of its
// exact size without coalescing, and the next request of that size takes it back in O(1). Stacks are
// bounded so that little memory stays uncoalesced; when the heap runs out, every quick block is released
// and coalesced before out_of_memory is reported. Class q holds payloads of 16(q + 1) + 8 bytes, whose end
// mark is q + 1 granules after the payload.
constexpr uint32_t kQuickClasses = 64;
constexpr uint64_t kQuickMaxPayload = kMinPayload + (kQuickClasses - 1) * kGranule;  // 1032
constexpr uint32_t kQuickLimit = 64;

// Bounded searches: how many list entries a hinted or exact-fit search may look at.
constexpr int kSearchBudget = 64;

struct TlsfHeader {
  RegionHeader region;
  uint64_t area_start;  // offset of the first block
  uint64_t area_end;    // end of the area; the sentinel block sits at area_end - 16
  uint64_t live_map;    // offset of the first live-payload word (the maps' words interleave, stride 16)
  uint64_t freed_map;   // offset of the first freed-payload word: live_map + 8
  uint64_t map_words;   // 64-bit words in each bitmap (the two take map_words * 16 bytes together)
  // Sum of payload sizes of the blocks on the free lists. Quick blocks are free too, but their bytes are
  // computed from quick_count when stats() asks (quick_bytes()), so the fast paths write one word less.
  uint64_t free_bytes;
  uint64_t free_blocks;
  uint64_t fl_bitmap;
  uint32_t sl_bitmap[kFlCount];
  uint32_t damaged;  // set when an operation met a list it could not trust and dropped it
  uint64_t heads[kFlCount][kSlCount];
  uint32_t quick_count[kQuickClasses];              // entries on each quick stack
  uint64_t quick[kQuickClasses][kQuickLimit];        // the stacks: block offsets, top at quick_count - 1
};
static_assert(sizeof(TlsfHeader) ==
                  80 + 8 * 8 + kFlCount * 4 + 4 + kFlCount * kSlCount * 8 + kQuickClasses * 4 + kQuickClasses * kQuickLimit * 8,
              "TlsfHeader is part of the shared layout");
static_assert(offsetof(TlsfHeader, quick) % 8 == 0, "quick stacks must be 8-aligned");
static_assert(offsetof(TlsfHeader, area_start) == 80, "TlsfHeader is part of the shared layout");
static_assert(offsetof(TlsfHeader, heads) % 8 == 0, "heads must be 8-aligned");
// The area starts after the header, so sentinel - 8 - kQuickMaxPayload (the quick pop's bound) cannot wrap.
static_assert(sizeof(TlsfHeader) > kQuickMaxPayload + 8 + kMinFootprint, "the quick pop's bound must not wrap");

struct Geometry {
  uint64_t live_map, freed_map, map_words, area_start, area_end;
};

// The layout is a pure function of the region size, so attach can recompute it and compare.
bool compute_geometry(uint64_t size, Geometry* g) {
  uint64_t header_end = round_up(sizeof(TlsfHeader), 64);
  if (size < header_end + 4096) return false;
  uint64_t granules = (size - header_end) / kGranule;
  g->map_words = (granules + 63) / 64;
  g->live_map = header_end;
  g->freed_map = g->live_map + 8;  // interleaved: word k of a map is at map + 16k
  // One spare pair after the last, always zero: the fast paths read the pair after a payload's pair
  // without asking whether there is one.
  g->area_start = round_up(g->live_map + (g->map_words + 1) * 16, kGranule);
  g->area_end = round_down(size, kGranule);
  return g->area_end > g->area_start && g->area_end - g->area_start >= kMinFootprint + 16;
}

// Payload size for a request: the smallest 16k + 8 that holds it, at least kMinPayload.
constexpr uint64_t adjust_request(uint64_t size) {
  uint64_t s = round_up(size + 8, kGranule) - 8;
  return s < kMinPayload ? kMinPayload : s;
}
static_assert(adjust_request(kQuickMaxPayload) == kQuickMaxPayload, "requests up to kQuickMaxPayload bytes are quick");

// mapping(size) -> (fl, sl) on the footprint in granules, g = (size + 8) / 16 >= 2.
// Below 32 granules each granule count has its own list (fl 0); above, fl is the power of two and sl
// splits it linearly into 32.
inline void mapping_insert(uint64_t size, uint32_t* fl, uint32_t* sl) {
  uint64_t g = (size + 8) / kGranule;
  if (g < kSlCount) {
    *fl = 0;
    *sl = static_cast<uint32_t>(g);
  } else {
    uint32_t t = floor_log2(g);
    *fl = t - (kSlLog2 - 1);
    *sl = static_cast<uint32_t>((g >> (t - kSlLog2)) - kSlCount);
  }
}

// The list to search for `size`: rounded up to the next list boundary, so that any block of that list
// (or above) fits.
inline void mapping_search(uint64_t size, uint32_t* fl, uint32_t* sl) {
  uint64_t g = (size + 8) / kGranule;
  if (g >= kSlCount) {
    uint32_t t = floor_log2(g);
    uint64_t rounded = g + (uint64_t(1) << (t - kSlLog2)) - 1;
    mapping_insert(rounded * kGranule - 8, fl, sl);
  } else {
    *fl = 0;
    *sl = static_cast<uint32_t>(g);
  }
}

class TlsfHeap final : public Heap {
 public:
  TlsfHeap(uint8_t* base, uint64_t size, const Geometry& g) : Heap(base, size), g_(g) {
    sentinel_ = g_.area_end - 16;
  }

  Algorithm algorithm() const override { return Algorithm::tlsf; }

  void format() {
    std::memset(base_, 0, g_.area_start);
    TlsfHeader* h = header();
    h->region.magic = kRegionMagic;
    h->region.algorithm = static_cast<uint32_t>(Algorithm::tlsf);
    h->region.version = kTlsfVersion;
    h->region.size = size_;
    h->region.header_size = g_.area_start;
    h->area_start = g_.area_start;
    h->area_end = g_.area_end;
    h->live_map = g_.live_map;
    h->freed_map = g_.freed_map;
    h->map_words = g_.map_words;
    // The sentinel: size 0, used, so coalescing never runs past the end.
    store(sentinel_, 0);
    store(sentinel_ + 8, 8 | kPrevFree);  // size field 8 would be invalid; sentinel is told by position
    uint64_t first = g_.area_start;
    uint64_t first_size = sentinel_ - first - 8;
    set_size_flags(first, first_size, kFree);
    store(sentinel_, first);
    insert_free(first, first_size);
  }

  // The fast paths (a quick stack pop or push) are written out here with the loads and checks that case
  // needs and nothing else: the offsets come from the region, so each is bounds-checked as the general
  // paths would, folded into fewer comparisons. Neither touches the block: the state and the size come from
  // the map line of its payload granule (see the layout comment). Members are copied into locals first: a
  // store into the region may alias them as far as the compiler knows. Anything but the plain case (an
  // empty or full stack, a refused offset, a map that does not agree) goes to the general path, which does
  // everything again from the start and gives the exact status.
  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) override {
    if (align == kDefaultAlign && hint == kNoHint && size != 0 && size <= kQuickMaxPayload) {
      const uint64_t need = adjust_request(size);
      const uint32_t q = quick_class(need);
      uint8_t* const base = base_;
      const uint64_t start = g_.area_start, sentinel = sentinel_, live_map = g_.live_map;
      TlsfHeader* h = header();
      const uint32_t n = h->quick_count[q];
      if (n - 1 < kQuickLimit) {  // 1 <= n <= kQuickLimit
        const uint64_t b = h->quick[q][n - 1];
        // A block of `need` bytes inside the area: b + 8 + need <= sentinel, so its end mark is in the map.
        if (b >= start && b <= sentinel - 8 - need && (b & (kGranule - 1)) == 0) {
          const uint64_t i = (b + 16 - start) / kGranule, p = i % 64;
          uint8_t* const pair = base + live_map + (i / 64) * kMapStride;
          const uint64_t bit = uint64_t(1) << p;
          const uint64_t live = load_at(pair), freed = load_at(pair + 8);
          // Freed at the payload: never a live block. The entry's size is not checked against the end mark
          // here (only the general path's quick_top does): entries are written by free() alone, and one
          // forged by a writer of the segment can hand out a block of another size, never one outside the
          // area (docs/security.md promises bounds, not contents). The check cost 1.5 ns of 18 on W1.
          if (freed & ~live & bit) {
            h->quick_count[q] = n - 1;
            store_at(pair, live | bit);
            store_at(pair + 8, freed & ~bit);
            count_alloc(need);
            *offset = b + 16;
            return Status::ok;
          }
        }
      }
    }
    return alloc_general(size, align, hint, offset);
  }

  Status free(uint64_t offset) override {
    uint8_t* const base = base_;
    const uint64_t start = g_.area_start, sentinel = sentinel_, live_map = g_.live_map;
    // A payload offset: then b = offset - 16 is a valid block offset (start <= b <= sentinel - 32).
    if (offset >= start + 16 && offset < sentinel && (offset & (kGranule - 1)) == 0) {
      const uint64_t i = (offset - start) / kGranule;
      const uint64_t p = i % 64;
      uint8_t* const pair = base + live_map + (i / 64) * kMapStride;
      const uint64_t bit = uint64_t(1) << p;
      const uint64_t live = load_at(pair), freed = load_at(pair + 8);
      if (live & ~freed & bit) {
        // The size: the first end mark in the 64 granules after the payload's, k granules on.
        const uint64_t window = mark_window(live & freed, load_at(pair + kMapStride) & load_at(pair + kMapStride + 8), p);
        const uint64_t k = static_cast<uint64_t>(__builtin_ctzll(window | (uint64_t(1) << 63))) + 1;
        // A quick size whose block ends inside the area (offset + 16k is the end mark's granule).
        if (window != 0 && k * kGranule <= sentinel - offset) {
          TlsfHeader* h = header();
          const uint32_t q = static_cast<uint32_t>(k - 1);
          const uint32_t n = h->quick_count[q];
          if (n < kQuickLimit) {
            const uint64_t size = k * kGranule + 8;
            h->quick[q][n] = offset - 16;
            h->quick_count[q] = n + 1;
            store_at(pair, live & ~bit);
            store_at(pair + 8, freed | bit);
            count_free(size);
            return Status::ok;
          }
        }
      }
    }
    return free_general(offset);
  }

  Status resize_in_place(uint64_t offset, uint64_t size) override {
    if (size == 0 || size > kMaxRequest) return Status::invalid_argument;
    Status s = check_live_payload(offset);
    if (s != Status::ok) return s;
    uint64_t b = offset - 16;
    uint64_t cur = 0, flags = 0;
    if (!read_block(b, &cur, &flags) || (flags & kFree)) return Status::corrupted;
    uint64_t need = adjust_request(size);
    uint64_t next = b + 8 + cur, next_size = 0;
    bool next_free = false;
    if (!read_next(next, &next_size, &next_free)) return Status::corrupted;
    if (need > cur && (!next_free || cur + 8 + next_size < need)) return Status::out_of_memory;
    clear_end_mark(b, cur);  // the size changes: the mark moves (or goes) below
    uint64_t now = 0;  // as written, never read back (see take())
    if (need > cur) {
      unlink(next, next_size);
      uint64_t grown = cur + 8 + next_size;
      set_size_flags(b, grown, flags & kPrevFree);
      clear_bits(g_.freed_map, offset + cur, offset + grown);
      uint64_t after = b + 8 + grown;
      mark_prev(after, b, false);
      now = split_tail(b, grown, need, flags & kPrevFree);
    } else {
      if (next_free) unlink(next, next_size);
      uint64_t span = next_free ? cur + 8 + next_size : cur;
      set_size_flags(b, span, flags & kPrevFree);
      if (next_free) mark_prev(b + 8 + span, b, false);
      now = split_tail(b, span, need, flags & kPrevFree);
    }
    set_end_mark(b, now);
    count_resize(cur, now);
    return Status::ok;
  }

  Status usable_size(uint64_t offset, uint64_t* size) const override {
    Status s = check_live_payload(offset);
    if (s != Status::ok) return s;
    uint64_t flags = 0;
    if (!read_block(offset - 16, size, &flags) || (flags & kFree)) return Status::corrupted;
    return Status::ok;
  }

  void stats(HeapStats* out) const override {
    fill_counter_stats(out);
    const TlsfHeader* h = header();
    // At most the region: only scribbled counters or counts can make it more (small heaps: 64 full quick
    // stacks hold up to 2 MiB), and callers rely on used + free + overhead == capacity.
    out->free = std::min(saturating_add(h->free_bytes, quick_bytes()), size_);
    uint64_t accounted = out->used + out->free;
    out->overhead = accounted <= size_ ? size_ - accounted : 0;
    out->largest_free_block = largest_free();
  }

  void check(CheckResult* r) const override {
    const TlsfHeader* h = header();
    if (h->region.magic != kRegionMagic) r->report("tlsf: region magic overwritten");
    if (h->region.algorithm != static_cast<uint32_t>(Algorithm::tlsf)) r->report("tlsf: algorithm overwritten");
    if (h->region.version != kTlsfVersion) r->report("tlsf: version overwritten");
    if (h->region.size != size_) r->report("tlsf: region size overwritten");
    if (h->area_start != g_.area_start || h->area_end != g_.area_end || h->live_map != g_.live_map ||
        h->freed_map != g_.freed_map || h->map_words != g_.map_words) {
      r->report("tlsf: geometry in the header overwritten");
    }
    if (h->damaged) r->report("tlsf: a damaged free list was dropped earlier");
    // 1. The physical chain.
    uint64_t b = g_.area_start, steps = 0, max_steps = (g_.area_end - g_.area_start) / kMinFootprint + 1;
    uint64_t used_bytes = 0, live = 0, free_bytes = 0, free_blocks = 0, quick_blocks = 0;
    uint64_t marks_expected = 0;  // small blocks that are used or quick
    bool prev_was_free = false;
    uint64_t prev_block = 0;
    while (b != sentinel_) {
      uint64_t size = 0, flags = 0;
      if (++steps > max_steps || !read_block(b, &size, &flags)) {
        r->report("tlsf: block at offset " + std::to_string(b) + " has an impossible header");
        return;
      }
      bool is_free = flags & kFree;
      if (((flags & kPrevFree) != 0) != prev_was_free) {
        r->report("tlsf: block at offset " + std::to_string(b) + " disagrees with its predecessor about being free");
      }
      if (prev_was_free && load(b) != prev_block) {
        r->report("tlsf: block at offset " + std::to_string(b) + " has a wrong prev_phys link");
      }
      if (is_free && prev_was_free) r->report("tlsf: two free blocks next to each other at offset " + std::to_string(b));
      const uint32_t state = granule_state(b + 16);
      const bool marked = has_end_mark(b, size);
      if (!is_free && size <= kQuickMaxPayload) ++marks_expected;
      if (is_free) {
        free_bytes += size;
        ++free_blocks;
        if (state & 2) r->report("tlsf: free block at offset " + std::to_string(b) + " marked live");
        if (marked) r->report("tlsf: free block at offset " + std::to_string(b) + " has an end mark");
      } else if (state == kFreedStart) {
        ++quick_blocks;
        if (any_bits(g_.freed_map, b + 32, b + 8 + size)) r->report("tlsf: quick block at offset " + std::to_string(b) + " has freed bits inside");
        if (size > kQuickMaxPayload) r->report("tlsf: quick block at offset " + std::to_string(b) + " is too large");
        if (!marked) r->report("tlsf: quick block at offset " + std::to_string(b) + " has no end mark");
      } else {
        used_bytes += size;
        ++live;
        if (state != kLiveStart) r->report("tlsf: used block at offset " + std::to_string(b) + " not marked live");
        // A freed bit inside would make a free() of that interior offset say double_free, not foreign.
        if (any_bits(g_.freed_map, b + 32, b + 8 + size)) r->report("tlsf: used block at offset " + std::to_string(b) + " has freed bits inside");
        if (marked != (size <= kQuickMaxPayload)) {
          r->report("tlsf: used block at offset " + std::to_string(b) + (marked ? " of a large size has an end mark" : " has no end mark"));
        }
      }
      prev_was_free = is_free;
      prev_block = b;
      b = b + 8 + size;
    }
    uint64_t sentinel_flags = load(sentinel_ + 8);
    if (((sentinel_flags & kPrevFree) != 0) != prev_was_free) r->report("tlsf: sentinel disagrees with the last block");
    if (prev_was_free && load(sentinel_) != prev_block) r->report("tlsf: sentinel has a wrong prev_phys link");
    // 2. The maps have no starts or marks but those of the blocks.
    uint64_t live_bits = 0, mark_bits = 0;
    for (uint64_t w = 0; w < g_.map_words; ++w) {
      uint64_t l = load(g_.live_map + w * kMapStride), f = load(g_.freed_map + w * kMapStride);
      live_bits += static_cast<uint64_t>(__builtin_popcountll(l & ~f));
      mark_bits += static_cast<uint64_t>(__builtin_popcountll(l & f));
    }
    if (load(g_.live_map + g_.map_words * kMapStride) != 0 || load(g_.freed_map + g_.map_words * kMapStride) != 0) {
      r->report("tlsf: the spare map pair after the last is not zero");
    }
    if (live_bits != live) r->report("tlsf: live map has " + std::to_string(live_bits) + " bits for " + std::to_string(live) + " used blocks");
    if (mark_bits != marks_expected) {
      r->report("tlsf: maps have " + std::to_string(mark_bits) + " end marks for " + std::to_string(marks_expected) + " small blocks");
    }
    // 3. The free lists: every entry free, on its own list, linked both ways; bitmaps agree.
    uint64_t listed = 0;
    for (uint32_t fl = 0; fl < kFlCount; ++fl) {
      bool fl_bit = (h->fl_bitmap >> fl) & 1;
      bool any = false;
      for (uint32_t sl = 0; sl < kSlCount; ++sl) {
        uint64_t e = h->heads[fl][sl];
        bool sl_bit = (h->sl_bitmap[fl] >> sl) & 1;
        if ((e != 0) != sl_bit) r->report("tlsf: list bitmap disagrees with list " + std::to_string(fl) + "/" + std::to_string(sl));
        if (e != 0) any = true;
        uint64_t prev = 0, n = 0;
        while (e != 0) {
          uint64_t size = 0, flags = 0;
          if (++n > free_blocks + 1 || !read_block(e, &size, &flags)) {
            r->report("tlsf: list " + std::to_string(fl) + "/" + std::to_string(sl) + " is broken or cyclic");
            break;
          }
          uint32_t efl = 0, esl = 0;
          mapping_insert(size, &efl, &esl);
          if (!(flags & kFree)) r->report("tlsf: used block at offset " + std::to_string(e) + " on a free list");
          if (efl != fl || esl != sl) r->report("tlsf: block at offset " + std::to_string(e) + " on the wrong list");
          if (load(e + 24) != prev) r->report("tlsf: block at offset " + std::to_string(e) + " has a wrong prev_free link");
          ++listed;
          prev = e;
          e = load(e + 16);
        }
      }
      if (fl_bit != any) r->report("tlsf: first-level bitmap disagrees at " + std::to_string(fl));
    }
    if (listed != free_blocks) r->report("tlsf: " + std::to_string(listed) + " blocks listed, " + std::to_string(free_blocks) + " free");
    // 4. Counters.
    const HeapCounters& c = h->region.counters;
    if (c.used != used_bytes) r->report("tlsf: used counter " + std::to_string(c.used) + " but blocks hold " + std::to_string(used_bytes));
    if (c.live != live) r->report("tlsf: live counter " + std::to_string(c.live) + " but " + std::to_string(live) + " used blocks");
    if (h->free_bytes != free_bytes) r->report("tlsf: free counter disagrees with the listed blocks");
    // 5. Quick stacks: bounded, each entry a quick block of its class, no block twice, every quick block listed.
    std::vector<uint64_t> stacked;
    for (uint32_t q = 0; q < kQuickClasses; ++q) {
      uint32_t n = h->quick_count[q];
      if (n > kQuickLimit) {
        r->report("tlsf: quick stack " + std::to_string(q) + " count " + std::to_string(n) + " is too large");
        n = kQuickLimit;
      }
      for (uint32_t j = 0; j < n; ++j) {
        uint64_t e = h->quick[q][j], size = 0, flags = 0;
        if (!read_block(e, &size, &flags) || (flags & kFree) || quick_class(size) != q || size > kQuickMaxPayload ||
            granule_state(e + 16) != kFreedStart) {
          r->report("tlsf: entry " + std::to_string(e) + " does not belong on quick stack " + std::to_string(q));
          continue;
        }
        stacked.push_back(e);
      }
    }
    std::sort(stacked.begin(), stacked.end());
    if (std::adjacent_find(stacked.begin(), stacked.end()) != stacked.end()) r->report("tlsf: a block is on the quick stacks twice");
    if (stacked.size() != quick_blocks) {
      r->report("tlsf: " + std::to_string(quick_blocks) + " quick blocks, " + std::to_string(stacked.size()) + " stacked");
    }
    if (h->free_blocks != free_blocks) r->report("tlsf: free block count disagrees with the blocks");
  }

  // The physical chain (sizes and kFree flags) is the primary record: every operation changes it with
  // single stores that each leave it whole. A used block's state (live or quick) is the map's at its
  // payload. Everything else is recomputed from these here; quick blocks join the free runs.
  Status rebuild() override {
    TlsfHeader* h = header();
    uint64_t max_steps = (g_.area_end - g_.area_start) / kMinFootprint + 1, steps = 0;
    // First pass: validate the whole chain before changing anything.
    for (uint64_t b = g_.area_start; b != sentinel_;) {
      uint64_t size = 0, flags = 0;
      if (++steps > max_steps || !read_block(b, &size, &flags)) return Status::corrupted;
      b = b + 8 + size;
    }
    std::memset(h->heads, 0, sizeof h->heads);
    std::memset(h->quick_count, 0, sizeof h->quick_count);
    std::memset(h->sl_bitmap, 0, sizeof h->sl_bitmap);
    h->fl_bitmap = 0;
    h->free_bytes = 0;
    h->free_blocks = 0;
    h->damaged = 0;
    // L bits outside every block's payload and end granule: the first block's header granule and the map's
    // padding past the sentinel.
    if (granule_state(g_.area_start) & 2) set_granule_state(g_.area_start, kNothing);
    clear_bits(g_.live_map, sentinel_ + 16, g_.area_start + g_.map_words * 64 * kGranule);
    store(g_.live_map + g_.map_words * kMapStride, 0);  // the spare pair
    store(g_.freed_map + g_.map_words * kMapStride, 0);
    uint64_t used = 0, live = 0;
    uint64_t run = 0;  // start of the free run being gathered, 0 = none
    uint64_t b = g_.area_start;
    for (;;) {
      bool at_end = b == sentinel_;
      uint64_t size = 0, flags = 0;
      bool is_free = false;
      if (!at_end) {
        // The first pass validated this header, but another process may have written it since
        // (docs/security.md): an unchecked size would send the clears below outside the region.
        if (!read_block(b, &size, &flags)) return Status::corrupted;
        // Read before anything below writes this block's granules (the previous block wrote only up to
        // its own end granule, b's header).
        uint64_t payload = b + 16, end = b + 8 + size;
        is_free = (flags & kFree) || granule_state(payload) == kFreedStart;
        clear_bits(g_.live_map, payload, end);  // no start or mark inside a block
        if (!is_free) {
          clear_bits(g_.freed_map, payload, end);
          set_granule_state(payload, kLiveStart);
        }
        if (!is_free && size <= kQuickMaxPayload) {
          set_granule_state(end, kEndMark);
        } else if (granule_state(end) & 2) {
          set_granule_state(end, kNothing);
        }
      }
      if (is_free) {
        if (run == 0) {
          run = b;
        } else {
          set_size_flags(run, b + 8 + size - run - 8, kFree);  // coalesce what a crash left apart
        }
      } else {
        uint64_t pf = 0;
        if (run != 0) {
          uint64_t run_size = b - run - 8;
          set_size_flags(run, run_size, kFree);
          insert_free(run, run_size);
          pf = kPrevFree;
          store(b, run);
        }
        store(b + 8, (load(b + 8) & ~kPrevFree) | pf);
        run = 0;
        if (at_end) break;
        used += size;
        ++live;
      }
      b = b + 8 + size;
    }
    h->region.counters.used = used;
    h->region.counters.live = live;
    return Status::ok;
  }

  Status walk(const std::function<bool(const BlockInfo&)>& visit) const override {
    uint64_t b = g_.area_start, steps = 0, max_steps = (g_.area_end - g_.area_start) / kMinFootprint + 1;
    while (b != sentinel_) {
      uint64_t size = 0, flags = 0;
      if (++steps > max_steps || !read_block(b, &size, &flags)) return Status::corrupted;
      if (!visit(BlockInfo{b + 16, size, !(flags & kFree) && granule_state(b + 16) == kLiveStart})) break;
      b = b + 8 + size;
    }
    return Status::ok;
  }

 private:
  TlsfHeader* header() const { return reinterpret_cast<TlsfHeader*>(base_); }

  // The general paths: every case, every check, the exact status.
  __attribute__((noinline)) Status alloc_general(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) {
    if (size == 0 || size > kMaxRequest || !valid_align(align) || align < kDefaultAlign) {
      return Status::invalid_argument;
    }
    uint64_t need = adjust_request(size);
    if (align == kDefaultAlign && hint == kNoHint && need <= kQuickMaxPayload) {
      Status q = quick_pop(need, offset);
      if (q != Status::out_of_memory) return q;
    }
    uint64_t block = 0, payload = 0;
    Status s = find_any(need, align, hint, &block, &payload);
    if (s == Status::out_of_memory && any_quick()) {
      s = flush_quick();
      if (s == Status::ok) s = find_any(need, align, hint, &block, &payload);
    }
    if (s == Status::out_of_memory) count_failure();
    if (s != Status::ok) return s;
    s = take(block, payload, need);
    if (s != Status::ok) return s;
    *offset = payload;
    return Status::ok;
  }

  __attribute__((noinline)) Status free_general(uint64_t offset) {
    Status s = check_live_payload(offset);
    if (s != Status::ok) return s;
    uint64_t b = offset - 16;
    uint64_t size = 0, flags = 0;
    if (!read_block(b, &size, &flags) || (flags & kFree)) return Status::corrupted;
    TlsfHeader* h = header();
    if (size <= kQuickMaxPayload) {
      // A small used block carries its end mark; without it the maps and the chain disagree.
      if (!has_end_mark(b, size)) return Status::corrupted;
      uint32_t q = quick_class(size);
      uint32_t n = h->quick_count[q];
      if (n < kQuickLimit) {
        h->quick[q][n] = b;
        h->quick_count[q] = n + 1;
        set_granule_state(offset, kFreedStart);  // the end mark stays: a quick block keeps its size
        count_free(size);
        return Status::ok;
      }
    }
    s = release(b, size, flags);
    if (s != Status::ok) return s;
    set_granule_state(offset, kFreedStart);
    count_free(size);
    return Status::ok;
  }

  // Returns block b (used or quick, `size` payload bytes) to the free lists, coalescing with free
  // physical neighbours. Validates everything it will touch before it writes anything.
  Status release(uint64_t b, uint64_t size, uint64_t flags) {
    uint64_t next = b + 8 + size, next_size = 0;
    bool next_free = false;
    if (!read_next(next, &next_size, &next_free)) return Status::corrupted;
    uint64_t prev = 0, prev_size = 0;
    bool prev_free = (flags & kPrevFree) != 0;
    if (prev_free) {
      uint64_t prev_flags = 0;
      prev = load(b);
      if (prev >= b || !read_block(prev, &prev_size, &prev_flags) || !(prev_flags & kFree) ||
          prev + 8 + prev_size != b || !can_unlink(prev, prev_size)) {
        return Status::corrupted;
      }
    }
    // Everything this touches has been checked; from here on it only writes.
    clear_end_mark(b, size);  // b stops being a small used (or quick) block
    uint64_t start = b;
    uint64_t end = next;  // one past the merged block: the offset of the block after it
    if (prev_free) {
      unlink(prev, prev_size);
      start = prev;
    }
    if (next_free) {
      unlink(next, next_size);
      end = next + 8 + next_size;
    }
    uint64_t merged = end - start - 8;
    set_size_flags(start, merged, kFree);  // one store publishes the merge and the free flag
    insert_free(start, merged);
    mark_prev(end, start, true);
    return Status::ok;
  }

  // Reads the block after another (at `next`, perhaps the sentinel): whether it is free and, if so,
  // that it can be unlinked safely. False when its header or links cannot be true.
  bool read_next(uint64_t next, uint64_t* next_size, bool* next_free) const {
    *next_free = false;
    if (next == sentinel_) return true;
    uint64_t flags = 0;
    if (!read_block(next, next_size, &flags)) return false;
    *next_free = (flags & kFree) != 0;
    return !*next_free || can_unlink(next, *next_size);
  }

  static uint32_t quick_class(uint64_t size) { return static_cast<uint32_t>((size - kMinPayload) / kGranule); }

  // Payload bytes on the quick stacks (a count beyond kQuickLimit, only a scribbled header has, counts as
  // the limit): at most 64 x 64 x 1032 bytes, no overflow.
  uint64_t quick_bytes() const {
    const TlsfHeader* h = header();
    uint64_t bytes = 0;
    for (uint32_t q = 0; q < kQuickClasses; ++q) {
      bytes += std::min<uint64_t>(h->quick_count[q], kQuickLimit) * (kMinPayload + q * kGranule);
    }
    return bytes;
  }

  bool any_quick() const {
    const TlsfHeader* h = header();
    for (uint32_t q = 0; q < kQuickClasses; ++q) {
      if (h->quick_count[q] != 0) return true;
    }
    return false;
  }

  // The top of quick stack q, checked to be a quick block of that class: true with its offset and header,
  // false when the stack's count or entry cannot be true (a scribbled header).
  bool quick_top(uint32_t q, uint64_t* block, uint64_t* size, uint64_t* flags) const {
    const TlsfHeader* h = header();
    uint32_t n = h->quick_count[q];
    if (n == 0 || n > kQuickLimit) return false;
    uint64_t b = h->quick[q][n - 1];
    if (!read_block(b, size, flags) || (*flags & kFree) || quick_class(*size) != q || *size > kQuickMaxPayload) {
      return false;
    }
    if (granule_state(b + 16) != kFreedStart || !has_end_mark(b, *size)) return false;
    *block = b;
    return true;
  }

  // Takes a block of exactly `need` bytes from its quick stack: ok, out_of_memory when the stack is
  // empty, corrupted when its top cannot be trusted.
  Status quick_pop(uint64_t need, uint64_t* offset) {
    TlsfHeader* h = header();
    uint32_t q = quick_class(need);
    if (h->quick_count[q] == 0) return Status::out_of_memory;
    uint64_t b = 0, size = 0, flags = 0;
    if (!quick_top(q, &b, &size, &flags)) return Status::corrupted;
    h->quick_count[q] -= 1;
    // Only the start granule changes: the interior was cleared when the block was last handed out, and
    // the end mark stayed.
    set_granule_state(b + 16, kLiveStart);
    count_alloc(need);
    *offset = b + 16;
    return Status::ok;
  }

  // Releases every quick block to the free lists (coalescing), so a large request can use the space.
  Status flush_quick() {
    TlsfHeader* h = header();
    for (uint32_t q = 0; q < kQuickClasses; ++q) {
      while (h->quick_count[q] != 0) {
        uint64_t b = 0, size = 0, flags = 0;
        if (!quick_top(q, &b, &size, &flags)) return Status::corrupted;
        h->quick_count[q] -= 1;
        Status s = release(b, size, flags);
        if (s != Status::ok) return s;
      }
    }
    return Status::ok;
  }

  Status find_any(uint64_t need, uint64_t align, uint64_t hint, uint64_t* block, uint64_t* payload) const {
    if (align == kDefaultAlign && hint == kNoHint) {
      Status s = find_fit(need, block);
      if (s == Status::ok) *payload = *block + 16;
      return s;
    }
    Status s = find_placed(need, align, hint, block, payload);
    if (s == Status::out_of_memory && hint != kNoHint) s = find_placed(need, align, kNoHint, block, payload);
    return s;
  }

  // Word access through memcpy: the region is raw bytes, and this compiles to one move.
  uint64_t load(uint64_t off) const {
    uint64_t v;
    std::memcpy(&v, base_ + off, 8);
    return v;
  }
  void store(uint64_t off, uint64_t v) { std::memcpy(base_ + off, &v, 8); }
  static uint64_t load_at(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  static void store_at(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

  // A block offset that could hold a block header and a minimal payload before the sentinel.
  bool valid_block_offset(uint64_t b) const {
    // Written so that no sum can wrap: b may be any 64-bit value read from the region.
    return b >= g_.area_start && b <= sentinel_ - kMinFootprint && (b & (kGranule - 1)) == 0;
  }

  // Reads a block header and checks it can be true: returns false on anything impossible.
  bool read_block(uint64_t b, uint64_t* size, uint64_t* flags) const {
    if (!valid_block_offset(b)) return false;
    uint64_t sf = load(b + 8);
    uint64_t s = sf & ~kFlagMask;
    *flags = sf & kFlagMask;
    *size = s;
    return (s & (kGranule - 1)) == 8 && s >= kMinPayload && s <= sentinel_ - b - 8 && !(sf & kReservedFlag);
  }

  void set_size_flags(uint64_t b, uint64_t size, uint64_t flags) { store(b + 8, size | flags); }

  // Tells the block at `b` whether its physical predecessor (at `prev`) is free.
  void mark_prev(uint64_t b, uint64_t prev, bool prev_free) {
    uint64_t sf = load(b + 8);
    if (prev_free) {
      store(b, prev);
      store(b + 8, sf | kPrevFree);
    } else {
      store(b + 8, sf & ~kPrevFree);
    }
  }

  // Calls visit(word, mask) for each word of one map (`map` is g_.live_map or g_.freed_map, word k at
  // map + 16k) that holds bits of granules [from, to), with the mask of those bits; stops, returning false,
  // when visit returns false.
  template <class Visit>
  bool each_map_word(uint64_t map, uint64_t from, uint64_t to, Visit visit) const {
    if (to <= from) return true;
    uint64_t i = (from - g_.area_start) / kGranule, j = (to - g_.area_start + kGranule - 1) / kGranule;
    while (i < j) {
      uint64_t bit = i % 64;
      uint64_t n = 64 - bit < j - i ? 64 - bit : j - i;
      uint64_t mask = (n == 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1)) << bit;
      if (!visit(map + (i / 64) * kMapStride, mask)) return false;
      i += n;
    }
    return true;
  }

  // Clears one map's bits of granules [from, to).
  void clear_bits(uint64_t map, uint64_t from, uint64_t to) {
    each_map_word(map, from, to, [this](uint64_t w, uint64_t mask) {
      store(w, load(w) & ~mask);
      return true;
    });
  }

  // Whether any of one map's bits of granules [from, to) is set.
  bool any_bits(uint64_t map, uint64_t from, uint64_t to) const {
    return !each_map_word(map, from, to, [this](uint64_t w, uint64_t mask) { return (load(w) & mask) == 0; });
  }

  // The end marks of the 64 granules after granule p of a map word: bit j of the result is granule p + 1 + j,
  // from this word's marks (lo) and the next word's (hi).
  static uint64_t mark_window(uint64_t lo, uint64_t hi, uint64_t p) { return ((lo >> p) >> 1) | (hi << (63 - p)); }

  // A granule's (L, F) pair as L << 1 | F (see the layout comment).
  static constexpr uint32_t kNothing = 0, kFreedStart = 1, kLiveStart = 2, kEndMark = 3;
  uint32_t granule_state(uint64_t at) const {
    uint64_t i = (at - g_.area_start) / kGranule;
    uint64_t w = g_.live_map + (i / 64) * kMapStride;
    return static_cast<uint32_t>(((load(w) >> (i % 64)) & 1) << 1 | ((load(w + 8) >> (i % 64)) & 1));
  }
  void set_granule_state(uint64_t at, uint32_t state) {
    uint64_t i = (at - g_.area_start) / kGranule;
    uint64_t w = g_.live_map + (i / 64) * kMapStride;
    uint64_t bit = uint64_t(1) << (i % 64);
    store(w, (state & 2) ? load(w) | bit : load(w) & ~bit);
    store(w + 8, (state & 1) ? load(w + 8) | bit : load(w + 8) & ~bit);
  }
  // The end mark of block b with `size` payload bytes sits at the granule of the block after it.
  bool has_end_mark(uint64_t b, uint64_t size) const { return granule_state(b + 8 + size) == kEndMark; }
  void set_end_mark(uint64_t b, uint64_t size) {
    if (size <= kQuickMaxPayload) set_granule_state(b + 8 + size, kEndMark);
  }
  // Clears b's end mark if it has one (a large block has none, and its end granule never holds another's).
  void clear_end_mark(uint64_t b, uint64_t size) {
    if (has_end_mark(b, size)) set_granule_state(b + 8 + size, kNothing);
  }

  // Is `offset` the payload of a live allocation? Otherwise: double_free or foreign.
  Status check_live_payload(uint64_t offset) const {
    if (offset < g_.area_start + 16 || offset >= sentinel_ || ((offset - g_.area_start) & (kGranule - 1)) != 0) {
      return Status::foreign;
    }
    uint32_t state = granule_state(offset);
    if (state == kLiveStart) return Status::ok;
    return state == kFreedStart ? Status::double_free : Status::foreign;  // a mark or nothing: foreign
  }

  void insert_free(uint64_t b, uint64_t size) {
    uint32_t fl = 0, sl = 0;
    mapping_insert(size, &fl, &sl);
    TlsfHeader* h = header();
    uint64_t head = h->heads[fl][sl];
    if (head != 0 && (!valid_block_offset(head) || load(head + 24) != 0)) {
      // The list head was overwritten. Linking to it would write where it points: drop the list
      // instead (its blocks leak, memory stays safe) and remember, so check() reports it.
      h->damaged = 1;
      damage_ |= kDamageMet;
      head = 0;
    }
    store(b + 16, head);
    store(b + 24, 0);
    if (head != 0) store(head + 24, b);
    h->heads[fl][sl] = b;
    h->fl_bitmap |= uint64_t(1) << fl;
    h->sl_bitmap[fl] |= 1u << sl;
    h->free_bytes = saturating_add(h->free_bytes, size);
    h->free_blocks = saturating_add(h->free_blocks, 1);
  }

  // Would unlinking this free block be safe? Its links must point at valid blocks that point back
  // (glibc's safe unlinking), or at the list head.
  bool can_unlink(uint64_t b, uint64_t size) const {
    uint32_t fl = 0, sl = 0;
    mapping_insert(size, &fl, &sl);
    if (fl >= kFlCount) return false;
    uint64_t next = load(b + 16), prev = load(b + 24);
    if (next != 0 && (!valid_block_offset(next) || load(next + 24) != b)) return false;
    if (prev != 0) return valid_block_offset(prev) && load(prev + 16) == b;
    return header()->heads[fl][sl] == b;
  }

  // Caller has established can_unlink(b, size). The links are read again here, and another process may
  // have written them since (docs/security.md): a link is written through only if it is a block offset.
  void unlink(uint64_t b, uint64_t size) {
    uint32_t fl = 0, sl = 0;
    mapping_insert(size, &fl, &sl);
    TlsfHeader* h = header();
    uint64_t next = load(b + 16), prev = load(b + 24);
    if (next != 0 && valid_block_offset(next)) store(next + 24, prev);
    if (prev != 0) {
      if (valid_block_offset(prev)) store(prev + 16, next);
    } else {
      h->heads[fl][sl] = next;
      if (next == 0) {
        h->sl_bitmap[fl] &= ~(1u << sl);
        if (h->sl_bitmap[fl] == 0) h->fl_bitmap &= ~(uint64_t(1) << fl);
      }
    }
    h->free_bytes = h->free_bytes >= size ? h->free_bytes - size : 0;
    h->free_blocks = h->free_blocks > 0 ? h->free_blocks - 1 : 0;
  }

  // Head of the first non-empty list at or above (fl, sl), or 0.
  uint64_t first_list_at_or_above(uint32_t* fl, uint32_t* sl) const {
    const TlsfHeader* h = header();
    if (*fl >= kFlCount) return 0;
    uint32_t sl_map = *sl < kSlCount ? h->sl_bitmap[*fl] & (~0u << *sl) : 0;
    if (sl_map == 0) {
      uint64_t fl_map = h->fl_bitmap & (~uint64_t(0) << (*fl + 1)) & ((uint64_t(1) << kFlCount) - 1);
      if (fl_map == 0) return 0;
      *fl = static_cast<uint32_t>(__builtin_ctzll(fl_map));
      sl_map = h->sl_bitmap[*fl];
      if (sl_map == 0) return UINT64_MAX;  // bitmaps disagree: corrupted
    }
    *sl = static_cast<uint32_t>(__builtin_ctz(sl_map));
    uint64_t head = h->heads[*fl][*sl];
    return head == 0 ? UINT64_MAX : head;
  }

  // O(1) good fit: the head of the first list whose every block holds `need`; failing that, a bounded
  // look at need's own list, where some blocks may still be large enough.
  Status find_fit(uint64_t need, uint64_t* block) const {
    uint32_t fl = 0, sl = 0;
    mapping_search(need, &fl, &sl);
    uint64_t b = first_list_at_or_above(&fl, &sl);
    if (b == UINT64_MAX) return Status::corrupted;
    if (b != 0) {
      uint64_t size = 0, flags = 0;
      if (!read_block(b, &size, &flags) || !(flags & kFree) || size < need || !can_unlink(b, size)) {
        return Status::corrupted;
      }
      *block = b;
      return Status::ok;
    }
    mapping_insert(need, &fl, &sl);
    if (fl >= kFlCount) return Status::out_of_memory;
    b = header()->heads[fl][sl];
    for (int n = 0; b != 0 && n < kSearchBudget; ++n) {
      uint64_t size = 0, flags = 0;
      if (!read_block(b, &size, &flags) || !(flags & kFree)) return Status::corrupted;
      if (size >= need) {
        if (!can_unlink(b, size)) return Status::corrupted;
        *block = b;
        return Status::ok;
      }
      b = load(b + 16);
    }
    return Status::out_of_memory;
  }

  // Where a payload of `need` bytes aligned to `align`, at or after `min_payload`, would start inside
  // free block b, or 0 when it does not fit. A leading gap is left only when it can be a free block.
  uint64_t place(uint64_t b, uint64_t size, uint64_t need, uint64_t align, uint64_t min_payload) const {
    uint64_t lo = b + 16 > min_payload ? b + 16 : min_payload;
    if (lo >= sentinel_) return 0;
    uint64_t p = round_up(lo, align);
    if (p != b + 16 && p - (b + 16) < kMinFootprint) p = round_up(b + 16 + kMinFootprint, align);
    uint64_t end = b + 16 + size;  // end of b's payload
    return p + need <= end ? p : 0;
  }

  // A block for an aligned and/or hinted request. Without a hint: the O(1) search with room for the
  // alignment padding, then a bounded search. With a hint: a bounded search, over the lists that can
  // hold the request, for the lowest placement at or after the hint.
  Status find_placed(uint64_t need, uint64_t align, uint64_t hint, uint64_t* block, uint64_t* payload) const {
    uint64_t min_payload = 0;
    if (hint == kNoHint) {
      uint64_t padded = need + align + kMinFootprint;
      uint64_t b = 0;
      Status s = find_fit(padded, &b);
      if (s == Status::corrupted) return s;
      if (s == Status::ok) {
        uint64_t size = 0, flags = 0;
        read_block(b, &size, &flags);
        uint64_t p = place(b, size, need, align, 0);
        if (p != 0) {
          *block = b;
          *payload = p;
          return Status::ok;
        }
      }
    } else {
      min_payload = hint;
    }
    uint32_t fl = 0, sl = 0;
    mapping_insert(need, &fl, &sl);
    uint64_t best_b = 0, best_p = 0;
    int budget = kSearchBudget;
    while (budget > 0) {
      uint64_t b = first_list_at_or_above(&fl, &sl);
      if (b == UINT64_MAX) return Status::corrupted;
      if (b == 0) break;
      for (; b != 0 && budget > 0; --budget) {
        uint64_t size = 0, flags = 0;
        if (!read_block(b, &size, &flags) || !(flags & kFree)) return Status::corrupted;
        uint64_t p = place(b, size, need, align, min_payload);
        if (p != 0 && (best_p == 0 || p < best_p)) {
          best_b = b;
          best_p = p;
        }
        b = load(b + 16);
      }
      if (++sl == kSlCount) {
        sl = 0;
        if (++fl == kFlCount) break;
      }
    }
    if (best_p == 0) return Status::out_of_memory;
    uint64_t size = 0, flags = 0;
    read_block(best_b, &size, &flags);
    if (!can_unlink(best_b, size)) return Status::corrupted;
    *block = best_b;
    *payload = best_p;
    return Status::ok;
  }

  // Turns free block b into a used block whose payload starts at `payload` and holds `need` bytes,
  // returning any leading gap and trailing remainder to the free lists.
  Status take(uint64_t b, uint64_t payload, uint64_t need) {
    uint64_t size = 0, flags = 0;
    if (!read_block(b, &size, &flags)) return Status::corrupted;
    // The caller placed `payload` using a size it read itself; another process may have changed the word
    // since (docs/security.md). The payload and its leading gap must still lie inside b as read now.
    const uint64_t gap = payload - (b + 16);
    if (payload < b + 16 || gap > size || (gap != 0 && gap < kMinFootprint) || need > size - gap ||
        (payload & (kGranule - 1)) != 0) {
      return Status::corrupted;
    }
    uint64_t end = b + 8 + size;  // the block after b
    unlink(b, size);
    uint64_t used = b;
    uint64_t used_flags = 0;
    if (payload != b + 16) {
      // Leading gap: b keeps [b, payload - 16) and stays free. The new block's header is written first
      // (inside b, invisible to a walk of the chain), then one store to b's size publishes the split.
      used = payload - 16;
      uint64_t gap_size = used - b - 8;
      store(used, b);
      set_size_flags(used, end - used - 8, kPrevFree | kFree);
      set_size_flags(b, gap_size, kFree);
      insert_free(b, gap_size);
      used_flags = kPrevFree;
    }
    uint64_t used_size = end - used - 8;
    set_size_flags(used, used_size, used_flags);  // one store: the block is used
    mark_prev(end, used, false);
    // The size as written, not read back: another process may change the word at any time
    // (docs/security.md), and the clears below must stay inside the block.
    const uint64_t final_size = split_tail(used, used_size, need, used_flags);
    // F cleared over the payload and the end granule (nothing was marked there: b was free), then the
    // start and the end mark.
    clear_bits(g_.freed_map, payload, payload + final_size);
    set_granule_state(payload, kLiveStart);
    set_end_mark(used, final_size);
    count_alloc(final_size);
    return Status::ok;
  }

  // Used block b has `size` payload bytes; keeps `need` and frees the rest when it can be a block.
  // The block after b must not be free (callers merged it already). Returns b's payload size now.
  uint64_t split_tail(uint64_t b, uint64_t size, uint64_t need, uint64_t prev_flag) {
    if (size < need + kMinFootprint) return size;
    uint64_t rest = b + 8 + need;
    uint64_t rest_size = size - need - 8;
    // The remainder's header first (inside b's payload), then one store to b's size publishes it, so
    // the physical chain is whole after every store (rebuild() relies on it).
    set_size_flags(rest, rest_size, kFree);
    set_size_flags(b, need, prev_flag);
    insert_free(rest, rest_size);
    mark_prev(rest + 8 + rest_size, rest, true);
    return need;
  }

  uint64_t largest_free() const {
    const TlsfHeader* h = header();
    uint64_t fl_map = h->fl_bitmap & ((uint64_t(1) << kFlCount) - 1);
    if (fl_map == 0) return 0;
    uint32_t fl = floor_log2(fl_map);
    uint32_t sl_map = h->sl_bitmap[fl];
    if (sl_map == 0) return 0;
    uint32_t sl = 31u - static_cast<uint32_t>(__builtin_clz(sl_map));
    uint64_t b = h->heads[fl][sl], best = 0;
    for (int n = 0; b != 0 && n < kSearchBudget; ++n) {
      uint64_t size = 0, flags = 0;
      if (!read_block(b, &size, &flags)) break;
      if (size > best) best = size;
      b = load(b + 16);
    }
    return best;
  }

  const Geometry g_;
  uint64_t sentinel_;
};

}  // namespace

uint64_t tlsf_min_region_size(const HeapOptions&) {
  return round_up(sizeof(TlsfHeader), 64) + 4096 + 2 * kGranule;
}

Status tlsf_format(uint8_t* base, uint64_t size, const HeapOptions&, std::unique_ptr<Heap>* out) {
  Geometry g;
  if (size > kMaxRequest * 2) return Status::invalid_argument;
  if (!compute_geometry(size, &g)) return Status::out_of_memory;
  auto heap = std::make_unique<TlsfHeap>(base, size, g);
  heap->format();
  *out = std::move(heap);
  return Status::ok;
}

Status tlsf_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  Geometry g;
  if (size > kMaxRequest * 2 || !compute_geometry(size, &g)) return Status::incompatible;
  TlsfHeader h;
  std::memcpy(&h, base, sizeof h);
  if (h.region.magic != kRegionMagic || h.region.algorithm != static_cast<uint32_t>(Algorithm::tlsf)) {
    return Status::incompatible;
  }
  if (h.region.version != kTlsfVersion || h.region.size != size) return Status::incompatible;
  if (h.region.header_size != g.area_start || h.area_start != g.area_start || h.area_end != g.area_end ||
      h.live_map != g.live_map || h.freed_map != g.freed_map || h.map_words != g.map_words) {
    return Status::corrupted;
  }
  *out = std::make_unique<TlsfHeap>(base, size, g);
  return Status::ok;
}

}  // namespace mempool
