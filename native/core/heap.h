// The interface every heap offers. Plain C++17, no Node headers.
//
// A heap manages a region [base, base + size). All of its metadata lives inside the region and refers to
// other places in it by offset from base, never by pointer, so that the same bytes can be mapped at a
// different address (another process, a copy of the region) and attached again.
//
// Invariants every heap keeps (and check() verifies):
//   - base is aligned to kMaxAlign, so an offset aligned to A is an address aligned to A;
//   - the region starts with a RegionHeader (magic, algorithm, version, size, counters);
//   - offsets handed out are aligned to at least kDefaultAlign and lie inside the region;
//   - no two live allocations overlap;
//   - capacity == used + free + overhead in stats().
//
// Robustness: the region may be written by code the heap does not trust (a view over the whole pool, or
// another process sharing the segment). Every offset or size read from the region is bounds-checked before
// it is followed; a failed check returns Status::corrupted. No operation reads or writes outside the
// region and no loop runs longer than the region allows, whatever the region holds.
//
// Heaps are not thread-safe: the caller serialises (shared segments hold their lock around every call).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace mempool {

// Status codes come out of the core; no exceptions cross it.
enum class Status : int32_t {
  ok = 0,
  out_of_memory = 1,     // no free block fits (the region itself is fine)
  invalid_argument = 2,  // size 0 or too large to represent, alignment not a power of two in range
  foreign = 3,           // offset is not the start of a live allocation of this heap
  double_free = 4,       // offset was the start of an allocation that is already free
  corrupted = 5,         // metadata failed a consistency check
  incompatible = 6,      // the region does not hold a heap of a known kind, version or size
  // Shared segments (segment.h):
  exists = 7,            // create with exclusive of a name that exists
  not_found = 8,         // no segment of that name
  permission = 9,        // the system said EACCES or EPERM
  invalid_name = 10,     // not a plain name of 1..250 bytes without '/' or NUL
  lock_timeout = 11,     // the segment's lock was not acquired in time
  system_error = 12,     // another errno from shm_open, ftruncate or mmap (see errno_value)
  too_large = 13,        // a key or value does not fit the directory
  directory_full = 14,   // the directory has no free entry
  // Ownership in shared segments (shared_pool.h):
  stale = 15,            // the handle's generation is not the block's: it was freed or changed owner since
  named = 16,            // the block is owned by a directory name: take() it to own it
  pins_full = 17,        // every pin table entry is in use
  no_handle = 18,        // a live block's start given through a view that carries no generation (kNoHandle)
  // Named objects (objects.h):
  object_mismatch = 19,  // a mutex, semaphore or queue of that name exists with other parameters
  // Raw segments (raw_segment.h):
  empty = 20,            // the object has 0 bytes: its creator died between shm_open and ftruncate
  size_mismatch = 21,    // create without exclusive found the object at another size
};

const char* status_name(Status s);

enum class Algorithm : uint32_t { tlsf = 1, buddy = 2, bitmap = 3 };

const char* algorithm_name(Algorithm a);
// Returns false when name is not one of "tlsf", "buddy", "bitmap".
bool algorithm_from_name(const std::string& name, Algorithm* out);

constexpr uint64_t kDefaultAlign = 16;
constexpr uint64_t kMaxAlign = 4096;
constexpr uint64_t kNoHint = UINT64_MAX;
// Largest request any heap accepts: keeps every size computation (rounding, header addition, alignment
// padding) far from 2^64 so that none of it can wrap.
constexpr uint64_t kMaxRequest = uint64_t(1) << 48;

struct HeapOptions {
  uint64_t block_size = 16;  // bitmap: bytes per block, a power of two >= 16
  uint64_t min_block = 16;   // buddy: smallest block, a power of two >= 16
  uint64_t max_block = 0;    // buddy: largest block, a power of two; 0 = the largest that fits
  bool debug = false;        // wrap the heap in debug mode (debug_heap.h): guards, poison, owners
};

