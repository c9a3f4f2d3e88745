#include "shared_cache.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace mempool {
namespace {

std::atomic<uint64_t> g_fork_gen{1};
void on_fork_child() { g_fork_gen.fetch_add(1, std::memory_order_relaxed); }

uint8_t* heap_base(const Segment& s) { return s.base() + s.heap_offset(); }
uint64_t heap_bytes(const Segment& s) { return s.size() - s.heap_offset(); }
CacheEntry* cache_table(const Segment& s) { return reinterpret_cast<CacheEntry*>(s.base() + kCacheTableOffset); }

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t slab_check(uint64_t self, uint32_t slab_bytes, uint32_t slot_size) {
  return mix64(kSlabMagic ^ self ^ (uint64_t(slab_bytes) << 32 | slot_size));
}

uint8_t load_state(const uint8_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
bool lent(uint8_t v) { return (v & ~kSlotNamed) == kSlotLent && (v == kSlotLent || v == (kSlotLent | kSlotNamed)); }
bool valid_state(uint8_t v) { return v == kSlotFree || v == kSlotLent || v == kSlotRemote || v == (kSlotLent | kSlotNamed); }

// The header at heap offset `off` describes a slab of this segment (the heap has not been asked yet).
// With any_magic, the magic is not asked for (a slab being given back loses it first).
bool header_valid(const Segment& seg, uint64_t off, SlabHeader* copy, bool any_magic = false) {
  uint32_t slab = seg.slab_size();
  if (slab == 0 || off % kMinSlabSize != 0 || off < sizeof(RegionHeader) || off > heap_bytes(seg) ||
      heap_bytes(seg) - off < slab) {
    return false;
  }
  std::memcpy(copy, heap_base(seg) + off, sizeof *copy);  // one snapshot, validated, then used
  if ((!any_magic && copy->magic != kSlabMagic) || copy->self != off || copy->slab_bytes != slab) return false;
  uint32_t size = copy->slot_size;
  if (size < 16 || size > max_cached_size(slab) || size % 16 != 0) return false;
  uint32_t count = 0, slots = 0;
  slab_geometry(slab, size, &count, &slots);
  return copy->slot_count == count && copy->slots_offset == slots && copy->check == slab_check(off, slab, size);
}

// A valid header at `off` and the heap says a live allocation of at least a slab starts there.
bool slab_at(const Segment& seg, uint64_t off, SlabHeader* copy, uint64_t* usable) {
  uint64_t u = 0;
  if (!header_valid(seg, off, copy)) return false;
  if (seg.heap().usable_size(off, &u) != Status::ok || u < seg.slab_size()) return false;
  if (usable != nullptr) *usable = u;
  return true;
}

// The cache table index that owns a slab, or kNoOwner (none, or a stale entry).
uint32_t owner_of(const Segment& seg, const SlabHeader& h) {
  if (h.owner >= kCacheEntries) return kNoOwner;
  const CacheEntry& e = cache_table(seg)[h.owner];
  return e.pid != 0 && e.serial == h.owner_serial && h.owner_serial != 0 ? h.owner : kNoOwner;
}

uint64_t sat_sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

// Gives a slab back to the heap (under the lock). The magic goes first, so the freed bytes never look
// like a slab again (a later allocation at the same place could otherwise not be freed).
void release_slab(Segment& seg, uint64_t off, uint64_t usable) {
  SegmentHeader* h = seg.header();
  // The slab's slot counters may have run ahead of the seed (each free moves one on): the seed moves past
  // the furthest of them, so the next slab here hands out no word a stale handle of these slots holds.
  SlabHeader copy;
  if (header_valid(seg, off, &copy)) {
    const uint32_t* gens = reinterpret_cast<const uint32_t*>(heap_base(seg) + off + slab_gens_offset(copy.slot_count));
    uint32_t seed = h->slot_gen_seed;
    if (seed < kSlotGenBase || seed > kGenCount) seed = kSlotGenBase;
    uint32_t ahead = 0;
    for (uint32_t i = 0; i < copy.slot_count; ++i) {
      uint32_t d = ((gens[i] & kGenCount) - seed) & (kSlotGenBase - 1);
      if (d < (kSlotGenBase >> 1) && d >= ahead) ahead = d + 1;
    }
    h->slot_gen_seed = kSlotGenBase | ((seed + ahead) & (kSlotGenBase - 1));
  }
  h->slab_count = sat_sub(h->slab_count, 1);
  h->slab_frees += 1;
  h->slab_bytes = sat_sub(h->slab_bytes, usable);
  // Crash between the magic and the free: a used heap block that is no slab, unnamed, its word still
  // kOwnerFree (a slab's own word is never handed out): repair frees it.
  __atomic_store_n(&reinterpret_cast<SlabHeader*>(heap_base(seg) + off)->magic, uint64_t(0), __ATOMIC_RELEASE);
  seg.heap_free(off);
}

uint8_t* states_of(const Segment& seg, uint64_t off) { return heap_base(seg) + off + sizeof(SlabHeader); }

// A slab whose owner is gone (closed, dead): free slots become plainly free; with nothing lent it goes
// back to the heap, else it stays, ownerless, until its last slot is freed.
void retire_slab(Segment& seg, uint64_t off, const SlabHeader& copy, uint64_t usable) {
  uint8_t* st = states_of(seg, off);
  uint64_t n = 0;
  for (uint32_t i = 0; i < copy.slot_count; ++i) {
    uint8_t v = load_state(st + i);
    if (lent(v)) {
      ++n;
    } else if (v != kSlotFree) {
      __atomic_store_n(st + i, static_cast<uint8_t>(kSlotFree), __ATOMIC_RELAXED);
    }
  }
  if (n == 0) {
    release_slab(seg, off, usable);
    return;
  }
  SlabHeader* h = reinterpret_cast<SlabHeader*>(heap_base(seg) + off);
  h->remote_pending = 0;
  h->owner_serial = 0;
  h->owner = kNoOwner;
  seg.header()->orphan_epoch += 1;  // its free slots are for the next cache that needs this class
  seg.header()->orphan_lent_count += n;
  seg.header()->orphan_lent_bytes += n * copy.slot_size;
}

// Heap offsets of every slab, in address order.
void list_slabs(const Segment& seg, std::vector<uint64_t>* out) {
  uint32_t slab = seg.slab_size();
  if (slab == 0) return;
  seg.heap().walk([&](const BlockInfo& b) {
    SlabHeader h;
    if (b.used && b.size >= slab && b.offset % kMinSlabSize == 0 && header_valid(seg, b.offset, &h)) out->push_back(b.offset);
    return true;
  });
}

// Frees a slot of a slab this cache does not own, under the lock.
Status free_foreign_slot(Segment& seg, const SlotRef& ref, uint64_t off) {
  uint8_t v = load_state(ref.state);
  SlabHeader h;
  std::memcpy(&h, ref.header, sizeof h);
  uint32_t owner = owner_of(seg, h);
  uint8_t to = owner == kNoOwner ? kSlotFree : kSlotRemote;
  for (;;) {
    if (!lent(v)) return v == kSlotFree || v == kSlotRemote ? Status::double_free : Status::corrupted;
    if (__atomic_compare_exchange_n(ref.state, &v, to, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
  }
  // Crash here (we hold the lock): repair finds the slot free and its word not yet bumped; no handle of
  // the old word can free it again (it is not lent), and the next lend hands out that word afresh.
  gen_bump(ref.gen, false);
  if (v & kSlotNamed) seg.dir_forget_offset(off + seg.heap_offset());
  seg.header()->cached_frees += 1;
  if (owner != kNoOwner) {
    CacheEntry& e = cache_table(seg)[owner];
    e.remote_count += 1;
    e.remote_bytes += ref.slot_size;
    ref.header->remote_pending = 1;
    return Status::ok;
  }
  SegmentHeader* sh = seg.header();
  sh->orphan_lent_count = sat_sub(sh->orphan_lent_count, 1);
  sh->orphan_lent_bytes = sat_sub(sh->orphan_lent_bytes, ref.slot_size);
  sh->orphan_epoch += 1;  // a free slot in an ownerless slab: adoptable now
  // The bound is the validated geometry, never the live header, which a writer may change meanwhile.
  for (uint32_t i = 0; i < ref.slot_count; ++i) {
    if (lent(load_state(ref.state - ref.index + i))) return Status::ok;
  }
  uint64_t usable = 0;
  if (seg.heap().usable_size(ref.slab, &usable) == Status::ok) release_slab(seg, ref.slab, usable);
  return Status::ok;
}

}  // namespace

bool shared_lends_without_magic(const Segment& seg, uint64_t off) {
  SlabHeader copy;
  if (!header_valid(seg, off, &copy, true)) return false;
  const uint8_t* st = states_of(seg, off);
  for (uint32_t i = 0; i < copy.slot_count; ++i) {
    if (lent(__atomic_load_n(st + i, __ATOMIC_RELAXED))) return true;
  }
  return false;
}

uint32_t choose_slab_size(uint64_t heap_size) {
  if (heap_size < 256 * 1024) return 0;
  uint64_t s = uint64_t(1) << floor_log2(heap_size / 256);
  if (s < kMinSlabSize) s = kMinSlabSize;
  if (s > kMaxSlabSize) s = kMaxSlabSize;
  return static_cast<uint32_t>(s);
}

uint32_t max_cached_size(uint32_t slab_size) {
  if (slab_size == 0) return 0;
  return slab_size / 8 < kMaxSlotSize ? slab_size / 8 : kMaxSlotSize;
}

void slab_geometry(uint32_t slab_bytes, uint32_t slot_size, uint32_t* count, uint32_t* slots_offset) {
  // Largest n with round_up(round_up(64 + n, 4) + 4n, 16) + n * slot_size <= slab_bytes.
  auto slots_at = [](uint32_t n) { return round_up(uint64_t(slab_gens_offset(n)) + 4 * uint64_t(n), 16); };
  uint32_t n = (slab_bytes - static_cast<uint32_t>(sizeof(SlabHeader))) / (slot_size + 5);
  while (n > 0 && slots_at(n) + uint64_t(n) * slot_size > slab_bytes) --n;
  *count = n;
  *slots_offset = static_cast<uint32_t>(slots_at(n));
}

bool shared_is_slab(const Segment& seg, uint64_t off) {
  SlabHeader h;
  return slab_at(seg, off, &h, nullptr);
}

bool shared_find_slot(const Segment& seg, uint64_t off, SlotRef* out) {
  uint32_t slab = seg.slab_size();
  if (slab == 0 || off >= heap_bytes(seg)) return false;
  uint64_t page = round_down(off, kMinSlabSize);
  for (uint64_t back = 0; back < slab && back <= page; back += kMinSlabSize) {
    uint64_t c = page - back;
    SlabHeader h;
    if (!header_valid(seg, c, &h)) continue;
    uint64_t first = c + h.slots_offset;
    if (off < first || off - first >= uint64_t(h.slot_count) * h.slot_size) continue;
    uint64_t usable = 0;
    if (seg.heap().usable_size(c, &usable) != Status::ok || usable < slab) continue;  // stale bytes, not a slab
    uint64_t rel = off - first;
    if (rel % h.slot_size != 0) return false;  // inside a slot
    out->slab = c;
    out->index = static_cast<uint32_t>(rel / h.slot_size);
    out->slot_size = h.slot_size;
    out->slot_count = h.slot_count;
    out->header = reinterpret_cast<SlabHeader*>(heap_base(seg) + c);
    out->state = states_of(seg, c) + out->index;
    out->gen = reinterpret_cast<uint32_t*>(heap_base(seg) + c + slab_gens_offset(h.slot_count)) + out->index;
    return true;
  }
  return false;
}

Status shared_usable_size(const Segment& seg, uint64_t off, uint64_t* size) {
  Status s = seg.heap().usable_size(off, size);
  if (s == Status::ok) return shared_is_slab(seg, off) ? Status::foreign : Status::ok;
  SlotRef ref;
  if (!shared_find_slot(seg, off, &ref)) return s;
  uint8_t v = load_state(ref.state);
  if (!lent(v)) return v == kSlotFree || v == kSlotRemote ? Status::double_free : Status::corrupted;
  *size = ref.slot_size;
  return Status::ok;
}

Status Segment::usable_any(uint64_t off, uint64_t* size) const { return shared_usable_size(*this, off, size); }

uint32_t* shared_gen_word(const Segment& seg, uint64_t off) {
  uint64_t u = 0;
  if (seg.heap().usable_size(off, &u) == Status::ok) return shared_is_slab(seg, off) ? nullptr : seg.gen_word(off);
  SlotRef ref;
  return shared_find_slot(seg, off, &ref) ? ref.gen : nullptr;
}

Status shared_mark_named(Segment& seg, uint64_t off) {
  uint64_t u = 0;
  if (seg.heap().usable_size(off, &u) == Status::ok) return shared_is_slab(seg, off) ? Status::foreign : Status::ok;
  SlotRef ref;
  if (!shared_find_slot(seg, off, &ref)) return Status::foreign;
  uint8_t v = load_state(ref.state);
  for (;;) {
    if (!lent(v)) return Status::foreign;
    if (v & kSlotNamed) return Status::ok;
    if (__atomic_compare_exchange_n(ref.state, &v, static_cast<uint8_t>(v | kSlotNamed), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      return Status::ok;
    }
  }
}

Status shared_walk(const Segment& seg, const std::function<bool(const BlockInfo&)>& visit) {
  uint32_t slab = seg.slab_size();
  bool stopped = false;
  Status s = seg.heap().walk([&](const BlockInfo& b) {
    SlabHeader h;
    if (!b.used || slab == 0 || b.size < slab || b.offset % kMinSlabSize != 0 || !header_valid(seg, b.offset, &h)) {
      if (!visit(b)) stopped = true;
      return !stopped;
    }
    const uint8_t* st = states_of(seg, b.offset);
    for (uint32_t i = 0; i < h.slot_count; ++i) {
      BlockInfo slot{b.offset + h.slots_offset + uint64_t(i) * h.slot_size, h.slot_size, lent(load_state(st + i))};
      if (!visit(slot)) {
        stopped = true;
        return false;
      }
    }
    return true;
  });
  return s;
}

void shared_check(const Segment& seg, CheckResult* r) {
  const SegmentHeader* sh = seg.header();
  uint32_t slab = seg.slab_size();
  if (sh->slab_size != slab) r->report("slabs: the header's slab size changed");
  const CacheEntry* t = cache_table(seg);
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    if (t[i].pid != 0 && (slab == 0 || t[i].serial == 0)) r->report("slabs: cache entry " + std::to_string(i) + " is impossible");
  }
  if (slab == 0) {
    if (sh->slab_count != 0) r->report("slabs: slabs counted in a segment without slabs");
    return;
  }
  uint64_t count = 0, bytes = 0, orphan = 0, orphan_bytes = 0;
  seg.heap().walk([&](const BlockInfo& b) {
    SlabHeader h;
    if (!b.used || b.size < slab || b.offset % kMinSlabSize != 0 || !header_valid(seg, b.offset, &h)) return true;
    ++count;
    bytes += b.size;
    uint32_t owner = owner_of(seg, h);
    if (owner == kNoOwner && h.owner != kNoOwner) r->report("slabs: slab at " + std::to_string(b.offset) + " names an owner that is not registered");
    const uint8_t* st = states_of(seg, b.offset);
    uint64_t n = 0;
    for (uint32_t i = 0; i < h.slot_count; ++i) {
      uint8_t v = load_state(st + i);
      if (!valid_state(v)) {
        r->report("slabs: slot " + std::to_string(i) + " of the slab at " + std::to_string(b.offset) + " has an impossible state");
      } else if (h.owner == kNoOwner && v == kSlotRemote) {
        r->report("slabs: an ownerless slab holds a remotely freed slot");
      }
      if (lent(v)) ++n;
    }
    if (h.owner == kNoOwner) {
      orphan += n;
      orphan_bytes += n * h.slot_size;
    }
    return true;
  });
  if (count != sh->slab_count || bytes != sh->slab_bytes) r->report("slabs: the header's slab totals disagree with the slabs");
  if (orphan != sh->orphan_lent_count || orphan_bytes != sh->orphan_lent_bytes) {
    r->report("slabs: the header's ownerless totals disagree with the slabs");
  }
}

void shared_adjust_counters(const uint8_t* page, uint64_t* used, uint64_t* live) {
  SegmentHeader h;
  std::memcpy(&h, page, sizeof h);
  if (h.slab_size == 0) return;
  // Signed sums: the owners' counters are read while they run. Every term is clamped below 2^48 first
  // (anyone can write them), so that the sum of these 36 terms cannot overflow.
  auto term = [](uint64_t v) { return static_cast<int64_t>(v < (uint64_t(1) << 48) ? v : uint64_t(1) << 48); };
  int64_t u = term(*used) - term(h.slab_bytes) + term(h.orphan_lent_bytes);
  int64_t l = term(*live) - term(h.slab_count) + term(h.orphan_lent_count);
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    CacheEntry e;
    std::memcpy(&e, page + kCacheTableOffset + i * sizeof(CacheEntry), sizeof e);
    if (e.pid == 0) continue;
    u += term(e.lent_bytes) - term(e.remote_bytes);
    l += term(e.lent_count) - term(e.remote_count);
  }
  *used = u > 0 ? static_cast<uint64_t>(u) : 0;
  *live = l > 0 ? static_cast<uint64_t>(l) : 0;
}

void shared_adjust_stats(const Segment& seg, HeapStats* s) {
  const SegmentHeader* h = seg.header();
  if (h->slab_size == 0) return;
  uint64_t page[kSegmentHeaderSize / 8];
  for (uint64_t i = 0; i < kSegmentHeaderSize / 8; ++i) {
    page[i] = __atomic_load_n(reinterpret_cast<const uint64_t*>(seg.base()) + i, __ATOMIC_RELAXED);
  }
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(page);
  shared_adjust_counters(bytes, &s->used, &s->live_allocations);
  uint64_t allocs = h->cached_allocations, frees = h->cached_frees;
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    CacheEntry e;
    std::memcpy(&e, bytes + kCacheTableOffset + i * sizeof(CacheEntry), sizeof e);
    if (e.pid == 0) continue;
    allocs += e.allocations;
    frees += e.frees;
  }
  // The heap counted each slab as one allocation (and one free when it went back).
  s->allocations = sat_sub(s->allocations, h->slab_allocations) + allocs;
  s->frees = sat_sub(s->frees, h->slab_frees) + frees;
  // Free slots inside slabs are neither used nor free to the heap: they count as overhead. Counters from
  // the segment can be scribbled: clamp so that the subtractions below cannot wrap.
  if (s->free > s->capacity) s->free = s->capacity;
  if (s->used > s->capacity - s->free) s->used = s->capacity - s->free;
  s->overhead = s->capacity - s->used - s->free;
  if (s->peak_used < s->used) s->peak_used = s->used;
}

void shared_recount(Segment& seg) {
  SegmentHeader* sh = seg.header();
  if (seg.slab_size() == 0) return;
  std::vector<uint64_t> slabs;
  list_slabs(seg, &slabs);
  uint64_t count = 0, bytes = 0, orphan = 0, orphan_bytes = 0;
  std::vector<std::pair<uint64_t, uint64_t>> empty;
  for (uint64_t off : slabs) {
    SlabHeader h;
    uint64_t usable = 0;
    if (!slab_at(seg, off, &h, &usable)) continue;
    ++count;
    bytes += usable;
    if (owner_of(seg, h) != kNoOwner) continue;
    if (h.owner != kNoOwner) {  // a stale owner: the slab is ownerless now
      SlabHeader* live = reinterpret_cast<SlabHeader*>(heap_base(seg) + off);
      live->owner = kNoOwner;
      live->owner_serial = 0;
      sh->orphan_epoch += 1;
    }
    uint8_t* st = states_of(seg, off);
    uint64_t n = 0;
    for (uint32_t i = 0; i < h.slot_count; ++i) {
      uint8_t v = load_state(st + i);
      if (lent(v)) ++n;
      else if (v != kSlotFree) __atomic_store_n(st + i, static_cast<uint8_t>(kSlotFree), __ATOMIC_RELAXED);
    }
    if (n == 0) empty.emplace_back(off, usable);
    orphan += n;
    orphan_bytes += n * h.slot_size;
  }
  sh->slab_count = count;
  sh->slab_bytes = bytes;
  sh->orphan_lent_count = orphan;
  sh->orphan_lent_bytes = orphan_bytes;
  for (auto& e : empty) release_slab(seg, e.first, e.second);
}

uint32_t shared_collect_dead(Segment& seg) {
  if (seg.slab_size() == 0 || !seg.same_pid_namespace()) return 0;
  CacheEntry* t = cache_table(seg);
  uint32_t me = static_cast<uint32_t>(getpid());
  bool dead[kCacheEntries] = {};
  uint32_t n = 0;
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    uint32_t pid = t[i].pid;
    if (pid != 0 && pid != me && !process_alive(pid, t[i].start_ticks)) {
      dead[i] = true;
      ++n;
    }
  }
  if (n == 0) return 0;
  if (seg.track_owners()) {
    // Their unnamed blocks have no other owner (shared_pool.h, O1): free them, slots of their own slabs
    // included, before the slabs are retired. Crash in the middle: the entries are still there, and the
    // next process that collects them finishes the job.
    std::vector<uint64_t> owned;
    shared_walk(seg, [&](const BlockInfo& b) {
      if (!b.used) return true;
      uint32_t* w = shared_gen_word(seg, b.offset);
      if (w == nullptr) return true;
      uint32_t v = *w, owner = (v & kGenOwnerMask) >> kGenOwnerShift;
      // kOwnerFree (31) and a scribbled field are no cache entry: only 1..kCacheEntries index `dead`.
      if (!(v & kGenNamed) && owner != 0 && owner <= kCacheEntries && dead[owner - 1]) owned.push_back(b.offset);
      return true;
    });
    SegmentHeader* rh = seg.header();
    for (uint64_t off : owned) {
      uint64_t usable = 0;
      if (seg.usable_any(off, &usable) != Status::ok) continue;
      uint32_t* w = shared_gen_word(seg, off);
      if (w == nullptr) continue;
      if (shared_pinned(seg, off + seg.heap_offset(), true)) {
        gen_bump(w, false);  // the pins do the free
      } else if (shared_free_locked(seg, off) != Status::ok) {
        continue;
      }
      if (rh->reclaimed_blocks != UINT32_MAX) rh->reclaimed_blocks += 1;
      rh->reclaimed_bytes = saturating_add(rh->reclaimed_bytes, usable);
    }
  }
  std::vector<uint64_t> slabs;
  list_slabs(seg, &slabs);
  for (uint64_t off : slabs) {
    SlabHeader h;
    uint64_t usable = 0;
    if (!slab_at(seg, off, &h, &usable)) continue;
    uint32_t owner = owner_of(seg, h);
    if (owner != kNoOwner && dead[owner]) retire_slab(seg, off, h, usable);
  }
  SegmentHeader* sh = seg.header();
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    if (!dead[i]) continue;
    sh->cached_allocations += t[i].allocations;
    sh->cached_frees += t[i].frees;
    __atomic_store_n(&t[i].pid, 0u, __ATOMIC_RELEASE);
    std::memset(reinterpret_cast<uint8_t*>(&t[i]) + 4, 0, sizeof(CacheEntry) - 4);
  }
  return n;
}

