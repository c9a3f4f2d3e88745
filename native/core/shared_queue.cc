// The shared queue: shared_queue.h states its layout, invariants and crash rules.
#include "shared_queue.h"

#include <cstring>

#include "process.h"

namespace mempool {
namespace {

constexpr uint64_t kReapEveryNs = 100000000ULL;  // dead lessees are looked for at most every 100 ms
constexpr uint32_t kSpinsBeforeSleep = 2000;     // pause instructions: some microseconds

uint64_t round16(uint64_t n) { return (n + 15) & ~uint64_t(15); }
bool aligned16(uint64_t n) { return (n & 15) == 0; }

// After bumping `word`: wakes every sleeper on it if any announced itself. A sleeper adds 1 to `waiters`
// before each sleep and never takes it back; the first waker takes the count to 0 and wakes them all, so a
// run of pops wakes a sleeping producer once, not once per pop (a shared futex wake costs a syscall of some
// hundred ns; a woken thread takes tens of microseconds to run). A sleeper that timed out or died leaves the
// count high: one wake for nobody, later. The sleeper read the word before it looked at the queue, so a
// wake between its look and its sleep makes the sleep return at once.
void wake_all(uint32_t* waiters, uint32_t* word) {
  if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) == 0) return;
  if (__atomic_exchange_n(waiters, 0u, __ATOMIC_SEQ_CST) != 0) futex_wake(word, UINT32_MAX);
}

// The end of the next sleep: `deadline`, or 100 ms from now if that is sooner (see pop and push).
uint64_t sleep_until(uint64_t deadline) {
  uint64_t soon = monotonic_now_ns() + kReapEveryNs;
  return soon < deadline ? soon : deadline;
}

// Whether *word moves off `seen` within a few microseconds of watching (no syscall).
bool spin_until_changed(const uint32_t* word, uint32_t seen) {
  for (uint32_t i = 0; i < kSpinsBeforeSleep; ++i) {
    if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != seen) return true;
    cpu_relax();
  }
  return false;
}

}  // namespace

void SharedQueue::format(uint8_t* state, uint64_t ring_bytes, uint64_t max_messages) {
  std::memset(state, 0, sizeof(QueueState));
  QueueState* q = reinterpret_cast<QueueState*>(state);
  q->ring_bytes = ring_bytes;
  q->max_messages = max_messages;
}

bool SharedQueue::attach(uint8_t* state, uint64_t available, bool judge) {
  if (available < sizeof(QueueState)) return false;
  QueueState* q = reinterpret_cast<QueueState*>(state);
  uint64_t ring = __atomic_load_n(&q->ring_bytes, __ATOMIC_RELAXED);
  uint64_t max_messages = __atomic_load_n(&q->max_messages, __ATOMIC_RELAXED);
  if (ring < 2 * kRecordHeader || !aligned16(ring) || ring > available - sizeof(QueueState) || max_messages == 0) return false;
  q_ = q;
  ring_base_ = state + sizeof(QueueState);
  ring_ = ring;
  max_messages_ = max_messages;
  judge_ = judge;
  return true;
}

// ---- the lock ----

QueueResult SharedQueue::lock(const Waiter& w) {
  // The lock is always taken and released by the running thread within one call (an async call's waiting
  // thread included), whoever the operation is for.
  Waiter lw = sync_waiter(w.deadline, judge_);
  lw.cancel = w.cancel;
  lw.max_sleep_ms = 1;  // critical sections are short: a holder that has died is noticed within about 1 ms
  SyncResult r = mutex_lock(&q_->lock, lw);
  switch (r) {
    case SyncResult::ok: return QueueResult::ok;
    case SyncResult::owner_died: {
      QueueResult fixed = repair();
      if (fixed != QueueResult::ok) unlock();
      return fixed;
    }
    case SyncResult::timed_out: return QueueResult::timed_out;
    case SyncResult::cancelled: return QueueResult::cancelled;
    default: return QueueResult::corrupted;  // the word names this thread: it was written by someone else
  }
}

