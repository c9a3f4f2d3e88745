// Bitmap heap: fixed-size blocks, a "used" and a "start" bitmap (the primary record), a tree of
// {start, max, end} summaries for large first-fit searches and a byte-max run index for small ones. See
// bitmap.h for the layout and for the store order that lets rebuild() repair a heap whose writer died.
// Every byte of metadata is out of band (bitmaps, tree, run index in the header area): a stray write through
// a view of a freed block (issue 15, item 6) can damage only data, and a shared segment never needs to heal.
#include "bitmap.h"

#include <atomic>
#include <cstring>
#include <new>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mempool {
namespace {

constexpr uint64_t kFan = uint64_t(1) << kBitmapFanoutShift;
constexpr uint64_t kRunFan = uint64_t(1) << kBitmapRunFanoutShift;  // bytes per run index group
// Requests of at most kSmall blocks use the run index; longer ones the summary tree. A free run of 127 blocks
// or more always contains a whole free bitmap word (a word's free tail and the next word's free head hold at
// most 63 + 63), so the tree only has to know runs that contain one.
constexpr uint64_t kSmall = kBitmapSmallRun;
static_assert(kSmall == 2 * 63, "the longest free run without a wholly free word is a 63-block tail + 63-block head");
static_assert(kSmall < 128, "run index bytes are compared eight or sixteen at a time as 7-bit lanes");
constexpr uint64_t kNone = UINT64_MAX;         // search found nothing
constexpr uint64_t kCorrupt = UINT64_MAX - 1;  // search met hints that disagree with the bitmap
// Before falling back to a search that guarantees an aligned fit, an aligned request looks at this many
// first-fit candidates (keeps aligned blocks low in the region).
constexpr int kAlignedCandidates = 8;
static_assert(kRunFan == 64, "run index groups are scanned as eight 64-bit loads");

inline uint64_t ctz64(uint64_t x) { return static_cast<uint64_t>(__builtin_ctzll(x)); }  // x != 0
inline uint64_t clz64(uint64_t x) { return static_cast<uint64_t>(__builtin_clzll(x)); }  // x != 0
inline uint64_t popcount64(uint64_t x) {
  // Portable bit count (no dependency on libgcc's __popcountdi2 when -mpopcnt is off).
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return (x * 0x0101010101010101ULL) >> 56;
}
inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
inline uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
// Bits [0, k) of a word, k in [0, 64].
inline uint64_t low_mask(uint64_t k) { return k >= 64 ? ~uint64_t(0) : (uint64_t(1) << k) - 1; }
// Bits [lo, hi) of a word, 0 <= lo <= hi <= 64.
inline uint64_t range_mask(uint64_t lo, uint64_t hi) { return low_mask(hi) & ~low_mask(lo); }

// Keeps the compiler from moving stores across it. A writer killed by a signal stops at an instruction
// boundary and every store it issued before that point reaches memory, so the region holds a prefix of its
// stores in program order; this barrier makes program order the source order where crash safety needs it.
inline void store_barrier() { std::atomic_signal_fence(std::memory_order_seq_cst); }

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
// 63 - tail); one iteration per free run (measured faster than a branch-free binary lifting).
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

// Free blocks at the low / high end of a used-bitmap word (1 = used).
inline uint64_t word_head(uint64_t w) { return w == 0 ? 64 : ctz64(w); }
inline uint64_t word_tail(uint64_t w) { return w == 0 ? 64 : clz64(w); }

// Run index value of word w (1 = used): the longest free run, capped at kSmall, that starts at one of its
// blocks. next is the following word (all used when there is none) and next_head the free blocks at the low
// end of the word after it (a run starting in w reaches at most that far).
inline uint64_t run_value(uint64_t w, uint64_t next, uint64_t next_head) {
  const uint64_t cont = next == 0 ? 64 + next_head : ctz64(next);  // free blocks after w
  if (w == 0) return min64(64 + cont, kSmall);
  const uint64_t head = ctz64(w), tail = clz64(w);
  uint64_t best = max64(head, tail == 0 ? 0 : tail + cont);
  // Runs strictly inside the word are at most 62 - head - tail long: skip them when they cannot win.
  if (head + tail + 2 < 64 && 62 - head - tail > best) best = max64(best, longest_inner_run(w, head, tail));
  return min64(best, kSmall);
}

// Eight run index bytes at a time. Valid bytes are <= kSmall (< 128); bytes from 128 up (a scribbled index) give
// arbitrary answers but never a borrow across bytes, and every answer is verified against the bitmap.
#if !defined(__SSE2__)  // the portable path of group_ge_mask
constexpr uint64_t kLanes = 0x0101010101010101ULL;
constexpr uint64_t kHigh = 0x8080808080808080ULL;
inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
// High bit of every byte of x that is >= n, n in [1, 127]: byte + 128 - n never borrows.
inline uint64_t bytes_ge(uint64_t x, uint64_t n) { return ((x | kHigh) - n * kLanes) & kHigh; }
#endif
// Bit i set when byte i of the 64-byte group g is >= n: eight lanes at a time, their high bits gathered
// into one byte by a multiply (bit 8i moves to 56 + i; no two partial products meet, so nothing carries).
inline uint64_t group_ge_mask(const uint8_t* g, uint64_t n) {
#if defined(__SSE2__)
  // The same with 16 lanes at a time: max(x, n) == x exactly where x >= n (unsigned bytes).
  const __m128i nv = _mm_set1_epi8(static_cast<char>(n));
  uint64_t mask = 0;
  for (int q = 0; q < 4; ++q) {
    const __m128i x = _mm_load_si128(reinterpret_cast<const __m128i*>(g + 16 * q));  // groups are 64-aligned
    const int bits = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(x, nv), x));
    mask |= static_cast<uint64_t>(static_cast<uint32_t>(bits) & 0xffffu) << (16 * q);
  }
  return mask;
