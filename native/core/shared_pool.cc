#include "shared_pool.h"

#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <unistd.h>

#include "debug_heap.h"

namespace mempool {
namespace {

uint32_t my_pid() { return static_cast<uint32_t>(getpid()); }

// This process's start ticks, read from /proc once per pid (a fork has another pid): a pin records them,
// and reading /proc on every read() cost about 9 us.
uint64_t my_start_ticks() {
  static std::atomic<uint64_t> cached{0};
  static std::atomic<uint32_t> cached_pid{0};
  uint32_t pid = my_pid();
  if (cached_pid.load(std::memory_order_acquire) != pid) {
    cached.store(process_start_ticks(pid), std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
  }
  return cached.load(std::memory_order_relaxed);
}

// The segment's lock held for one scope.
class Locked {
 public:
  explicit Locked(Segment& seg) : seg_(seg) {
    bool recovered = false;
    status_ = seg_.lock(&recovered);
  }
  ~Locked() {
    if (status_ == Status::ok) seg_.unlock();
  }
  Status status() const { return status_; }

 private:
  Segment& seg_;
  Status status_;
};

bool pin_entry_valid(const Segment& seg, const PinEntry& e) {
  return (e.state == kPinHeld || e.state == kPinFreePending) && e.offset >= seg.heap_offset() && e.offset < seg.size();
}

// Clears a pin entry: pid first, so a crash leaves it empty, never half a pin.
void pin_clear(Segment& seg, PinEntry* e) {
  __atomic_store_n(&e->pid, 0u, __ATOMIC_RELEASE);
  e->state = kPinEmpty;
  SegmentHeader* h = seg.header();
  if (h->pins_active > 0) h->pins_active -= 1;
}

// Drops the pins of processes that are gone; the blocks whose last pin went and whose free was waiting
// are appended to `frees` (segment offsets) for the caller to free.
void drop_dead_pins(Segment& seg, std::vector<uint64_t>* frees) {
  if (seg.header()->pins_active == 0 || !seg.same_pid_namespace()) return;
  PinEntry* t = seg.pins();
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    PinEntry e;
    std::memcpy(&e, &t[i], sizeof e);
    if (e.pid == 0 || process_alive(e.pid, e.start_ticks)) continue;
    bool pending = e.state == kPinFreePending && pin_entry_valid(seg, e);
    pin_clear(seg, &t[i]);
    if (pending && !shared_pinned(seg, e.offset, true)) frees->push_back(e.offset);
  }
}

}  // namespace

// Whether a free of the block at segment offset `off` waits for its pins: the block has no owner.
bool shared_free_pending(const Segment& seg, uint64_t off) {
  if (seg.header()->pins_active == 0) return false;
  const PinEntry* t = seg.pins();
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    if (__atomic_load_n(&t[i].pid, __ATOMIC_ACQUIRE) != 0 && t[i].offset == off && t[i].state == kPinFreePending) return true;
  }
  return false;
}

bool shared_pinned(Segment& seg, uint64_t off, bool mark) {
  if (seg.header()->pins_active == 0) return false;
  PinEntry* t = seg.pins();
  bool judge = seg.same_pid_namespace();
  bool found = false;
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    if (__atomic_load_n(&t[i].pid, __ATOMIC_ACQUIRE) == 0 || t[i].offset != off) continue;
    if (judge && !process_alive(t[i].pid, t[i].start_ticks)) {
      pin_clear(seg, &t[i]);  // a dead reader's pin: it reads nothing any more
      continue;
    }
    found = true;
    if (mark) t[i].state = kPinFreePending;
  }
  return found;
}

