// Binary buddy heap. See buddy.h for the region layout.
//
// Design notes
//
// * Origin. Buddies are computed relative to the start of the managed area ("rel" offsets below), which
//   is a multiple of 4096 from base (itself kMaxAlign-aligned). A block of order o starts at a rel offset
//   that is a multiple of 2^o, so its address is aligned to min(2^o, 4096) -- enough for every alignment
//   the interface accepts (<= kMaxAlign), and an alignment request simply raises the order:
//   order = max(ceil_log2(size), log2(align), min_order).
//
// * Top-level blocks. The managed area (a multiple of min_block, not necessarily a power of two) is
//   carved into maximal naturally aligned power-of-two blocks of at most max_block: floor(area/max_block)
//   blocks of max_block, then one block per set bit of the remainder, in descending size. Every
//   top-level block of order o < max_order has its buddy (the upper one) running past the end of the
//   area, so the bounds check on the buddy (rel ^ 2^o) + 2^o <= area_size is what stops coalescing at
//   the top level; max_order caps it otherwise.
//
// * Side table. One byte per min_block unit: kStart | (kUsed) | order for the first unit of every block,
//   0 for every other unit. Merging clears the upper buddy's byte, splitting sets it (in the order that
//   "Crash consistency" below prescribes). So the table tiles the area exactly, free(offset) knows the
//   block's order without trusting the caller, and a stale or interior offset is recognised in
//   O(orders): the block containing rel is the first unit rel & ~(2^k - 1), k = min_order + 1 ..
//   max_order, whose byte is a start of order >= k. An offset inside a free block is reported as
//   double_free (it is an allocation that was freed and coalesced, or at least not live); inside a live
//   block but not at its start, as foreign.
//
// * Free lists. One doubly linked list per order, links stored in the free blocks as region offsets
//   (0 = none), heads in the state block; a 64-bit mask of non-empty orders makes the search for a
//   larger block O(1). Every link is validated before it is followed or written through: in the area,
//   aligned to the list's order, fitting in the area, and marked "free start of that order" in the side
//   table; unlinking also checks the neighbours' back links. A failed check returns corrupted.
//
// * Guard words. key_lo just before the state block (after the header) and key_hi just before the
//   managed area: constants mixed with the region size. Checked by check(), alloc(), free(),
//   resize_in_place() and usable_size() (two loads); a mismatch returns corrupted before any change.
//
// * Hint. When a hint points inside the managed area (past its first byte), alloc() scans the first
//   kHintScan entries of every non-empty free list of order >= the request's order (smallest order
//   first) for the block that can place the request at the lowest position >= hint: a block that starts
//   at/after the hint, or one that contains the hint with room for an aligned order-k sub-block after it.
//   Ties go to the smaller order; the scan stops as soon as the position equals the hint rounded up to
//   the block size. The chosen block is split keeping the halves that lead to that position (the others
//   go back to the free lists). Otherwise (no hint, hint at/before the area start or past its end, or no
//   candidate within the bound) the normal choice is made: the head of the smallest non-empty order that
//   fits. Cost with a hint: at most kHintScan * (number of orders) validated list reads.
//
// * Crash consistency. The side table is the primary record; everything else (free lists and their
//   links inside free blocks, the non-empty mask, free_bytes, counters.used and counters.live) is derived
//   from it and rebuilt by rebuild() after a writer died holding a shared segment's lock (EOWNERDEAD).
//   Invariant, true after EVERY single store of every operation (format excepted):
//
//     the walk "pos = 0; read the start byte at pos; pos += its block size" meets only valid start
//     bytes (order in range, naturally aligned, inside the area) and ends exactly at area_size; the
//     bytes it skips (block interiors) may hold stale values, which mean nothing; a live block the
//     operation does not own is never covered by another block or marked free.
//
//   Every side-table store is volatile (set_tag), so the compiler keeps them in program order, and a
//   kill lands between two instructions, so what a dead process leaves in the table is a prefix of its
//   stores. The stores that change the tiling go through commit_tag() (the same store, named):
//     - alloc (split an order-j free block at rel down to the order-k block at target): first the start
//       bytes of the spares (free, orders k..j-1) and of target (used, k), all interior to the order-j
//       block while rel still says j; then ONE commit of rel (used k, or free of the lowest spare's
//       order). Killed before it: the whole block is still free; after it: the allocation exists (leaked).
//     - free (the used order-o block at rel): per merge level, the buddy is unlinked (derived), then the
//       pair's lower byte is rewritten to free of the merged order (the upper block becomes interior; at
//       the first level this store is what frees the block), then the upper byte is cleared. Finally
//       rel's byte is written free (the store that frees the block when nothing merged; a rewrite of the
//       same value otherwise). Killed between levels: free buddies are left apart (rebuild merges them).
//     - resize_in_place shrink (order o -> k): first the start bytes of the released upper halves (free,
//       orders k..o-1), interior while rel says o; then ONE commit of rel = used k.
//     - resize_in_place grow (order o -> k): the buddies are unlinked (derived); ONE commit of rel =
//       used k makes them interior; then their start bytes are cleared.
//   Free-list links, the mask, free_bytes and the counters are written before or after those stores in
//   whatever order is convenient: rebuild() recomputes them and never follows a link.
//
// * Rebuild. Validates the guard words and the header, walks the table (bounded by the unit count) and
//   returns corrupted without changing anything when it does not tile the area. Otherwise it clears
//   stale interior bytes, coalesces free buddies of equal order left apart (cascading, with a stack of
//   pending lower buddies), rebuilds every free list in address order, the mask, free_bytes,
//   counters.used and counters.live (peak_used raised to used if below; allocations, frees and failed
//   kept). Its own merges follow the free() rule (lower byte first, then the upper cleared), so a
//   rebuild that is itself killed can simply be run again. Cost O(table units), no allocation.
//
// * Stray writes (issue 15, item 6). A process writing through a view of a block it freed reaches only
//   free blocks' links (derived) and data: the side table is out of band. An operation that meets a
//   damaged list refuses before any change, or (alloc's spares, free's merges, a shrink's halves) makes its
//   table change and reports the list (Heap::damage(): kDamageMade); a shared segment then rebuilds
//   (Segment::heal) and retries or keeps the result. Lists truncated by a write that happens to look valid
//   (zero links) strand memory silently until the next rebuild or check().
//
// * Bounds. Split, coalesce, resize and the containing-block search loop at most (max_order - min_order)
//   times; hint scans are bounded by kHintScan per order; check() bounds every list traversal by the
//   number of blocks of that order the table holds. Geometry is validated once (format/attach) and then
//   cached in process-local members; it is never re-read from the region.
#include "buddy.h"