// --- SharedCache ----------------------------------------------------------------------------------------

uint64_t SharedCache::current_fork_gen() { return g_fork_gen.load(std::memory_order_relaxed); }

SharedCache::SharedCache(Segment* seg) : seg_(seg), heap_base_(heap_base(*seg)) {
  static const int registered = pthread_atfork(nullptr, nullptr, on_fork_child);
  (void)registered;
  fork_gen_ = current_fork_gen();
  slab_size_ = seg->slab_size();
  max_size_ = max_cached_size(slab_size_);
  if (slab_size_ == 0 || seg->heap().debug() != nullptr) return;
  pages_ = heap_bytes(*seg) >> 12;
  page_map_ = static_cast<uint32_t*>(std::calloc(pages_, sizeof(uint32_t)));
  if (page_map_ == nullptr) return;
  register_entry();
  if (!enabled_) {
    std::free(page_map_);
    page_map_ = nullptr;
  }
}

SharedCache::~SharedCache() {
  close();
  std::free(page_map_);
}

void SharedCache::register_entry() {
  bool recovered = false;
  // Only processes of the creator's PID namespace get a cache: a cache's pid is judged dead or alive
  // by others (shared_collect_dead), and a pid means something only in its own namespace. Others
  // allocate through the lock, as attachments beyond kCacheEntries do.
  if (!seg_->same_pid_namespace()) return;
  if (seg_->lock(&recovered) != Status::ok) return;
  shared_collect_dead(*seg_);
  CacheEntry* t = cache_table(*seg_);
  for (uint32_t i = 0; i < kCacheEntries; ++i) {
    if (t[i].pid != 0) continue;
    SegmentHeader* h = seg_->header();
    if (++h->cache_serial == 0) ++h->cache_serial;
    std::memset(&t[i], 0, sizeof t[i]);
    t[i].serial = h->cache_serial;
    uint32_t pid = static_cast<uint32_t>(getpid());
    t[i].start_ticks = process_start_ticks(pid);
    __atomic_store_n(&t[i].pid, pid, __ATOMIC_RELEASE);
    index_ = i;
    serial_ = t[i].serial;
    entry_ = &t[i];
    enabled_ = true;
    owner_bits_ = seg_->track_owners() ? (i + 1) << kGenOwnerShift : 0;
    break;
  }
  seg_->unlock();
}