Status repair_names_and_pins(Segment& seg) {
  // Pins: entries a scribbler or a half-done store left impossible are dropped; the count is recomputed.
  PinEntry* t = seg.pins();
  uint64_t active = 0;
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    if (t[i].pid == 0) continue;
    if (!pin_entry_valid(seg, t[i])) {
      t[i].pid = 0;
      t[i].state = kPinEmpty;
      continue;
    }
    ++active;
  }
  seg.header()->pins_active = active;
  std::vector<uint64_t> frees;
  drop_dead_pins(seg, &frees);
  // Names: the directory and the queues' block records are the truth. Blocks are collected first and
  // changed after the walk. A queue that cannot be read might own any named block: then none is freed now.
  std::vector<uint64_t> orphans;
  uint64_t heap_off = seg.heap_offset();
  std::vector<uint64_t> queued;
  bool queues_known = queued_blocks(seg, &queued);
  std::sort(queued.begin(), queued.end());
  Status s = shared_walk(seg, [&](const BlockInfo& b) {
    if (!b.used) return true;
    uint32_t* w = shared_gen_word(seg, b.offset);
    if (w == nullptr) return true;
    bool named = (*w & kGenNamed) != 0;
    bool listed = seg.dir_names(b.offset + heap_off) || std::binary_search(queued.begin(), queued.end(), b.offset + heap_off);
    if (listed && !named) gen_bump(w, true);  // the dead process named it and stopped before the word
    if (!listed && named && queues_known) orphans.push_back(b.offset);
    // A heap block (not a slot: those words never say kOwnerFree) used by the heap while its word says no
    // block was handed out: its allocator died between the heap's alloc and the word's store, or a slab
    // was half made or half given back (shared_is_slab is false for both). Nobody can hold it: freed.
    bool unhanded = !named && (*w & kGenOwnerMask) == kOwnerFree && w == seg.gen_word(b.offset) &&
                    !shared_lends_without_magic(seg, b.offset);
    if (!listed && unhanded && queues_known) orphans.push_back(b.offset);
    return true;
  });
  if (s != Status::ok) return s;
  for (uint64_t off : orphans) {
    // Named by nothing (or, as above, never handed out): the dead process was taking it from a name (it would have owned it) or replacing
    // the name (the old block goes as set() would free it). Freed, unless a live reader still pins it.
    // Free first (the free moves the word on): a crash in between leaves the block as it was, named and
    // unlisted, for the next repair.
    if (!shared_pinned(seg, off + heap_off, true)) {
      shared_free_locked(seg, off);
    } else if (uint32_t* w = shared_gen_word(seg, off)) {
      gen_bump(w, false);  // the pins do the free
    }
  }
  std::sort(frees.begin(), frees.end());
  for (size_t i = 0; i < frees.size(); ++i) {
    if (i == 0 || frees[i] != frees[i - 1]) shared_free_locked(seg, frees[i] - heap_off);
  }
  return Status::ok;
}

SharedPool::SharedPool(std::unique_ptr<Segment> seg) : seg_(std::move(seg)) {
  static const bool hooked = (Segment::set_repair_hook(repair_names_and_pins), true);
  (void)hooked;
  debug_ = seg_->heap().debug() != nullptr;
  heap_off_ = seg_->heap_offset();
  seg_->attach();  // listed until unmapped
  cache_ = std::make_unique<SharedCache>(seg_.get());  // registers itself, collecting dead caches
  if (!debug_) fast_ = cache_.get();
  Locked l(*seg_);
  if (l.status() == Status::ok) collect_dead_locked();
}

SharedPool::~SharedPool() { close(); }

Status SharedPool::create(const std::string& name, uint64_t size, const SegmentOptions& options,
                          std::unique_ptr<SharedPool>* out, int* err, bool* created) {
  std::unique_ptr<Segment> seg;
  Status s = Segment::create(name, size, options, &seg, err, created);
  if (s != Status::ok) return s;
  out->reset(new SharedPool(std::move(seg)));
  return Status::ok;
}

Status SharedPool::open(const std::string& name, uint32_t lock_timeout_ms, std::unique_ptr<SharedPool>* out, int* err) {
  std::unique_ptr<Segment> seg;
  Status s = Segment::open(name, lock_timeout_ms, &seg, err);
  if (s != Status::ok) return s;
  out->reset(new SharedPool(std::move(seg)));
  return Status::ok;
}

void SharedPool::close(uint32_t lock_ms) {
  if (!seg_ || !seg_->mapped()) return;
  fast_ = nullptr;
  if (cache_) cache_->close(lock_ms);
  cache_.reset();
  seg_->unmap();
}

Status SharedPool::lock() {
  if (!seg_->mapped()) return Status::invalid_argument;
  bool recovered = false;
  return seg_->lock(&recovered);
}

