// Per-attachment slab caches for small shared allocations: the segment's lock is taken once per batch
// of slots, not once per alloc/free. docs/segment-format.md documents the layout.
//
// A slab is one ordinary heap allocation of SegmentHeader::slab_size bytes (4 KiB..64 KiB, 4096-aligned)
// carved into equal slots of one size class (16..1024 bytes in steps of 16):
//
//   [SlabHeader, 64 bytes][one state byte per slot][pad to 4][one generation word per slot][pad to 16][slots]
//
// A slot's generation word is segment.h's: a 31-bit counter bumped at every free and every change of owner,
// bit 31 set while a name owns the slot. The owner hands out the current word with a slot and checks it on
// its lock-free free; everything else reads and writes it under the lock.
//
// Each slab has an owner: one SharedCache (one attachment of one thread, registered in the cache table
// of the segment header), or none. Slot states (one byte, in the segment):
//   kSlotFree    free: on its owner's private free stack (or, in an ownerless slab, simply unused)
//   kSlotLent    the user holds it;                      | kSlotNamed once a name or pin may refer to it:
//                                                          sticky until the slot is freed, so every free of
//                                                          a slot that was ever named goes through the lock
//   kSlotRemote  freed by someone other than its owner; the owner takes it back when it runs dry
//
// The owner allocates from a process-local stack (a plain store of kSlotLent: only the owner leaves
// kSlotFree in its slabs) and frees with one compare-and-swap kSlotLent -> kSlotFree after finding the
// slab in process-local records (never trusting the segment for ownership). That CAS is what makes a
// racing double free from two processes impossible to accept twice. Everything else (another owner's
// slot, a named slot, a new slab, taking back remote frees, closing) happens under the segment lock.
//
// Trust: slab headers and state bytes may be scribbled by anyone. A slab is recognised only at a
// 4096-aligned heap offset that the heap itself calls the start of a live allocation of at least
// slab_size bytes, whose header has the magic, its own offset, the segment's slab size, the geometry
// its slot size implies and a matching check word. Owners use only their process-local copy of the
// geometry. Every state byte is compared-and-swapped from an expected value, never assumed.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "heap.h"
#include "segment.h"