void SharedCache::disown() {
  // A forked child (the parent's slabs are the parent's), or an owner whose entry was retired: these
  // records must never act again.
  enabled_ = false;
  slabs_.clear();
  for (auto& c : classes_) {
    c.stack.clear();
    c.slabs.clear();
  }
  std::free(page_map_);
  page_map_ = nullptr;
  pages_ = 0;
  entry_ = nullptr;
  index_ = kNoOwner;
}

// Takes the slot on top of a non-empty private stack and lends it: only the owner leaves kSlotFree in its
// slabs, so a plain store is enough. *gen gets the slot's generation word (the new owner's handle).
uint64_t SharedCache::lend_top(std::vector<uint64_t>* stack, uint32_t* gen) {
  uint64_t o = stack->back();
  stack->pop_back();
  SlabRec* rec = mine(o);
  uint32_t index = static_cast<uint32_t>((((o - rec->slots_base) >> 4) * rec->recip) >> 32);
  uint32_t word = __atomic_load_n(rec->gens + index, __ATOMIC_RELAXED) & kGenCount;
  if (owner_bits_ != 0) {
    word |= owner_bits_;
    __atomic_store_n(rec->gens + index, word, __ATOMIC_RELAXED);  // before the state: lent with its owner
  }
  *gen = word;
  __atomic_store_n(rec->states + index, static_cast<uint8_t>(kSlotLent), __ATOMIC_RELAXED);
  lent_count_ += 1;
  lent_bytes_ += rec->slot_size;
  allocations_ += 1;
  publish();
  __atomic_store_n(&entry_->allocations, allocations_, __ATOMIC_RELAXED);
  return o;
}