uint32_t SharedPool::collect_dead_locked() {
  uint32_t n = shared_collect_dead(*seg_);
  std::vector<uint64_t> frees;
  drop_dead_pins(*seg_, &frees);
  for (uint64_t off : frees) physical_free(off - heap_offset());
  return n + static_cast<uint32_t>(frees.size());
}

// The caller owns the live block at heap offset `hoff` through `gen` (or has no handle: kAnyGen). *seen is
// the word as read: a transfer swaps it from that value (release_locked, name_block), because a slot's
// owner may free the slot without the lock (SharedCache::try_free) until someone wins the word.
Status SharedPool::owned(uint64_t hoff, uint32_t gen, uint32_t** word, uint32_t* seen) {
  uint64_t usable = 0;
  Status s = seg_->usable_any(hoff, &usable);
  if (s != Status::ok) return s;  // free (double_free) or not a block (foreign): the heap says which
  if (shared_free_pending(*seg_, hoff + heap_offset())) return Status::double_free;  // freed; pins hold it
  uint32_t* w = shared_gen_word(*seg_, hoff);
  if (w == nullptr) return Status::foreign;
  uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
  if (v & kGenNamed) return Status::named;
  if (gen == kNoHandle) return Status::no_handle;
  if (gen != kAnyGen && gen != v) return Status::stale;
  *word = w;
  *seen = v;
  return Status::ok;
}

Status SharedPool::physical_free(uint64_t hoff) { return cache_->free_locked(hoff); }