#else
  uint64_t mask = 0;
  for (int q = 0; q < 8; ++q) {
    const uint64_t lanes = bytes_ge(load64(g + 8 * q), n) >> 7;
    mask |= ((lanes * 0x0102040810204080ULL) >> 56) << (8 * q);
  }
  return mask;
#endif
}
// Maximum of a 64-byte run index group, capped at kSmall. A plain loop: compilers turn it into a handful of
// byte-max vector instructions.
inline uint64_t group_max(const uint8_t* g) {
  uint8_t m = 0;
  for (int i = 0; i < 64; ++i) m = g[i] > m ? g[i] : m;
  return min64(m, kSmall);
}

// One of the two interleaved bitmaps: word w is p[2w] (bitmap.h).
struct BitWords {
  uint64_t* p = nullptr;
  uint64_t& operator[](uint64_t w) const { return p[2 * w]; }
};

inline bool same(const BitmapSummary& a, const BitmapSummary& b) {
  return a.start == b.start && a.max == b.max && a.end == b.end;
}

// The geometry of a region, recomputed from (size, block_size) alone.
struct Layout {
  uint64_t size = 0;
  uint64_t block_size = 0;
  uint32_t block_shift = 0;
  uint32_t levels = 0;
  uint32_t run_levels = 0;
  uint64_t total_blocks = 0;
  uint64_t first_block = 0;
  uint64_t words = 0;
  uint64_t used_offset = 0;
  uint64_t start_offset = 0;
  uint64_t level_offset[kBitmapMaxLevels] = {};
  uint64_t level_count[kBitmapMaxLevels] = {};
  uint64_t run_offset[kBitmapMaxRunLevels] = {};
  uint64_t run_count[kBitmapMaxRunLevels] = {};
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
  // The two bitmaps interleaved: word w of the used bitmap at used_offset + 16w, of the start bitmap 8
  // bytes after it, so that an operation finds both words of a block in one cache line (and one page).
  uint64_t off = round_up(sizeof(BitmapHeader), 64);
  l->used_offset = off;
  l->start_offset = off + 8;
  off += l->words * 16;
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
  // Run index: level 0 has a byte per word, each level above a byte per 64 below; every level is stored
  // 64-aligned and rounded up to whole 64-byte groups (zero padding) so that a group is read in one piece.
  off = round_up(off, 64);
  count = l->words;
  uint32_t run_levels = 0;
  for (;;) {
    if (run_levels >= kBitmapMaxRunLevels) return false;
    l->run_offset[run_levels] = off;
    l->run_count[run_levels] = count;
    off += round_up(count, kRunFan);
    ++run_levels;
    if (count == 1) break;
    count = (count + kRunFan - 1) >> kBitmapRunFanoutShift;
  }
  l->run_levels = run_levels;
  l->meta_end = off;
  if (off > size) return false;
  uint64_t unit = max64(kMaxAlign, block_size);
  if (off > UINT64_MAX - unit) return false;
  l->header_size = round_up(off, unit);
  l->first_block = l->header_size >> l->block_shift;
  return l->first_block < l->total_blocks;
}

