// The segment's lock (a futex word holding the holder's thread id) and its recovery: a holder found dead
// is taken over, and what it may have left half-done is repaired (Segment::repair). segment.h states the
// lock word's format; docs/segment-format.md how another language takes it.
#include "segment.h"

#include "process.h"
#include "shared_cache.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace mempool {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

long futex(uint32_t* word, int op, uint32_t value, const struct timespec* timeout) {
  return syscall(SYS_futex, word, op, value, timeout, nullptr, 0);
}

uint64_t monotonic_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

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

Status Segment::lock(bool* recovered) {
  *recovered = false;
  uint32_t* word = &header()->lock;
  uint32_t tid = my_tid();
  uint32_t expected = 0;
  if (__atomic_compare_exchange_n(word, &expected, tid, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return Status::ok;
  // Contended: spin briefly (critical sections are short), then sleep in slices, checking between
  // them that the holder still exists.
  uint64_t deadline = monotonic_ns() + uint64_t(lock_timeout_ms_) * 1000000ULL;
  uint32_t seen_holder = 0;  // the holder the liveness clock below is running for
  uint64_t seen_since = 0;
  for (uint32_t spins = 0;; ++spins) {
    uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
    if (v == 0) {
      // Taken with the waiters bit: others may be asleep, and the unlock must wake them.
      expected = 0;
      if (__atomic_compare_exchange_n(word, &expected, tid | kLockWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) break;
      continue;
    }
    if (spins < 100) {
      cpu_relax();
      continue;
    }
    uint32_t holder = v & ~kLockWaiters;
    // Thread ids mean something only in the creator's PID namespace (containers sharing /dev/shm
    // have their own): elsewhere a holder is never judged, and waiting ends with the timeout.
    bool judge = same_pid_namespace();
    if (judge && holder == tid) return Status::corrupted;  // this thread cannot hold it: the word was written
    uint64_t now = monotonic_ns();
    if (holder != seen_holder) {
      seen_holder = holder;
      seen_since = now;
    }
    // Is the holder still there? Asked once it has held the lock for a millisecond (reading /proc
    // costs microseconds; live holders release far sooner), and again after every sleep.
    if (judge && now - seen_since >= 1000000ULL && !thread_alive(holder)) {
      // The holder died inside an operation: take the lock over, repair what it may have left
      // half-done, then go on.
      expected = v;
      if (!__atomic_compare_exchange_n(word, &expected, tid | kLockWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) continue;
      Status s = repair();
      header()->recoveries += 1;
      if (s != Status::ok) {
        unlock();
        return Status::corrupted;
      }
      *recovered = true;
      return Status::ok;
    }
    if (now >= deadline) return Status::lock_timeout;
    if (!(v & kLockWaiters)) {
      expected = v;
      if (!__atomic_compare_exchange_n(word, &expected, v | kLockWaiters, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) continue;
    }
    uint64_t slice = deadline - now < 1000000ULL ? deadline - now : 1000000ULL;  // at most 1 ms asleep
    struct timespec ts = {0, static_cast<long>(slice)};
    futex(word, FUTEX_WAIT, v | kLockWaiters, &ts);
  }
  return Status::ok;
}

void Segment::unlock() {
  uint32_t* word = &header()->lock;
  uint32_t tid = my_tid();
  uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
  // Release only a lock this thread holds: one taken over from us (judged dead by mistake) or a word
  // a scribbler changed stays as it is.
  while ((v & ~kLockWaiters) == tid) {
    if (__atomic_compare_exchange_n(word, &v, 0u, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
      if (v & kLockWaiters) futex(word, FUTEX_WAKE, 1, nullptr);
      return;
    }
  }
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