// The owner lets go of a block it owns (its word read as `seen`): freed now, or when the last reader
// unpins it. The word is swapped first: losing means the slot's owner freed it meanwhile without the lock.
Status SharedPool::release_locked(uint64_t hoff, uint32_t* word, uint32_t seen) {
  // The recorded owner stays in the word until the free is done (the free's own bump clears it).
  if (!__atomic_compare_exchange_n(word, &seen, ((seen + 1) & kGenCount) | (seen & kGenOwnerMask), false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    return Status::stale;
  }
  // No handle of the block is current any more. Crash after the mark below: the pins say a free waits;
  // their holders (or whoever finds them dead) do it. Crash before the free: the block is live with a word
  // nobody holds: with trackOwners it still names the dying caller as its owner and is collected with its
  // other blocks; without, it is leaked (one block, the dying caller's).
  if (shared_pinned(*seg_, hoff + heap_offset(), true)) return Status::ok;
  return physical_free(hoff);
}

Status SharedPool::alloc_slow(uint64_t size, uint64_t align, uint64_t hint, uint32_t site, uint64_t* off, uint32_t* gen) {
  if (!seg_->mapped()) return Status::invalid_argument;
  if (size > kMaxRequest) return Status::out_of_memory;
  uint64_t heap_hint = hint != kNoHint && hint >= heap_offset() ? hint - heap_offset() : kNoHint;
  Status s;
  if (debug_) {
    Locked l(*seg_);
    if (l.status() != Status::ok) return l.status();
    seg_->heap().debug()->set_site(site);
    s = cache_->alloc_locked(size, align, heap_hint, off, gen);
  } else {
    s = cache_->alloc(size, align, heap_hint, off, gen);  // takes the lock only when it must
  }
  if (s == Status::ok) *off += heap_offset();
  return s;
}

Status SharedPool::free_slow(uint64_t off, uint32_t gen) {
  if (!seg_->mapped()) return Status::invalid_argument;
  if (off < heap_offset()) return Status::foreign;
  uint64_t hoff = off - heap_offset();
  Status s;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  uint32_t* word = nullptr;
  uint32_t seen = 0;
  s = owned(hoff, gen, &word, &seen);
  if (s != Status::ok) return s;
  return release_locked(hoff, word, seen);
}

Status SharedPool::realloc(uint64_t off, uint32_t gen, uint64_t size, uint64_t align, uint64_t* moved, uint32_t* new_gen) {
  if (!seg_->mapped()) return Status::invalid_argument;
  if (off < heap_offset()) return Status::foreign;
  if (size > kMaxRequest) return Status::out_of_memory;
  if (size == 0 || !valid_align(align)) return Status::invalid_argument;
  uint64_t hoff = off - heap_offset();
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  uint32_t* word = nullptr;
  uint32_t seen = 0;
  Status s = owned(hoff, gen, &word, &seen);
  if (s != Status::ok) return s;
  uint64_t usable = 0;
  seg_->usable_any(hoff, &usable);
  bool pinned = shared_pinned(*seg_, off, false);
  bool slot = seg_->gen_word(hoff) != word;
  // In place: a slot that already fits; a heap block the heap can resize where it is. Not while a reader
  // pins it: a shrink would hand its tail to someone else under the reader.
  // The handle moves on either way: the old Buffer (of the old length) is stale, as after any realloc.
  uint32_t next = ((seen + 1) & kGenCount) | (seen & kGenOwnerMask);
  if (!pinned && hoff % align == 0 && ((slot && size <= usable) || (!slot && !debug_ && seg_->heap_resize(hoff, size) == Status::ok))) {
    if (!__atomic_compare_exchange_n(word, &seen, next, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      return Status::stale;  // only a slot's owner races here, freeing it: a heap resize cannot have happened then
    }
    *moved = off;
    *new_gen = next;
    return Status::ok;
  }
  uint64_t to = 0;
  uint32_t to_gen = 0;
  s = cache_->alloc_locked(size, align, kNoHint, &to, &to_gen);
  if (s != Status::ok) return s;  // the old block is untouched
  std::memmove(seg_->heap().base() + to, seg_->heap().base() + hoff, size < usable ? size : usable);
  // Crash here: both blocks are live and unnamed; the dead caller owned both, and both stay allocated
  // (as any block a dead process held: a leak, which trackOwners-style reclaim is for).
  s = release_locked(hoff, word, seen);
  if (s != Status::ok) {
    shared_free_locked(*seg_, to);
    return s;
  }
  *moved = to + heap_offset();
  *new_gen = to_gen;
  return Status::ok;
}

Status SharedPool::usable_size(uint64_t off, uint64_t* size) {
  if (off < heap_offset()) return Status::foreign;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  return seg_->usable_any(off - heap_offset(), size);
}

// set() and replace(): names the owned block at `hoff` `key`; the block the key named before goes to
// *old (replace) or is freed (old == nullptr).
Status SharedPool::name_block(const std::string& key, uint64_t hoff, uint32_t gen, uint64_t length, NamedBlock* old, bool* had) {
  if (had != nullptr) *had = false;
  uint32_t* word = nullptr;
  uint32_t seen = 0;
  Status s = owned(hoff, gen, &word, &seen);
  if (s != Status::ok) return s;
  uint64_t usable = 0;
  seg_->usable_any(hoff, &usable);
  if (length > usable) return Status::foreign;
  uint64_t off = hoff + heap_offset();
  uint64_t prev_off = 0, prev_len = 0;
  int64_t index = seg_->dir_lookup(key, &prev_off, &prev_len);
  if (index < 0 && !seg_->dir_has_room()) return Status::directory_full;  // before anything changes
  // 1. The name owns the block from this swap on: the caller's handle is stale. Losing it means the slot's
  //    owner freed the block meanwhile without the lock: nothing changed here.
  if (!__atomic_compare_exchange_n(word, &seen, ((seen + 1) & kGenCount) | kGenNamed, false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    return Status::stale;
  }
  // 2. A slot is marked as ever named (its frees go through the lock from now on). No one else can move
  //    its state now: they would have to win the word first.
  s = shared_mark_named(*seg_, hoff);
  if (s != Status::ok) return Status::corrupted;
  // 3. The directory. Crash before this: the word says named and no entry names it: repair frees the block
  //    (the caller that owned it is dead). Crash after: the entry is the truth; the block named before has
  //    kGenNamed and no entry, and repair frees it.
  if (index >= 0) {
    seg_->dir_point(static_cast<uint32_t>(index), off, length);
  } else {
    s = seg_->dir_set(key, off, length);
    if (s != Status::ok) {  // a scribbled live count: undo the swap (under the lock, a plain store)
      __atomic_store_n(word, seen, __ATOMIC_RELEASE);
      return s;
    }
  }
  if (index < 0) return Status::ok;
  // 4. The block named before (if the entry was sound: a scribbled offset names nothing).
  uint64_t prev_hoff = prev_off - heap_offset();
  uint32_t* prev_word = shared_gen_word(*seg_, prev_hoff);
  if (prev_word == nullptr || prev_off == off || !(*prev_word & kGenNamed)) return Status::ok;
  if (old != nullptr) {
    gen_hand_over(prev_word, cache_->owner_bits());  // the caller's: crash after this, and the dead caller owned it
    old->offset = prev_off;
    old->length = prev_len;
    old->gen = *prev_word;
    *had = true;
    return Status::ok;
  }
  // set(): the old block is freed (or its pins are told to). A crash before leaves it named and unlisted,
  // and repair frees it.
  free_unlisted_locked(prev_off, prev_word);
  return Status::ok;
}

Status SharedPool::set(const std::string& key, uint64_t off, uint32_t gen, uint64_t length) {
  if (off < heap_offset()) return Status::foreign;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  return name_block(key, off - heap_offset(), gen, length, nullptr, nullptr);
}

Status SharedPool::replace(const std::string& key, uint64_t off, uint32_t gen, uint64_t length, NamedBlock* old, bool* had) {
  if (off < heap_offset()) return Status::foreign;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  return name_block(key, off - heap_offset(), gen, length, old, had);
}

Status SharedPool::take(const std::string& key, NamedBlock* out, bool* had) {
  *had = false;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  int64_t index = seg_->dir_lookup(key, &out->offset, &out->length);
  if (index < 0) return Status::ok;
  uint32_t* word = shared_gen_word(*seg_, out->offset - heap_offset());
  if (word == nullptr) return Status::corrupted;  // an entry naming no block: check() says more
  // Crash after the removal: the block has kGenNamed and no entry: repair frees it (the taker is dead).
  seg_->dir_remove(static_cast<uint32_t>(index));
  gen_hand_over(word, cache_->owner_bits());
  out->gen = *word;
  *had = true;
  return Status::ok;
}

// The block `key` names and its word, under the lock (get and pin).
Status SharedPool::lookup_locked(const std::string& key, NamedBlock* out, bool* had) {
  *had = seg_->dir_lookup(key, &out->offset, &out->length) >= 0;
  if (!*had) return Status::ok;
  uint32_t* word = shared_gen_word(*seg_, out->offset - heap_offset());
  if (word == nullptr) return Status::corrupted;
  out->gen = *word;
  return Status::ok;
}

// A named block whose entry was just removed (delete, set over its key) is freed, or its pins are told to
// free it. Named blocks are freed under the lock only (no lock-free path touches them): the free comes
// first and moves the word on, so a crash in between leaves a named, unlisted block that repair frees,
// never an unnamed one no one can find.
Status SharedPool::free_unlisted_locked(uint64_t off, uint32_t* word) {
  if (!shared_pinned(*seg_, off, true)) return physical_free(off - heap_offset());
  gen_bump(word, false);  // the pins do the free
  return Status::ok;
}

Status SharedPool::get(const std::string& key, NamedBlock* out, bool* had) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  return lookup_locked(key, out, had);
}

Status SharedPool::copy(const std::string& key, std::string* bytes, bool* had) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  uint64_t off = 0, length = 0;
  *had = seg_->dir_lookup(key, &off, &length) >= 0;
  if (*had) bytes->assign(reinterpret_cast<const char*>(seg_->base() + off), length);  // bounds: dir_lookup
  return Status::ok;
}

Status SharedPool::remove(const std::string& key, bool* had) {
  NamedBlock b;
  *had = false;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  int64_t index = seg_->dir_lookup(key, &b.offset, &b.length);
  if (index < 0) return Status::ok;
  uint32_t* word = shared_gen_word(*seg_, b.offset - heap_offset());
  // Crash after the removal: repair frees the block (kGenNamed, no entry), which is what delete does.
  seg_->dir_remove(static_cast<uint32_t>(index));
  *had = true;
  if (word == nullptr) return Status::ok;
  return free_unlisted_locked(b.offset, word);
}

Status SharedPool::pin(const std::string& key, NamedBlock* out, uint32_t* pin, bool* had) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  Status s = lookup_locked(key, out, had);
  if (s != Status::ok || !*had) return s;
  PinEntry* t = seg_->pins();
  for (int round = 0; round < 2; ++round) {
    if (round == 1) {
      // Full: perhaps of dead readers' pins. Drop them (doing the frees they held back) and look again.
      std::vector<uint64_t> frees;
      drop_dead_pins(*seg_, &frees);
      for (uint64_t f : frees) physical_free(f - heap_offset());
    }
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    if (t[i].pid != 0) continue;
    // Filled with the pid last: a crash before it leaves an empty entry; after it, a pin of a dead
    // process, dropped by the next process that looks.
    t[i].state = kPinHeld;
    t[i].offset = out->offset;
    t[i].start_ticks = my_start_ticks();
    t[i].reserved = 0;
    __atomic_store_n(&t[i].pid, my_pid(), __ATOMIC_RELEASE);
    seg_->header()->pins_active += 1;
    *pin = i;
    return Status::ok;
  }
  }
  return Status::pins_full;
}