#include <cstddef>
#include <cstring>
#include <string>

namespace mempool {
namespace {

constexpr uint32_t kBuddyVersion = 1;
constexpr uint32_t kNumOrders = 64;
constexpr uint8_t kStart = 0x80;
constexpr uint8_t kUsed = 0x40;
constexpr uint8_t kOrderMask = 0x3f;
constexpr uint64_t kMaxRegion = uint64_t(1) << 62;  // keeps every offset sum far from wrapping
constexpr uint64_t kHintScan = 64;                  // free-list entries looked at per order for a hint
constexpr uint64_t kGuardLoSeed = 0x3179656b416e7261ULL;  // "arnAkey1"
constexpr uint64_t kGuardHiSeed = 0x3279656b416e7261ULL;  // "arnAkey2"

// The buddy heap's header: shared between processes, so its layout is fixed.
struct BuddyHeader {
  RegionHeader region;       // magic, algorithm, version, size, header_size (= area_offset), counters
  uint64_t min_block;        // 80
  uint64_t max_block;        // 88: resolved (never 0)
  uint32_t min_order;        // 96
  uint32_t max_order;        // 100
  uint64_t guard_lo_offset;  // 104
  uint64_t state_offset;     // 112
  uint64_t table_offset;     // 120
  uint64_t table_units;      // 128: area_size / min_block
  uint64_t guard_hi_offset;  // 136: area_offset - 8
  uint64_t area_offset;      // 144: multiple of 4096
  uint64_t area_size;        // 152: multiple of min_block
};
static_assert(sizeof(BuddyHeader) == 160, "BuddyHeader is part of the shared layout");
static_assert(offsetof(BuddyHeader, region) == 0, "BuddyHeader begins with RegionHeader");
static_assert(offsetof(BuddyHeader, min_block) == 80, "BuddyHeader is part of the shared layout");
static_assert(offsetof(BuddyHeader, min_order) == 96, "BuddyHeader is part of the shared layout");
static_assert(offsetof(BuddyHeader, guard_lo_offset) == 104, "BuddyHeader is part of the shared layout");
static_assert(offsetof(BuddyHeader, area_offset) == 144, "BuddyHeader is part of the shared layout");
static_assert(offsetof(BuddyHeader, area_size) == 152, "BuddyHeader is part of the shared layout");

// Mutable bookkeeping, between the two guard words.
struct BuddyState {
  uint64_t free_bytes;           // sum of the sizes of free blocks
  uint64_t nonempty;             // bit o set <=> heads[o] != 0
  uint64_t heads[kNumOrders];    // region offset of the first free block of order o, 0 = none
};
static_assert(sizeof(BuddyState) == 528, "BuddyState is part of the shared layout");
static_assert(offsetof(BuddyState, heads) == 16, "BuddyState is part of the shared layout");

// The first 16 bytes of a free block.
struct FreeLinks {
  uint64_t next;  // region offset, 0 = none
  uint64_t prev;
};

constexpr uint64_t kGuardLoOffset = sizeof(BuddyHeader);          // 160
constexpr uint64_t kStateOffset = kGuardLoOffset + 8;              // 168
constexpr uint64_t kTableOffset = kStateOffset + sizeof(BuddyState);  // 696
static_assert(kTableOffset == 696, "buddy layout");
static_assert(kStateOffset % 8 == 0, "buddy layout");

struct Layout {
  uint64_t min_block;
  uint64_t max_block;
  uint32_t min_order;
  uint32_t max_order;
  uint64_t table_units;
  uint64_t area_offset;
  uint64_t area_size;
};

uint64_t guard_lo_key(uint64_t size) { return kGuardLoSeed ^ size; }
uint64_t guard_hi_key(uint64_t size) { return kGuardHiSeed ^ (size * 0x9e3779b97f4a7c15ULL); }

inline uint64_t pow2(uint32_t o) { return uint64_t(1) << o; }
inline uint8_t free_tag(uint32_t o) { return static_cast<uint8_t>(kStart | o); }
inline uint8_t used_tag(uint32_t o) { return static_cast<uint8_t>(kStart | kUsed | o); }
inline uint32_t ceil_log2(uint64_t x) {  // x >= 2
  return 64u - static_cast<uint32_t>(__builtin_clzll(x - 1));
}
inline uint32_t ctz64(uint64_t x) { return static_cast<uint32_t>(__builtin_ctzll(x)); }

// The whole geometry is a function of (size, min_block, max_block): attach recomputes it and compares.
// The side table is sized for an over-estimate t of the unit count (t > size / (min_block + 1), which
// is at least the number of units that can follow it), so the computation needs no iteration.
Status compute_layout(uint64_t size, uint64_t min_block, uint64_t max_block, Layout* l) {
  if (!is_power_of_two(min_block) || min_block < 16 || min_block > kMaxRequest) return Status::invalid_argument;
  if (max_block != 0 && (!is_power_of_two(max_block) || max_block < min_block || max_block > kMaxRequest)) {
    return Status::invalid_argument;
  }
  if (size > kMaxRegion) return Status::invalid_argument;
  const uint64_t t = size / (min_block + 1) + 1;
  const uint64_t area_offset = round_up(kTableOffset + t + 8, kMaxAlign);
  if (area_offset >= size || size - area_offset < min_block) return Status::out_of_memory;
  const uint32_t min_order = floor_log2(min_block);
  uint64_t units = (size - area_offset) >> min_order;
  if (units > t) units = t;  // cannot happen (see above); keeps the table inside its reservation
  l->min_block = min_block;
  l->min_order = min_order;
  l->table_units = units;
  l->area_offset = area_offset;
  l->area_size = units << min_order;
  l->max_block = max_block != 0 ? max_block : pow2(floor_log2(l->area_size));
  if (l->max_block > kMaxRequest) l->max_block = kMaxRequest;  // so that attach accepts what format chose
  l->max_order = floor_log2(l->max_block);
  return Status::ok;
}

class BuddyHeap final : public Heap {
 public:
  BuddyHeap(uint8_t* base, uint64_t size, const Layout& l)
      : Heap(base, size),
        min_order_(l.min_order),
        max_order_(l.max_order),
        min_block_(l.min_block),
        table_units_(l.table_units),
        area_off_(l.area_offset),
        area_size_(l.area_size),
        key_lo_(guard_lo_key(size)),
        key_hi_(guard_hi_key(size)),
        order_mask_((max_order_ >= 63 ? ~uint64_t(0) : (pow2(max_order_ + 1) - 1)) & ~(pow2(min_order_) - 1)),
        table_(base + kTableOffset),
        guard_lo_(reinterpret_cast<uint64_t*>(base + kGuardLoOffset)),
        guard_hi_(reinterpret_cast<uint64_t*>(base + l.area_offset - 8)),
        state_(reinterpret_cast<BuddyState*>(base + kStateOffset)),
        layout_(l) {}

