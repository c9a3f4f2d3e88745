// A bounded multi-producer multi-consumer queue of byte messages inside one heap block of a segment, shared
// by every process and thread that opens it. Its own robust mutex (sync.h) guards it; waiting uses two futex
// sequence words, so producers and consumers sleep instead of polling.
//
// Layout (the block, after its ObjectHeader; offsets from the QueueState; every field little-endian):
//   QueueState (128 bytes), then the ring: ring_bytes bytes (a multiple of 16) of records.
//   A record: u32 length, u32 state, u64 lease (the stamp of the thread it is leased to), then `length`
//   bytes, padded to 16. Records never straddle the ring's end: a kRecordWrap record fills the rest of the
//   ring and the next record starts at the ring's start.
//   head and tail are byte positions that only grow (position % ring_bytes is the place in the ring): head is
//   the oldest record not done, tail the end of the newest.
//
// Invariants (under the lock):
//   Q1 head <= ready_from <= tail, tail - head <= ring_bytes, all multiples of 16.
//   Q2 The records from head to tail lie end to end; each is ready, leased, done or a wrap; the one at head is
//      not done (head moves past done records and wraps at once).
//   Q3 count = records from head to tail that are ready or leased; leased = those leased. No record before
//      ready_from is ready.
//   Q4 A message is delivered once: a pop marks it done, a receive marks it leased (to the receiving thread);
//      only an ack by that thread marks a leased record done. A leased record goes back to ready only when its
//      lessee is judged dead (redelivered).
//
// Crash rules. Every change happens under the queue's lock; a holder killed at any instruction makes the
// next locker's mutex_lock report owner_died, and that locker runs repair() before anything else, which
// recomputes count, leased and ready_from by walking head..tail and moves head past done records. So:
//   - push writes the record (and any wrap) beyond tail, then stores tail (the commit): killed before that
//     store, the bytes are beyond tail and nothing changed;
//   - pop copies the bytes out, then stores state = done (the commit): killed before, the message is still
//     ready for the next consumer (its bytes never reached JavaScript); after, it is gone with the process
//     that had it: use receive/ack when a consumer's death must not lose a message;
//   - receive writes the lease (the receiving thread's stamp), then stores state = leased (the commit):
//     killed before, the message is still ready;
//   - ack stores state = done; head then moves;
//   - a message whose lessee died is found (at most every 100 ms, on a receive or pop that looks) and made
//     ready again.
//   Statistics (pushed, popped, redelivered) may miss one operation of a process killed mid-way.
//
// Block messages (zero-copy). A record whose length word has kRecordBlock holds a BlockRef: a heap block of
// the segment that the record owns while it is queued (its generation word has kGenNamed, as if a key named
// it: no handle can free it). They are pushed, popped and acked only by SharedPool (shared_pool.h,
// queue_push_block and the like), under the segment's lock and then this one (always in that order; byte
// operations take only this one, so no thread ever waits for the segment's lock holding a queue's). The
// ownership moves at the record's commit: push makes the block named, then commits the record (killed
// between: a named block no key or record lists, which the segment's repair frees: the producer is dead);
// pop commits the record done, then hands the block's word to the caller (killed between: the same, the
// consumer is dead); ack of a leased one commits done, then frees the block. The segment's repair counts
// records as names (queued_blocks below), so it frees nothing a queue owns.
// Trust: another process may scribble on the block. Geometry (ring_bytes, max_messages) is read once at
// open and validated against the block's size, and kept in the handle; head, tail and every record are
// bounds-checked before use, and a violation is Status::corrupted, never a wild read.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "heap.h"
#include "sync.h"