void SharedQueue::unlock() { mutex_unlock(&q_->lock, my_tid()); }

// ---- records ----

uint8_t* SharedQueue::record(uint64_t pos, uint32_t* length, uint32_t* state) const {
  uint64_t at = pos % ring_;
  if (!aligned16(at) || at + kRecordHeader > ring_) return nullptr;
  uint8_t* r = ring_base_ + at;
  *length = __atomic_load_n(reinterpret_cast<uint32_t*>(r), __ATOMIC_RELAXED);
  *state = __atomic_load_n(reinterpret_cast<uint32_t*>(r + 4), __ATOMIC_ACQUIRE);
  return r;
}

// Bytes the record at `pos` takes (0 when it does not fit the ring: a damaged record).
uint64_t SharedQueue::record_span(uint64_t pos, uint32_t length, uint32_t state) const {
  uint64_t at = pos % ring_;
  if (state == kRecordWrap) return ring_ - at;
  if (state < kRecordReady || state > kRecordDone) return 0;
  uint64_t span = kRecordHeader + round16(length & ~kRecordBlock);
  return at + span <= ring_ ? span : 0;
}

QueueResult SharedQueue::advance_head() {
  uint64_t head = q_->head, tail = q_->tail;
  while (head < tail) {
    uint32_t length = 0, state = 0;
    if (record(head, &length, &state) == nullptr) return QueueResult::corrupted;
    if (state != kRecordDone && state != kRecordWrap) break;
    uint64_t span = record_span(head, length, state);
    if (span == 0 || span > tail - head) return QueueResult::corrupted;
    head += span;
  }
  // One store: a crash before it leaves done records at head, which the next advance skips.
  __atomic_store_n(&q_->head, head, __ATOMIC_RELEASE);
  if (q_->ready_from < head) q_->ready_from = head;
  return QueueResult::ok;
}

QueueResult SharedQueue::repair() {
  uint64_t head = q_->head, tail = q_->tail;
  if (tail < head || tail - head > ring_ || !aligned16(head) || !aligned16(tail)) return QueueResult::corrupted;
  uint64_t count = 0, leased = 0;
  for (uint64_t p = head; p < tail;) {
    uint32_t length = 0, state = 0;
    if (record(p, &length, &state) == nullptr) return QueueResult::corrupted;
    uint64_t span = record_span(p, length, state);
    if (span == 0 || span > tail - p) return QueueResult::corrupted;
    if (state == kRecordReady || state == kRecordLeased) ++count;
    if (state == kRecordLeased) ++leased;
    p += span;
  }
  q_->count = count;
  q_->leased = leased;
  q_->ready_from = head;
  q_->recoveries += 1;
  return advance_head();
}

void SharedQueue::reap_dead_leases(uint64_t now) {
  if (!judge_ || q_->leased == 0 || now - q_->last_reap_ns < kReapEveryNs) return;
  q_->last_reap_ns = now;
  for (uint64_t p = q_->head; p < q_->tail;) {
    uint32_t length = 0, state = 0;
    uint8_t* r = record(p, &length, &state);
    if (r == nullptr) return;
    uint64_t span = record_span(p, length, state);
    if (span == 0 || span > q_->tail - p) return;
    if (state == kRecordLeased) {
      uint64_t lease = __atomic_load_n(reinterpret_cast<uint64_t*>(r + 8), __ATOMIC_RELAXED);
      if (!stamp_alive(lease)) {
        // One store makes it ready again (crash before: still leased to the dead thread, found next time).
        __atomic_store_n(reinterpret_cast<uint32_t*>(r + 4), uint32_t(kRecordReady), __ATOMIC_RELEASE);
        q_->leased -= 1;
        q_->redelivered += 1;
        if (p < q_->ready_from) q_->ready_from = p;
      }
    }
    p += span;
  }
}

// ---- operations under the lock ----

