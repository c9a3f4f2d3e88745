// Bitmap heap: fixed-size blocks, a "used" and a "start" bitmap, and a tree of {start, max, end} summaries
// for first-fit search. See bitmap.h for the layout.
#include "bitmap.h"

#include <cstring>
#include <new>

namespace mempool {
namespace {

constexpr uint64_t kFan = uint64_t(1) << kBitmapFanoutShift;
constexpr uint64_t kNone = UINT64_MAX;         // search found nothing
constexpr uint64_t kCorrupt = UINT64_MAX - 1;  // search met summaries that disagree with the bitmap
// Before falling back to a search that guarantees an aligned fit, an aligned request looks at this many
// first-fit candidates (keeps aligned blocks low in the region).
constexpr int kAlignedCandidates = 8;

inline uint64_t ctz64(uint64_t x) { return static_cast<uint64_t>(__builtin_ctzll(x)); }  // x != 0
inline uint64_t clz64(uint64_t x) { return static_cast<uint64_t>(__builtin_clzll(x)); }  // x != 0
inline uint64_t popcount64(uint64_t x) { return static_cast<uint64_t>(__builtin_popcountll(x)); }
inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
inline uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
// Bits [0, k) of a word, k in [0, 64].
inline uint64_t low_mask(uint64_t k) { return k >= 64 ? ~uint64_t(0) : (uint64_t(1) << k) - 1; }
// Bits [lo, hi) of a word, 0 <= lo <= hi <= 64.
inline uint64_t range_mask(uint64_t lo, uint64_t hi) { return low_mask(hi) & ~low_mask(lo); }

// Bits i of x such that x[i .. i+n-1] are all ones (bits past 63 count as zero); n in [1, 64].
inline uint64_t run_starts(uint64_t x, uint64_t n) {
  uint64_t have = 1;
  while (have < n && x != 0) {
    uint64_t s = min64(have, n - have);
    x &= x >> s;
    have += s;
  }
  return x;
}

// Longest free run of w (1 = used) strictly between its lowest and highest used bit (at positions head and
// 63 - tail); one iteration per free run.
inline uint64_t longest_inner_run(uint64_t w, uint64_t head, uint64_t tail) {
  uint64_t x = ~w & range_mask(head, 64 - tail);  // free bits between the first and last used bit
  x >>= head;                                      // bit 0 is now used (0 in x)
  uint64_t best = 0;
  while (x != 0) {
    x >>= ctz64(x);            // bit 0 starts a free run; a used bit follows it somewhere below bit 63
    const uint64_t r = ctz64(~x);
    if (r > best) best = r;
    x >>= r;
  }
  return best;
}

// Summary of one used-bitmap word (1 = used).
inline BitmapSummary word_summary(uint64_t w) {
  if (w == 0) return {64, 64, 64};
  const uint64_t head = ctz64(w), tail = clz64(w);
  const uint64_t inner = head + tail + 2 < 64 ? longest_inner_run(w, head, tail) : 0;
  return {head, max64(max64(head, tail), inner), tail};
}

inline bool same(const BitmapSummary& a, const BitmapSummary& b) {
  return a.start == b.start && a.max == b.max && a.end == b.end;
}

// The geometry of a region, recomputed from (size, block_size) alone.
struct Layout {
  uint64_t size = 0;
  uint64_t block_size = 0;
  uint32_t block_shift = 0;
  uint32_t levels = 0;
  uint64_t total_blocks = 0;
  uint64_t first_block = 0;
  uint64_t words = 0;
  uint64_t used_offset = 0;
  uint64_t start_offset = 0;
  uint64_t level_offset[kBitmapMaxLevels] = {};
  uint64_t level_count[kBitmapMaxLevels] = {};
  uint64_t meta_end = 0;
  uint64_t header_size = 0;
};

bool valid_block_size(uint64_t bs) { return is_power_of_two(bs) && bs >= 16 && bs <= kBitmapMaxBlockSize; }

// False when the region cannot hold the metadata and at least one allocatable block.
bool compute_layout(uint64_t size, uint64_t block_size, Layout* l) {
  if (!valid_block_size(block_size)) return false;
  l->size = size;
  l->block_size = block_size;
  l->block_shift = floor_log2(block_size);
  l->total_blocks = size >> l->block_shift;
  if (l->total_blocks == 0) return false;
  l->words = (l->total_blocks + 63) >> 6;  // <= 2^58: no sum below can wrap
  uint64_t off = round_up(sizeof(BitmapHeader), 64);
  l->used_offset = off;
  off += l->words * 8;
  l->start_offset = off;
  off += l->words * 8;
  uint64_t count = l->words;
  uint32_t levels = 0;
  do {
    if (levels >= kBitmapMaxLevels) return false;
    count = (count + kFan - 1) >> kBitmapFanoutShift;
    l->level_offset[levels] = off;
    l->level_count[levels] = count;
    off += count * (bitmap_level_packed(levels + 1) ? 8 : sizeof(BitmapSummary));
    ++levels;
  } while (count > 1);
  l->levels = levels;
  l->meta_end = off;
  if (off > size) return false;
  uint64_t unit = max64(kMaxAlign, block_size);
  if (off > UINT64_MAX - unit) return false;
  l->header_size = round_up(off, unit);
  l->first_block = l->header_size >> l->block_shift;
  return l->first_block < l->total_blocks;
}

class BitmapHeap final : public Heap {
 public:
  BitmapHeap(uint8_t* base, uint64_t size, const Layout& l) : Heap(base, size), l_(l) {
    used_ = reinterpret_cast<uint64_t*>(base + l.used_offset);
    start_ = reinterpret_cast<uint64_t*>(base + l.start_offset);
    for (uint32_t k = 0; k < l.levels; ++k) sums_[k] = base + l.level_offset[k];
  }