  Algorithm algorithm() const override { return Algorithm::buddy; }
  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) override;
  Status free(uint64_t offset) override;
  Status resize_in_place(uint64_t offset, uint64_t size) override;
  Status usable_size(uint64_t offset, uint64_t* size) const override;
  void stats(HeapStats* out) const override;
  void check(CheckResult* result) const override;
  Status rebuild() override;
  Status walk(const std::function<bool(const BlockInfo&)>& visit) const override;

  void format();

 private:
  bool guards_ok() const { return *guard_lo_ == key_lo_ && *guard_hi_ == key_hi_; }
  uint8_t tag(uint64_t rel) const { return table_[rel >> min_order_]; }
  // Every side-table store goes through set_tag(): a volatile store, so the compiler keeps all of them in
  // program order among themselves (the crash-consistency argument rests on that order and on nothing
  // else: list, mask and counter stores may move freely). commit_tag() is the same store, named for the
  // one that changes the tiling in an operation (see "Crash consistency").
  void set_tag(uint64_t rel, uint8_t t) const {
    volatile uint8_t* const table = table_;
    table[rel >> min_order_] = t;
  }
  void commit_tag(uint64_t rel, uint8_t t) const { set_tag(rel, t); }
  // The header snapshot h still holds what format wrote: region fields / geometry fields.
  bool region_fields_ok(const BuddyHeader& h) const {
    return h.region.magic == kRegionMagic && h.region.algorithm == static_cast<uint32_t>(Algorithm::buddy) &&
           h.region.version == kBuddyVersion && h.region.size == size_ && h.region.header_size == area_off_;
  }
  bool geometry_ok(const BuddyHeader& h) const {
    return h.min_block == layout_.min_block && h.max_block == layout_.max_block && h.min_order == min_order_ &&
           h.max_order == max_order_ && h.guard_lo_offset == kGuardLoOffset && h.state_offset == kStateOffset &&
           h.table_offset == kTableOffset && h.table_units == table_units_ && h.guard_hi_offset == area_off_ - 8 &&
           h.area_offset == area_off_ && h.area_size == area_size_;
  }
  FreeLinks* links(uint64_t rel) const { return reinterpret_cast<FreeLinks*>(base_ + area_off_ + rel); }
  uint32_t order_for(uint64_t need) const {
    return need <= min_block_ ? min_order_ : ceil_log2(need);
  }
  // True when `off` (a region offset read from the region) is the start of a free block of order o;
  // sets *rel. Everything the heap does with a link goes through this first.
  bool valid_free(uint64_t off, uint32_t o, uint64_t* rel) const {
    if (off < area_off_) return false;
    const uint64_t r = off - area_off_;
    const uint64_t sz = pow2(o);
    if (r >= area_size_ || (r & (sz - 1)) != 0 || sz > area_size_ - r) return false;
    if (tag(r) != free_tag(o)) return false;
    *rel = r;
    return true;
  }
  // The block starting at rel has a valid order for its place; sets *o.
  bool valid_start(uint64_t rel, uint8_t t, uint32_t* o) const {
    const uint32_t ord = t & kOrderMask;
    if (ord < min_order_ || ord > max_order_) return false;
    const uint64_t sz = pow2(ord);
    if ((rel & (sz - 1)) != 0 || sz > area_size_ - rel) return false;
    *o = ord;
    return true;
  }
  Status find_live(uint64_t offset, uint64_t* rel, uint32_t* o) const;
  Status check_unlink(uint64_t rel, uint32_t o, uint64_t* prel, uint64_t* nrel) const;
  Status unlink(uint64_t rel, uint32_t o);
  Status push(uint64_t rel, uint32_t o);
  Status pop(uint32_t o, uint64_t* rel);
  Status hint_pick(uint64_t hint_rel, uint32_t k, uint32_t* order, uint64_t* rel, uint64_t* target);
  void sub_free_bytes(uint64_t n) {
    state_->free_bytes = state_->free_bytes >= n ? state_->free_bytes - n : 0;
  }