Status SharedCache::alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* off, uint32_t* gen) {
  if (usable() && size - 1 < max_size_ && align <= kDefaultAlign && hint == kNoHint) {
    std::vector<uint64_t>& stack = classes_[(size - 1) >> 4].stack;
    if (__builtin_expect(!stack.empty(), 1)) {
      *off = lend_top(&stack, gen);
      return Status::ok;
    }
  }
  bool recovered = false;
  Status s = seg_->lock(&recovered);
  if (s != Status::ok) return s;
  s = alloc_locked(size, align, hint, off, gen);
  seg_->unlock();
  return s;
}

bool SharedCache::try_free(uint64_t off, uint32_t gen, Status* out) {
  if (!usable()) return false;
  SlabRec* rec = mine(off);
  if (rec == nullptr) return false;
  uint64_t rel = off - rec->slots_base;  // wraps for offsets before slot 0: then >= span
  if (rel >= rec->span || uint64_t(static_cast<uint32_t>(((rel >> 4) * rec->recip) >> 32)) * rec->slot_size != rel) {
    *out = Status::foreign;  // the slab header, or inside a slot
    return true;
  }
  uint32_t index = static_cast<uint32_t>(((rel >> 4) * rec->recip) >> 32);
  // The transfer happens at one compare-and-swap of the generation word: whoever moves it from the handle's
  // value owns the free. Everyone who frees or names a plainly lent slot (this owner here; others under the
  // lock, shared_pool.cc) swaps the word first and only then its state byte, so a free here cannot land
  // on a slot that someone else freed and this owner lent again meanwhile (the ABA of two holders).
  uint8_t v = load_state(rec->states + index);
  if (v != kSlotLent) {
    if (v == kSlotFree || v == kSlotRemote) *out = Status::double_free;
    else if (lent(v)) return false;  // ever named or pinned: its frees go through the lock
    else *out = Status::corrupted;
    return true;
  }
  uint32_t word = __atomic_load_n(rec->gens + index, __ATOMIC_ACQUIRE);
  if (gen == kNoHandle) return false;  // refused under the lock, with the code its state deserves
  if (gen != kAnyGen && gen != word) {
    if (word & kGenNamed) return false;  // named meanwhile: the locked path says so
    *out = Status::stale;
    return true;
  }
  if (!__atomic_compare_exchange_n(rec->gens + index, &word, ((word + 1) & kGenCount), false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    return false;  // someone else won the word just now: the locked path sees what they did
  }
  // Crash here: the word says freed, the state says lent: the slot is lost to this slab until repair's
  // recount (a lent slot of a dead owner stays lent: one slot, the dead process's own).
  uint8_t expected = kSlotLent;
  if (!__atomic_compare_exchange_n(rec->states + index, &expected, static_cast<uint8_t>(kSlotFree), false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    *out = Status::corrupted;  // only the word's winner moves a lent slot: someone wrote the state byte
    return true;
  }
  took_back(*rec, off);
  *out = Status::ok;
  return true;
}

Status SharedCache::alloc_locked(uint64_t size, uint64_t align, uint64_t hint, uint64_t* off, uint32_t* gen) {
  if (usable() && size - 1 < max_size_ && align <= kDefaultAlign && hint == kNoHint) {
    uint32_t cls = static_cast<uint32_t>((size - 1) >> 4);
    std::vector<uint64_t>& stack = classes_[cls].stack;
    if (stack.empty()) {
      if (slab_backoff_ > 0) --slab_backoff_;
      else refill(cls);
    }
    if (!stack.empty()) {
      *off = lend_top(&stack, gen);
      return Status::ok;
    }
  }
  uint64_t a = heap_align(*seg_, align);
  // Crash from here to the word's store below: the heap has the block used, and its word still says
  // kOwnerFree (every free and the format leave that): the next process to take the lock repairs, and
  // repair frees such a block (shared_pool.cc, repair_names_and_pins). Nobody held it.
  Status s = seg_->heap_alloc(size, a, hint, off);
  if (s == Status::out_of_memory && size <= kMaxRequest) {
    // Memory parked in slabs may be what is missing: give back what is free, and what dead caches hold.
    uint64_t given = trim_locked();
    if (shared_collect_dead(*seg_) > 0 || given > 0) s = seg_->heap_alloc(size, a, hint, off);
  }
  if (s == Status::ok) {
    uint32_t* w = seg_->gen_word(*off);
    if (w == nullptr) {  // the heap ignored the granule: never hand out a block no generation covers
      seg_->heap_free(*off);
      return Status::corrupted;
    }
    // A free block's word is unnamed and records no owner; stored whole anyway, so that a word a crash left
    // named (or owned) cannot make the new owner's handle useless.
    uint32_t word = (__atomic_load_n(w, __ATOMIC_RELAXED) & kGenCount) | owner_bits_;
    __atomic_store_n(w, word, __ATOMIC_RELEASE);
    *gen = word;
  }
  return s;
}

Status SharedCache::free_locked(uint64_t off) {
  if (usable()) {
    if (SlabRec* rec = mine(off)) {
      uint64_t rel = off - rec->slots_base;
      if (rel >= rec->span) return Status::foreign;
      uint32_t index = static_cast<uint32_t>(((rel >> 4) * rec->recip) >> 32);
      if (uint64_t(index) * rec->slot_size != rel) return Status::foreign;
      uint8_t* state = rec->states + index;
      uint8_t v = load_state(state);
      for (;;) {
        if (!lent(v)) return v == kSlotFree || v == kSlotRemote ? Status::double_free : Status::corrupted;
        if (__atomic_compare_exchange_n(state, &v, static_cast<uint8_t>(kSlotFree), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
      }
      gen_bump(rec->gens + index, false);
      if (v & kSlotNamed) seg_->dir_forget_offset(off + seg_->heap_offset());
      took_back(*rec, off);
      return Status::ok;
    }
  }
  return shared_free_locked(*seg_, off);
}

Status shared_free_locked(Segment& seg, uint64_t off) {
  Segment* seg_ = &seg;
  Heap& heap = seg_->heap();
  uint64_t usable_bytes = 0;
  if (heap.usable_size(off, &usable_bytes) == Status::ok) {
    if (shared_is_slab(*seg_, off)) return Status::foreign;  // a slab is not the user's allocation
    Status s = seg_->heap_free(off);
    if (s == Status::ok) {
      // Crash between the free and the bump: the block is free; its old word can only free a block that
      // starts here again, and every such block is handed out with the word as it is then: the old holder
      // (the dead process, which owned it) is gone. Same for a live caller: bump now. The word then says
      // free (kOwnerFree), which is what lets repair find a block whose next allocator dies before its store.
      if (uint32_t* w = seg_->gen_word(off)) gen_free(w);
      seg_->dir_forget_offset(off + seg_->heap_offset());
    }
    return s;
  }
  SlotRef ref;
  if (shared_find_slot(*seg_, off, &ref)) return free_foreign_slot(*seg_, ref, off);
  return seg_->heap_free(off);  // not live: the heap says which code (and changes nothing)
}

bool SharedCache::refill(uint32_t cls) { return take_back_remote(cls) || adopt_slab(cls) || new_slab(cls); }

// An ownerless slab of this class with free slots becomes ours (its owner closed or died while some of its
// slots were still lent or named): without this, each such slab would strand its free slots for good.
bool SharedCache::adopt_slab(uint32_t cls) {
  SegmentHeader* sh = seg_->header();
  if (sh->orphan_lent_count == 0 || adopt_epoch_[cls] == sh->orphan_epoch + 1) return false;
  uint32_t size = (cls + 1) * 16;
  std::vector<uint64_t> slabs;
  list_slabs(*seg_, &slabs);
  for (uint64_t off : slabs) {
    SlabHeader h;
    uint64_t usable_bytes = 0;
    if (!slab_at(*seg_, off, &h, &usable_bytes) || h.slot_size != size || owner_of(*seg_, h) != kNoOwner) continue;
    uint8_t* st = states_of(*seg_, off);
    uint32_t lent_n = 0, free_n = 0;
    for (uint32_t i = 0; i < h.slot_count; ++i) {
      uint8_t v = load_state(st + i);
      if (lent(v)) ++lent_n;
      else if (v == kSlotFree) ++free_n;
    }
    if (free_n == 0) continue;
    // Crash here (under the lock): the slab names us, a registered owner; if we die, shared_collect_dead
    // retires it again, and repair's recount derives the totals from the slabs.
    SlabHeader* live = reinterpret_cast<SlabHeader*>(heap_base_ + off);
    live->owner = index_;
    live->owner_serial = serial_;
    live->remote_pending = 0;
    sh->orphan_lent_count = sat_sub(sh->orphan_lent_count, lent_n);
    sh->orphan_lent_bytes = sat_sub(sh->orphan_lent_bytes, uint64_t(lent_n) * size);
    // Its lent slots are ours to take back now: counted as lent by us, as lend_top() would have.
    lent_count_ += lent_n;
    lent_bytes_ += uint64_t(lent_n) * size;
    publish();
    add_rec(off, size, h.slot_count, h.slots_offset, cls);
    std::vector<uint64_t>& stack = classes_[cls].stack;
    for (uint32_t i = h.slot_count; i-- > 0;) {
      if (load_state(st + i) == kSlotFree) stack.push_back(off + h.slots_offset + uint64_t(i) * size);
    }
    return true;
  }
  adopt_epoch_[cls] = sh->orphan_epoch + 1;  // nothing for this class until another slab goes ownerless
  return false;
}

void SharedCache::add_rec(uint64_t off, uint32_t size, uint32_t count, uint32_t slots, uint32_t cls) {
  uint32_t r = static_cast<uint32_t>(slabs_.size());
  for (uint32_t i = 0; i < slabs_.size(); ++i) {
    if (slabs_[i].base == 0) {
      r = i;
      break;
    }
  }
  uint8_t* p = heap_base_ + off;
  uint64_t d = size / 16;
  SlabRec rec{off, off + slots, uint64_t(count) * size, p + sizeof(SlabHeader),
              reinterpret_cast<uint32_t*>(p + slab_gens_offset(count)),
              (uint64_t(1) << 32) / d + ((uint64_t(1) << 32) % d != 0), size, count, cls};
  if (r == slabs_.size()) slabs_.push_back(rec);
  else slabs_[r] = rec;
  for (uint64_t pg = off >> 12; pg < (off + slab_size_) >> 12; ++pg) page_map_[pg] = r + 1;
  classes_[cls].slabs.push_back(r);
}

bool SharedCache::take_back_remote(uint32_t cls) {
  if (__atomic_load_n(&entry_->remote_count, __ATOMIC_RELAXED) == 0) return false;
  uint64_t n = 0, bytes = 0;
  ClassState& c = classes_[cls];
  for (uint32_t r : c.slabs) {
    SlabRec& rec = slabs_[r];
    if (rec.base == 0) continue;
    SlabHeader* h = reinterpret_cast<SlabHeader*>(heap_base_ + rec.base);
    if (h->remote_pending == 0) continue;
    h->remote_pending = 0;
    for (uint32_t i = rec.count; i-- > 0;) {
      uint8_t v = kSlotRemote;
      if (__atomic_compare_exchange_n(rec.states + i, &v, static_cast<uint8_t>(kSlotFree), false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        c.stack.push_back(rec.slots_base + uint64_t(i) * rec.slot_size);
        ++n;
        bytes += rec.slot_size;
      }
    }
  }
  if (n == 0) return false;
  lent_count_ -= n;
  lent_bytes_ -= bytes;
  entry_->remote_count = sat_sub(entry_->remote_count, n);
  entry_->remote_bytes = sat_sub(entry_->remote_bytes, bytes);
  publish();
  return true;
}

bool SharedCache::new_slab(uint32_t cls) {
  uint64_t off = 0;
  Heap& heap = seg_->heap();
  // Crash from the alloc until the magic's store below: a used block that is no slab, with its word
  // kOwnerFree (a slab's word is never stored): repair frees it. After the magic it is a slab of ours, and
  // collecting a dead cache retires it.
  if (seg_->heap_alloc(slab_size_, kMinSlabSize, kNoHint, &off) != Status::ok) {
    slab_backoff_ = 256;
    return false;
  }
  uint64_t usable = 0;
  if (off % kMinSlabSize != 0 || heap.usable_size(off, &usable) != Status::ok || usable < slab_size_ ||
      heap_bytes(*seg_) - off < slab_size_) {
    seg_->heap_free(off);
    slab_backoff_ = 256;
    return false;
  }
  uint32_t size = (cls + 1) * 16, count = 0, slots = 0;
  slab_geometry(slab_size_, size, &count, &slots);
  uint8_t* p = heap_base_ + off;
  std::memset(p + sizeof(SlabHeader), kSlotFree, count);
  // Slot words start from the segment's seed, in [2^30, 2^31): far from the heap words (which start at 0
  // and move one per transfer), so a stale handle of an earlier block here does not match a slot.
  SegmentHeader* seed_h = seg_->header();
  uint32_t seed = seed_h->slot_gen_seed;
  if (seed < kSlotGenBase || seed > kGenCount) seed = kSlotGenBase;
  uint32_t* gens = reinterpret_cast<uint32_t*>(p + slab_gens_offset(count));
  for (uint32_t i = 0; i < count; ++i) gens[i] = kSlotGenBase | ((seed + i) & (kSlotGenBase - 1));
  seed_h->slot_gen_seed = kSlotGenBase | ((seed + count) & (kSlotGenBase - 1));
  SlabHeader* h = reinterpret_cast<SlabHeader*>(p);
  h->self = off;
  h->slab_bytes = slab_size_;
  h->slot_size = size;
  h->slot_count = count;
  h->slots_offset = slots;
  h->owner = index_;
  h->owner_serial = serial_;
  h->remote_pending = 0;
  h->reserved0 = 0;
  h->check = slab_check(off, slab_size_, size);
  h->reserved1 = 0;
  __atomic_store_n(&h->magic, kSlabMagic, __ATOMIC_RELEASE);  // a slab from here on
  SegmentHeader* sh = seg_->header();
  sh->slab_count += 1;
  sh->slab_bytes += usable;
  sh->slab_allocations += 1;

  add_rec(off, size, count, slots, cls);
  std::vector<uint64_t>& stack = classes_[cls].stack;
  stack.reserve(stack.size() + count);
  for (uint32_t i = count; i-- > 0;) stack.push_back(off + slots + uint64_t(i) * size);
  return true;
}

void SharedCache::forget_slab(uint32_t r) {
  SlabRec& rec = slabs_[r];
  uint64_t lo = rec.base, hi = rec.base + slab_size_;
  for (uint64_t pg = lo >> 12; pg < hi >> 12; ++pg) page_map_[pg] = 0;
  ClassState& c = classes_[rec.cls];
  std::vector<uint64_t> kept;
  kept.reserve(c.stack.size());
  for (uint64_t o : c.stack) {
    if (o < lo || o >= hi) kept.push_back(o);
  }
  c.stack.swap(kept);
  for (size_t i = 0; i < c.slabs.size(); ++i) {
    if (c.slabs[i] == r) {
      c.slabs.erase(c.slabs.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  rec.base = 0;
}

uint64_t SharedCache::trim_locked() {
  if (!usable()) return 0;
  uint64_t given = 0;
  for (uint32_t r = 0; r < slabs_.size(); ++r) {
    SlabRec& rec = slabs_[r];
    if (rec.base == 0) continue;
    bool all_free = true;
    for (uint32_t i = 0; i < rec.count && all_free; ++i) all_free = load_state(rec.states + i) == kSlotFree;
    if (!all_free) continue;
    SlabHeader h;
    uint64_t usable_bytes = 0;
    if (!slab_at(*seg_, rec.base, &h, &usable_bytes) || h.owner != index_ || h.owner_serial != serial_) continue;
    uint64_t base = rec.base;
    forget_slab(r);
    release_slab(*seg_, base, usable_bytes);
    given += usable_bytes;
  }
  return given;
}

void SharedCache::close(uint32_t lock_ms) {
  if (!enabled_) return;
  if (fork_gen_ != current_fork_gen()) {
    disown();
    return;
  }
  if (!seg_->mapped()) return;
  bool recovered = false;
  if (seg_->lock_within(lock_ms, &recovered) != Status::ok) return;  // stays registered until this process exits
  if (owner_bits_ != 0) {
    // Blocks this attachment owns outlive it (the process may use them through another one): they stop
    // naming an entry that a later attachment will reuse.
    shared_walk(*seg_, [&](const BlockInfo& b) {
      if (!b.used) return true;
      uint32_t* w = shared_gen_word(*seg_, b.offset);
      if (w != nullptr && (*w & kGenOwnerMask) == owner_bits_) __atomic_store_n(w, *w & ~kGenOwnerMask, __ATOMIC_RELEASE);
      return true;
    });
  }
  for (uint32_t r = 0; r < slabs_.size(); ++r) {
    SlabRec& rec = slabs_[r];
    if (rec.base == 0) continue;
    SlabHeader h;
    uint64_t usable_bytes = 0;
    if (slab_at(*seg_, rec.base, &h, &usable_bytes) && h.owner == index_ && h.owner_serial == serial_) {
      retire_slab(*seg_, rec.base, h, usable_bytes);
    }
  }
  SegmentHeader* sh = seg_->header();
  sh->cached_allocations += allocations_;
  sh->cached_frees += frees_;
  __atomic_store_n(&entry_->pid, 0u, __ATOMIC_RELEASE);
  std::memset(reinterpret_cast<uint8_t*>(entry_) + 4, 0, sizeof(CacheEntry) - 4);
  seg_->unlock();
  disown();
}

}  // namespace mempool
