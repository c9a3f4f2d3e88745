// Futex wait/wake, the robust mutex and the robust semaphore: sync.h states their formats, invariants and
// crash rules.
#include "sync.h"

#include "process.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>

namespace mempool {
namespace {

constexpr uint32_t kSpins = 100;
constexpr uint64_t kJudgeAfterNs = 1000000ULL;  // a holder is asked about after holding for 1 ms

uint32_t stamp_tid(uint64_t stamp) { return static_cast<uint32_t>(stamp); }
uint32_t stamp_start(uint64_t stamp) { return static_cast<uint32_t>(stamp >> 32); }

// Whether the holder named by `tid` (with `stamp`, if it is that holder's) is gone.
bool holder_dead(uint32_t tid, uint64_t stamp) {
  uint32_t start = stamp_tid(stamp) == tid ? stamp_start(stamp) : 0;
  return !thread_alive(tid, start);
}

// Whether the holder `holder` (with the mutex's `stamp`) is the waiter itself rather than a dead thread whose
// id the waiter was given later.
bool holder_is_me(uint32_t holder, uint64_t stamp, const Waiter& w) {
  return holder == w.tid && (stamp_tid(stamp) != holder || stamp == w.stamp);
}

// How long the next sleep may last: until the deadline, at most max_sleep_ms.
uint64_t slice_ns(const Waiter& w, uint64_t now) {
  uint64_t slice = uint64_t(w.max_sleep_ms) * 1000000ULL;
  if (w.deadline != kNoDeadline && w.deadline - now < slice) slice = w.deadline - now;
  return slice;
}

bool cancelled(const Waiter& w) { return w.cancel != nullptr && w.cancel->load(std::memory_order_acquire); }

// One FUTEX_WAIT of at most `ns` (0 = no timeout). Returns 0 when woken, else errno.
int futex_sleep(uint32_t* word, uint32_t expected, uint64_t ns) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(ns / 1000000000ULL);
  ts.tv_nsec = static_cast<long>(ns % 1000000000ULL);
  long r = syscall(SYS_futex, word, FUTEX_WAIT, expected, ns == 0 ? nullptr : &ts, nullptr, 0);
  return r == 0 ? 0 : errno;
}

}  // namespace

uint64_t monotonic_now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t deadline_after_ms(double timeout_ms) {
  if (!(timeout_ms >= 0) || timeout_ms > 9007199254740991.0) return kNoDeadline;
  return monotonic_now_ns() + static_cast<uint64_t>(timeout_ms * 1e6);
}

bool stamp_alive(uint64_t stamp) { return thread_alive(stamp_tid(stamp), stamp_start(stamp)); }

uint64_t sync_stamp() { return (uint64_t(my_thread_start_lo()) << 32) | my_tid(); }

Waiter sync_waiter(uint64_t deadline, bool judge) {
  Waiter w;
  w.tid = my_tid();
  w.stamp = sync_stamp();
  w.deadline = deadline;
  w.judge = judge;
  return w;
}

SyncResult futex_wait(uint32_t* word, uint32_t expected, uint64_t deadline, const std::atomic<bool>* cancel) {
  for (;;) {
    if (cancel != nullptr && cancel->load(std::memory_order_acquire)) return SyncResult::cancelled;
    uint64_t ns = 0;  // no timeout
    uint64_t now = monotonic_now_ns();
    if (deadline != kNoDeadline) {
      if (now >= deadline) return SyncResult::timed_out;
      ns = deadline - now;
    }
    // With a cancel flag, sleep in slices so that a closing pool is noticed within 100 ms. A wake that
    // lands between two slices is not lost when the waker changed the word first (the usual pattern):
    // the next FUTEX_WAIT sees the change and returns not_equal.
    if (cancel != nullptr && (ns == 0 || ns > 100000000ULL)) ns = 100000000ULL;
    int e = futex_sleep(word, expected, ns);
    if (e == 0) return SyncResult::ok;
    if (e == EAGAIN) return SyncResult::not_equal;
    if (e == ETIMEDOUT || e == EINTR) continue;  // the loop checks the deadline and the flag
    return SyncResult::not_equal;  // EFAULT and the like: the word is not there to wait on
  }
}

