// The shared pool's rules in one place: a Segment (lock, directory, pins, generation words) and this
// attachment's SharedCache behind one interface that takes the lock itself. The addon, the fuzzers, the
// native benchmark and the native tests all go through it; nothing else combines heap, slabs and names.
//
// Ownership: the invariants every operation keeps.
//   O1 Every live allocation has exactly one owner: the holder of its current generation word (a handle
//      (offset, gen) from alloc, realloc, take or replace), or one directory name (its word has kGenNamed).
//   O2 The word changes at every transfer: a free, a naming (set, replace), an unnaming (take, the old
//      block replace hands back, delete). A handle from before a transfer is stale: free, realloc, set and
//      replace through it return Status::stale and change nothing.
//   O3 A named block is owned by its name. It is freed only through the directory (set or replace over its
//      key, delete), never through a handle: free and realloc of it return Status::named. get() hands out a
//      borrowed handle whose word has kGenNamed: it can read and pin, never free.
//   O4 At most one name per block (naming a named block returns Status::named).
//   O5 A block pinned by a reader (pin) is not reused: freeing it bumps its word and marks the pins; the
//      last unpin does the free.
// Two frees of one block racing: one succeeds, the other finds the block free (double_free) or its word
// moved (stale); nothing changes for the loser.
//
// Crash rules. Everything here except the owner's lock-free slot free (SharedCache::try_free) runs under
// the segment's lock. A holder killed with -9 at any instruction leaves the lock word naming a dead thread;
// the next process to lock repairs (Segment::repair, then repair_names_and_pins below):
//   - the directory is the truth for names: a block whose word has kGenNamed but that no entry names is the
//     orphan of a transfer the dead process had half done (its old owner was that process, or the name it
//     was removing), and it is freed; an entry whose block lacks kGenNamed gets it;
//   - pins of processes that are gone are dropped, and frees they held back are done.
// Each operation orders its stores so that this repair finishes or undoes it; the comments at each store
// say which.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "heap.h"
#include "segment.h"
#include "shared_cache.h"
#include "shared_queue.h"

namespace mempool {

// A block as the directory knows it: where, how many bytes the name covers, the generation word.
struct NamedBlock {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t gen = 0;
};

class SharedPool {
 public:
  // As Segment::create / Segment::open; the pool is attached (listed in the attach table) and dead
  // processes' caches and pins are collected.
  static Status create(const std::string& name, uint64_t size, const SegmentOptions& options,
                       std::unique_ptr<SharedPool>* out, int* err, bool* created);
  static Status open(const std::string& name, uint32_t lock_timeout_ms, std::unique_ptr<SharedPool>* out, int* err);
  ~SharedPool();
  SharedPool(const SharedPool&) = delete;
  SharedPool& operator=(const SharedPool&) = delete;

  Segment& segment() { return *seg_; }
  uint8_t* base() const { return seg_->base(); }
  uint64_t size() const { return seg_->size(); }
  uint64_t heap_offset() const { return seg_->heap_offset(); }
  bool debug() const { return debug_; }

  // Offsets are segment offsets. gen = kAnyGen: the caller has no handle (the offset API): generations
  // are not checked, names and liveness still are. `site` is recorded in debug mode.
  // The common cases inline (a small slot of this attachment's cache, no lock): the facade must not cost
  // what the cache saves (measured: 76 instructions a pair when these were out of line).
  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint32_t site, uint64_t* off, uint32_t* gen) {
    if (fast_ != nullptr && hint == kNoHint && size <= kMaxRequest) {
      Status s = fast_->alloc(size, align, kNoHint, off, gen);  // takes the lock only when it must
      if (s == Status::ok) *off += heap_off_;
      return s;
    }
    return alloc_slow(size, align, hint, site, off, gen);
  }
  Status free(uint64_t off, uint32_t gen) {
    Status s;
    if (fast_ != nullptr && off >= heap_off_ && fast_->try_free(off - heap_off_, gen, &s)) return s;  // no lock
    return free_slow(off, gen);
  }
  // In place when it can (the handle stays valid), else moved: *moved and *new_gen are the new handle.
  Status realloc(uint64_t off, uint32_t gen, uint64_t size, uint64_t align, uint64_t* moved, uint32_t* new_gen);
  Status usable_size(uint64_t off, uint64_t* size);