  Algorithm algorithm() const override { return Algorithm::bitmap; }

  // Writes a fresh header, bitmaps and summaries.
  void format() {
    std::memset(base_, 0, l_.meta_end);
    BitmapHeader* h = header();
    h->region.magic = kRegionMagic;
    h->region.algorithm = static_cast<uint32_t>(Algorithm::bitmap);
    h->region.version = kBitmapVersion;
    h->region.size = l_.size;
    h->region.header_size = l_.header_size;
    h->block_size = l_.block_size;
    h->block_shift = l_.block_shift;
    h->fanout_shift = kBitmapFanoutShift;
    h->total_blocks = l_.total_blocks;
    h->first_block = l_.first_block;
    h->words = l_.words;
    h->used_offset = l_.used_offset;
    h->start_offset = l_.start_offset;
    h->free_blocks = l_.total_blocks - l_.first_block;
    h->levels = l_.levels;
    for (uint32_t k = 0; k < l_.levels; ++k) {
      h->level_offset[k] = l_.level_offset[k];
      h->level_count[k] = l_.level_count[k];
    }
    set_range(used_, 0, l_.first_block);
    set_range(used_, l_.total_blocks, l_.words * 64);
    update_summaries(0, l_.words - 1, /*stop_early=*/false);
  }

  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) override {
    if (size == 0 || size > kMaxRequest || !valid_align(align) || align < kDefaultAlign) {
      return Status::invalid_argument;
    }
    const uint64_t n = blocks_for(size);
    const uint64_t a = align > l_.block_size ? align >> l_.block_shift : 1;
    uint64_t p = kNone;
    if (n <= l_.total_blocks - l_.first_block) {
      uint64_t from = l_.first_block;
      if (hint != kNoHint) {
        uint64_t hb = hint >> l_.block_shift;
        if ((hint & (l_.block_size - 1)) != 0) ++hb;  // no wrap: hint < UINT64_MAX
        if (hb > from) from = hb;
      }
      p = search(n, a, from);
      if (p == kNone && from > l_.first_block) p = search(n, a, l_.first_block);  // wrap around
    }
    if (p == kCorrupt) return Status::corrupted;
    if (p == kNone) {
      count_failure();
      return Status::out_of_memory;
    }
    // The summaries only pointed here: verify the run against the bitmaps before taking it.
    if (p < l_.first_block || p > l_.total_blocks || n > l_.total_blocks - p || p % a != 0 ||
        !range_clear(used_, p, p + n) || !range_clear(start_, p, p + n)) {
      return Status::corrupted;
    }
    set_range(used_, p, p + n);
    set_bit(start_, p);
    update_summaries(p >> 6, (p + n - 1) >> 6, true);
    BitmapHeader* h = header();
    h->free_blocks = h->free_blocks >= n ? h->free_blocks - n : 0;
    count_alloc(n << l_.block_shift);
    *offset = p << l_.block_shift;
    return Status::ok;
  }