  // Validated geometry, process-local.
  const uint32_t min_order_;
  const uint32_t max_order_;
  const uint64_t min_block_;
  const uint64_t table_units_;
  const uint64_t area_off_;
  const uint64_t area_size_;
  const uint64_t key_lo_;
  const uint64_t key_hi_;
  const uint64_t order_mask_;  // bits min_order_ .. max_order_
  uint8_t* const table_;
  uint64_t* const guard_lo_;
  uint64_t* const guard_hi_;
  BuddyState* const state_;
  const Layout layout_;
};

void BuddyHeap::format() {
  std::memset(base_, 0, area_off_);
  BuddyHeader* h = reinterpret_cast<BuddyHeader*>(base_);
  h->region.magic = kRegionMagic;
  h->region.algorithm = static_cast<uint32_t>(Algorithm::buddy);
  h->region.version = kBuddyVersion;
  h->region.size = size_;
  h->region.header_size = area_off_;
  h->min_block = layout_.min_block;
  h->max_block = layout_.max_block;
  h->min_order = min_order_;
  h->max_order = max_order_;
  h->guard_lo_offset = kGuardLoOffset;
  h->state_offset = kStateOffset;
  h->table_offset = kTableOffset;
  h->table_units = table_units_;
  h->guard_hi_offset = area_off_ - 8;
  h->area_offset = area_off_;
  h->area_size = area_size_;
  *guard_lo_ = key_lo_;
  *guard_hi_ = key_hi_;
  // Carve the area into maximal naturally aligned blocks: floor(area / max) blocks of max_block, then
  // the remainder's set bits in descending size. Pushed from the top down, so that the lowest block of
  // each order is the head of its list.
  const uint64_t max_block = pow2(max_order_);
  uint64_t pos = area_size_;
  uint64_t rest = area_size_ & (max_block - 1);
  while (rest != 0) {
    const uint32_t o = ctz64(rest);
    rest &= rest - 1;
    pos -= pow2(o);
    set_tag(pos, free_tag(o));
    push(pos, o);
  }
  while (pos != 0) {
    pos -= max_block;
    set_tag(pos, free_tag(max_order_));
    push(pos, max_order_);
  }
  state_->free_bytes = area_size_;
}

Status BuddyHeap::find_live(uint64_t offset, uint64_t* rel, uint32_t* o) const {
  if (offset < area_off_ || offset - area_off_ >= area_size_) return Status::foreign;
  const uint64_t r = offset - area_off_;
  if ((r & (min_block_ - 1)) != 0) return Status::foreign;
  const uint8_t t = tag(r);
  if (t & kStart) {
    if (!valid_start(r, t, o)) return Status::corrupted;
    if (!(t & kUsed)) return Status::double_free;
    *rel = r;
    return Status::ok;
  }
  // Not a block start: find the block containing r (O(orders)) to tell a stale offset from an interior one.
  for (uint32_t k = min_order_ + 1; k <= max_order_; ++k) {
    const uint64_t cand = r & ~(pow2(k) - 1);
    const uint8_t ct = tag(cand);
    uint32_t co = 0;
    if ((ct & kStart) && static_cast<uint32_t>(ct & kOrderMask) >= k && valid_start(cand, ct, &co)) {
      return (ct & kUsed) ? Status::foreign : Status::double_free;
    }
  }
  return Status::foreign;
}

Status BuddyHeap::check_unlink(uint64_t rel, uint32_t o, uint64_t* prel, uint64_t* nrel) const {
  const uint64_t self = area_off_ + rel;
  const FreeLinks* n = links(rel);
  const uint64_t next = n->next;
  const uint64_t prev = n->prev;
  if (next == self || prev == self) return Status::corrupted;
  if (next != 0 && (!valid_free(next, o, nrel) || links(*nrel)->prev != self)) return Status::corrupted;
  if (prev != 0) {
    if (!valid_free(prev, o, prel) || links(*prel)->next != self) return Status::corrupted;
  } else if (state_->heads[o] != self) {
    return Status::corrupted;
  }
  return Status::ok;
}

Status BuddyHeap::unlink(uint64_t rel, uint32_t o) {
  uint64_t prel = 0, nrel = 0;
  Status s = check_unlink(rel, o, &prel, &nrel);
  if (s != Status::ok) return s;
  const FreeLinks* n = links(rel);
  const uint64_t next = n->next;
  const uint64_t prev = n->prev;
  if (prev != 0) {
    links(prel)->next = next;
  } else {
    state_->heads[o] = next;
    if (next == 0) state_->nonempty &= ~pow2(o);
  }
  if (next != 0) links(nrel)->prev = prev;
  return Status::ok;
}

// rel's side-table byte must already say "free, order o" (push validates the head, not rel).
Status BuddyHeap::push(uint64_t rel, uint32_t o) {
  const uint64_t self = area_off_ + rel;
  const uint64_t head = state_->heads[o];
  if (head != 0) {
    uint64_t hrel = 0;
    if (head == self || !valid_free(head, o, &hrel) || links(hrel)->prev != 0) return Status::corrupted;
    links(hrel)->prev = self;
  }
  FreeLinks* n = links(rel);
  n->next = head;
  n->prev = 0;
  state_->heads[o] = self;
  state_->nonempty |= pow2(o);
  return Status::ok;
}

Status BuddyHeap::pop(uint32_t o, uint64_t* rel) {
  const uint64_t head = state_->heads[o];
  uint64_t r = 0;
  if (!valid_free(head, o, &r)) return Status::corrupted;  // also head == 0 with the mask bit set
  const FreeLinks* n = links(r);
  const uint64_t next = n->next;
  if (n->prev != 0) return Status::corrupted;
  if (next != 0) {
    uint64_t nrel = 0;
    if (next == head || !valid_free(next, o, &nrel) || links(nrel)->prev != head) return Status::corrupted;
    links(nrel)->prev = 0;
  } else {
    state_->nonempty &= ~pow2(o);
  }
  state_->heads[o] = next;
  *rel = r;
  return Status::ok;
}

// Looks for a free block of order >= k that can hold an order-k block at a position >= hint_rel.
// On success the block is unlinked and *order, *rel (its start) and *target (where the allocation goes)
// are set. out_of_memory when none was found within the scan bound (the caller falls back).
Status BuddyHeap::hint_pick(uint64_t hint_rel, uint32_t k, uint32_t* order, uint64_t* rel, uint64_t* target) {
  const uint64_t want = round_up(hint_rel, pow2(k));
  if (want >= area_size_) return Status::out_of_memory;
  uint64_t avail = state_->nonempty & order_mask_ & ~(pow2(k) - 1);
  uint64_t best = UINT64_MAX, best_rel = 0;
  uint32_t best_order = 0;
  while (avail != 0 && best != want) {
    const uint32_t o = ctz64(avail);
    avail &= avail - 1;
    const uint64_t sz = pow2(o);
    uint64_t off = state_->heads[o];
    for (uint64_t i = 0; i < kHintScan && off != 0; ++i) {
      uint64_t r = 0;
      if (!valid_free(off, o, &r)) return Status::corrupted;
      const uint64_t pos = r >= want ? r : want;  // want is aligned to 2^k, so pos is too
      if (pos - r < sz && pos < best) {           // the order-k block at pos lies inside [r, r + sz)
        best = pos;
        best_rel = r;
        best_order = o;
        if (pos == want) break;  // cannot do better
      }
      off = links(r)->next;
    }
  }
  if (best == UINT64_MAX) return Status::out_of_memory;
  Status s = unlink(best_rel, best_order);
  if (s != Status::ok) return s;
  *order = best_order;
  *rel = best_rel;
  *target = best;
  return Status::ok;
}

Status BuddyHeap::alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) {
  if (size == 0 || size > kMaxRequest || !valid_align(align) || align < kDefaultAlign) {
    return Status::invalid_argument;
  }
  if (!guards_ok()) return Status::corrupted;
  const uint32_t k = order_for(size > align ? size : align);
  if (k > max_order_) {
    count_failure();
    return Status::out_of_memory;
  }
  const uint64_t avail = state_->nonempty & order_mask_ & ~(pow2(k) - 1);
  if (avail == 0) {
    count_failure();
    return Status::out_of_memory;
  }
  uint32_t j = 0;
  uint64_t rel = 0, target = 0;
  Status s = Status::out_of_memory;
  if (hint != kNoHint && hint > area_off_ && hint - area_off_ < area_size_) {
    s = hint_pick(hint - area_off_, k, &j, &rel, &target);
    if (s == Status::corrupted) return s;
  }
  if (s != Status::ok) {
    j = ctz64(avail);
    s = pop(j, &rel);
    if (s != Status::ok) return s;
    target = rel;
  }
  if (j == k) {
    commit_tag(target, used_tag(k));  // target == rel: a block of exactly order k, nothing to split
  } else {
    // Split [rel, rel + 2^j) down to the order-k block at target. At every order o = j-1 .. k the spare
    // is the buddy of the order-o block that contains target. The spares' start bytes and target's are
    // interior to the order-j block until the commit of rel's byte (see "Crash consistency"). The spares
    // are pushed as they are found: lists are derived, and push validates the head, not the spare.
    uint8_t rel_tag = used_tag(k);
    Status pushed = Status::ok;
    for (uint32_t o = j; o > k;) {
      --o;
      const uint64_t spare = (target & ~(pow2(o) - 1)) ^ pow2(o);
      if (spare == rel) {
        rel_tag = free_tag(o);
      } else {
        set_tag(spare, free_tag(o));
      }
      if (pushed == Status::ok) pushed = push(spare, o);
    }
    if (target != rel) set_tag(target, used_tag(k));
    commit_tag(rel, rel_tag);
    if (pushed != Status::ok) {  // the allocation is made, but a free list is damaged (Heap::damage())
      sub_free_bytes(pow2(k));
      count_alloc(pow2(k));
      damage_ |= kDamageMet | kDamageMade;
      *offset = area_off_ + target;  // a caller that rebuilds may keep it; others see corrupted (a leak)
      return pushed;
    }
  }
  sub_free_bytes(pow2(k));
  count_alloc(pow2(k));
  *offset = area_off_ + target;
  return Status::ok;
}

