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