bool SharedQueue::room_for(uint64_t len) const {
  uint64_t head = q_->head, tail = q_->tail;
  if (tail < head || tail - head > ring_ || q_->count >= max_messages_) return false;
  uint64_t need = kRecordHeader + round16(len);
  uint64_t contiguous = ring_ - tail % ring_;
  uint64_t total = need <= contiguous ? need : contiguous + need;  // a wrap record fills the ring's end
  return total <= ring_ - (tail - head);
}

QueueResult SharedQueue::try_push(const uint8_t* data, uint64_t len, bool block) {
  if (q_->closed) return QueueResult::closed;
  uint64_t head = q_->head, tail = q_->tail;
  if (tail < head || tail - head > ring_ || !aligned16(tail)) return QueueResult::corrupted;
  if (len > max_message()) return QueueResult::too_large;
  if (!room_for(len)) return QueueResult::full;
  uint64_t need = kRecordHeader + round16(len);
  uint64_t contiguous = ring_ - tail % ring_;
  uint64_t total = need <= contiguous ? need : contiguous + need;
  uint64_t pos = tail;
  if (need > contiguous) {
    uint8_t* wrap = ring_base_ + tail % ring_;
    __atomic_store_n(reinterpret_cast<uint32_t*>(wrap), 0u, __ATOMIC_RELAXED);
    __atomic_store_n(reinterpret_cast<uint32_t*>(wrap + 4), uint32_t(kRecordWrap), __ATOMIC_RELAXED);
    pos += contiguous;
  }
  uint8_t* r = ring_base_ + pos % ring_;
  __atomic_store_n(reinterpret_cast<uint32_t*>(r), static_cast<uint32_t>(len) | (block ? kRecordBlock : 0u), __ATOMIC_RELAXED);
  __atomic_store_n(reinterpret_cast<uint32_t*>(r + 4), uint32_t(kRecordReady), __ATOMIC_RELAXED);
  __atomic_store_n(reinterpret_cast<uint64_t*>(r + 8), uint64_t(0), __ATOMIC_RELAXED);
  if (len > 0) std::memcpy(r + kRecordHeader, data, len);
  // The commit: crash before this store and the record lies beyond tail, as if never written.
  __atomic_store_n(&q_->tail, tail + total, __ATOMIC_RELEASE);
  q_->count += 1;  // derived: repair recounts
  q_->pushed += 1;
  __atomic_add_fetch(&q_->not_empty, 1u, __ATOMIC_SEQ_CST);
  return QueueResult::ok;
}

QueueResult SharedQueue::try_pop(PopBuffer* out, uint64_t lease_to, uint64_t* position, bool allow_block, bool* block) {
  if (q_->leased != 0) reap_dead_leases(monotonic_now_ns());  // no clock read when nothing is leased
  uint64_t head = q_->head, tail = q_->tail;
  if (tail < head || tail - head > ring_) return QueueResult::corrupted;
  uint64_t p = q_->ready_from < head ? head : q_->ready_from;
  while (p < tail) {
    uint32_t length = 0, state = 0;
    uint8_t* r = record(p, &length, &state);
    if (r == nullptr) return QueueResult::corrupted;
    uint64_t span = record_span(p, length, state);
    if (span == 0 || span > tail - p) return QueueResult::corrupted;
    if (state != kRecordReady) {
      p += span;
      continue;
    }
    bool is_block = (length & kRecordBlock) != 0;
    length &= ~kRecordBlock;
    if (is_block && (!allow_block || length != sizeof(BlockRef))) {
      return allow_block ? QueueResult::corrupted : QueueResult::block;  // nothing changed
    }
    if (block != nullptr) *block = is_block;
    out->length = length;
    if (length > out->capacity) return QueueResult::too_small;  // nothing changed: the caller grows and retries
    if (length > 0) std::memcpy(out->data, r + kRecordHeader, length);
    if (lease_to != 0) {
      // The lease first, then the state (the commit): a crash between leaves it ready, never leased to
      // no one.
      __atomic_store_n(reinterpret_cast<uint64_t*>(r + 8), lease_to, __ATOMIC_RELAXED);
      __atomic_store_n(reinterpret_cast<uint32_t*>(r + 4), uint32_t(kRecordLeased), __ATOMIC_RELEASE);
      q_->leased += 1;
      *position = p;
    } else {
      // The commit: crash before it and the message is still there for the next consumer.
      __atomic_store_n(reinterpret_cast<uint32_t*>(r + 4), uint32_t(kRecordDone), __ATOMIC_RELEASE);
      q_->count -= 1;
      __atomic_add_fetch(&q_->not_full, 1u, __ATOMIC_SEQ_CST);
    }
    q_->popped += 1;
    q_->ready_from = p + span;
    return advance_head();
  }
  q_->ready_from = tail;
  return q_->closed && q_->count == 0 ? QueueResult::closed : QueueResult::empty;
}