Status BuddyHeap::free(uint64_t offset) {
  if (!guards_ok()) return Status::corrupted;
  uint64_t rel = 0;
  uint32_t o = 0;
  Status s = find_live(offset, &rel, &o);
  if (s != Status::ok) return s;
  const uint64_t bytes = pow2(o);
  count_free(bytes);
  state_->free_bytes += bytes;
  // Coalesce level by level (see "Crash consistency"): the pair's lower byte is rewritten to the merged
  // order first, which makes the upper block interior (at the first level that store is what frees the
  // block), then the upper byte is cleared.
  Status merged = Status::ok;
  while (o < max_order_) {
    const uint64_t half = pow2(o);
    const uint64_t buddy = rel ^ half;
    if (buddy > rel && (buddy >= area_size_ || half > area_size_ - buddy)) break;  // the buddy is not a complete block in the area
    if (tag(buddy) != free_tag(o)) break;
    merged = unlink(buddy, o);
    if (merged != Status::ok) break;  // keep what was merged so far; report below
    commit_tag(rel & ~half, free_tag(o + 1));
    set_tag(rel | half, 0);  // the upper one of the pair is no longer a block start
    rel &= ~half;
    ++o;
  }
  // Frees the block when it merged with nothing; otherwise rewrites the byte the last merge wrote.
  commit_tag(rel, free_tag(o));
  s = push(rel, o);
  if (merged != Status::ok || s != Status::ok) damage_ |= kDamageMet | kDamageMade;  // freed; a list is damaged
  return merged != Status::ok ? merged : s;
}