  Status free(uint64_t offset) override {
    uint64_t p = 0, n = 0;
    Status s = locate(offset, &p, &n);
    if (s != Status::ok) return s;
    clear_range(used_, p, p + n);
    clear_bit(start_, p);
    update_summaries(p >> 6, (p + n - 1) >> 6, true);
    BitmapHeader* h = header();
    h->free_blocks += n;
    count_free(n << l_.block_shift);
    return Status::ok;
  }

  Status resize_in_place(uint64_t offset, uint64_t size) override {
    if (size == 0 || size > kMaxRequest) return Status::invalid_argument;
    uint64_t p = 0, n = 0;
    Status s = locate(offset, &p, &n);
    if (s != Status::ok) return s;
    const uint64_t m = blocks_for(size);
    if (m == n) return Status::ok;
    BitmapHeader* h = header();
    HeapCounters& c = h->region.counters;
    if (m < n) {
      clear_range(used_, p + m, p + n);
      update_summaries((p + m) >> 6, (p + n - 1) >> 6, true);
      h->free_blocks += n - m;
      const uint64_t d = (n - m) << l_.block_shift;
      c.used = c.used >= d ? c.used - d : 0;
      return Status::ok;
    }
    // Grow: every block in [p + n, p + m) must be a free allocatable block.
    if (m > l_.total_blocks - p || !range_clear(used_, p + n, p + m)) return Status::out_of_memory;
    if (!range_clear(start_, p + n, p + m)) return Status::corrupted;
    set_range(used_, p + n, p + m);
    update_summaries((p + n) >> 6, (p + m - 1) >> 6, true);
    h->free_blocks = h->free_blocks >= m - n ? h->free_blocks - (m - n) : 0;
    c.used += (m - n) << l_.block_shift;
    if (c.used > c.peak_used) c.peak_used = c.used;
    return Status::ok;
  }

  Status usable_size(uint64_t offset, uint64_t* size) const override {
    uint64_t p = 0, n = 0;
    Status s = locate(offset, &p, &n);
    if (s != Status::ok) return s;
    *size = n << l_.block_shift;
    return Status::ok;
  }

  // O(1): free comes from the header's free-block count, largest_free_block from the root summary (the
  // longest free run anywhere; with the default alignment any run start is good enough).
  void stats(HeapStats* out) const override {
    fill_counter_stats(out);
    const uint64_t alloc_blocks = l_.total_blocks - l_.first_block;
    const uint64_t free_blocks = min64(header()->free_blocks, alloc_blocks);
    out->free = free_blocks << l_.block_shift;
    if (out->used > size_) out->used = size_;  // counters are shared memory: keep the identity intact
    if (out->free > size_ - out->used) out->free = size_ - out->used;
    out->overhead = size_ - out->used - out->free;
    const BitmapSummary root = summary(l_.levels, 0);
    uint64_t largest = min64(min64(root.max, alloc_blocks) << l_.block_shift, out->free);
    out->largest_free_block = min64(largest, round_down(kMaxRequest, l_.block_size));
  }