Status SharedPool::unpin(uint32_t pin, uint64_t off) {
  if (pin >= kPinSlots) return Status::invalid_argument;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  PinEntry* e = &seg_->pins()[pin];
  if (e->pid != my_pid() || e->offset != off) return Status::invalid_argument;  // not our pin (any more)
  bool pending = e->state == kPinFreePending;
  pin_clear(*seg_, e);
  // Crash here: the pin is gone and the free it held back is not done; the block's word has no holder.
  // Leaked until the segment is recreated: a window of two stores, accepted (documented in the note).
  if (pending && !shared_pinned(*seg_, off, true)) return physical_free(off - heap_offset());
  return Status::ok;
}

Status SharedPool::keys(std::vector<std::string>* out) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  seg_->dir_keys(out);
  return Status::ok;
}

Status SharedPool::object(const std::string& key, uint64_t bytes, const std::function<void(uint8_t*)>& init,
                          uint64_t* off, uint64_t* bytes_out, bool* created) {
  if (!seg_->mapped()) return Status::invalid_argument;
  *created = false;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  NamedBlock b;
  bool had = false;
  Status s = lookup_locked(key, &b, &had);
  if (s != Status::ok) return s;
  if (had) {
    *off = b.offset;
    *bytes_out = b.length;
    return Status::ok;
  }
  if (!seg_->dir_has_room()) return Status::directory_full;
  uint64_t hoff = 0;
  uint32_t gen = 0;
  if (debug_) seg_->heap().debug()->set_site(0);
  s = cache_->alloc_locked(bytes, 64, kNoHint, &hoff, &gen);
  if (s != Status::ok) return s;
  // Formatted before it has a name: no other process can find it yet. Crash from here to the naming: the
  // block is an unnamed block of a dead process (freed when it is noticed with trackOwners, else stranded:
  // one object's bytes).
  init(base() + heap_offset() + hoff);
  s = name_block(key, hoff, gen, bytes, nullptr, nullptr);
  if (s != Status::ok) {
    uint32_t* word = nullptr;
    uint32_t seen = 0;
    if (owned(hoff, gen, &word, &seen) == Status::ok) release_locked(hoff, word, seen);
    return s;
  }
  *off = hoff + heap_offset();
  *bytes_out = bytes;
  *created = true;
  return Status::ok;
}