Status BuddyHeap::resize_in_place(uint64_t offset, uint64_t size) {
  if (size == 0 || size > kMaxRequest) return Status::invalid_argument;
  if (!guards_ok()) return Status::corrupted;
  uint64_t rel = 0;
  uint32_t o = 0;
  Status s = find_live(offset, &rel, &o);
  if (s != Status::ok) return s;
  const uint32_t k = order_for(size);
  if (k == o) return Status::ok;
  if (k < o) {
    // Shrink: give the upper halves back. Their buddies are the lower halves, still ours: no coalescing.
    // Their start bytes are interior to the order-o block until the commit of rel's byte.
    for (uint32_t x = k; x < o; ++x) set_tag(rel + pow2(x), free_tag(x));
    commit_tag(rel, used_tag(k));
    state_->free_bytes += pow2(o) - pow2(k);
    count_resize(pow2(o), pow2(k));
    for (uint32_t x = k; x < o; ++x) {
      s = push(rel + pow2(x), x);
      if (s != Status::ok) {
        damage_ |= kDamageMet | kDamageMade;  // shrunk; a list is damaged
        return s;
      }
    }
    return Status::ok;
  }
  if (k > max_order_) return Status::out_of_memory;
  // Grow: at every level o..k-1 the block must be the left buddy and the right buddy must be free and
  // whole. Checked (links included) before anything changes.
  for (uint32_t x = o; x < k; ++x) {
    const uint64_t half = pow2(x);
    if ((rel & (2 * half - 1)) != 0) return Status::out_of_memory;
    const uint64_t up = rel + half;
    if (up >= area_size_ || half > area_size_ - up) return Status::out_of_memory;
    if (tag(up) != free_tag(x)) return Status::out_of_memory;
    uint64_t prel = 0, nrel = 0;
    s = check_unlink(up, x, &prel, &nrel);
    if (s != Status::ok) return s;
  }
  for (uint32_t x = o; x < k; ++x) {
    s = unlink(rel + pow2(x), x);  // lists of different orders: validated above and unaffected by each other
    if (s != Status::ok) return s;
  }
  // One store absorbs the buddies (they become interior); then their start bytes are cleared.
  commit_tag(rel, used_tag(k));
  for (uint32_t x = o; x < k; ++x) set_tag(rel + pow2(x), 0);
  sub_free_bytes(pow2(k) - pow2(o));
  count_resize(pow2(o), pow2(k));
  return Status::ok;
}

Status BuddyHeap::usable_size(uint64_t offset, uint64_t* size) const {
  if (!guards_ok()) return Status::corrupted;
  uint64_t rel = 0;
  uint32_t o = 0;
  Status s = find_live(offset, &rel, &o);
  if (s != Status::ok) return s;
  *size = pow2(o);
  return Status::ok;
}