  void check(CheckResult* result) const override {
    check_header(result);
    check_bitmaps(result);
    check_summaries(result);
  }

  Status walk(const std::function<bool(const BlockInfo&)>& visit) const override {
    uint64_t p = l_.first_block;
    while (p < l_.total_blocks) {
      BlockInfo info;
      uint64_t q;
      if (test_bit(used_, p)) {
        if (!test_bit(start_, p)) return Status::corrupted;  // a used run that no allocation starts
        q = allocation_end(p);
        info = {p << l_.block_shift, (q - p) << l_.block_shift, true};
      } else {
        q = next_used(p);
        info = {p << l_.block_shift, (q - p) << l_.block_shift, false};
      }
      if (!visit(info)) return Status::ok;
      p = q;
    }
    return Status::ok;
  }

 private:
  BitmapHeader* header() const { return reinterpret_cast<BitmapHeader*>(base_); }

  // Blocks for a request of size <= kMaxRequest (no wrap).
  uint64_t blocks_for(uint64_t size) const { return (size + (l_.block_size - 1)) >> l_.block_shift; }

  // ---- bit helpers (block indices < words * 64) ----
  static bool test_bit(const uint64_t* bm, uint64_t b) { return ((bm[b >> 6] >> (b & 63)) & 1) != 0; }
  static void set_bit(uint64_t* bm, uint64_t b) { bm[b >> 6] |= uint64_t(1) << (b & 63); }
  static void clear_bit(uint64_t* bm, uint64_t b) { bm[b >> 6] &= ~(uint64_t(1) << (b & 63)); }

  // Calls f(word index, mask) for the words covering blocks [b0, b1).
  template <typename F>
  static void for_range(uint64_t b0, uint64_t b1, F f) {
    if (b0 >= b1) return;
    uint64_t w0 = b0 >> 6, w1 = (b1 - 1) >> 6;
    if (w0 == w1) {
      f(w0, range_mask(b0 & 63, ((b1 - 1) & 63) + 1));
      return;
    }
    f(w0, range_mask(b0 & 63, 64));
    for (uint64_t w = w0 + 1; w < w1; ++w) f(w, ~uint64_t(0));
    f(w1, low_mask(((b1 - 1) & 63) + 1));
  }
  static void set_range(uint64_t* bm, uint64_t b0, uint64_t b1) {
    for_range(b0, b1, [bm](uint64_t w, uint64_t m) { bm[w] |= m; });
  }
  static void clear_range(uint64_t* bm, uint64_t b0, uint64_t b1) {
    for_range(b0, b1, [bm](uint64_t w, uint64_t m) { bm[w] &= ~m; });
  }
  static bool range_clear(const uint64_t* bm, uint64_t b0, uint64_t b1) {
    bool clear = true;
    for_range(b0, b1, [bm, &clear](uint64_t w, uint64_t m) {
      if ((bm[w] & m) != 0) clear = false;
    });
    return clear;
  }

  // First block q > p (q <= total_blocks) that starts an allocation or is free: where the allocation
  // that starts at p ends.
  uint64_t allocation_end(uint64_t p) const {
    uint64_t b = p + 1;
    while (b < l_.total_blocks) {
      uint64_t w = b >> 6;
      uint64_t stop = (start_[w] | ~used_[w]) & ~low_mask(b & 63);
      if (stop != 0) return min64((w << 6) + ctz64(stop), l_.total_blocks);
      b = (w + 1) << 6;
    }
    return l_.total_blocks;
  }

  // First used block q >= p, or total_blocks.
  uint64_t next_used(uint64_t p) const {
    uint64_t b = p;
    while (b < l_.total_blocks) {
      uint64_t w = b >> 6;
      uint64_t u = used_[w] & ~low_mask(b & 63);
      if (u != 0) return min64((w << 6) + ctz64(u), l_.total_blocks);
      b = (w + 1) << 6;
    }
    return l_.total_blocks;
  }