namespace mempool {

// Every named object (mutex, semaphore, queue) starts with this header; the directory names the block under
// a reserved key (objects.h).
constexpr uint32_t kObjectMagic = 0x4a424f4du;  // "MOBJ"
constexpr uint32_t kObjectVersion = 1;
enum class ObjectKind : uint32_t { mutex = 1, semaphore = 2, queue = 3 };
struct ObjectHeader {
  uint32_t magic;    // 0  kObjectMagic, written last when the object is made
  uint32_t kind;     // 4  ObjectKind
  uint32_t version;  // 8  kObjectVersion
  uint32_t param;    // 12 semaphore: permits; others 0
  uint64_t bytes;    // 16 bytes of the object from its header on
  uint64_t reserved; // 24
};
static_assert(sizeof(ObjectHeader) == 32, "object headers are 32 bytes");

enum RecordState : uint32_t { kRecordReady = 1, kRecordLeased = 2, kRecordDone = 3, kRecordWrap = 4 };
constexpr uint64_t kRecordHeader = 16;
constexpr uint32_t kRecordBlock = 0x80000000u;          // in a record's length word: the payload is a BlockRef
constexpr uint64_t kMaxRecordBytes = kRecordBlock - 1;  // a byte message's longest length
// A block message's payload: the block (a segment offset) and how many of its bytes are the message.
struct BlockRef {
  uint64_t offset;
  uint64_t length;
};
static_assert(sizeof(BlockRef) == 16, "block references are 16 bytes");

struct QueueState {
  RobustMutex lock;       // 0
  uint32_t not_empty;     // 16 bumped by every push and by close (pop waiters sleep on it)
  uint32_t not_full;      // 20 bumped by every pop, ack and close (push waiters sleep on it)
  uint32_t pop_waiters;   // 24 how many may sleep on not_empty (high after a crash: costs only wakes)
  uint32_t push_waiters;  // 28
  uint64_t ring_bytes;    // 32 geometry
  uint64_t max_messages;  // 40
  uint64_t head;          // 48
  uint64_t tail;          // 56
  uint64_t count;         // 64
  uint64_t leased;        // 72
  uint32_t closed;        // 80 1: pushes refused; pops drain what is left
  uint32_t recoveries;    // 84 times repair() ran after a holder died
  uint64_t pushed;        // 88 statistics
  uint64_t popped;        // 96
  uint64_t redelivered;   // 104
  uint64_t last_reap_ns;  // 112 CLOCK_MONOTONIC (system-wide) of the last look for dead lessees
  uint64_t ready_from;    // 120
};
static_assert(sizeof(QueueState) == 128, "queue state is 128 bytes");
static_assert(offsetof(QueueState, head) == 48 && offsetof(QueueState, ready_from) == 120, "queue layout");

struct QueueStats {
  uint64_t count = 0, leased = 0, used_bytes = 0, pushed = 0, popped = 0, redelivered = 0;
  uint32_t recoveries = 0;
  bool closed = false;
};

enum class QueueResult : int32_t {
  ok = 0,
  empty = 1,      // nothing ready (try_pop)
  full = 2,       // no room (try_push)
  closed = 3,     // push after close; pop of a closed queue with nothing left
  too_large = 4,  // the message can never fit
  timed_out = 5,
  cancelled = 6,
  corrupted = 7,  // the state failed a bounds check (a scribbler)
  not_leased = 8, // ack of a position that is not a record leased to this thread
  too_small = 9,  // pop into a buffer smaller than the oldest message: nothing taken, `length` says how much
  block = 10,     // the oldest message is a block message: only SharedPool's calls take it; nothing changed
};

// Where pop() copies a message: `capacity` bytes at `data`. On ok `length` is the message's length; on
// too_small it is the length a retry needs (the message stays queued).
struct PopBuffer {
  uint8_t* data = nullptr;
  uint64_t capacity = 0;
  uint64_t length = 0;
};

class SharedQueue {
 public:
  // The bytes a queue of `max_bytes` ring bytes takes after its ObjectHeader.
  static uint64_t bytes_for(uint64_t max_bytes) { return sizeof(QueueState) + max_bytes; }
  static void format(uint8_t* state, uint64_t ring_bytes, uint64_t max_messages);
  // A handle over a queue whose QueueState is at `state`, `available` bytes of the block from there on.
  // Returns false when the geometry does not fit (a damaged or foreign block).
  bool attach(uint8_t* state, uint64_t available, bool judge);