// Whether a header's geometry fields (all but magic, algorithm, version, size and the counters) are those
// of layout l.
bool geometry_matches(const BitmapHeader& h, const Layout& l) {
  bool ok = h.region.header_size == l.header_size && h.block_size == l.block_size &&
            h.block_shift == l.block_shift && h.fanout_shift == kBitmapFanoutShift &&
            h.total_blocks == l.total_blocks && h.first_block == l.first_block && h.words == l.words &&
            h.used_offset == l.used_offset && h.start_offset == l.start_offset && h.levels == l.levels &&
            h.reserved == 0 && h.run_levels == l.run_levels && h.run_fanout_shift == kBitmapRunFanoutShift;
  for (uint32_t k = 0; ok && k < kBitmapMaxLevels; ++k) {
    uint64_t off = k < l.levels ? l.level_offset[k] : 0, cnt = k < l.levels ? l.level_count[k] : 0;
    ok = h.level_offset[k] == off && h.level_count[k] == cnt;
  }
  for (uint32_t k = 0; ok && k < kBitmapMaxRunLevels; ++k) {
    uint64_t off = k < l.run_levels ? l.run_offset[k] : 0, cnt = k < l.run_levels ? l.run_count[k] : 0;
    ok = h.run_offset[k] == off && h.run_count[k] == cnt;
  }
  return ok;
}

class BitmapHeap final : public Heap {
 public:
  BitmapHeap(uint8_t* base, uint64_t size, const Layout& l) : Heap(base, size), l_(l) {
    used_.p = reinterpret_cast<uint64_t*>(base + l.used_offset);
    start_.p = reinterpret_cast<uint64_t*>(base + l.start_offset);
    for (uint32_t k = 0; k < l.levels; ++k) sums_[k] = base + l.level_offset[k];
    for (uint32_t k = 0; k < l.run_levels; ++k) runs_[k] = base + l.run_offset[k];
  }

  Algorithm algorithm() const override { return Algorithm::bitmap; }