void BuddyHeap::stats(HeapStats* out) const {
  fill_counter_stats(out);
  const uint64_t used = out->used < size_ ? out->used : size_;
  uint64_t fb = state_->free_bytes;
  if (fb > size_ - used) fb = size_ - used;  // the header may have been scribbled on
  out->free = fb;
  out->overhead = size_ - used - fb;
  const uint64_t m = state_->nonempty & order_mask_;
  out->largest_free_block = m != 0 ? pow2(floor_log2(m)) : 0;
}

void BuddyHeap::check(CheckResult* result) const {
  auto at = [](const char* what, uint64_t off) { return std::string(what) + " at offset " + std::to_string(off); };
  if (*guard_lo_ != key_lo_) result->report("buddy: low guard word overwritten");
  if (*guard_hi_ != key_hi_) result->report("buddy: high guard word overwritten");

  BuddyHeader h;
  std::memcpy(&h, base_, sizeof h);
  if (!region_fields_ok(h)) result->report("buddy: region header fields changed");
  if (!geometry_ok(h)) result->report("buddy: geometry fields changed");

  // Tile the area through the side table.
  uint64_t used = 0, live = 0, free_bytes = 0;
  uint64_t free_count[kNumOrders] = {};
  uint64_t pos = 0;
  while (pos < area_size_) {
    const uint8_t t = tag(pos);
    uint32_t o = 0;
    if (!(t & kStart) || !valid_start(pos, t, &o)) {
      result->report(at("buddy: side table does not start a valid block", area_off_ + pos));
      // Resynchronise at the next unit that starts a block.
      pos += min_block_;
      while (pos < area_size_ && !(tag(pos) & kStart)) pos += min_block_;
      continue;
    }
    const uint64_t sz = pow2(o);
    for (uint64_t u = pos + min_block_; u < pos + sz; u += min_block_) {
      if (tag(u) != 0) {
        result->report(at("buddy: side table marks a block start inside a block", area_off_ + u));
        break;
      }
    }
    if (t & kUsed) {
      used += sz;
      ++live;
    } else {
      free_bytes += sz;
      ++free_count[o];
      if (o < max_order_ && (pos & (2 * sz - 1)) == 0 && pos + sz < area_size_ && sz <= area_size_ - pos - sz &&
          tag(pos + sz) == free_tag(o)) {
        result->report(at("buddy: free buddies left uncoalesced", area_off_ + pos));
      }
    }
    pos += sz;
  }
  // Free lists.
  for (uint32_t o = 0; o < kNumOrders; ++o) {
    const uint64_t head = state_->heads[o];
    const bool bit = (state_->nonempty >> o) & 1;
    if (o < min_order_ || o > max_order_) {
      if (head != 0 || bit) result->report("buddy: free list of an order out of range is not empty");
      continue;
    }
    if ((head != 0) != bit) result->report("buddy: non-empty mask disagrees with the free-list head");
    uint64_t n = 0, prev = 0, off = head;
    const uint64_t bound = free_count[o];
    while (off != 0) {
      uint64_t r = 0;
      if (!valid_free(off, o, &r)) {
        result->report(at("buddy: free-list entry is not a free block of its order", off));
        break;
      }
      if (links(r)->prev != prev) result->report(at("buddy: free-list back link is wrong", off));
      if (++n > bound) {
        result->report("buddy: free list is longer than the free blocks of its order (cycle)");
        break;
      }
      prev = off;
      off = links(r)->next;
    }
    if (off == 0 && n != bound) result->report("buddy: free blocks missing from their free list");
  }

  // Counters.
  const HeapCounters& c = region_header()->counters;
  if (c.used != used) result->report("buddy: used counter disagrees with the blocks");
  if (c.live != live) result->report("buddy: live counter disagrees with the blocks");
  if (c.peak_used < c.used) result->report("buddy: peak_used below used");
  if (state_->free_bytes != free_bytes) result->report("buddy: free byte count disagrees with the blocks");
}