namespace mempool {

constexpr uint32_t kMinSlabSize = 4096;
constexpr uint32_t kMaxSlabSize = 65536;
constexpr uint64_t kSlabMagic = 0x31424c53504d454dULL;  // "MEMPSLB1" little-endian
constexpr uint32_t kNoOwner = 0xffffffffu;
constexpr uint32_t kMaxSlotSize = 1024;
constexpr uint32_t kSlotClasses = kMaxSlotSize / 16;

enum SlotState : uint8_t { kSlotFree = 0, kSlotLent = 1, kSlotRemote = 2, kSlotNamed = 0x80 };

struct SlabHeader {
  uint64_t magic;          // 0  kSlabMagic
  uint64_t self;           // 8  heap offset of this slab (where the heap's allocation starts)
  uint32_t slab_bytes;     // 16 SegmentHeader::slab_size
  uint32_t slot_size;      // 20 16..1024, a multiple of 16
  uint32_t slot_count;     // 24 as slab_geometry() computes it
  uint32_t slots_offset;   // 28 from the slab's start
  uint32_t owner;          // 32 cache table index, or kNoOwner
  uint32_t owner_serial;   // 36 that entry's serial (a stale owner is no owner)
  uint32_t remote_pending; // 40 slots freed remotely since the owner last looked (a hint only)
  uint32_t reserved0;      // 44
  uint64_t check;          // 48 slab_check(self, slab_bytes, slot_size)
  uint64_t reserved1;      // 56
};
static_assert(sizeof(SlabHeader) == 64, "SlabHeader is part of the shared layout");
static_assert(offsetof(SlabHeader, owner) == 32 && offsetof(SlabHeader, check) == 48, "slab layout");

// The cache table: kCacheEntries entries of 64 bytes at kCacheTableOffset of the header page (one cache
// line each: the owner's counter stores do not bounce other owners' lines).
struct CacheEntry {
  uint32_t pid;            // 0  0 = empty
  uint32_t serial;         // 4  SegmentHeader::cache_serial when registered
  uint64_t start_ticks;    // 8  /proc/<pid>/stat field 22: a later process with the same pid is not this one
  uint64_t lent_count;     // 16 written by the owner only: slots it lent out and has not seen come back
  uint64_t lent_bytes;     // 24
  uint64_t remote_count;   // 32 written under the lock: of those, slots freed by others, not yet taken back
  uint64_t remote_bytes;   // 40
  uint64_t allocations;    // 48 owner only: slot allocations (statistics)
  uint64_t frees;          // 56 owner only: slot frees by the owner (statistics)
};
static_assert(sizeof(CacheEntry) == 64, "CacheEntry is part of the shared layout");
constexpr uint64_t kCacheTableOffset = 3072;
constexpr uint32_t kCacheEntries = 16;
static_assert(kCacheTableOffset >= kAttachTableOffset + kAttachSlots * sizeof(AttachEntry), "cache table after the attach table");
static_assert(kCacheTableOffset + kCacheEntries * sizeof(CacheEntry) <= kSegmentHeaderSize, "cache table fits the header page");
static_assert(kCacheEntries + 1 < (kOwnerFree >> kGenOwnerShift), "owner fields never reach kOwnerFree, kAnyGen or kNoHandle");

// The slab size a new segment gets for a heap of `heap_size` bytes (0: too small for slabs).
uint32_t choose_slab_size(uint64_t heap_size);
// Largest request a segment with slabs of `slab_size` bytes serves from slots (0 = none).
uint32_t max_cached_size(uint32_t slab_size);
// Slots of `slot_size` bytes in a slab of `slab_bytes`, and where they start.
void slab_geometry(uint32_t slab_bytes, uint32_t slot_size, uint32_t* count, uint32_t* slots_offset);
// Where a slab of `count` slots keeps its generation words (from the slab's start).
inline uint32_t slab_gens_offset(uint32_t count) { return static_cast<uint32_t>(round_up(64 + uint64_t(count), 4)); }

// A slot found from an offset: everything validated.
struct SlotRef {
  uint64_t slab = 0;      // heap offset of the slab
  uint32_t index = 0;
  uint32_t slot_size = 0;
  uint32_t slot_count = 0;  // from the validated copy of the header: the live header may change under us
  SlabHeader* header = nullptr;
  uint8_t* state = nullptr;
  uint32_t* gen = nullptr;  // the slot's generation word
};

// Whether the used heap block at `off` is a slab in all but its magic with slots still lent: not one being
// given back (release_slab clears the magic only when nothing is lent) but a slab whose magic a stray write
// hit. Repair must not free it (its lent slots have live owners): it leaks instead. Under the lock.
bool shared_lends_without_magic(const Segment& seg, uint64_t off);
// The generation word of the allocation at heap offset `off`: a lent slot's, or the segment's word for a
// heap block. Null when `off` can start neither. Under the lock.
uint32_t* shared_gen_word(const Segment& seg, uint64_t off);
// The physical free of a heap block or of anyone's lent slot (a slot of a live owner is handed back to
// it as kSlotRemote), with its word bumped. Under the lock; the caller has checked ownership.
Status shared_free_locked(Segment& seg, uint64_t off);
// One transfer of a block: the counter moves on; `named` says whether a name owns it now; any recorded
// owner is cleared.
inline void gen_bump(uint32_t* word, bool named) {
  uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
  __atomic_store_n(word, ((v + 1) & kGenCount) | (named ? kGenNamed : 0u), __ATOMIC_RELEASE);
}
// A heap block given back: the counter moves on and the word says no block is handed out here (kOwnerFree).
inline void gen_free(uint32_t* word) {
  uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
  __atomic_store_n(word, ((v + 1) & kGenCount) | kOwnerFree, __ATOMIC_RELEASE);
}
// A block handed from a name (or a queue) to the attachment `owner_bits` (0: none recorded): the counter
// moves on and the owner is recorded in one store, so a crash never leaves it unnamed with no owner.
inline void gen_hand_over(uint32_t* word, uint32_t owner_bits) {
  uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
  __atomic_store_n(word, ((v + 1) & kGenCount) | owner_bits, __ATOMIC_RELEASE);
}
// Pins (shared_pool.cc): whether a live reader pins the block at segment offset `off`; with mark, its
// pins are told a free waits for them.
bool shared_pinned(Segment& seg, uint64_t off, bool mark);
// The alignment heap blocks of this segment get (at least the generation granule).
inline uint64_t heap_align(const Segment& seg, uint64_t align) {
  uint64_t g = uint64_t(1) << seg.gen_shift();
  return align > g ? align : g;
}

// Segment-level operations, all under the segment's lock. Offsets are heap offsets.
// Whether a valid slab starts at `off` (a live heap allocation with a valid header).
bool shared_is_slab(const Segment& seg, uint64_t off);
// The slot that starts exactly at `off` (any state), looking for the slab around it.
bool shared_find_slot(const Segment& seg, uint64_t off, SlotRef* out);
// Usable size of a heap allocation that is not a slab, or of a lent slot.
Status shared_usable_size(const Segment& seg, uint64_t off, uint64_t* size);
// Marks a lent slot as named before a name points at it; ok for heap allocations (nothing to mark).
Status shared_mark_named(Segment& seg, uint64_t off);
// Visits allocations in address order as the heap's walk does, but shows each slab as its slots.
Status shared_walk(const Segment& seg, const std::function<bool(const BlockInfo&)>& visit);
// Validates every slab, the cache table and the totals in the header.
void shared_check(const Segment& seg, CheckResult* r);
// Turns the heap's figures (slabs are allocations to it) into the user's (slots are). Approximate
// while owners run: their counters are read without their cooperation.
void shared_adjust_stats(const Segment& seg, HeapStats* s);
// The same for used/live, from a copy of the header page (Segment::list).
void shared_adjust_counters(const uint8_t* header_page, uint64_t* used, uint64_t* live);
// Recomputes the header's slab totals from the slabs (after a lock holder died).
void shared_recount(Segment& seg);
// Retires the caches of processes that have exited: with trackOwners their unnamed blocks are freed
// first (deferred while a live reader pins one); their free slots become free, empty slabs go back to
// the heap, the rest become ownerless. Returns how many caches were retired.
uint32_t shared_collect_dead(Segment& seg);

// One thread's cache over one attachment. Not thread-safe: one per NativePool (each worker thread opens
// its own). A cache that could not register (table full, debug segment, after fork) passes everything
// through to the locked paths, which are slab-aware, so it is always correct to use one.
class SharedCache {
 public:
  explicit SharedCache(Segment* seg);
  ~SharedCache();
  SharedCache(const SharedCache&) = delete;
  SharedCache& operator=(const SharedCache&) = delete;