  // Writes a fresh header, bitmaps, summaries and run index.
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
    h->levels = l_.levels;
    for (uint32_t k = 0; k < l_.levels; ++k) {
      h->level_offset[k] = l_.level_offset[k];
      h->level_count[k] = l_.level_count[k];
    }
    h->run_levels = l_.run_levels;
    h->run_fanout_shift = kBitmapRunFanoutShift;
    for (uint32_t k = 0; k < l_.run_levels; ++k) {
      h->run_offset[k] = l_.run_offset[k];
      h->run_count[k] = l_.run_count[k];
    }
    set_range(used_, 0, l_.first_block);
    set_range(used_, l_.total_blocks, l_.words * 64);
    rebuild_derived();
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
    // The hints only pointed here: verify the run against the bitmaps before taking it.
    if (p < l_.first_block || p > l_.total_blocks || n > l_.total_blocks - p || (p & (a - 1)) != 0 ||
        !range_clear(used_, p, p + n) || !range_clear(start_, p, p + n)) {
      return Status::corrupted;
    }
    const uint64_t w0 = p >> 6, w1 = (p + n - 1) >> 6;
    const uint64_t old0 = used_[w0], old1 = used_[w1];
    // Word w0's run index byte only changes when the run being cut was its longest.
    const uint64_t r0 = runs_[0][w0];
    const bool keep0 = r0 > run_through(p) && r0 <= kSmall;
    // Primary record: the start bit while the block is still free, then the used bits (bitmap.h).
    set_bit(start_, p);
    store_barrier();
    set_range(used_, p, p + n);
    store_barrier();
    update_derived(w0, w1, old0, old1, keep0 ? r0 : kNone);
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
    const uint64_t w0 = p >> 6, w1 = (p + n - 1) >> 6;
    const uint64_t old0 = used_[w0], old1 = used_[w1];
    // Primary record: the used bits, then the start bit once its block is free (bitmap.h).
    clear_range(used_, p, p + n);
    store_barrier();
    clear_bit(start_, p);
    store_barrier();
    // Freeing only merges runs: word w0's byte becomes the longer of its old value and the merged run.
    update_derived(w0, w1, old0, old1, max64(min64(runs_[0][w0], kSmall), run_through(p)));
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
    if (m < n) {
      // Only used bits change; the start bit stays. A prefix of these stores is a smaller allocation
      // followed, at worst, by an orphan run.
      const uint64_t w0 = (p + m) >> 6, w1 = (p + n - 1) >> 6;
      const uint64_t old0 = used_[w0], old1 = used_[w1];
      clear_range(used_, p + m, p + n);
      store_barrier();
      update_derived(w0, w1, old0, old1, kNone);
      h->free_blocks += n - m;
      count_resize(n << l_.block_shift, m << l_.block_shift);
      return Status::ok;
    }
    // Grow: every block in [p + n, p + m) must be a free allocatable block.
    if (m > l_.total_blocks - p || !range_clear(used_, p + n, p + m)) return Status::out_of_memory;
    if (!range_clear(start_, p + n, p + m)) return Status::corrupted;
    const uint64_t w0 = (p + n) >> 6, w1 = (p + m - 1) >> 6;
    const uint64_t old0 = used_[w0], old1 = used_[w1];
    set_range(used_, p + n, p + m);
    store_barrier();
    update_derived(w0, w1, old0, old1, kNone);
    h->free_blocks = h->free_blocks >= m - n ? h->free_blocks - (m - n) : 0;
    count_resize(n << l_.block_shift, m << l_.block_shift);
    return Status::ok;
  }

  Status usable_size(uint64_t offset, uint64_t* size) const override {
    uint64_t p = 0, n = 0;
    Status s = locate(offset, &p, &n);
    if (s != Status::ok) return s;
    *size = n << l_.block_shift;
    return Status::ok;
  }

  // O(1): free comes from the header's free-block count, largest_free_block from the roots (the summary
  // tree's knows every run that contains a whole free word, so every run of kSmall + 1 blocks or more, the
  // run index's every run up to kSmall blocks; with the default alignment any run start is good enough).
  void stats(HeapStats* out) const override {
    fill_counter_stats(out);
    const uint64_t alloc_blocks = l_.total_blocks - l_.first_block;
    const uint64_t free_blocks = min64(header()->free_blocks, alloc_blocks);
    out->free = free_blocks << l_.block_shift;
    if (out->used > size_) out->used = size_;  // counters are shared memory: keep the identity intact
    if (out->free > size_ - out->used) out->free = size_ - out->used;
    out->overhead = size_ - out->used - out->free;
    const BitmapSummary root = summary(l_.levels, 0);
    const uint64_t run_root = min64(runs_[l_.run_levels - 1][0], kSmall);
    uint64_t largest = min64(min64(max64(root.max, run_root), alloc_blocks) << l_.block_shift, out->free);
    out->largest_free_block = min64(largest, round_down(kMaxRequest, l_.block_size));
  }

  void check(CheckResult* result) const override {
    check_header(result);
    check_bitmaps(result);
    check_summaries(result);
    check_index(result);
  }

  // The primary record (used and start bitmaps) is normalised: metadata and padding blocks marked used
  // without start bits, start bits on free blocks cleared, orphan used runs (no start bit where they begin)
  // freed. Then every derived structure is recomputed: summary tree, run index, free_blocks, counters.used
  // and counters.live (peak_used is raised to used if below; allocations, frees, failed are kept).
  Status rebuild() override {
    BitmapHeader h;
    std::memcpy(&h, base_, sizeof h);
    if (h.region.magic != kRegionMagic || h.region.algorithm != static_cast<uint32_t>(Algorithm::bitmap) ||
        h.region.version != kBitmapVersion || h.region.size != l_.size || !geometry_matches(h, l_)) {
      return Status::corrupted;
    }
    normalise_bitmaps();
    rebuild_derived();
    return Status::ok;
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
  static bool test_bit(BitWords bm, uint64_t b) { return ((bm[b >> 6] >> (b & 63)) & 1) != 0; }
  static void set_bit(BitWords bm, uint64_t b) { bm[b >> 6] |= uint64_t(1) << (b & 63); }
  static void clear_bit(BitWords bm, uint64_t b) { bm[b >> 6] &= ~(uint64_t(1) << (b & 63)); }

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
  static void set_range(BitWords bm, uint64_t b0, uint64_t b1) {
    for_range(b0, b1, [bm](uint64_t w, uint64_t m) { bm[w] |= m; });
  }
  static void clear_range(BitWords bm, uint64_t b0, uint64_t b1) {
    for_range(b0, b1, [bm](uint64_t w, uint64_t m) { bm[w] &= ~m; });
  }
  static bool range_clear(BitWords bm, uint64_t b0, uint64_t b1) {
    bool clear = true;
    for_range(b0, b1, [bm, &clear](uint64_t w, uint64_t m) {
      if ((bm[w] & m) != 0) clear = false;
    });
    return clear;
  }

  // Metadata (below first_block) and padding (from total_blocks on) blocks of word w.
  uint64_t reserved_mask(uint64_t w) const {
    const uint64_t b0 = w << 6;
    uint64_t reserved = 0;
    if (b0 < l_.first_block) reserved |= low_mask(min64(l_.first_block - b0, 64));
    if (b0 + 64 > l_.total_blocks) reserved |= ~low_mask(l_.total_blocks > b0 ? l_.total_blocks - b0 : 0);
    return reserved;
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

  // ---- derived structures ----
  // After the used bits of words [w0, w1] changed (old0, old1: the former values of words w0 and w1):
  // brings the run index and, when the change is visible to it, the summary tree up to date. v0 is word
  // w0's new run index value when the caller knows it, else kNone.
  void update_derived(uint64_t w0, uint64_t w1, uint64_t old0, uint64_t old1, uint64_t v0) {
    const uint64_t now0 = used_[w0];
    index_update(w0, w1, word_head(old0) != word_head(now0), v0);
    if (w1 - w0 >= 2 || tree_affected(w0, old0, now0) || (w1 != w0 && tree_affected(w1, old1, used_[w1]))) {
      update_summaries(w0, w1, true);
    }
  }

  // Whether word w changing from old to now (its neighbours already final) can change its level 1 node.
  // The node depends on which words are wholly free, on the head of a word that follows a free word or
  // opens the node, and on the tail of a word that precedes a free word or closes the node.
  bool tree_affected(uint64_t w, uint64_t old, uint64_t now) const {
    if (old == now) return false;
    if ((old == 0) != (now == 0)) return true;
    const bool head_counts = (w & (kFan - 1)) == 0 || used_[w - 1] == 0;
    const bool tail_counts = (w & (kFan - 1)) == kFan - 1 || w + 1 == l_.words || used_[w + 1] == 0;
    return (head_counts && ctz64(old) != ctz64(now)) || (tail_counts && clz64(old) != clz64(now));
  }

  // Recomputes everything derived from the bitmaps (format and rebuild).
  void rebuild_derived() {
    update_summaries(0, l_.words - 1, /*stop_early=*/false);
    index_build();
    uint64_t used_blocks = 0, free_blocks = 0, starts = 0;
    for (uint64_t w = 0; w < l_.words; ++w) {
      const uint64_t data = ~reserved_mask(w);
      used_blocks += popcount64(used_[w] & data);
      free_blocks += popcount64(~used_[w] & data);
      starts += popcount64(start_[w] & data);
    }
    BitmapHeader* h = header();
    h->free_blocks = free_blocks;
    HeapCounters& c = h->region.counters;
    c.used = used_blocks << l_.block_shift;
    c.live = starts;
    if (c.peak_used < c.used) c.peak_used = c.used;
  }

  // Makes the bitmaps a valid record: reserved blocks used and without start bits, start bits only on used
  // blocks, and every used run split by start bits into allocations (a used run whose first block has no
  // start bit is an orphan left by a writer that died: it is freed). One pass, word by word.
  void normalise_bitmaps() {
    int state = 0;  // the block before word w: 0 free or reserved, 1 in an allocation, 2 in an orphan run
    for (uint64_t w = 0; w < l_.words; ++w) {
      const uint64_t reserved = reserved_mask(w);
      const uint64_t u = used_[w] & ~reserved;
      const uint64_t s = start_[w] & u;
      const uint64_t stops = s | ~u;              // blocks where a run's owner changes or the run ends
      uint64_t begins = u & ~s & ~(u << 1);       // used blocks without a start bit after a free block
      if (state == 1) begins &= ~uint64_t(1);     // bit 0 continues the previous word's allocation
      uint64_t orphan = 0;
      while (begins != 0) {
        const uint64_t b = ctz64(begins);
        const uint64_t after = stops & ~low_mask(b + 1);
        const uint64_t e = after == 0 ? 64 : ctz64(after);
        orphan |= range_mask(b, e);
        begins &= ~low_mask(e);
      }
      state = (u >> 63) == 0 ? 0 : (orphan >> 63) != 0 ? 2 : 1;
      // Stray start bits sit on free (or reserved) blocks, orphan used bits carry no start bit: either
      // store keeps the rule of bitmap.h, so a rebuild that dies half-way can simply be run again.
      if (start_[w] != s) start_[w] = s;
      const uint64_t nu = (u & ~orphan) | reserved;
      if (used_[w] != nu) used_[w] = nu;
    }
  }

  // ---- run index ----
  // Run index value of word w, from words w, w + 1 and w + 2.
  uint64_t run_value_at(uint64_t w) const {
    if (w + 1 >= l_.words) return run_value(used_[w], ~uint64_t(0), 0);
    const uint64_t next = used_[w + 1];
    return run_value(used_[w], next, next == 0 && w + 2 < l_.words ? word_head(used_[w + 2]) : 0);
  }

  // Length, capped at kSmall, of the free run through the free block p, counted from where it enters p's
  // word: what the run contributes to that word's run index byte.
  uint64_t run_through(uint64_t p) const {
    const uint64_t w = p >> 6, u = used_[w], low = low_mask(p & 63);
    const uint64_t below = u & low, above = u & ~low;  // block p itself is free
    const uint64_t begin = below == 0 ? 0 : 64 - clz64(below);
    uint64_t end = 64;
    if (above != 0) {
      end = ctz64(above);
    } else if (w + 1 < l_.words) {
      const uint64_t next = used_[w + 1];
      end += word_head(next);
      if (next == 0 && w + 2 < l_.words) end += word_head(used_[w + 2]);
    }
    return min64(end - begin, kSmall);
  }

  // Recomputes the run index bytes of words [w0, w1], and of the two words before when the head of word w0
  // changed (a word's byte depends on the heads of the next two).
  void index_update(uint64_t w0, uint64_t w1, bool head_changed, uint64_t v0) {
    // Word w0 - 1 sees word w0 only through its free tail, word w0 - 2 only through a wholly free w0 - 1.
    uint64_t lo = w0;
    if (head_changed && w0 > 0 && (used_[w0 - 1] >> 63) == 0) {
      lo = w0 - 1;
      if (used_[w0 - 1] == 0 && w0 >= 2 && (used_[w0 - 2] >> 63) == 0) lo = w0 - 2;
    }
    if (w1 - lo < 4) {
      for (uint64_t w = lo; w <= w1; ++w) index_set(w, w == w0 && v0 != kNone ? v0 : run_value_at(w));
      return;
    }
    // A long range: all of level 0 first (its inner words are wholly used or wholly free), then each group
    // above once per level.
    for (uint64_t w = lo; w <= w1; ++w) {
      const uint64_t u = used_[w];
      uint64_t v;
      if (u == ~uint64_t(0)) {
        v = 0;
      } else if (u == 0 && w + 1 < l_.words && used_[w + 1] == 0) {
        v = kSmall;  // 128 free blocks from this word on
      } else {
        v = run_value_at(w);
      }
      runs_[0][w] = static_cast<uint8_t>(v);
    }
    uint64_t a = lo, b = w1;
    for (uint32_t k = 1; k < l_.run_levels; ++k) {
      a >>= kBitmapRunFanoutShift;
      b >>= kBitmapRunFanoutShift;
      bool changed = false;
      for (uint64_t i = a; i <= b; ++i) {
        const uint8_t v = static_cast<uint8_t>(group_max(runs_[k - 1] + (i << kBitmapRunFanoutShift)));
        if (runs_[k][i] != v) {
          runs_[k][i] = v;
          changed = true;
        }
      }
      if (!changed) return;
    }
  }

  // Sets level 0 byte i to v and keeps every level above the maximum of its group, going up only while a
  // maximum changes.
  void index_set(uint64_t i, uint64_t v) {
    uint64_t o = runs_[0][i];
    for (uint32_t k = 0;; ++k) {
      if (v == o) return;
      runs_[k][i] = static_cast<uint8_t>(v);
      if (k + 1 >= l_.run_levels) return;
      const uint64_t pi = i >> kBitmapRunFanoutShift;
      const uint64_t parent = runs_[k + 1][pi];
      uint64_t np;
      if (v > o) {
        if (v <= parent) return;
        np = v;
      } else {
        if (o < parent) return;  // another byte of the group holds the maximum
        np = group_max(runs_[k] + (pi << kBitmapRunFanoutShift));
        if (np == parent) return;
      }
      o = parent;
      v = np;
      i = pi;
    }
  }

  void index_build() {
    for (uint64_t w = 0; w < l_.words; ++w) runs_[0][w] = static_cast<uint8_t>(run_value_at(w));
    for (uint32_t k = 0; k < l_.run_levels; ++k) {
      const uint64_t count = l_.run_count[k];
      std::memset(runs_[k] + count, 0, round_up(count, kRunFan) - count);
      if (k == 0) continue;
      for (uint64_t i = 0; i < count; ++i) {
        runs_[k][i] = static_cast<uint8_t>(group_max(runs_[k - 1] + (i << kBitmapRunFanoutShift)));
      }
    }
  }

  // First index j in [i, end of i's 64-byte group) of run index level k whose byte is >= n, or kNone.
  uint64_t scan_group(uint32_t k, uint64_t i, uint64_t n) const {
    const uint64_t g = i & ~(kRunFan - 1);
    const uint64_t m = group_ge_mask(runs_[k] + g, n) & ~low_mask(i & (kRunFan - 1));
    if (m == 0) return kNone;
    const uint64_t j = g + ctz64(m);
    return j < l_.run_count[k] ? j : kNone;  // padding bytes are 0: one that claims a run was scribbled on
  }

  // First word >= i whose run index byte is >= n (n in [1, kSmall]): up through the levels until a group holds
  // one, then down. At most two group scans per level. kNone or kCorrupt.
  uint64_t index_next(uint64_t i, uint64_t n) const {
    uint32_t k = 0;
    uint64_t j = kNone;
    for (;;) {
      // The group's own byte one level up tells whether scanning it can succeed (i < count: that byte is
      // inside level k + 1).
      if (i < l_.run_count[k] &&
          (k + 1 >= l_.run_levels || runs_[k + 1][i >> kBitmapRunFanoutShift] >= n)) {
        j = scan_group(k, i, n);
      }
      if (j != kNone) break;
      if (k + 1 >= l_.run_levels) return kNone;
      i = (i >> kBitmapRunFanoutShift) + 1;
      ++k;
    }
    while (k > 0) {
      --k;
      j = scan_group(k, j << kBitmapRunFanoutShift, n);
      if (j == kNone) return kCorrupt;  // the level above promised a run
    }
    return j;
  }

  // First block q >= (w << 6) + lo with [q, q + n) free and q in word w (n <= kSmall, so the run may reach
  // into words w + 1 and w + 2 but no further), or kNone.
  uint64_t fit_in_word(uint64_t w, uint64_t n, uint64_t lo) const {
    const uint64_t x = used_[w] | low_mask(lo);
    if (n <= 64) {
      const uint64_t y = run_starts(~x, n);
      if (y != 0) return (w << 6) + ctz64(y);
    }
    if ((x >> 63) != 0) return kNone;  // no free tail (x != 0: at least bit 63 is free)
    const uint64_t tail = x == 0 ? 64 : clz64(x);
    uint64_t run = tail;
    if (w + 1 < l_.words) {
      const uint64_t next = used_[w + 1];
      run += word_head(next);
      if (next == 0 && w + 2 < l_.words) run += word_head(used_[w + 2]);
    }
    return run >= n ? (w << 6) + 64 - tail : kNone;
  }

  // First fit for n <= kSmall blocks at or after from: the word holding from, then the run index.
  uint64_t find_small(uint64_t n, uint64_t from) const {
    if (from >= l_.total_blocks) return kNone;
    if (from < l_.first_block) from = l_.first_block;
    const uint64_t w = from >> 6;
    uint64_t p = fit_in_word(w, n, from & 63);
    if (p != kNone) return p;
    const uint64_t c = index_next(w + 1, n);
    if (c >= kCorrupt) return c;
    p = fit_in_word(c, n, 0);
    return p == kNone ? kCorrupt : p;  // the index promised a run in word c
  }

  // ---- summary tree ----
  // Level 0 is the used bitmap itself (a node = one word of 64 blocks); level k in [1, levels] is stored.
  uint64_t level_nodes(uint32_t level) const { return level == 0 ? l_.words : l_.level_count[level - 1]; }

  static uint64_t pack(const BitmapSummary& s) {
    return s.start | (s.max << kBitmapPackedBits) | (s.end << (2 * kBitmapPackedBits));
  }
  uint64_t* packed(uint32_t level) const { return reinterpret_cast<uint64_t*>(sums_[level - 1]); }
  BitmapSummary* wide(uint32_t level) const { return reinterpret_cast<BitmapSummary*>(sums_[level - 1]); }

  // A node's summary, with values clamped to the node's span (the region may have been scribbled on).
  BitmapSummary summary(uint32_t level, uint64_t idx) const {
    if (level == 0) {
      const uint64_t w = used_[idx];
      return {word_head(w), w == 0 ? uint64_t(64) : uint64_t(0), word_tail(w)};  // a run inside a word is never long
    }
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

  // Recomputes a level >= 1 node from its children: {start, max, end} where max only counts runs that
  // contain a whole free word (the tree serves requests of more than kSmall blocks, all such runs).
  BitmapSummary compute(uint32_t level, uint64_t idx) const {
    const uint64_t c0 = idx << kBitmapFanoutShift;
    const uint64_t c1 = min64(c0 + kFan, level_nodes(level - 1));
    uint64_t start = 0, best = 0, run = 0;
    bool prefix = true;
    // A run counts towards max only when it contains a whole free word, which a carried run or a start of
    // at least 64 blocks does (a partial head or tail holds at most 63).
    if (level == 1) {
      for (uint64_t c = c0; c < c1; ++c) {
        const uint64_t w = used_[c];
        if (w == 0) {
          if (prefix) start += 64;
          run += 64;
          continue;
        }
        const uint64_t head = ctz64(w);
        if (prefix) {
          start += head;
          prefix = false;
        }
        if (run >= 64) best = max64(best, run + head);
        run = clz64(w);
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
        best = max64(best, s.max);
        if (run >= 64 || s.start >= 64) best = max64(best, run + s.start);
        run = full ? run + child_span : s.end;
      }
    }
    return {start, run >= 64 ? max64(best, run) : best, run};
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

  // First block p >= from such that [p, p + n) is free, n > kSmall, per the summaries and bitmap; kNone or
  // kCorrupt. Every such run contains a whole free word, so the tree is exact for it.
  uint64_t find_large(uint64_t n, uint64_t from) const {
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
        if (*carry + ctz64(w) >= n) return lo - *carry;  // n > kSmall: no run inside one word can hold it
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

  // First block p >= from such that [p, p + n) is free; kNone or kCorrupt.
  uint64_t find(uint64_t n, uint64_t from) const { return n <= kSmall ? find_small(n, from) : find_large(n, from); }

  // First-fit search with alignment a (in blocks, a power of two).
  uint64_t search(uint64_t n, uint64_t a, uint64_t from) const {
    if (a == 1) return find(n, from);
    from = round_up(from, a);  // from <= total_blocks < 2^60: no wrap
    for (int i = 0; i < kAlignedCandidates; ++i) {
      const uint64_t q = find(n, from);
      if (q >= kCorrupt || (q & (a - 1)) == 0) return q;
      from = round_up(q, a);
    }
    // A run of n + a - 1 blocks always holds an aligned run of n.
    const uint64_t q = find(n + a - 1, from);
    if (q == kCorrupt) return q;
    if (q != kNone) return round_up(q, a);
    // Only runs shorter than n + a - 1 remain: try each (from grows by at least a per step).
    for (;;) {
      const uint64_t r = find(n, from);
      if (r >= kCorrupt || (r & (a - 1)) == 0) return r;
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
    if (h.run_levels != l_.run_levels || h.run_fanout_shift != kBitmapRunFanoutShift) {
      r->report("bitmap: run index level count changed");
    }
    if (!geometry_matches(h, l_)) r->report("bitmap: summary or run index geometry changed");
    if (h.region.counters.peak_used < h.region.counters.used) r->report("bitmap: peak_used below used");
  }

  void check_bitmaps(CheckResult* r) const {
    uint64_t used_blocks = 0, free_blocks = 0, starts = 0;
    uint64_t prev_top = 0;  // was the previous word's last block a used allocatable block
    for (uint64_t w = 0; w < l_.words; ++w) {
      const uint64_t reserved = reserved_mask(w);
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

  void check_index(CheckResult* r) const {
    for (uint64_t w = 0; w < l_.words; ++w) {
      if (runs_[0][w] != run_value_at(w)) r->report("bitmap: run index disagrees with the bitmap");
    }
    for (uint32_t k = 0; k < l_.run_levels; ++k) {
      const uint64_t count = l_.run_count[k];
      for (uint64_t i = count; i < round_up(count, kRunFan); ++i) {
        if (runs_[k][i] != 0) r->report("bitmap: run index padding is not zero");
      }
      if (k == 0) continue;
      for (uint64_t i = 0; i < count; ++i) {
        if (runs_[k][i] != group_max(runs_[k - 1] + (i << kBitmapRunFanoutShift))) {
          r->report("bitmap: run index disagrees with the level below");
        }
      }
    }
  }

  const Layout l_;  // validated geometry, process-local: never re-read from the region
  BitWords used_;   // the used bitmap (interleaved with the start bitmap)
  BitWords start_;  // the start bitmap
  uint8_t* sums_[kBitmapMaxLevels] = {};     // summary level k+1: uint64_t[] if packed, else BitmapSummary[]
  uint8_t* runs_[kBitmapMaxRunLevels] = {};  // run index level k: bytes
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
  const bool ok = geometry_matches(h, l) && h.free_blocks <= l.total_blocks - l.first_block;
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