  // Names an owned block (O1: the name owns it now). A block `key` named before is freed (deferred while
  // pinned). `length` must fit the block.
  Status set(const std::string& key, uint64_t off, uint32_t gen, uint64_t length);
  // As set(), but the block `key` named before is handed to the caller (*had, *old: a handle it owns).
  Status replace(const std::string& key, uint64_t off, uint32_t gen, uint64_t length, NamedBlock* old, bool* had);
  // Removes the name and hands its block to the caller.
  Status take(const std::string& key, NamedBlock* out, bool* had);
  // A borrowed handle (O3): for reading now; the block may be freed by its owner at any time.
  Status get(const std::string& key, NamedBlock* out, bool* had);
  // The named bytes, copied under the lock: never torn by a concurrent set, replace, take, delete or free.
  Status copy(const std::string& key, std::string* bytes, bool* had);
  // Removes the name and frees its block (deferred while pinned).
  Status remove(const std::string& key, bool* had);
  // Pins the named block (O5) for a zero-copy read; unpin(*pin, out->offset) when done.
  Status pin(const std::string& key, NamedBlock* out, uint32_t* pin, bool* had);
  Status unpin(uint32_t pin, uint64_t off);
  Status keys(std::vector<std::string>* out);
  // One of mempool's own named objects (a mutex, semaphore or queue, objects.h): the block `key` names, or,
  // when absent, a new block of `bytes` that `init` formats under the lock before it is named, so no other
  // process ever sees it half made. *off and *bytes_out are the block's offset and the bytes its name covers.
  Status object(const std::string& key, uint64_t bytes, const std::function<void(uint8_t*)>& init, uint64_t* off,
                uint64_t* bytes_out, bool* created);

  // Block messages of a queue in this segment (zero-copy; shared_queue.h "Block messages"). Each takes the
  // segment's lock, then the queue's. Status is the pool's verdict (a stale or named handle, a damaged ref);
  // *r, when Status is ok, the queue's. queue_push_block hands the block the caller owns through (off, gen)
  // to the queue: the handle is stale from then on.
  Status queue_push_block(SharedQueue& q, uint64_t off, uint32_t gen, uint64_t length, const Waiter& w, bool wait,
                          QueueResult* r);
  // The oldest message, bytes (into *bytes) or a block: *is_block, and *block is a handle the caller owns now
  // (lease == 0) or a borrowed one (named: for reading until the ack) while it is leased.
  Status queue_pop(SharedQueue& q, PopBuffer* bytes, uint64_t lease, uint64_t* position, NamedBlock* block,
                   bool* is_block, const Waiter& w, bool wait, QueueResult* r);
  // Acks a leased message; a block message's block is freed (deferred while a reader pins it).
  Status queue_ack(SharedQueue& q, uint64_t position, uint64_t lessee, const Waiter& w, QueueResult* r);
  Status stats(HeapStats* out);  // capacity and overhead include the segment's own bytes
  Status check(CheckResult* r);
  Status walk(const std::function<bool(const BlockInfo&)>& visit);  // slabs shown as their slots
  Status processes(std::vector<AttachedProcess>* out);
  // Debug mode: frees every allocation process `pid` (not running) made; its names and pins go with them.
  Status reclaim(uint32_t pid, uint64_t* count, uint64_t* bytes);
  // Runs fn under the lock (debug reports and listings that read the heap).
  Status locked(const std::function<Status()>& fn);
  // Retires dead processes' caches and pins (and does the frees their pins held back). Under the lock.
  uint32_t collect_dead_locked();

  // Returns this attachment's slabs and unmaps, waiting at most lock_ms for the lock. Idempotent.
  void close(uint32_t lock_ms = 100);

 private:
  explicit SharedPool(std::unique_ptr<Segment> seg);
  Status alloc_slow(uint64_t size, uint64_t align, uint64_t hint, uint32_t site, uint64_t* off, uint32_t* gen);
  Status free_slow(uint64_t off, uint32_t gen);
  Status lock();
  Status owned(uint64_t hoff, uint32_t gen, uint32_t** word, uint32_t* seen);
  Status release_locked(uint64_t hoff, uint32_t* word, uint32_t seen);
  Status physical_free(uint64_t hoff);
  Status lookup_locked(const std::string& key, NamedBlock* out, bool* had);
  Status free_unlisted_locked(uint64_t off, uint32_t* word);
  Status name_block(const std::string& key, uint64_t hoff, uint32_t gen, uint64_t length, NamedBlock* old, bool* had);

  std::unique_ptr<Segment> seg_;
  std::unique_ptr<SharedCache> cache_;
  SharedCache* fast_ = nullptr;  // cache_ while open and not in debug mode (debug allocations record a site)
  uint64_t heap_off_ = 0;
  bool debug_ = false;
};

// Pins (segment.h's pin table), under the lock. Whether a live pin names the block at segment offset
// `off`; with mark, such pins are told that a free waits for them. Pins of dead holders met are dropped.
bool shared_pinned(Segment& seg, uint64_t off, bool mark);
// The blocks the records of every queue in the segment own (segment offsets; objects.cc), each queue's lock
// taken in turn: call under the segment's lock. False when a queue could not be read (its lock stayed busy,
// its records fail a check): then nothing may be assumed unowned.
bool queued_blocks(Segment& seg, std::vector<uint64_t>* out);
// Segment::repair's hook (registered by SharedPool): names, generation words and pins made consistent.
Status repair_names_and_pins(Segment& seg);

}  // namespace mempool