class DebugHeapApi;  // debug_heap.h

// Counters every heap keeps in its region header, so that every process sharing a segment sees one set.
struct HeapCounters {
  uint64_t used;         // sum of usable sizes of live allocations
  uint64_t peak_used;    // highest value used has reached
  uint64_t live;         // live allocations
  uint64_t allocations;  // successful allocations, ever
  uint64_t frees;        // successful frees, ever
  uint64_t failed;       // allocations refused with out_of_memory, ever
};
static_assert(sizeof(HeapCounters) == 48, "HeapCounters is part of the shared layout");

// The first bytes of every heap's region. Each heap's own header begins with this.
struct RegionHeader {
  uint64_t magic;       // kRegionMagic
  uint32_t algorithm;   // Algorithm
  uint32_t version;     // layout version of that algorithm's header
  uint64_t size;        // region size in bytes, as formatted
  uint64_t header_size; // bytes at the start of the region reserved for the heap's own metadata
  HeapCounters counters;
};
static_assert(sizeof(RegionHeader) == 80, "RegionHeader is part of the shared layout");
static_assert(offsetof(RegionHeader, counters) == 32, "RegionHeader is part of the shared layout");

constexpr uint64_t kRegionMagic = 0x50454850504d454dULL;  // "MEMPPHEP" little-endian: mempool heap

struct HeapStats {
  uint64_t capacity = 0;            // bytes of the region
  uint64_t used = 0;                // usable bytes of live allocations
  uint64_t free = 0;                // bytes that could still be handed out (sum of free blocks)
  uint64_t overhead = 0;            // capacity - used - free: headers, bitmaps, lists, rounding lost
  uint64_t peak_used = 0;
  uint64_t live_allocations = 0;
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t failed_allocations = 0;
  uint64_t largest_free_block = 0;  // largest single request that would succeed with default alignment
};

struct BlockInfo {
  uint64_t offset;  // for a used block, the offset alloc() returned; for a free run, where it starts
  uint64_t size;    // usable bytes
  bool used;
};

// What check() found. It counts every violation and keeps the first one's description.
struct CheckResult {
  uint64_t violations = 0;
  std::string first;
  void report(const std::string& what) {
    if (violations++ == 0) first = what;
  }
};

class Heap {
 public:
  virtual ~Heap() = default;
  Heap(const Heap&) = delete;
  Heap& operator=(const Heap&) = delete;

  virtual Algorithm algorithm() const = 0;

