// The segment's lock (a futex word holding the holder's thread id) and its recovery: a holder found dead
// is taken over, and what it may have left half-done is repaired (Segment::repair). segment.h states the
// lock word's format; docs/segment-format.md how another language takes it.
#include "segment.h"

#include "process.h"
#include "shared_cache.h"
#include "sync.h"


namespace mempool {

namespace {
Status (*g_repair_hook)(Segment&) = nullptr;
}  // namespace
void Segment::set_repair_hook(Status (*hook)(Segment&)) { g_repair_hook = hook; }
Status Segment::lock_within(uint32_t ms, bool* recovered) {
  uint32_t timeout = lock_timeout_ms_;
  lock_timeout_ms_ = timeout < ms ? timeout : ms;
  Status s = lock(recovered);
  lock_timeout_ms_ = timeout;
  return s;
}

// The lock is a RobustMutex (sync.h): its waiting, its judging of holders (tid and start ticks) and its
// take-over are the same as a user's SharedMutex; what is particular here is the repair after a take-over.
Status Segment::lock(bool* recovered) {
  *recovered = false;
  RobustMutex* m = &header()->lock;
  Waiter w;
  w.tid = my_tid();
  w.stamp = sync_stamp();
  w.judge = false;  // the uncontended case: one compare-and-swap, no clock, no /proc
  if (mutex_try_lock(m, w) == SyncResult::ok) return Status::ok;
  // Contended: spin briefly (critical sections are short), then sleep in slices of 1 ms, asking /proc about
  // a holder that has held it for a millisecond. Thread ids mean something only in the creator's PID
  // namespace (containers sharing /dev/shm have their own): elsewhere a holder is never judged, and waiting
  // ends with the timeout.
  w.judge = same_pid_namespace();
  w.deadline = monotonic_now_ns() + uint64_t(lock_timeout_ms_) * 1000000ULL;
  w.max_sleep_ms = 1;
  switch (mutex_lock(m, w)) {
    case SyncResult::ok: return Status::ok;
    case SyncResult::owner_died: {
      // The holder died inside an operation: repair what it may have left half done, then go on.
      Status s = repair();
      header()->recoveries += 1;
      if (s != Status::ok) {
        unlock();
        return Status::corrupted;
      }
      *recovered = true;
      return Status::ok;
    }
    case SyncResult::timed_out: return Status::lock_timeout;
    default: return Status::corrupted;  // the word names this thread, which cannot hold it: it was written
  }
}

// Releases only a lock this thread holds: one taken over from us (judged dead by mistake) or a word a
// scribbler changed stays as it is.
void Segment::unlock() { mutex_unlock(&header()->lock, my_tid()); }

// Healing (issue 15, item 6: a stray write cannot take the segment down for everyone). A process that writes
// through a view of a block it freed writes into a free block's payload, where tlsf and buddy keep their
// free-list links (and tlsf the next block's prev_phys word): derived metadata, which rebuild() recomputes
// from the primary record (tlsf: the chain of size words between payloads and the live/freed maps; buddy:
// the side table; bitmap keeps nothing inside blocks). So the heap is rebuilt under the lock and the call
// retried, instead of every process meeting corrupted from then on. What a stray write can still damage:
// a tlsf size word, when the freed memory was reused by blocks of other sizes and the old view's range now
// covers a block header (tlsf.cc's header comment); that, and the user's own bytes of whatever block lives
// there now.
// Killed with -9 inside heal(): the lock names a dead thread and the next process runs repair(), whose
// first step is the same rebuild (a rebuild that dies is simply run again, each heap's crash rules).
// The heap's counters of live blocks and used bytes are kept in its header, out of a stray write's reach,
// by the operations alone, and a rebuild that only fixes derived structures keeps every used block: if
// the counts move, the primary record was damaged (a live block turned free), and that is reported.
Status Segment::heal() {
  SegmentHeader* h = header();
  // Counted first: a heal killed midway is still counted (the next locker's repair() finishes it).
  if (h->heap_repairs != UINT64_MAX) h->heap_repairs += 1;
  HeapStats before;
  heap_->stats(&before);
  Status s = heap_->rebuild();
  if (s != Status::ok) return s;
  HeapStats after;
  heap_->stats(&after);
  return after.live_allocations == before.live_allocations && after.used == before.used ? Status::ok : Status::corrupted;
}

bool Segment::heal_after(Status* s) {
  const uint8_t damage = heap_->damage();
  if (*s != Status::corrupted && damage == 0) return false;
  heap_->clear_damage();
  if (heap_->debug() != nullptr) return false;  // debug mode reports stray writes (its poison) instead
  // The primary record is damaged: the status stands (a call that succeeded did its work; the next one
  // meets the damage and reports it).
  if (heal() != Status::ok) return false;
  if (*s == Status::corrupted && (damage & Heap::kDamageMade)) {
    *s = Status::ok;  // the call's change was made; only a list it met was damaged, and it is rebuilt
    return false;
  }
  // Refused before changing anything, or out of memory while lists were dropped (their memory is back
  // now): retry on the rebuilt heap.
  return *s == Status::corrupted || *s == Status::out_of_memory;
}

__attribute__((noinline)) Status Segment::heap_alloc_healed(Status s, uint64_t size, uint64_t align, uint64_t hint, uint64_t* off) {
  if (heal_after(&s)) {
    s = heap_->alloc(size, align, hint, off);
    heal_after(&s);  // healed again if it must be, but no second retry
  }
  return s;
}

__attribute__((noinline)) Status Segment::heap_free_healed(Status s, uint64_t off) {
  if (heal_after(&s)) {
    s = heap_->free(off);
    heal_after(&s);
  }
  return s;
}

__attribute__((noinline)) Status Segment::heap_resize_healed(Status s, uint64_t off, uint64_t size) {
  if (heal_after(&s)) {
    s = heap_->resize_in_place(off, size);
    heal_after(&s);
  }
  return s;
}

Status Segment::repair() {
  Status s = heap_->rebuild();
  if (s != Status::ok) return s;
  // The slab totals are derived from the slabs themselves (their headers and slot states).
  shared_recount(*this);
  // Directory entries become live with one store of their state, so a half-written entry is simply
  // not live; names of allocations that no longer exist are dropped, and the index is rebuilt.
  uint64_t live = 0;
  for (uint32_t i = 0; i < capacity_; ++i) {
    DirEntry* e = entry(i);
    if (e->state != kDirLive) {
      if (e->state != kDirEmpty) e->state = kDirDeleted;
      continue;
    }
    uint64_t usable = 0;
    if (!entry_valid(*e) || usable_any(e->offset - heap_offset_, &usable) != Status::ok || e->length > usable) {
      e->state = kDirDeleted;
      continue;
    }
    ++live;
  }
  header()->directory_live = live;
  index_rebuild();
  // Names, generation words and pins (shared_pool.cc): the directory is the truth for who is named.
  if (g_repair_hook != nullptr) {
    Status hs = g_repair_hook(*this);
    if (hs != Status::ok) return hs;
  }
  CheckResult r;
  heap_->check(&r);
  shared_check(*this, &r);
  dir_check(&r);
  return r.violations == 0 ? Status::ok : Status::corrupted;
}

}  // namespace mempool
