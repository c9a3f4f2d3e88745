// Cross-process synchronization on words of a shared mapping: futex wait and wake, a robust mutex and a
// robust counting semaphore. Pure C++ with no segment knowledge: callers hand in addresses inside a
// MAP_SHARED mapping (a segment's heap block) and say whose thread ids they may judge.
//
// Futex: FUTEX_WAIT / FUTEX_WAKE without FUTEX_PRIVATE_FLAG. The kernel keys such waiters by the page of the
// shared object (inode + offset), so a wake in one process reaches a waiter in another whatever address each
// mapped the segment at, and worker threads and processes mix freely.
//
// Identity: a holder is a thread, named by a stamp = (low 32 bits of its start ticks << 32) | tid. The tid
// alone is reused quickly (pid_max is often 32768); with the start ticks a later thread given the same id is
// not taken for the dead holder. A stamp whose tid half is not the holder's is ignored (judged by tid alone).
//
// RobustMutex (16 bytes in shared memory)
//   word   0 = free; else the holder's tid, with kSyncWaiters set while someone may sleep on it. Only ever
//          compared and swapped (never a pthread mutex: glibc's robust list pointers would live in memory any
//          process can scribble on, and the kernel would follow them).
//   stamp  the holder's stamp, written just after it wins the word, cleared just before it releases it.
//   Invariant: only the thread named by word writes stamp or releases word.
//   Crash rules: a holder killed with -9 at any instruction leaves word naming a thread that no longer
//   exists. A waiter that has seen the same holder for 1 ms asks /proc (thread_alive) and, if the holder is
//   gone, takes the word over with one compare-and-swap and reports owner_died: what the mutex protects may
//   be half changed, and the new holder is told so. Killed between winning the word and writing stamp:
//   stamp is 0 or another thread's, so the holder is judged by tid alone. Nothing else is ever half done.
//
// RobustSemaphore (16 bytes + 8 per permit)
//   permits   slots (fixed at creation); seq: bumped at every release (the futex word waiters sleep on);
//   waiters   how many may be asleep (a release skips the wake system call when 0; a crash leaves it high,
//             which costs only wakes).
//   slot[i]   0 = free; else the stamp of the thread holding that permit. A permit is taken and returned by
//             one compare-and-swap of its slot, so there is no moment at which a permit is neither free nor
//             held by someone named. Crash rules: a holder killed at any instruction leaves its slots naming
//             it; a waiter that finds no free slot judges the holders (at most once a millisecond) and takes a
//             dead holder's slot over with one compare-and-swap, reporting owner_died.
//
// Waiting never spins for long: a few hundred pauses, then futex sleeps in slices of at most max_sleep_ms,
// checking the deadline, the cancel flag and the holder's liveness between slices.
#pragma once

#include <atomic>
#include <cstdint>

namespace mempool {

constexpr uint32_t kSyncWaiters = 0x80000000u;
constexpr uint64_t kNoDeadline = UINT64_MAX;
constexpr uint32_t kMaxPermits = 4096;

enum class SyncResult : int32_t {
  ok = 0,          // woken / acquired
  owner_died = 1,  // acquired from a holder that died holding it
  not_equal = 2,   // wait: the word did not hold the expected value
  timed_out = 3,
  busy = 4,        // try_*: held by someone else
  deadlock = 5,    // a blocking lock by the thread that holds it (it could never be released)
  not_owner = 6,   // unlock / release by a thread that does not hold it
  cancelled = 7,   // the cancel flag was raised (the pool closed under an async wait)
};

uint64_t monotonic_now_ns();

// One spin-wait hint to the CPU (between loads of a word another thread is about to change).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}
// A deadline timeout_ms from now; negative or infinite (> 2^53) means none.
uint64_t deadline_after_ms(double timeout_ms);

struct Waiter {
  uint32_t tid = 0;         // who acquires (for async acquires, the JavaScript thread, not the waiting thread)
  uint64_t stamp = 0;       // its stamp (sync_stamp)
  uint64_t deadline = kNoDeadline;
  const std::atomic<bool>* cancel = nullptr;
  bool judge = true;         // whether thread ids of holders mean something here (same PID namespace)
  bool wait_for_self = false;  // an async acquire: a holder with our own tid is another task of our thread
  uint32_t max_sleep_ms = 20;  // longest futex sleep between checks
};
// This thread's stamp.
uint64_t sync_stamp();
// Whether the thread a stamp names still runs (tid and start ticks).
bool stamp_alive(uint64_t stamp);
Waiter sync_waiter(uint64_t deadline, bool judge);

// FUTEX_WAIT on *word while it holds `expected`. ok: woken (by a wake or, rarely, spuriously: re-check the
// word); not_equal; timed_out; cancelled.
SyncResult futex_wait(uint32_t* word, uint32_t expected, uint64_t deadline, const std::atomic<bool>* cancel);
// Wakes up to `count` waiters; returns how many were woken.
uint32_t futex_wake(uint32_t* word, uint32_t count);

struct RobustMutex {
  uint32_t word;
  uint32_t reserved;
  uint64_t stamp;
};
static_assert(sizeof(RobustMutex) == 16, "a robust mutex is 16 bytes");

// ok or owner_died (acquired), busy.
SyncResult mutex_try_lock(RobustMutex* m, const Waiter& w);
// ok or owner_died (acquired), timed_out, cancelled, deadlock.
SyncResult mutex_lock(RobustMutex* m, const Waiter& w);
// ok, not_owner (then nothing changed).
SyncResult mutex_unlock(RobustMutex* m, uint32_t tid);
// The holder's tid (0 = free).
uint32_t mutex_holder(const RobustMutex* m);

struct RobustSemaphore {
  uint32_t permits;
  uint32_t seq;
  uint32_t waiters;
  uint32_t reserved;
  uint64_t slots[1];  // `permits` of them
};
constexpr uint64_t semaphore_bytes(uint32_t permits) { return 16 + 8 * uint64_t(permits); }

// Formats a semaphore of `permits` (1..kMaxPermits) free permits.
void semaphore_init(RobustSemaphore* s, uint32_t permits);
// ok or owner_died (acquired), busy.
SyncResult semaphore_try_acquire(RobustSemaphore* s, uint32_t permits, const Waiter& w);
// ok or owner_died, timed_out, cancelled.
SyncResult semaphore_acquire(RobustSemaphore* s, uint32_t permits, const Waiter& w);
// Returns one permit thread `tid` holds: ok, not_owner.
SyncResult semaphore_release(RobustSemaphore* s, uint32_t permits, uint32_t tid);
// Free permits now (a snapshot).
uint32_t semaphore_available(const RobustSemaphore* s, uint32_t permits);

}  // namespace mempool