  // Allocates at least `size` bytes aligned to `align` (a power of two in [kDefaultAlign, kMaxAlign]).
  // `hint` is an offset (or kNoHint): the block is placed at or after it when a free block there fits.
  virtual Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) = 0;

  // Frees the allocation that starts at `offset`. Anything else is refused (foreign, double_free) and
  // changes nothing.
  virtual Status free(uint64_t offset) = 0;

  // Changes the usable size of a live allocation without moving it: shrinks, or grows into the free
  // block that follows. Returns out_of_memory when it cannot be done in place (the allocation is kept).
  virtual Status resize_in_place(uint64_t offset, uint64_t size) = 0;

  // Usable size of the live allocation that starts at `offset`.
  virtual Status usable_size(uint64_t offset, uint64_t* size) const = 0;

  // O(1) except for largest_free_block, which may look at one size class.
  virtual void stats(HeapStats* out) const = 0;

  // Verifies every invariant it can; never aborts, never reads outside the region.
  virtual void check(CheckResult* result) const = 0;

  // Repairs the heap after a writer died in the middle of an operation (a shared segment's lock came
  // back EOWNERDEAD): recomputes every derived structure (free lists, summaries, counters) from the
  // heap's primary record, which each heap updates so that it is consistent after every single store.
  // Returns corrupted when the primary record itself is damaged.
  virtual Status rebuild() { return Status::corrupted; }

  // What the calls since clear_damage() met in derived metadata (a free list whose links a stray write
  // changed): kDamageMet, the heap went on without a list it could not trust (memory may be stranded until
  // rebuild()); kDamageMade, a call returned corrupted although its change to the primary record was made
  // (an alloc's *offset is set), so it must not be retried. A shared segment rebuilds then (Segment::heal,
  // segment_lock.cc). A byte of this process, not of the region: testing it after every call costs one load.
  static constexpr uint8_t kDamageMet = 1, kDamageMade = 2;
  uint8_t damage() const { return damage_; }
  void clear_damage() { damage_ = 0; }

  // The debug-mode calls when this heap is in debug mode (debug_heap.h), else null.
  virtual DebugHeapApi* debug() { return nullptr; }

  // Visits blocks in address order until visit returns false. Returns corrupted if the walk met
  // metadata it could not follow (blocks visited so far were visited).
  virtual Status walk(const std::function<bool(const BlockInfo&)>& visit) const = 0;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }

 protected:
  Heap(uint8_t* base, uint64_t size) : base_(base), size_(size) {}
  RegionHeader* region_header() const { return reinterpret_cast<RegionHeader*>(base_); }
  // Counter bookkeeping shared by every heap. count_alloc and count_free run on every operation's fast
  // path, so they are defined here (inline: no call across translation units).
  inline void count_alloc(uint64_t usable);
  inline void count_free(uint64_t usable);
  void count_failure();
  void count_resize(uint64_t old_usable, uint64_t new_usable);
  void fill_counter_stats(HeapStats* out) const;

  uint8_t* const base_;
  const uint64_t size_;
  uint8_t damage_ = 0;  // see damage()
};

// Counters live in memory others can write: they saturate instead of wrapping.
constexpr uint64_t saturating_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

inline void Heap::count_alloc(uint64_t usable) {
  HeapCounters& c = region_header()->counters;
  c.used = saturating_add(c.used, usable);
  if (c.used > c.peak_used) c.peak_used = c.used;
  c.live += 1;
  c.allocations += 1;
}

inline void Heap::count_free(uint64_t usable) {
  HeapCounters& c = region_header()->counters;
  // The counters live in memory others can write; never let them wrap below zero.
  c.used = c.used >= usable ? c.used - usable : 0;
  c.live = c.live > 0 ? c.live - 1 : 0;
  c.frees += 1;
}

// Formats a new heap over [base, base + size). base must be aligned to kMaxAlign. Returns
// invalid_argument for options out of range and out_of_memory when the region is too small to hold
// the heap's metadata and one block.
Status heap_format(Algorithm algorithm, uint8_t* base, uint64_t size, const HeapOptions& options,
                   std::unique_ptr<Heap>* out);

// Attaches to a heap formatted earlier, perhaps by another process or at another address. Validates the
// header (magic, algorithm, version, size, layout) before trusting anything: incompatible or corrupted.
Status heap_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out);

// Changes the size of an allocation: in place when possible, else allocates a new block aligned to
// `align`, copies min(old usable, new size) bytes and frees the old one. On failure the old allocation
// is untouched.
Status heap_realloc(Heap& heap, uint64_t offset, uint64_t size, uint64_t align, uint64_t* new_offset);

// Smallest region heap_format accepts for an algorithm and options (0 when the options are invalid).
uint64_t heap_min_region_size(Algorithm algorithm, const HeapOptions& options);

// Helpers for size arithmetic that cannot wrap.
inline bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }
inline bool valid_align(uint64_t a) { return is_power_of_two(a) && a <= kMaxAlign; }
// Rounds x up to a multiple of the power of two a. Caller guarantees x <= kMaxRequest-ish so no wrap.
constexpr uint64_t round_up(uint64_t x, uint64_t a) { return (x + (a - 1)) & ~(a - 1); }
constexpr uint64_t round_down(uint64_t x, uint64_t a) { return x & ~(a - 1); }
inline uint32_t floor_log2(uint64_t x) { return 63u - static_cast<uint32_t>(__builtin_clzll(x)); }

}  // namespace mempool