  bool enabled() const { return enabled_; }
  // What this attachment writes into the words of blocks it owns (trackOwners), or 0.
  uint32_t owner_bits() const { return owner_bits_; }

  // Takes the lock itself when it has to. *off is a heap offset; *gen the block's generation word.
  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* off, uint32_t* gen);
  // The owner's lock-free free of an unnamed slot of its own whose generation is `gen` (or kAnyGen):
  // true when it decided (*out: ok, double_free, stale, foreign), false when the locked path must decide.
  bool try_free(uint64_t off, uint32_t gen, Status* out);

  // Under the lock (the caller holds it). free_locked is the physical free: the caller has checked
  // generations, names and pins (shared_pool.cc).
  Status alloc_locked(uint64_t size, uint64_t align, uint64_t hint, uint64_t* off, uint32_t* gen);
  Status free_locked(uint64_t off);
  // Gives back fully free slabs of this cache to the heap (under the lock); returns bytes given back.
  uint64_t trim_locked();

  // Returns this cache's slabs: empty ones to the heap, the rest ownerless; leaves the cache table.
  // Waits at most lock_ms for the lock; if it cannot get it, the entry stays until this process exits.
  void close(uint32_t lock_ms = 100);

 private:
  struct SlabRec {
    uint64_t base;        // heap offset of the slab; 0 = given back
    uint64_t slots_base;  // heap offset of slot 0
    uint64_t span;        // slot_count * slot_size
    uint8_t* states;      // the state bytes
    uint32_t* gens;       // the generation words
    uint64_t recip;       // ceil(2^32 / (slot_size / 16)): index = ((rel / 16) * recip) >> 32, exact for
                          // rel / 16 < 2^16 and slot_size / 16 <= 64
    uint32_t slot_size;
    uint32_t count;
    uint32_t cls;
  };
  struct ClassState {
    std::vector<uint64_t> stack;   // heap offsets of free slots this cache owns
    std::vector<uint32_t> slabs;   // indexes into slabs_
  };