  uint64_t max_message() const { return ring_ - kRecordHeader < kMaxRecordBytes ? ring_ - kRecordHeader : kMaxRecordBytes; }
  uint64_t ring_bytes() const { return ring_; }
  uint64_t max_messages() const { return max_messages_; }
  QueueState* state() const { return q_; }  // for tests that play a process killed inside an operation

  // The blocking calls wait until w.deadline (kNoDeadline: forever) or w.cancel.
  QueueResult push(const uint8_t* data, uint64_t len, const Waiter& w, bool wait);
  // Copies the oldest ready message into *out. With lease_to != 0 the message is leased to that stamp and
  // *position names it for ack(); otherwise it is done at once.
  QueueResult pop(PopBuffer* out, uint64_t lease_to, uint64_t* position, const Waiter& w, bool wait);
  // As above, into a string grown as needed.
  QueueResult pop(std::string* out, uint64_t lease_to, uint64_t* position, const Waiter& w, bool wait);
  QueueResult ack(uint64_t position, uint64_t lessee, const Waiter& w);
  QueueResult close(const Waiter& w);
  QueueResult stats(QueueStats* out, const Waiter& w);

  // The pieces SharedPool's block messages are made of (see "Block messages" above). Between lock() and
  // unlock(), the *_locked calls; outside, the waits.
  QueueResult lock(const Waiter& w);
  void unlock();
  // Whether a message of `len` bytes fits now.
  bool room_for(uint64_t len) const;
  QueueResult push_locked(const uint8_t* data, uint64_t len, bool block) { return try_push(data, len, block); }
  // As pop, taking a block message too when allow_block (*block says which it was; its BlockRef is the bytes).
  QueueResult pop_locked(PopBuffer* out, uint64_t lease_to, uint64_t* position, bool allow_block, bool* block) {
    return try_pop(out, lease_to, position, allow_block, block);
  }
  // As ack; a block message's BlockRef goes to *ref (with *block true): the caller frees the block.
  QueueResult ack_locked(uint64_t position, uint64_t lessee, bool allow_block, bool* block, BlockRef* ref);
  // The futex sequences a waiter reads before looking, then waits on; and the wakes after a change.
  uint32_t not_full_seq() const { return __atomic_load_n(&q_->not_full, __ATOMIC_SEQ_CST); }
  uint32_t not_empty_seq() const { return __atomic_load_n(&q_->not_empty, __ATOMIC_SEQ_CST); }
  QueueResult wait_not_full(uint32_t seq, const Waiter& w);
  QueueResult wait_not_empty(uint32_t seq, const Waiter& w);
  void woke_pushers();   // after a pop or ack made room
  void woke_poppers();   // after a push
  // The blocks the records from head to tail own (segment offsets), under the lock; false when the records
  // fail a bounds check (then the caller must assume nothing about what the queue owns).
  bool blocks_locked(std::vector<uint64_t>* out) const;

 private:
  QueueResult repair();
  // The record at position `pos` (bounds-checked), or null.
  uint8_t* record(uint64_t pos, uint32_t* length, uint32_t* state) const;
  uint64_t record_span(uint64_t pos, uint32_t length, uint32_t state) const;
  QueueResult advance_head();
  void reap_dead_leases(uint64_t now);
  QueueResult try_push(const uint8_t* data, uint64_t len, bool block);
  QueueResult try_pop(PopBuffer* out, uint64_t lease_to, uint64_t* position, bool allow_block, bool* block);

  QueueState* q_ = nullptr;
  uint8_t* ring_base_ = nullptr;
  uint64_t ring_ = 0;
  uint64_t max_messages_ = 0;
  bool judge_ = true;
};

}  // namespace mempool