// ---- the public calls: lock, try, unlock, wake, and sleep when asked to wait ----

QueueResult SharedQueue::wait_not_full(uint32_t seq, const Waiter& w) {
  if (spin_until_changed(&q_->not_full, seq)) return QueueResult::ok;
  __atomic_add_fetch(&q_->push_waiters, 1u, __ATOMIC_SEQ_CST);  // no decrement: see wake_all
  uint64_t deadline = sleep_until(w.deadline);
  SyncResult s = futex_wait(&q_->not_full, seq, deadline, w.cancel);
  if (s == SyncResult::timed_out && deadline == w.deadline) return QueueResult::timed_out;
  if (s == SyncResult::cancelled) return QueueResult::cancelled;
  return QueueResult::ok;
}

QueueResult SharedQueue::wait_not_empty(uint32_t seq, const Waiter& w) {
  // A producer usually follows within microseconds: watch for a push a little before paying for a sleep
  // and, on the producer's side, a wake.
  if (spin_until_changed(&q_->not_empty, seq)) return QueueResult::ok;
  __atomic_add_fetch(&q_->pop_waiters, 1u, __ATOMIC_SEQ_CST);  // no decrement: see wake_all
  // Sleeping at most 100 ms at a time: a lessee that dies is noticed and its message redelivered without a
  // push to wake us, and a wake lost with a producer killed before it sent it costs 100 ms, not a hang.
  uint64_t deadline = sleep_until(w.deadline);
  SyncResult s = futex_wait(&q_->not_empty, seq, deadline, w.cancel);
  if (s == SyncResult::cancelled) return QueueResult::cancelled;
  if (s == SyncResult::timed_out && deadline == w.deadline) return QueueResult::timed_out;
  return QueueResult::ok;
}

void SharedQueue::woke_pushers() { wake_all(&q_->push_waiters, &q_->not_full); }
void SharedQueue::woke_poppers() { wake_all(&q_->pop_waiters, &q_->not_empty); }

QueueResult SharedQueue::push(const uint8_t* data, uint64_t len, const Waiter& w, bool wait) {
  if (len > max_message()) return QueueResult::too_large;
  for (;;) {
    uint32_t seq = not_full_seq();
    QueueResult r = lock(w);
    if (r != QueueResult::ok) return r;
    r = try_push(data, len, false);
    unlock();
    if (r == QueueResult::ok) woke_poppers();
    if (r != QueueResult::full || !wait) return r;
    r = wait_not_full(seq, w);
    if (r != QueueResult::ok) return r;
  }
}

QueueResult SharedQueue::pop(std::string* out, uint64_t lease_to, uint64_t* position, const Waiter& w, bool wait) {
  if (out->size() < 256) out->resize(256);
  for (;;) {
    PopBuffer b;
    b.data = reinterpret_cast<uint8_t*>(&(*out)[0]);
    b.capacity = out->size();
    QueueResult r = pop(&b, lease_to, position, w, wait);
    if (r == QueueResult::too_small) {
      out->resize(b.length);  // and again: the message may have gone to another consumer meanwhile
      continue;
    }
    if (r == QueueResult::ok) out->resize(b.length);
    return r;
  }
}