// ---- block messages (shared_queue.h "Block messages"): the segment's lock, then the queue's ----

Status SharedPool::queue_push_block(SharedQueue& q, uint64_t off, uint32_t gen, uint64_t length, const Waiter& w,
                                    bool wait, QueueResult* r) {
  if (off < heap_offset()) return Status::foreign;
  uint64_t hoff = off - heap_offset();
  for (;;) {
    uint32_t seq = q.not_full_seq();
    {
      Locked l(*seg_);
      if (l.status() != Status::ok) return l.status();
      uint32_t* word = nullptr;
      uint32_t seen = 0;
      Status s = owned(hoff, gen, &word, &seen);
      if (s != Status::ok) return s;
      uint64_t usable = 0;
      seg_->usable_any(hoff, &usable);
      if (length > usable) return Status::foreign;
      *r = q.lock(w);
      if (*r != QueueResult::ok) return Status::ok;
      if (q.state()->closed) {
        *r = QueueResult::closed;
      } else if (!q.room_for(sizeof(BlockRef))) {
        *r = QueueResult::full;
      } else if (!__atomic_compare_exchange_n(word, &seen, ((seen + 1) & kGenCount) | kGenNamed, false, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE)) {
        // The slot's owner freed it meanwhile without the lock: nothing changed.
        q.unlock();
        return Status::stale;
      } else {
        // 1. The queue owns the block from the swap above on (the caller's handle is stale), and a slot is
        //    marked as ever named (its frees take the lock from now on).
        if (shared_mark_named(*seg_, hoff) != Status::ok) {
          __atomic_store_n(word, seen, __ATOMIC_RELEASE);  // under the lock nobody else moves a named word
          q.unlock();
          return Status::corrupted;
        }
        // 2. The record. Crash before its commit: the block is named and no key or record lists it: the
        //    segment's repair frees it (the producer is dead). After: the record is the truth.
        BlockRef ref{off, length};
        *r = q.push_locked(reinterpret_cast<const uint8_t*>(&ref), sizeof ref, true);
        if (*r != QueueResult::ok) __atomic_store_n(word, seen, __ATOMIC_RELEASE);  // damaged queue: undone
      }
      q.unlock();
    }
    if (*r == QueueResult::ok) q.woke_poppers();
    if (*r != QueueResult::full || !wait) return Status::ok;
    *r = q.wait_not_full(seq, w);
    if (*r != QueueResult::ok) return Status::ok;
  }
}