  // Enabled, not in a forked child, and the cache table entry still ours: an entry retired by someone who
  // judged this owner dead (a scribbled table) means our slabs may be someone else's now, so the
  // records are dropped and every later call goes through the lock. (A retire racing with the check
  // is not covered: it takes a writer who damages the table, who could damage the data anyway.)
  bool usable() {
    if (__builtin_expect(enabled_ && fork_gen_ == current_fork_gen() &&
                             __atomic_load_n(&entry_->serial, __ATOMIC_RELAXED) == serial_,
                         1)) {
      return true;
    }
    if (enabled_) disown();
    return false;
  }
  static uint64_t current_fork_gen();
  void disown();
  uint64_t lend_top(std::vector<uint64_t>* stack, uint32_t* gen);
  // The owner's side of a slot that became free (its state byte already swapped to kSlotFree): back on the
  // private stack, counted. lend_top()'s reverse.
  void took_back(const SlabRec& rec, uint64_t off) {
    classes_[rec.cls].stack.push_back(off);
    lent_count_ -= 1;
    lent_bytes_ -= rec.slot_size;
    frees_ += 1;
    publish();
    __atomic_store_n(&entry_->frees, frees_, __ATOMIC_RELAXED);
  }
  void publish() {
    __atomic_store_n(&entry_->lent_count, lent_count_, __ATOMIC_RELAXED);
    __atomic_store_n(&entry_->lent_bytes, lent_bytes_, __ATOMIC_RELAXED);
  }
  SlabRec* mine(uint64_t off) {
    uint64_t page = off >> 12;
    if (page >= pages_) return nullptr;
    uint32_t r = page_map_[page];
    return r == 0 ? nullptr : &slabs_[r - 1];
  }
  bool refill(uint32_t cls);
  bool take_back_remote(uint32_t cls);
  bool new_slab(uint32_t cls);
  bool adopt_slab(uint32_t cls);
  void add_rec(uint64_t off, uint32_t size, uint32_t count, uint32_t slots, uint32_t cls);
  void forget_slab(uint32_t rec_index);
  Status free_slot_locked(const SlotRef& ref, uint64_t off);
  void register_entry();

  Segment* seg_;
  uint8_t* heap_base_;
  bool enabled_ = false;
  uint64_t fork_gen_ = 0;
  uint32_t index_ = kNoOwner;
  uint32_t serial_ = 0;
  uint32_t owner_bits_ = 0;
  CacheEntry* entry_ = nullptr;
  uint32_t slab_size_ = 0;
  uint32_t max_size_ = 0;
  uint64_t pages_ = 0;
  uint32_t* page_map_ = nullptr;  // heap page -> slabs_ index + 1 (calloc: untouched pages cost nothing)
  std::vector<SlabRec> slabs_;
  ClassState classes_[kSlotClasses];
  uint64_t lent_count_ = 0, lent_bytes_ = 0, allocations_ = 0, frees_ = 0;
  uint32_t slab_backoff_ = 0;  // allocations to serve from the heap before trying a new slab again
  uint32_t adopt_epoch_[kSlotClasses] = {};  // orphan_epoch when this class last found nothing to adopt
};

}  // namespace mempool