  // Finds the live allocation starting at offset: its first block and length in blocks.
  Status locate(uint64_t offset, uint64_t* p, uint64_t* n) const {
    if ((offset & (l_.block_size - 1)) != 0) return Status::foreign;
    const uint64_t b = offset >> l_.block_shift;
    if (b < l_.first_block || b >= l_.total_blocks) return Status::foreign;
    if (!test_bit(used_, b)) return Status::double_free;
    if (!test_bit(start_, b)) return Status::foreign;
    *p = b;
    *n = allocation_end(b) - b;
    return Status::ok;
  }

  // ---- summaries ----
  // Level 0 is the used bitmap itself (a node = one word of 64 blocks); level k in [1, levels] is stored.
  uint64_t level_nodes(uint32_t level) const { return level == 0 ? l_.words : l_.level_count[level - 1]; }

  static uint64_t pack(const BitmapSummary& s) {
    return s.start | (s.max << kBitmapPackedBits) | (s.end << (2 * kBitmapPackedBits));
  }
  uint64_t* packed(uint32_t level) const { return reinterpret_cast<uint64_t*>(sums_[level - 1]); }
  BitmapSummary* wide(uint32_t level) const { return reinterpret_cast<BitmapSummary*>(sums_[level - 1]); }

  // A node's summary, with values clamped to the node's span (the region may have been scribbled on).
  BitmapSummary summary(uint32_t level, uint64_t idx) const {
    if (level == 0) return word_summary(used_[idx]);
    const uint64_t span = uint64_t(1) << bitmap_span_shift(level);
    BitmapSummary s;
    if (bitmap_level_packed(level)) {
      const uint64_t v = packed(level)[idx], m = low_mask(kBitmapPackedBits);
      s = {v & m, (v >> kBitmapPackedBits) & m, (v >> (2 * kBitmapPackedBits)) & m};
    } else {
      s = wide(level)[idx];
    }
    return {min64(s.start, span), min64(s.max, span), min64(s.end, span)};
  }

  // Stores a node's summary; true when the stored bytes changed.
  bool store(uint32_t level, uint64_t idx, const BitmapSummary& s) {
    if (bitmap_level_packed(level)) {
      const uint64_t v = pack(s);
      if (packed(level)[idx] == v) return false;
      packed(level)[idx] = v;
      return true;
    }
    BitmapSummary& d = wide(level)[idx];
    if (same(d, s)) return false;
    d = s;
    return true;
  }

  // Whether the stored node equals s (raw, unclamped).
  bool stored_equals(uint32_t level, uint64_t idx, const BitmapSummary& s) const {
    if (bitmap_level_packed(level)) return packed(level)[idx] == pack(s);
    return same(wide(level)[idx], s);
  }

  // Recomputes a level >= 1 node from its children.
  BitmapSummary compute(uint32_t level, uint64_t idx) const {
    const uint64_t c0 = idx << kBitmapFanoutShift;
    const uint64_t c1 = min64(c0 + kFan, level_nodes(level - 1));
    uint64_t start = 0, best = 0, run = 0;
    bool prefix = true;
    if (level == 1) {
      for (uint64_t c = c0; c < c1; ++c) {
        const uint64_t w = used_[c];
        if (w == 0) {
          if (prefix) start += 64;
          run += 64;
          continue;
        }
        const uint64_t head = ctz64(w), tail = clz64(w);
        if (prefix) {
          start += head;
          prefix = false;
        }
        best = max64(best, run + head);
        // Runs strictly inside the word are at most 62 - head - tail long: skip the exact (costlier)
        // computation when they cannot beat the best so far. The tail run is counted through `run`.
        if (head + tail + 2 < 64 && 62 - head - tail > best) best = max64(best, longest_inner_run(w, head, tail));
        run = tail;
      }
    } else {
      const uint64_t child_span = uint64_t(1) << bitmap_span_shift(level - 1);
      for (uint64_t c = c0; c < c1; ++c) {
        const BitmapSummary s = summary(level - 1, c);
        const bool full = s.start == child_span;
        if (prefix) {
          start += s.start;
          prefix = full;
        }
        best = max64(best, max64(s.max, run + s.start));
        run = full ? run + child_span : s.end;
      }
    }
    return {start, max64(best, run), run};
  }