QueueResult SharedQueue::pop(PopBuffer* out, uint64_t lease_to, uint64_t* position, const Waiter& w, bool wait) {
  for (;;) {
    uint32_t seq = not_empty_seq();
    QueueResult r = lock(w);
    if (r != QueueResult::ok) return r;
    r = try_pop(out, lease_to, position, false, nullptr);
    unlock();
    if (r == QueueResult::ok && lease_to == 0) woke_pushers();
    if (r != QueueResult::empty || !wait) return r;
    r = wait_not_empty(seq, w);
    if (r != QueueResult::ok) return r;
  }
}

QueueResult SharedQueue::ack_locked(uint64_t position, uint64_t lessee, bool allow_block, bool* block, BlockRef* ref) {
  uint32_t length = 0, state = 0;
  uint8_t* rec = nullptr;
  if (position >= q_->head && position < q_->tail && aligned16(position)) rec = record(position, &length, &state);
  if (rec == nullptr || state != kRecordLeased || __atomic_load_n(reinterpret_cast<uint64_t*>(rec + 8), __ATOMIC_RELAXED) != lessee) {
    return QueueResult::not_leased;
  }
  bool is_block = (length & kRecordBlock) != 0;
  if (is_block && !allow_block) return QueueResult::block;  // nothing changed: SharedPool's ack frees the block
  if (is_block) {
    if ((length & ~kRecordBlock) != sizeof(BlockRef) || record_span(position, length, state) == 0) return QueueResult::corrupted;
    std::memcpy(ref, rec + kRecordHeader, sizeof *ref);
  }
  if (block != nullptr) *block = is_block;
  // The commit: crash before and the message is redelivered once we are judged dead.
  __atomic_store_n(reinterpret_cast<uint32_t*>(rec + 4), uint32_t(kRecordDone), __ATOMIC_RELEASE);
  q_->leased -= 1;
  q_->count -= 1;
  __atomic_add_fetch(&q_->not_full, 1u, __ATOMIC_SEQ_CST);
  return advance_head();
}

QueueResult SharedQueue::ack(uint64_t position, uint64_t lessee, const Waiter& w) {
  QueueResult r = lock(w);
  if (r != QueueResult::ok) return r;
  r = ack_locked(position, lessee, false, nullptr, nullptr);
  unlock();
  if (r == QueueResult::ok) woke_pushers();
  return r;
}

bool SharedQueue::blocks_locked(std::vector<uint64_t>* out) const {
  uint64_t head = q_->head, tail = q_->tail;
  if (tail < head || tail - head > ring_) return false;
  for (uint64_t p = head; p < tail;) {
    uint32_t length = 0, state = 0;
    uint8_t* r = record(p, &length, &state);
    if (r == nullptr) return false;
    uint64_t span = record_span(p, length, state);
    if (span == 0 || span > tail - p) return false;
    if ((length & kRecordBlock) != 0 && (state == kRecordReady || state == kRecordLeased)) {
      if ((length & ~kRecordBlock) != sizeof(BlockRef)) return false;
      BlockRef ref;
      std::memcpy(&ref, r + kRecordHeader, sizeof ref);
      out->push_back(ref.offset);
    }
    p += span;
  }
  return true;
}

QueueResult SharedQueue::close(const Waiter& w) {
  QueueResult r = lock(w);
  if (r != QueueResult::ok) return r;
  q_->closed = 1;
  __atomic_add_fetch(&q_->not_empty, 1u, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&q_->not_full, 1u, __ATOMIC_SEQ_CST);
  unlock();
  futex_wake(&q_->not_empty, UINT32_MAX);
  futex_wake(&q_->not_full, UINT32_MAX);
  return QueueResult::ok;
}

QueueResult SharedQueue::stats(QueueStats* out, const Waiter& w) {
  QueueResult r = lock(w);
  if (r != QueueResult::ok) return r;
  out->count = q_->count;
  out->leased = q_->leased;
  out->used_bytes = q_->tail - q_->head;
  out->pushed = q_->pushed;
  out->popped = q_->popped;
  out->redelivered = q_->redelivered;
  out->recoveries = q_->recoveries;
  out->closed = q_->closed != 0;
  unlock();
  return QueueResult::ok;
}

}  // namespace mempool