Status BuddyHeap::rebuild() {
  if (!guards_ok()) return Status::corrupted;
  BuddyHeader h;
  std::memcpy(&h, base_, sizeof h);
  if (!region_fields_ok(h) || !geometry_ok(h)) return Status::corrupted;

  // 1. The primary record must tile the area; nothing is changed when it does not. At most table_units_
  //    steps: every block is at least one unit.
  for (uint64_t pos = 0; pos < area_size_;) {
    const uint8_t t = tag(pos);
    uint32_t o = 0;
    if (!(t & kStart) || !valid_start(pos, t, &o)) return Status::corrupted;
    pos += pow2(o);
  }

  // 2. Clear stale interior bytes and coalesce free buddies a crash (or an older writer) left apart.
  //    pending holds the free lower buddies still waiting for their upper buddy: contiguous, each one
  //    ending where the next begins, so their orders strictly decrease (fewer than kNumOrders).
  struct Pending {
    uint64_t rel;
    uint32_t order;
  };
  Pending pending[kNumOrders];
  uint32_t depth = 0;
  for (uint64_t pos = 0; pos < area_size_;) {
    const uint8_t t = tag(pos);
    uint32_t o = 0;
    if (!(t & kStart) || !valid_start(pos, t, &o)) return Status::corrupted;  // cannot happen: validated
    const uint64_t next = pos + pow2(o);
    for (uint64_t u = (pos >> min_order_) + 1, end = next >> min_order_; u < end; ++u) {
      if (table_[u] != 0) table_[u] = 0;  // read first: do not dirty pages that are already clean
    }
    if (t & kUsed) {
      depth = 0;
      pos = next;
      continue;
    }
    uint64_t r = pos;
    while (o < max_order_ && (r & pow2(o)) != 0 && depth > 0 && pending[depth - 1].order == o &&
           pending[depth - 1].rel == r - pow2(o)) {
      --depth;
      r -= pow2(o);
      commit_tag(r, free_tag(o + 1));  // lower byte first: the upper block becomes interior ...
      set_tag(r + pow2(o), 0);         // ... then its start byte is cleared
      ++o;
    }
    if (o < max_order_ && (r & pow2(o)) == 0 && pow2(o) <= area_size_ - r - pow2(o) && depth < kNumOrders) {
      pending[depth++] = Pending{r, o};
    } else {
      depth = 0;  // nothing before it can merge any more
    }
    pos = next;
  }

  // 3. Derived state: free lists (in address order), mask, free bytes, counters.
  uint64_t tail[kNumOrders] = {};
  for (uint32_t o = 0; o < kNumOrders; ++o) state_->heads[o] = 0;
  state_->nonempty = 0;
  uint64_t used = 0, live = 0, free_bytes = 0;
  for (uint64_t pos = 0; pos < area_size_;) {
    const uint8_t t = tag(pos);
    uint32_t o = 0;
    if (!(t & kStart) || !valid_start(pos, t, &o)) return Status::corrupted;  // cannot happen: validated
    const uint64_t sz = pow2(o);
    if (t & kUsed) {
      used += sz;
      ++live;
    } else {
      free_bytes += sz;
      const uint64_t self = area_off_ + pos;
      FreeLinks* n = links(pos);
      n->next = 0;
      n->prev = tail[o];
      if (tail[o] != 0) {
        links(tail[o] - area_off_)->next = self;
      } else {
        state_->heads[o] = self;
        state_->nonempty |= pow2(o);
      }
      tail[o] = self;
    }
    pos += sz;
  }
  state_->free_bytes = free_bytes;
  HeapCounters& c = region_header()->counters;
  c.used = used;
  c.live = live;
  if (c.peak_used < used) c.peak_used = used;
  return Status::ok;
}

Status BuddyHeap::walk(const std::function<bool(const BlockInfo&)>& visit) const {
  uint64_t pos = 0;
  while (pos < area_size_) {
    const uint8_t t = tag(pos);
    uint32_t o = 0;
    if (!(t & kStart) || !valid_start(pos, t, &o)) return Status::corrupted;
    if (!visit(BlockInfo{area_off_ + pos, pow2(o), (t & kUsed) != 0})) return Status::ok;
    pos += pow2(o);
  }
  return Status::ok;
}

}  // namespace

Status buddy_format(uint8_t* base, uint64_t size, const HeapOptions& options, std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  Layout l;
  Status s = compute_layout(size, options.min_block, options.max_block, &l);
  if (s != Status::ok) return s;
  std::unique_ptr<BuddyHeap> heap(new BuddyHeap(base, size, l));
  heap->format();
  *out = std::move(heap);
  return Status::ok;
}

Status buddy_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  if (size < sizeof(BuddyHeader)) return Status::incompatible;
  BuddyHeader h;
  std::memcpy(&h, base, sizeof h);  // one snapshot
  if (h.region.magic != kRegionMagic || h.region.algorithm != static_cast<uint32_t>(Algorithm::buddy)) {
    return Status::incompatible;
  }
  if (h.region.version != kBuddyVersion || h.region.size != size) return Status::incompatible;
  Layout l;
  if (compute_layout(size, h.min_block, h.max_block, &l) != Status::ok) return Status::corrupted;
  if (h.max_block == 0 || l.max_block != h.max_block || l.min_order != h.min_order || l.max_order != h.max_order ||
      h.guard_lo_offset != kGuardLoOffset || h.state_offset != kStateOffset || h.table_offset != kTableOffset ||
      h.table_units != l.table_units || h.area_offset != l.area_offset || h.area_size != l.area_size ||
      h.guard_hi_offset != l.area_offset - 8 || h.region.header_size != l.area_offset) {
    return Status::corrupted;
  }
  uint64_t lo = 0, hi = 0;
  std::memcpy(&lo, base + kGuardLoOffset, 8);
  std::memcpy(&hi, base + l.area_offset - 8, 8);
  if (lo != guard_lo_key(size) || hi != guard_hi_key(size)) return Status::corrupted;
  uint64_t free_bytes = 0;
  std::memcpy(&free_bytes, base + kStateOffset + offsetof(BuddyState, free_bytes), 8);
  if (free_bytes > l.area_size || h.region.counters.used > l.area_size) return Status::corrupted;
  out->reset(new BuddyHeap(base, size, l));
  return Status::ok;
}

uint64_t buddy_min_region_size(const HeapOptions& options) {
  Layout l;
  if (compute_layout(0, options.min_block, options.max_block, &l) == Status::invalid_argument) return 0;
  // Metadata for one unit fits in the first page, so this is normally the first size tried.
  const uint64_t start = round_up(kTableOffset + 1 + 8, kMaxAlign) + options.min_block;
  for (uint64_t size = start, i = 0; i < 1024; ++i, size += kMaxAlign) {
    if (compute_layout(size, options.min_block, options.max_block, &l) == Status::ok) return size;
  }
  return 0;
}

}  // namespace mempool