  // Brings the summaries above bitmap words [w0, w1] up to date. With stop_early, stops at the first level
  // where no node changed (the levels above cannot change either).
  void update_summaries(uint64_t w0, uint64_t w1, bool stop_early) {
    uint64_t lo = w0, hi = w1;
    for (uint32_t level = 1; level <= l_.levels; ++level) {
      lo >>= kBitmapFanoutShift;
      hi >>= kBitmapFanoutShift;
      bool changed = false;
      for (uint64_t i = lo; i <= hi; ++i) {
        if (store(level, i, compute(level, i))) changed = true;
      }
      if (stop_early && !changed) return;
    }
  }

  // First block p >= from such that [p, p + n) is free, per the summaries and bitmap; kNone or kCorrupt.
  uint64_t find(uint64_t n, uint64_t from) const {
    if (from >= l_.total_blocks) return kNone;
    // Blocks below first_block are marked used, so a search from there may use the root summary.
    const uint64_t asked = from;
    if (from <= l_.first_block) from = 0;
    const bool whole = from == 0;
    if (whole && summary(l_.levels, 0).max < n) return kNone;
    uint64_t carry = 0;
    uint64_t r = descend(l_.levels, 0, whole, from, n, &carry);
    if (r == kNone && whole) r = kCorrupt;  // the root promised a run
    // Only a cleared metadata bit can yield a block below first_block: callers rely on r >= asked.
    if (r < kCorrupt && r < asked) return kCorrupt;
    return r;
  }

  // Searches the children of node idx of `level` (>= 1) left to right, entering only those that can hold
  // the run. `whole`: the node lies at or after from (else it holds from, and children before from are
  // skipped). *carry is the length of the free run (at or after from) that ends just below the current
  // child; it is carried across children and out of the node. Returns the first fit, kNone or kCorrupt.
  uint64_t descend(uint32_t level, uint64_t idx, bool whole, uint64_t from, uint64_t n, uint64_t* carry) const {
    const uint32_t child_shift = bitmap_span_shift(level - 1);
    const uint64_t child_span = uint64_t(1) << child_shift;
    uint64_t c = idx << kBitmapFanoutShift;
    const uint64_t c1 = min64(c + kFan, level_nodes(level - 1));
    if (!whole) c = from >> child_shift;  // the child holding from
    if (level == 1) {
      for (; c < c1; ++c) {
        const uint64_t lo = c << 6;
        uint64_t w = used_[c];
        if (lo < from) w |= low_mask(from - lo);  // blocks before from do not count (from - lo < 64 here)
        if (w == 0) {
          if (*carry + 64 >= n) return lo - *carry;
          *carry += 64;
          continue;
        }
        if (*carry + ctz64(w) >= n) return lo - *carry;
        if (n <= 64) {
          const uint64_t y = run_starts(~w, n);
          if (y != 0) return lo + ctz64(y);
        }
        *carry = clz64(w);
      }
      return kNone;
    }
    for (; c < c1; ++c) {
      const uint64_t lo = c << child_shift;
      const bool child_whole = lo >= from;
      if (child_whole) {
        const BitmapSummary s = summary(level - 1, c);
        if (*carry + s.start >= n) return lo - *carry;
        if (s.max < n) {
          *carry = s.start == child_span ? *carry + child_span : s.end;
          continue;
        }
      }
      const uint64_t r = descend(level - 1, c, child_whole, from, n, carry);
      // A whole child was entered because its summary promised a run of n inside it.
      if (r != kNone) return r;
      if (child_whole) return kCorrupt;
    }
    return kNone;
  }