uint32_t futex_wake(uint32_t* word, uint32_t count) {
  long r = syscall(SYS_futex, word, FUTEX_WAKE, count > INT_MAX ? INT_MAX : static_cast<int>(count), nullptr, nullptr, 0);
  return r > 0 ? static_cast<uint32_t>(r) : 0;
}

// ---- robust mutex ----

uint32_t mutex_holder(const RobustMutex* m) { return __atomic_load_n(&m->word, __ATOMIC_ACQUIRE) & ~kSyncWaiters; }

SyncResult mutex_try_lock(RobustMutex* m, const Waiter& w) {
  uint32_t expected = 0;
  if (__atomic_compare_exchange_n(&m->word, &expected, w.tid, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
    // Crash here: stamp is 0 (cleared by the last holder): judged by tid alone, which is dead.
    __atomic_store_n(&m->stamp, w.stamp, __ATOMIC_RELAXED);
    return SyncResult::ok;
  }
  uint32_t holder = expected & ~kSyncWaiters;
  uint64_t stamp = __atomic_load_n(&m->stamp, __ATOMIC_ACQUIRE);
  // A holder seen dead is taken over (with the waiters bit: others may sleep on the word).
  if (w.judge && !holder_is_me(holder, stamp, w) && holder_dead(holder, stamp)) {
    uint32_t seen = expected;
    if (__atomic_compare_exchange_n(&m->word, &seen, w.tid | kSyncWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
      __atomic_store_n(&m->stamp, w.stamp, __ATOMIC_RELAXED);
      return SyncResult::owner_died;
    }
  }
  return SyncResult::busy;
}

SyncResult mutex_lock(RobustMutex* m, const Waiter& w) {
  uint32_t expected = 0;
  if (__atomic_compare_exchange_n(&m->word, &expected, w.tid, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
    __atomic_store_n(&m->stamp, w.stamp, __ATOMIC_RELAXED);
    return SyncResult::ok;
  }
  uint32_t seen_holder = 0;
  uint64_t seen_since = 0;
  for (uint32_t spins = 0;; ++spins) {
    uint32_t v = __atomic_load_n(&m->word, __ATOMIC_RELAXED);
    if (v == 0) {
      // Taken with the waiters bit: others may be asleep, and the unlock must wake them.
      expected = 0;
      if (__atomic_compare_exchange_n(&m->word, &expected, w.tid | kSyncWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        __atomic_store_n(&m->stamp, w.stamp, __ATOMIC_RELAXED);
        return SyncResult::ok;
      }
      continue;
    }
    uint32_t holder = v & ~kSyncWaiters;
    uint64_t stamp = __atomic_load_n(&m->stamp, __ATOMIC_ACQUIRE);
    bool me = holder_is_me(holder, stamp, w);
    if (me && !w.wait_for_self) return SyncResult::deadlock;
    if (spins < kSpins) {
      cpu_relax();
      continue;
    }
    if (cancelled(w)) return SyncResult::cancelled;
    uint64_t now = monotonic_now_ns();
    if (holder != seen_holder) {
      seen_holder = holder;
      seen_since = now;
    }
    if (w.judge && !me && now - seen_since >= kJudgeAfterNs && holder_dead(holder, stamp)) {
      expected = v;
      if (!__atomic_compare_exchange_n(&m->word, &expected, w.tid | kSyncWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) continue;
      // Crash here: the word names us, and we are dead: the next waiter takes it over the same way.
      __atomic_store_n(&m->stamp, w.stamp, __ATOMIC_RELAXED);
      return SyncResult::owner_died;
    }
    if (w.deadline != kNoDeadline && now >= w.deadline) return SyncResult::timed_out;
    if (!(v & kSyncWaiters)) {
      expected = v;
      if (!__atomic_compare_exchange_n(&m->word, &expected, v | kSyncWaiters, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) continue;
    }
    futex_sleep(&m->word, v | kSyncWaiters, slice_ns(w, now));
  }
}

SyncResult mutex_unlock(RobustMutex* m, uint32_t tid) {
  uint32_t v = __atomic_load_n(&m->word, __ATOMIC_RELAXED);
  if ((v & ~kSyncWaiters) != tid) return SyncResult::not_owner;
  // Crash after this store: the word still names us (dead): the next waiter takes it over.
  __atomic_store_n(&m->stamp, uint64_t(0), __ATOMIC_RELAXED);
  while ((v & ~kSyncWaiters) == tid) {
    if (__atomic_compare_exchange_n(&m->word, &v, 0u, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
      if (v & kSyncWaiters) futex_wake(&m->word, 1);
      return SyncResult::ok;
    }
  }
  return SyncResult::not_owner;  // taken over meanwhile (judged dead by mistake, or scribbled)
}

// ---- robust semaphore ----

void semaphore_init(RobustSemaphore* s, uint32_t permits) {
  s->permits = permits;
  s->seq = 0;
  s->waiters = 0;
  s->reserved = 0;
  for (uint32_t i = 0; i < permits; ++i) s->slots[i] = 0;
}

uint32_t semaphore_available(const RobustSemaphore* s, uint32_t permits) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < permits; ++i) n += __atomic_load_n(&s->slots[i], __ATOMIC_RELAXED) == 0;
  return n;
}

namespace {
// One pass over the slots: a free one taken (ok), or with `judge_holders`, a dead holder's taken over
// (owner_died); busy when neither.
SyncResult semaphore_pass(RobustSemaphore* s, uint32_t permits, const Waiter& w, bool judge_holders) {
  // Start at a slot picked by tid, so that threads do not all fight over slot 0.
  uint32_t first = permits > 1 ? w.tid % permits : 0;
  for (uint32_t k = 0; k < permits; ++k) {
    uint64_t* slot = &s->slots[(first + k) % permits];
    uint64_t v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (v == 0 && __atomic_compare_exchange_n(slot, &v, w.stamp, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
      return SyncResult::ok;
    }
  }
  if (!judge_holders || !w.judge) return SyncResult::busy;
  for (uint32_t k = 0; k < permits; ++k) {
    uint64_t* slot = &s->slots[(first + k) % permits];
    uint64_t v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (v == 0 || v == w.stamp) continue;
    if (!holder_dead(stamp_tid(v), v)) continue;
    // One compare-and-swap: the permit passes from the dead holder to us, never free in between.
    if (__atomic_compare_exchange_n(slot, &v, w.stamp, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return SyncResult::owner_died;
  }
  return SyncResult::busy;
}
}  // namespace

SyncResult semaphore_try_acquire(RobustSemaphore* s, uint32_t permits, const Waiter& w) {
  return semaphore_pass(s, permits, w, true);
}

SyncResult semaphore_acquire(RobustSemaphore* s, uint32_t permits, const Waiter& w) {
  uint64_t last_judged = monotonic_now_ns();
  for (uint32_t round = 0;; ++round) {
    uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    uint64_t now = round == 0 ? last_judged : monotonic_now_ns();
    bool judge = now - last_judged >= kJudgeAfterNs;
    if (judge) last_judged = now;
    SyncResult r = semaphore_pass(s, permits, w, judge);
    if (r != SyncResult::busy) return r;
    if (round < 8) {
      cpu_relax();
      continue;
    }
    if (cancelled(w)) return SyncResult::cancelled;
    if (w.deadline != kNoDeadline && now >= w.deadline) return SyncResult::timed_out;
    __atomic_add_fetch(&s->waiters, 1u, __ATOMIC_SEQ_CST);
    // A release between the pass above and this sleep bumped seq: the sleep returns at once (EAGAIN).
    futex_sleep(&s->seq, seq, slice_ns(w, now));
    __atomic_sub_fetch(&s->waiters, 1u, __ATOMIC_SEQ_CST);
  }
}

SyncResult semaphore_release(RobustSemaphore* s, uint32_t permits, uint32_t tid) {
  for (uint32_t i = 0; i < permits; ++i) {
    uint64_t v = __atomic_load_n(&s->slots[i], __ATOMIC_RELAXED);
    if (v == 0 || stamp_tid(v) != tid) continue;
    if (!__atomic_compare_exchange_n(&s->slots[i], &v, uint64_t(0), false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) continue;
    // Crash here: the permit is free and nobody was told: a sleeper wakes at the end of its slice.
    __atomic_add_fetch(&s->seq, 1u, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST) != 0) futex_wake(&s->seq, 1);
    return SyncResult::ok;
  }
  return SyncResult::not_owner;
}

}  // namespace mempool