Status SharedPool::queue_pop(SharedQueue& q, PopBuffer* bytes, uint64_t lease, uint64_t* position, NamedBlock* block,
                             bool* is_block, const Waiter& w, bool wait, QueueResult* r) {
  *is_block = false;
  for (;;) {
    uint32_t seq = q.not_empty_seq();
    {
      Locked l(*seg_);
      if (l.status() != Status::ok) return l.status();
      *r = q.lock(w);
      if (*r != QueueResult::ok) return Status::ok;
      bool got_block = false;
      *r = q.pop_locked(bytes, lease, position, true, &got_block);
      Status verdict = Status::ok;
      if (*r == QueueResult::ok && got_block) {
        BlockRef ref;
        std::memcpy(&ref, bytes->data, sizeof ref);
        uint64_t usable = 0;
        uint32_t* word = ref.offset >= heap_offset() ? shared_gen_word(*seg_, ref.offset - heap_offset()) : nullptr;
        if (word == nullptr || !(*word & kGenNamed) || seg_->usable_any(ref.offset - heap_offset(), &usable) != Status::ok ||
            ref.length > usable) {
          verdict = Status::corrupted;  // a scribbled record: the message is gone, the heap untouched
        } else {
          if (lease == 0) {
            // The record is done (committed above): the block is the caller's. Crash before this store: named
            // and listed by nothing: repair frees it (the consumer is dead; pop is at most once).
            gen_hand_over(word, cache_->owner_bits());
          }
          block->offset = ref.offset;
          block->length = ref.length;
          block->gen = *word;
          *is_block = true;
        }
      }
      q.unlock();
      if (verdict != Status::ok) return verdict;
    }
    if (*r == QueueResult::ok && lease == 0) q.woke_pushers();
    if (*r != QueueResult::empty || !wait) return Status::ok;
    *r = q.wait_not_empty(seq, w);
    if (*r != QueueResult::ok) return Status::ok;
  }
}

Status SharedPool::queue_ack(SharedQueue& q, uint64_t position, uint64_t lessee, const Waiter& w, QueueResult* r) {
  {
    Locked l(*seg_);
    if (l.status() != Status::ok) return l.status();
    *r = q.lock(w);
    if (*r != QueueResult::ok) return Status::ok;
    bool was_block = false;
    BlockRef ref{0, 0};
    *r = q.ack_locked(position, lessee, true, &was_block, &ref);
    q.unlock();
    if (*r == QueueResult::ok && was_block && ref.offset >= heap_offset()) {
      // The record is done: the block is named and listed by nothing, and goes now (crash before: repair
      // frees it, which is what this does).
      uint32_t* word = shared_gen_word(*seg_, ref.offset - heap_offset());
      if (word != nullptr && (*word & kGenNamed)) free_unlisted_locked(ref.offset, word);
    }
  }
  if (*r == QueueResult::ok) q.woke_pushers();
  return Status::ok;
}