  // First-fit search with alignment a (in blocks, a power of two).
  uint64_t search(uint64_t n, uint64_t a, uint64_t from) const {
    if (a == 1) return find(n, from);
    from = round_up(from, a);  // from <= total_blocks < 2^60: no wrap
    for (int i = 0; i < kAlignedCandidates; ++i) {
      const uint64_t q = find(n, from);
      if (q >= kCorrupt || q % a == 0) return q;
      from = round_up(q, a);
    }
    // A run of n + a - 1 blocks always holds an aligned run of n.
    const uint64_t q = find(n + a - 1, from);
    if (q == kCorrupt) return q;
    if (q != kNone) return round_up(q, a);
    // Only runs shorter than n + a - 1 remain: try each (from grows by at least a per step).
    for (;;) {
      const uint64_t r = find(n, from);
      if (r >= kCorrupt || r % a == 0) return r;
      from = round_up(r, a);
    }
  }

  // ---- check ----
  void check_header(CheckResult* r) const {
    BitmapHeader h;
    std::memcpy(&h, base_, sizeof h);
    if (h.region.magic != kRegionMagic) r->report("bitmap: bad magic");
    if (h.region.algorithm != static_cast<uint32_t>(Algorithm::bitmap)) r->report("bitmap: bad algorithm");
    if (h.region.version != kBitmapVersion) r->report("bitmap: bad version");
    if (h.region.size != l_.size) r->report("bitmap: size field changed");
    if (h.region.header_size != l_.header_size) r->report("bitmap: header_size field changed");
    if (h.block_size != l_.block_size || h.block_shift != l_.block_shift) r->report("bitmap: block size changed");
    if (h.fanout_shift != kBitmapFanoutShift) r->report("bitmap: fanout changed");
    if (h.total_blocks != l_.total_blocks || h.first_block != l_.first_block || h.words != l_.words) {
      r->report("bitmap: block counts changed");
    }
    if (h.used_offset != l_.used_offset || h.start_offset != l_.start_offset) r->report("bitmap: bitmap offsets changed");
    if (h.levels != l_.levels || h.reserved != 0) r->report("bitmap: level count changed");
    for (uint32_t k = 0; k < kBitmapMaxLevels; ++k) {
      uint64_t off = k < l_.levels ? l_.level_offset[k] : 0, cnt = k < l_.levels ? l_.level_count[k] : 0;
      if (h.level_offset[k] != off || h.level_count[k] != cnt) {
        r->report("bitmap: summary level geometry changed");
        break;
      }
    }
    if (h.region.counters.peak_used < h.region.counters.used) r->report("bitmap: peak_used below used");
  }

  void check_bitmaps(CheckResult* r) const {
    uint64_t used_blocks = 0, free_blocks = 0, starts = 0;
    uint64_t prev_top = 0;  // was the previous word's last block a used allocatable block
    for (uint64_t w = 0; w < l_.words; ++w) {
      const uint64_t b0 = w << 6;
      // Reserved blocks of this word: metadata (below first_block) and padding (from total_blocks on).
      uint64_t reserved = 0;
      if (b0 < l_.first_block) reserved |= low_mask(min64(l_.first_block - b0, 64));
      if (b0 + 64 > l_.total_blocks) reserved |= ~low_mask(l_.total_blocks > b0 ? l_.total_blocks - b0 : 0);
      const uint64_t u = used_[w], s = start_[w];
      if ((u & reserved) != reserved) r->report("bitmap: metadata or padding block not marked used");
      if ((s & reserved) != 0) r->report("bitmap: start bit on a metadata or padding block");
      const uint64_t data = ~reserved;
      const uint64_t uu = u & data, ss = s & data;
      if ((ss & ~uu) != 0) r->report("bitmap: start bit on a free block");
      const uint64_t run_begin = uu & ~((uu << 1) | prev_top);
      if ((run_begin & ~ss) != 0) r->report("bitmap: used run without a start bit");
      prev_top = uu >> 63;
      used_blocks += popcount64(uu);
      free_blocks += popcount64(~u & data);
      starts += popcount64(ss);
    }
    const BitmapHeader* h = header();
    if (free_blocks != h->free_blocks) r->report("bitmap: free block count disagrees with the bitmap");
    if (used_blocks << l_.block_shift != h->region.counters.used) r->report("bitmap: used counter disagrees with the bitmap");
    if (starts != h->region.counters.live) r->report("bitmap: live counter disagrees with the start bitmap");
  }