Status SharedPool::stats(HeapStats* out) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  collect_dead_locked();  // exact figures for dead owners' slots
  seg_->heap().stats(out);
  shared_adjust_stats(*seg_, out);  // slabs are allocations to the heap; the user's are the slots
  out->capacity += heap_offset();
  out->overhead += heap_offset();
  return Status::ok;
}

Status SharedPool::check(CheckResult* r) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  // A stray write may have left free lists damaged that no operation has met yet: derived structures,
  // which the next operation would heal (Segment::heal). check() heals them first, then reports what the
  // rebuilt heap still shows; a damaged primary record (heal fails) is reported as the heap's check saw it.
  CheckResult heap_r;
  seg_->heap().check(&heap_r);
  if (heap_r.violations != 0 && !debug_) {
    if (seg_->heal() == Status::ok) {
      heap_r = CheckResult();
      seg_->heap().check(&heap_r);
    } else {
      heap_r.first = std::string("heap: the primary record is damaged (rebuild refused it); first finding: ") + heap_r.first;
    }
  }
  if (heap_r.violations != 0) {
    r->report(heap_r.first);
    r->violations += heap_r.violations - 1;
  }
  shared_check(*seg_, r);
  seg_->dir_check(r);
  // Names and words agree (O3: a queue's block record names its block as a key would), and pins name live
  // blocks.
  uint64_t heap_off = heap_offset();
  std::vector<uint64_t> queued;
  if (!queued_blocks(*seg_, &queued)) r->report("queues: a queue's records fail a check (or its lock stayed busy)");
  std::sort(queued.begin(), queued.end());
  shared_walk(*seg_, [&](const BlockInfo& b) {
    if (!b.used) return true;
    uint32_t* w = shared_gen_word(*seg_, b.offset);
    if (w == nullptr) return true;
    bool named = (*w & kGenNamed) != 0;
    bool listed = seg_->dir_names(b.offset + heap_off) || std::binary_search(queued.begin(), queued.end(), b.offset + heap_off);
    if (named != listed) {
      r->report("names: the block at " + std::to_string(b.offset + heap_off) +
                (named ? " is marked named but no key or queue names it" : " is named but not marked so"));
    }
    return true;
  });
  const PinEntry* t = seg_->pins();
  uint64_t active = 0;
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    if (t[i].pid == 0) continue;
    ++active;
    uint64_t u = 0;
    if (!pin_entry_valid(*seg_, t[i]) || seg_->usable_any(t[i].offset - heap_off, &u) != Status::ok) {
      r->report("pins: entry " + std::to_string(i) + " pins no live block");
    }
  }
  if (active != seg_->header()->pins_active) r->report("pins: the active count disagrees with the entries");
  return Status::ok;
}

Status SharedPool::walk(const std::function<bool(const BlockInfo&)>& visit) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  collect_dead_locked();
  uint64_t heap_off = heap_offset();
  return shared_walk(*seg_, [&](const BlockInfo& b) {
    BlockInfo shifted{b.offset + heap_off, b.size, b.used};
    return visit(shifted);
  });
}

Status SharedPool::processes(std::vector<AttachedProcess>* out) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  seg_->attached(out);
  return Status::ok;
}

Status SharedPool::reclaim(uint32_t pid, uint64_t* count, uint64_t* bytes) {
  if (!debug_ && !seg_->track_owners()) return Status::invalid_argument;
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  if (!debug_) {
    // trackOwners: dead attachments' blocks are freed when they are collected; this collects now and
    // reports what this call freed (0 when someone collected them already).
    (void)pid;
    const SegmentHeader* h = seg_->header();
    uint64_t blocks = h->reclaimed_blocks, b = h->reclaimed_bytes;
    collect_dead_locked();
    *count = h->reclaimed_blocks - blocks;
    *bytes = h->reclaimed_bytes - b;
    return Status::ok;
  }
  uint64_t heap_off = heap_offset();
  // A reclaimed block's names go with it, as with any free.
  return seg_->heap().debug()->reclaim(pid, count, bytes, [&](uint64_t off) {
    seg_->dir_forget_offset(off + heap_off);
    if (uint32_t* w = seg_->gen_word(off)) gen_bump(w, false);
  });
}

Status SharedPool::locked(const std::function<Status()>& fn) {
  Locked l(*seg_);
  if (l.status() != Status::ok) return l.status();
  return fn();
}

}  // namespace mempool