  void check_summaries(CheckResult* r) const {
    for (uint32_t level = 1; level <= l_.levels; ++level) {
      for (uint64_t i = 0; i < l_.level_count[level - 1]; ++i) {
        if (!stored_equals(level, i, compute(level, i))) r->report("bitmap: summary disagrees with the level below");
      }
    }
  }

  const Layout l_;  // validated geometry, process-local: never re-read from the region
  uint64_t* used_ = nullptr;
  uint64_t* start_ = nullptr;
  uint8_t* sums_[kBitmapMaxLevels] = {};  // summary level k+1: uint64_t[] if packed, else BitmapSummary[]
};

}  // namespace

Status bitmap_format(uint8_t* base, uint64_t size, const HeapOptions& options, std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  if (!valid_block_size(options.block_size)) return Status::invalid_argument;
  Layout l;
  if (!compute_layout(size, options.block_size, &l)) return Status::out_of_memory;
  auto heap = std::unique_ptr<BitmapHeap>(new (std::nothrow) BitmapHeap(base, size, l));
  if (!heap) return Status::out_of_memory;
  heap->format();
  *out = std::move(heap);
  return Status::ok;
}

Status bitmap_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  if (size < sizeof(BitmapHeader)) return Status::incompatible;
  BitmapHeader h;
  std::memcpy(&h, base, sizeof h);  // one snapshot: the region may change under us
  if (h.region.magic != kRegionMagic || h.region.algorithm != static_cast<uint32_t>(Algorithm::bitmap) ||
      h.region.version != kBitmapVersion || h.region.size != size) {
    return Status::incompatible;
  }
  Layout l;
  if (!valid_block_size(h.block_size) || !compute_layout(size, h.block_size, &l)) return Status::corrupted;
  bool ok = h.region.header_size == l.header_size && h.block_shift == l.block_shift &&
            h.fanout_shift == kBitmapFanoutShift && h.total_blocks == l.total_blocks &&
            h.first_block == l.first_block && h.words == l.words && h.used_offset == l.used_offset &&
            h.start_offset == l.start_offset && h.levels == l.levels && h.reserved == 0 &&
            h.free_blocks <= l.total_blocks - l.first_block;
  for (uint32_t k = 0; ok && k < kBitmapMaxLevels; ++k) {
    uint64_t off = k < l.levels ? l.level_offset[k] : 0, cnt = k < l.levels ? l.level_count[k] : 0;
    ok = h.level_offset[k] == off && h.level_count[k] == cnt;
  }
  if (!ok) return Status::corrupted;
  auto heap = std::unique_ptr<BitmapHeap>(new (std::nothrow) BitmapHeap(base, size, l));
  if (!heap) return Status::out_of_memory;
  *out = std::move(heap);
  return Status::ok;
}

uint64_t bitmap_min_region_size(const HeapOptions& options) {
  if (!valid_block_size(options.block_size)) return 0;
  const uint64_t bs = options.block_size;
  // Fixed point: the metadata grows with the region, so grow the candidate until it holds both.
  uint64_t size = round_up(sizeof(BitmapHeader), bs) + bs;
  for (int i = 0; i < 64; ++i) {
    Layout l;
    if (compute_layout(size, bs, &l)) return size;
    uint64_t next = size;
    if (l.meta_end <= size) {
      next = l.header_size + bs;  // the metadata fits; one block past it is missing
    } else {
      next = round_up(l.meta_end, max64(kMaxAlign, bs)) + bs;
    }
    if (next <= size) next = size + bs;
    size = next;
  }
  return 0;
}

}  // namespace mempool
