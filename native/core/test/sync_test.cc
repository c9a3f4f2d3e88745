// Cross-process synchronization (sync.h) and the shared queue (shared_queue.h) over real segments: threads
// racing on one mapping, forked children that wait, wake and die holding things (kill -9), and the named
// objects that find them (objects.h).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../objects.h"
#include "../process.h"
#include "check.h"
#include "pool_support.h"

using namespace mempool;

namespace {

struct SegEnv {
  std::string name;
  coretest::Unlinker unlink;
  std::unique_ptr<SharedPool> pool;
  explicit SegEnv(const char* tag, uint64_t size = 8 << 20)
      : name(coretest::unique_segment_name(std::string("sync-") + tag)), unlink(name) {
    SegmentOptions o;
    pool = coretest::create_pool(name, size, o);
  }
};

// Runs `body` in a forked child that exits with its result (0 = fine).
pid_t fork_child(const std::function<int()>& body) {
  pid_t pid = fork();
  if (pid == 0) _exit(body());
  return pid;
}
int wait_child(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

uint32_t* word_in(SharedPool& p, uint64_t* off) {
  uint32_t gen = 0;
  if (p.alloc(64, 64, kNoHint, 0, off, &gen) != Status::ok) return nullptr;
  uint32_t* w = reinterpret_cast<uint32_t*>(p.base() + *off);
  *w = 0;
  return w;
}

}  // namespace

TEST("sync: futex wait says not-equal, times out, and is woken by another process") {
  SegEnv e("futex");
  REQUIRE(e.pool);
  uint64_t off = 0;
  uint32_t* w = word_in(*e.pool, &off);
  REQUIRE(w != nullptr);
  EXPECT(futex_wait(w, 1, deadline_after_ms(10), nullptr) == SyncResult::not_equal);
  uint64_t t0 = monotonic_now_ns();
  EXPECT(futex_wait(w, 0, deadline_after_ms(30), nullptr) == SyncResult::timed_out);
  EXPECT(monotonic_now_ns() - t0 >= 29000000ULL);
  // The child maps the segment itself (another address) and waits on the same word; we wake it.
  std::string name = e.name;
  pid_t child = fork_child([&] {
    std::unique_ptr<SharedPool> p = coretest::open_pool(name);
    if (!p) return 2;
    uint32_t* cw = reinterpret_cast<uint32_t*>(p->base() + off);
    __atomic_store_n(cw, 1u, __ATOMIC_SEQ_CST);  // "I am about to wait"
    SyncResult r = futex_wait(cw, 1, deadline_after_ms(5000), nullptr);
    return r == SyncResult::ok || r == SyncResult::not_equal ? (__atomic_load_n(cw, __ATOMIC_SEQ_CST) == 2 ? 0 : 3) : 4;
  });
  while (__atomic_load_n(w, __ATOMIC_SEQ_CST) != 1) usleep(100);
  usleep(20000);
  __atomic_store_n(w, 2u, __ATOMIC_SEQ_CST);
  futex_wake(w, 1);
  EXPECT(wait_child(child) == 0);
  // A cancel flag ends a wait that has no deadline.
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    usleep(20000);
    cancel.store(true);
  });
  EXPECT(futex_wait(w, 2, kNoDeadline, &cancel) == SyncResult::cancelled);
  canceller.join();
}

TEST("sync: a robust mutex excludes threads and processes, refuses a self-deadlock and a foreign unlock") {
  SegEnv e("mutex");
  REQUIRE(e.pool);
  RobustMutex* m = nullptr;
  REQUIRE(open_mutex(*e.pool, "counter", &m) == Status::ok);
  RobustMutex* again = nullptr;
  REQUIRE(open_mutex(*e.pool, "counter", &again) == Status::ok);
  EXPECT(again == m);  // one name, one mutex
  uint64_t off = 0;
  uint32_t* counter = word_in(*e.pool, &off);
  REQUIRE(counter != nullptr);
  constexpr int kThreads = 3, kRounds = 20000;
  std::string name = e.name;
  // Two processes of three threads each; the increment is a non-atomic read-modify-write.
  auto hammer = [&](SharedPool& p) {
    RobustMutex* mm = nullptr;
    if (open_mutex(p, "counter", &mm) != Status::ok) return 1;
    volatile uint32_t* c = reinterpret_cast<uint32_t*>(p.base() + off);
    std::vector<std::thread> ts;
    std::atomic<int> bad{0};
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&] {
        Waiter w = sync_waiter(kNoDeadline, true);
        for (int i = 0; i < kRounds; ++i) {
          if (mutex_lock(mm, w) != SyncResult::ok) bad++;
          *c = *c + 1;
          if (mutex_unlock(mm, w.tid) != SyncResult::ok) bad++;
        }
      });
    }
    for (auto& t : ts) t.join();
    return bad.load() == 0 ? 0 : 5;
  };
  pid_t child = fork_child([&] {
    std::unique_ptr<SharedPool> p = coretest::open_pool(name);
    return p ? hammer(*p) : 2;
  });
  EXPECT(hammer(*e.pool) == 0);
  EXPECT(wait_child(child) == 0);
  EXPECT(*counter == 2u * kThreads * kRounds);
  Waiter w = sync_waiter(kNoDeadline, true);
  EXPECT(mutex_lock(m, w) == SyncResult::ok);
  EXPECT(mutex_lock(m, w) == SyncResult::deadlock);
  Waiter timed = sync_waiter(deadline_after_ms(20), true);
  timed.wait_for_self = true;  // an async acquire of this thread waits for the holder instead
  EXPECT(mutex_lock(m, timed) == SyncResult::timed_out);
  std::thread other([&] { EXPECT(mutex_unlock(m, my_tid()) == SyncResult::not_owner); });
  other.join();
  EXPECT(mutex_holder(m) == w.tid);
  EXPECT(mutex_unlock(m, w.tid) == SyncResult::ok);
  EXPECT(mutex_unlock(m, w.tid) == SyncResult::not_owner);
}

TEST("sync: a mutex whose holder is killed passes to the next locker with owner_died") {
  SegEnv e("mutex-death");
  REQUIRE(e.pool);
  RobustMutex* m = nullptr;
  REQUIRE(open_mutex(*e.pool, "m", &m) == Status::ok);
  for (int round = 0; round < 5; ++round) {
    pid_t child = fork_child([&]() -> int {
      Waiter w = sync_waiter(kNoDeadline, true);
      if (mutex_lock(m, w) != SyncResult::ok) return 1;
      for (;;) pause();
    });
    while (mutex_holder(m) != static_cast<uint32_t>(child)) usleep(100);
    kill(child, SIGKILL);
    wait_child(child);
    Waiter w = sync_waiter(deadline_after_ms(5000), true);
    EXPECT(mutex_lock(m, w) == SyncResult::owner_died);
    EXPECT(mutex_unlock(m, w.tid) == SyncResult::ok);
    EXPECT(mutex_lock(m, w) == SyncResult::ok);  // and then it is an ordinary mutex again
    EXPECT(mutex_unlock(m, w.tid) == SyncResult::ok);
  }
}

TEST("sync: a holder's id given to a later thread is not taken for the holder (start ticks)") {
  SegEnv e("mutex-reuse");
  REQUIRE(e.pool);
  RobustMutex* m = nullptr;
  REQUIRE(open_mutex(*e.pool, "m", &m) == Status::ok);
  // A live thread's id with start ticks it does not have: what a dead holder whose id was reused looks like.
  std::atomic<bool> done{false};
  std::atomic<uint32_t> tid{0};
  std::thread live([&] {
    tid = my_tid();
    while (!done) usleep(1000);
  });
  while (tid == 0) usleep(100);
  m->word = tid;
  m->stamp = (uint64_t(my_thread_start_lo() + 12345) << 32) | tid;
  Waiter w = sync_waiter(deadline_after_ms(5000), true);
  EXPECT(mutex_lock(m, w) == SyncResult::owner_died);
  EXPECT(mutex_unlock(m, w.tid) == SyncResult::ok);
  // With its true start ticks, the same live thread keeps the mutex.
  m->word = tid;
  m->stamp = (uint64_t(0) << 32) | 0;  // no stamp: judged by tid alone, alive
  Waiter quick = sync_waiter(deadline_after_ms(30), true);
  EXPECT(mutex_lock(m, quick) == SyncResult::timed_out);
  m->word = 0;
  done = true;
  live.join();
}

TEST("sync: a semaphore admits at most its permits, and a dead holder's permit is taken over") {
  SegEnv e("sem");
  REQUIRE(e.pool);
  RobustSemaphore* s = nullptr;
  uint32_t permits = 0;
  REQUIRE(open_semaphore(*e.pool, "slots", 3, &s, &permits) == Status::ok);
  EXPECT(permits == 3);
  RobustSemaphore* same = nullptr;
  uint32_t p2 = 0;
  EXPECT(open_semaphore(*e.pool, "slots", 0, &same, &p2) == Status::ok && same == s && p2 == 3);
  EXPECT(open_semaphore(*e.pool, "slots", 4, &same, &p2) == Status::object_mismatch);
  std::atomic<int> inside{0}, most{0}, bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&] {
      Waiter w = sync_waiter(kNoDeadline, true);
      for (int i = 0; i < 2000; ++i) {
        if (semaphore_acquire(s, permits, w) != SyncResult::ok) bad++;
        int now = ++inside;
        int m = most.load();
        while (now > m && !most.compare_exchange_weak(m, now)) {
        }
        --inside;
        if (semaphore_release(s, permits, w.tid) != SyncResult::ok) bad++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT(bad == 0);
  EXPECT(most.load() >= 1 && most.load() <= 3);
  EXPECT(semaphore_available(s, permits) == 3);
  // A child takes all three and is killed: the permits come back one by one, reported as owner_died.
  pid_t child = fork_child([&]() -> int {
    Waiter w = sync_waiter(kNoDeadline, true);
    for (int i = 0; i < 3; ++i) semaphore_acquire(s, permits, w);
    for (;;) pause();
  });
  while (semaphore_available(s, permits) != 0) usleep(100);
  Waiter busy = sync_waiter(kNoDeadline, true);
  kill(child, SIGKILL);
  wait_child(child);
  Waiter w = sync_waiter(deadline_after_ms(5000), true);
  for (int i = 0; i < 3; ++i) EXPECT(semaphore_acquire(s, permits, w) == SyncResult::owner_died);
  EXPECT(semaphore_try_acquire(s, permits, busy) == SyncResult::busy);
  for (int i = 0; i < 3; ++i) EXPECT(semaphore_release(s, permits, w.tid) == SyncResult::ok);
  EXPECT(semaphore_release(s, permits, w.tid) == SyncResult::not_owner);
}

TEST("queue: FIFO, wrap-around, full, too large, closed and drained") {
  SegEnv e("queue");
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "q", 512, 8, &q) == Status::ok);
  SharedQueue q2;
  EXPECT(open_queue(*e.pool, "q", 1024, 0, &q2) == Status::object_mismatch);
  EXPECT(open_queue(*e.pool, "q", 0, 0, &q2) == Status::ok && q2.ring_bytes() == 512);
  Waiter w = sync_waiter(kNoDeadline, true);
  std::string out;
  uint64_t pos = 0;
  EXPECT(q.pop(&out, 0, &pos, w, false) == QueueResult::empty);
  EXPECT(q.push(reinterpret_cast<const uint8_t*>("x"), 497, w, false) == QueueResult::too_large);
  // Many rounds of messages of changing sizes through a small ring: each comes out once, in order, whole.
  uint32_t next_in = 0, next_out = 0;
  for (int round = 0; round < 400; ++round) {
    for (;;) {
      std::string m(static_cast<size_t>((next_in * 37) % 150), static_cast<char>('a' + next_in % 26));
      m += std::to_string(next_in);
      QueueResult r = q.push(reinterpret_cast<const uint8_t*>(m.data()), m.size(), w, false);
      if (r == QueueResult::full) break;
      REQUIRE(r == QueueResult::ok);
      ++next_in;
    }
    for (int k = 0; k < 3; ++k) {
      if (q.pop(&out, 0, &pos, w, false) != QueueResult::ok) break;
      std::string m(static_cast<size_t>((next_out * 37) % 150), static_cast<char>('a' + next_out % 26));
      m += std::to_string(next_out);
      EXPECT(out == m);
      ++next_out;
    }
  }
  EXPECT(next_in > 400);
  QueueStats st;
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.count == next_in - next_out && st.count <= 8);
  EXPECT(q.close(w) == QueueResult::ok);
  EXPECT(q.push(reinterpret_cast<const uint8_t*>("y"), 1, w, false) == QueueResult::closed);
  while (q.pop(&out, 0, &pos, w, true) == QueueResult::ok) ++next_out;  // a closed queue drains, then says so
  EXPECT(next_out == next_in);
  EXPECT(q.pop(&out, 0, &pos, w, true) == QueueResult::closed);
  EXPECT(q.push(reinterpret_cast<const uint8_t*>("z"), 0, w, false) == QueueResult::closed);
}

TEST("queue: a pop into a buffer too small takes nothing and says how much it needs") {
  SegEnv e("queue-small");
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "q", 4096, 8, &q) == Status::ok);
  Waiter w = sync_waiter(kNoDeadline, true);
  std::string big(1000, 'b');
  REQUIRE(q.push(reinterpret_cast<const uint8_t*>(big.data()), big.size(), w, false) == QueueResult::ok);
  uint8_t small[100];
  PopBuffer b;
  b.data = small;
  b.capacity = sizeof small;
  uint64_t pos = 0;
  EXPECT(q.pop(&b, 0, &pos, w, true) == QueueResult::too_small && b.length == 1000);
  QueueStats st;
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.count == 1 && st.popped == 0);
  std::string out;  // the string form grows and retries
  EXPECT(q.pop(&out, 0, &pos, w, false) == QueueResult::ok && out == big);
  EXPECT(q.pop(&b, 0, &pos, w, false) == QueueResult::empty);
}

TEST("queue: a consumer asleep on an empty queue is woken by each push from another process") {
  SegEnv e("queue-wake");
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "q", 4096, 64, &q) == Status::ok);
  pid_t child = fork();
  if (child == 0) {
    SharedQueue cq;
    if (open_queue(*e.pool, "q", 0, 0, &cq) != Status::ok) _exit(1);
    Waiter cw = sync_waiter(deadline_after_ms(10000), true);
    std::string m;
    uint64_t p = 0;
    for (int i = 0; i < 50; ++i) {  // each pop finds the queue empty and sleeps until the parent pushes
      if (cq.pop(&m, 0, &p, cw, true) != QueueResult::ok || m != std::to_string(i)) _exit(2);
    }
    _exit(0);
  }
  Waiter w = sync_waiter(kNoDeadline, true);
  for (int i = 0; i < 50; ++i) {
    while (__atomic_load_n(&q.state()->pop_waiters, __ATOMIC_SEQ_CST) == 0) usleep(50);  // it announced its sleep
    std::string m = std::to_string(i);
    REQUIRE(q.push(reinterpret_cast<const uint8_t*>(m.data()), m.size(), w, false) == QueueResult::ok);
  }
  EXPECT(wait_child(child) == 0);
}

TEST("queue: four producers and four consumers across two processes deliver every message once") {
  SegEnv e("queue-mpmc", 16 << 20);
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "work", 64 << 10, 256, &q) == Status::ok);
  constexpr uint32_t kPerProducer = 20000;
  uint64_t off = 0;
  uint32_t gen = 0;
  REQUIRE(e.pool->alloc(64, 64, kNoHint, 0, &off, &gen) == Status::ok);
  std::memset(e.pool->base() + off, 0, 64);  // [0] sum, [1] count, [2] producers done, [3] bad
  std::string name = e.name;
  // Each process runs two producers and two consumers. When all four producers are done, each process
  // pushes two empty messages, one per consumer of the eight... one per consumer: four in all.
  auto run = [&](SharedPool& p, uint32_t first_producer) {
    SharedQueue mq;
    if (open_queue(p, "work", 0, 0, &mq) != Status::ok) return 1;
    uint64_t* s = reinterpret_cast<uint64_t*>(p.base() + off);
    std::vector<std::thread> producers, consumers;
    for (uint32_t k = 0; k < 2; ++k) {
      producers.emplace_back([&, k] {
        Waiter w = sync_waiter(kNoDeadline, true);
        for (uint32_t i = 0; i < kPerProducer; ++i) {
          uint32_t v[3] = {first_producer + k, i, (first_producer + k) * 1000003u + i};
          if (mq.push(reinterpret_cast<const uint8_t*>(v), sizeof v, w, true) != QueueResult::ok) __atomic_add_fetch(&s[3], 1, __ATOMIC_SEQ_CST);
        }
      });
      consumers.emplace_back([&] {
        Waiter w = sync_waiter(kNoDeadline, true);
        std::string m;
        uint64_t pos = 0, sum = 0, count = 0, bad = 0;
        uint32_t last[4] = {0, 0, 0, 0};
        bool seen[4] = {false, false, false, false};
        while (mq.pop(&m, 0, &pos, w, true) == QueueResult::ok && !m.empty()) {
          uint32_t v[3] = {99, 0, 0};
          if (m.size() == sizeof v) std::memcpy(v, m.data(), sizeof v);
          if (v[0] > 3 || v[2] != v[0] * 1000003u + v[1]) {
            ++bad;  // torn, short or foreign
          } else if (seen[v[0]] && v[1] <= last[v[0]]) {
            ++bad;  // out of order for its producer
          } else {
            seen[v[0]] = true;
            last[v[0]] = v[1];
          }
          sum += v[1];
          ++count;
        }
        __atomic_add_fetch(&s[0], sum, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&s[1], count, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&s[3], bad, __ATOMIC_SEQ_CST);
      });
    }
    for (auto& t : producers) t.join();
    __atomic_add_fetch(&s[2], 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&s[2], __ATOMIC_SEQ_CST) < 2) usleep(1000);
    Waiter w = sync_waiter(kNoDeadline, true);
    for (int k = 0; k < 2; ++k) mq.push(nullptr, 0, w, true);
    for (auto& t : consumers) t.join();
    return 0;
  };
  pid_t child = fork_child([&] {
    std::unique_ptr<SharedPool> p = coretest::open_pool(name);
    return p ? run(*p, 2) : 2;
  });
  EXPECT(run(*e.pool, 0) == 0);
  EXPECT(wait_child(child) == 0);
  const uint64_t* s = reinterpret_cast<const uint64_t*>(e.pool->base() + off);
  EXPECT(s[3] == 0);
  EXPECT(s[1] == 4ull * kPerProducer);
  EXPECT(s[0] == 4ull * (uint64_t(kPerProducer) * (kPerProducer - 1) / 2));
  QueueStats st;
  Waiter w = sync_waiter(kNoDeadline, true);
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.count == 0 && st.pushed == 4ull * kPerProducer + 4);
}

TEST("queue: a message leased to a consumer killed with -9 is delivered again; one acked is not") {
  SegEnv e("queue-lease");
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "jobs", 4096, 64, &q) == Status::ok);
  Waiter w = sync_waiter(kNoDeadline, true);
  for (int i = 0; i < 3; ++i) {
    std::string m = "job" + std::to_string(i);
    REQUIRE(q.push(reinterpret_cast<const uint8_t*>(m.data()), m.size(), w, false) == QueueResult::ok);
  }
  // The child receives job0 and acks it, receives job1 and dies before acking.
  pid_t child = fork_child([&]() -> int {
    Waiter cw = sync_waiter(kNoDeadline, true);
    std::string m;
    uint64_t pos = 0;
    if (q.pop(&m, sync_stamp(), &pos, cw, false) != QueueResult::ok || m != "job0") return 1;
    if (q.ack(pos, sync_stamp(), cw) != QueueResult::ok) return 2;
    if (q.ack(pos, sync_stamp(), cw) != QueueResult::not_leased) return 3;  // once
    if (q.pop(&m, sync_stamp(), &pos, cw, false) != QueueResult::ok || m != "job1") return 4;
    for (;;) pause();
  });
  QueueStats st;
  do {
    usleep(1000);
    q.stats(&st, w);
  } while (st.leased != 1);
  kill(child, SIGKILL);
  EXPECT(wait_child(child) == 128 + SIGKILL);
  std::string m;
  uint64_t pos = 0;
  Waiter timed = sync_waiter(deadline_after_ms(2000), true);
  EXPECT(q.pop(&m, 0, &pos, timed, true) == QueueResult::ok && m == "job1");  // redelivered first: it is older
  EXPECT(q.pop(&m, 0, &pos, timed, true) == QueueResult::ok && m == "job2");
  EXPECT(q.pop(&m, 0, &pos, w, false) == QueueResult::empty);
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.redelivered == 1 && st.count == 0 && st.leased == 0);
}

TEST("queue: a holder killed half-way through a push is repaired by the next locker") {
  SegEnv e("queue-repair");
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "q", 1024, 16, &q) == Status::ok);
  Waiter w = sync_waiter(kNoDeadline, true);
  REQUIRE(q.push(reinterpret_cast<const uint8_t*>("first"), 5, w, false) == QueueResult::ok);
  // The child takes the lock, writes a record beyond tail and counts it, but dies before the commit (tail).
  pid_t child = fork_child([&]() -> int {
    Waiter cw = sync_waiter(kNoDeadline, true);
    QueueState* st = q.state();
    if (mutex_lock(&st->lock, cw) != SyncResult::ok) return 1;
    st->count += 1;
    for (;;) pause();
  });
  while (mutex_holder(&q.state()->lock) != static_cast<uint32_t>(child)) usleep(100);
  kill(child, SIGKILL);
  wait_child(child);
  QueueStats st;
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.recoveries == 1 && st.count == 1);
  std::string m;
  uint64_t pos = 0;
  EXPECT(q.pop(&m, 0, &pos, w, false) == QueueResult::ok && m == "first");
  EXPECT(q.pop(&m, 0, &pos, w, false) == QueueResult::empty);
}

TEST("queue: producers and consumers killed with -9 mid-operation never break it") {
  SegEnv e("queue-kill", 16 << 20);
  REQUIRE(e.pool);
  SharedQueue q;
  REQUIRE(open_queue(*e.pool, "q", 8192, 64, &q) == Status::ok);
  Waiter w = sync_waiter(kNoDeadline, true);
  uint32_t recoveries = 0;
  for (int round = 0; round < 20; ++round) {
    pid_t kids[2];
    for (int k = 0; k < 2; ++k) {
      kids[k] = fork_child([&, k]() -> int {
        Waiter cw = sync_waiter(kNoDeadline, true);
        std::string m;
        uint64_t pos = 0;
        for (uint32_t i = 0;; ++i) {
          if (k == 0) {
            uint32_t v[8] = {i, i, i, i, i, i, i, i};
            q.push(reinterpret_cast<const uint8_t*>(v), 4 + (i % 8) * 4, cw, true);
          } else {
            uint64_t lease = i % 2 ? sync_stamp() : 0;  // half leased and acked: a kill between leaves one out
            if (q.pop(&m, lease, &pos, cw, true) == QueueResult::ok && lease != 0) q.ack(pos, lease, cw);
          }
        }
      });
    }
    usleep(static_cast<useconds_t>(2000 + (round * 7919) % 8000));
    for (pid_t k : kids) kill(k, SIGKILL);
    for (pid_t k : kids) wait_child(k);
    // Whatever was left: every record whole (a message is 4..32 bytes of one repeated word), then empty.
    std::string m;
    uint64_t pos = 0;
    Waiter timed = sync_waiter(deadline_after_ms(3000), true);
    QueueStats st;
    REQUIRE(q.stats(&st, timed) == QueueResult::ok);
    recoveries = st.recoveries;
    uint64_t left = st.count;
    for (uint64_t i = 0; i < left; ++i) {
      QueueResult r = q.pop(&m, 0, &pos, timed, true);  // leased ones of the dead consumer come back
      REQUIRE(r == QueueResult::ok);
      REQUIRE(m.size() >= 4 && m.size() % 4 == 0);
      uint32_t first;
      std::memcpy(&first, m.data(), 4);
      for (size_t b = 0; b < m.size(); b += 4) EXPECT(std::memcmp(m.data() + b, &first, 4) == 0);
    }
    EXPECT(q.pop(&m, 0, &pos, w, false) == QueueResult::empty);
    EXPECT(q.stats(&st, w) == QueueResult::ok && st.count == 0 && st.leased == 0 && st.used_bytes == 0);
  }
  QueueStats st;
  q.stats(&st, w);
  EXPECT(st.pushed > 1000);  // the children did work before they died
  std::fprintf(stderr, "    (%llu pushed, %llu redelivered, %u lock recoveries in 40 kills)\n",
               static_cast<unsigned long long>(st.pushed), static_cast<unsigned long long>(st.redelivered), recoveries);
}

namespace {
// A block message's bytes: a pattern of its offset, so a consumer can tell a whole block from a reused one.
void fill_block(uint8_t* p, uint64_t off, uint64_t len) {
  for (uint64_t k = 0; k < len; ++k) p[k] = static_cast<uint8_t>((off * 7 + k) & 0xff);
}
// The segment offset of the queue "b"'s own block (its directory entry).
uint64_t q_block_offset(SharedPool& p) {
  uint64_t off = 0, len = 0;
  p.segment().dir_lookup(object_key(ObjectKind::queue, "b"), &off, &len);
  return off;
}
bool block_whole(const uint8_t* p, uint64_t off, uint64_t len) {
  for (uint64_t k = 0; k < len; ++k) {
    if (p[k] != static_cast<uint8_t>((off * 7 + k) & 0xff)) return false;
  }
  return true;
}
}  // namespace

TEST("queue block messages: ownership moves with the message; stale handles, leases and acks") {
  SegEnv e("queue-blocks", 8 << 20);
  REQUIRE(e.pool);
  SharedPool& p = *e.pool;
  SharedQueue q;
  REQUIRE(open_queue(p, "b", 4096, 8, &q) == Status::ok);
  Waiter w = sync_waiter(kNoDeadline, true);
  uint64_t off = 0;
  uint32_t gen = 0;
  REQUIRE(p.alloc(5000, 16, kNoHint, 0, &off, &gen) == Status::ok);
  fill_block(p.base() + off, off, 5000);
  QueueResult r = QueueResult::ok;
  EXPECT(p.queue_push_block(q, off, gen, 5000, w, false, &r) == Status::ok && r == QueueResult::ok);
  EXPECT(p.free(off, gen) == Status::named);                                          // the queue owns it
  EXPECT(p.queue_push_block(q, off, gen, 5000, w, false, &r) == Status::named);       // not twice
  CheckResult c;
  EXPECT(p.check(&c) == Status::ok && c.violations == 0);
  // The byte path refuses to take it (only the pool's path moves ownership), and changes nothing.
  std::string bytes;
  uint64_t pos = 0;
  EXPECT(q.pop(&bytes, 0, &pos, w, false) == QueueResult::block);
  uint8_t scratch[64];
  PopBuffer b;
  b.data = scratch;
  b.capacity = sizeof scratch;
  NamedBlock got;
  bool is_block = false;
  EXPECT(p.queue_pop(q, &b, 0, &pos, &got, &is_block, w, false, &r) == Status::ok && r == QueueResult::ok && is_block);
  EXPECT(got.offset == off && got.length == 5000 && got.gen != gen);
  EXPECT(block_whole(p.base() + off, off, 5000));
  EXPECT(p.free(off, gen) == Status::stale);  // the producer's old handle
  EXPECT(p.free(got.offset, got.gen) == Status::ok);
  // Leased: the queue keeps it until the ack, which frees it.
  REQUIRE(p.alloc(64, 16, kNoHint, 0, &off, &gen) == Status::ok);
  EXPECT(p.queue_push_block(q, off, gen, 64, w, false, &r) == Status::ok && r == QueueResult::ok);
  uint64_t lease = sync_stamp();
  EXPECT(p.queue_pop(q, &b, lease, &pos, &got, &is_block, w, false, &r) == Status::ok && r == QueueResult::ok && is_block);
  EXPECT(p.free(got.offset, got.gen) == Status::named);  // borrowed while leased
  EXPECT(q.ack(pos, lease, w) == QueueResult::block);    // the byte path cannot free it
  HeapStats before, after;
  EXPECT(p.stats(&before) == Status::ok);
  EXPECT(p.queue_ack(q, pos, lease, w, &r) == Status::ok && r == QueueResult::ok);
  EXPECT(p.stats(&after) == Status::ok && after.live_allocations + 1 == before.live_allocations);
  EXPECT(p.queue_ack(q, pos, lease, w, &r) == Status::ok && r == QueueResult::not_leased);
  // Bytes and blocks mixed, in order; a closed queue takes no block and leaves it with its owner.
  EXPECT(q.push(reinterpret_cast<const uint8_t*>("one"), 3, w, false) == QueueResult::ok);
  REQUIRE(p.alloc(32, 16, kNoHint, 0, &off, &gen) == Status::ok);
  EXPECT(p.queue_push_block(q, off, gen, 32, w, false, &r) == Status::ok && r == QueueResult::ok);
  EXPECT(p.queue_pop(q, &b, 0, &pos, &got, &is_block, w, false, &r) == Status::ok && r == QueueResult::ok && !is_block);
  EXPECT(b.length == 3 && std::memcmp(scratch, "one", 3) == 0);
  EXPECT(p.queue_pop(q, &b, 0, &pos, &got, &is_block, w, false, &r) == Status::ok && is_block && got.offset == off);
  EXPECT(q.close(w) == QueueResult::ok);
  EXPECT(p.queue_push_block(q, got.offset, got.gen, 32, w, false, &r) == Status::ok && r == QueueResult::closed);
  EXPECT(p.free(got.offset, got.gen) == Status::ok);  // still the caller's
  EXPECT(p.check(&c) == Status::ok && c.violations == 0);
}

TEST("queue block messages: producers and consumers killed with -9 leave every block owned exactly once") {
  std::string name = coretest::unique_segment_name("sync-queue-block-kill");
  coretest::Unlinker unlink(name);
  SegmentOptions o;
  o.track_owners = true;  // a dead process's unnamed blocks are collected: the count below is exact
  std::unique_ptr<SharedPool> pool = coretest::create_pool(name, 32 << 20, o);
  REQUIRE(pool);
  SharedQueue q;
  REQUIRE(open_queue(*pool, "b", 8192, 64, &q) == Status::ok);
  HeapStats start;
  REQUIRE(pool->stats(&start) == Status::ok);
  auto producer = [&name]() -> int {
    std::unique_ptr<SharedPool> p = coretest::open_pool(name);  // an attachment of its own
    SharedQueue cq;
    if (!p || open_queue(*p, "b", 0, 0, &cq) != Status::ok) return 1;
    Waiter w = sync_waiter(kNoDeadline, true);
    for (uint64_t i = 0;; ++i) {
      uint64_t len = 16 + (i * 977) % 6000, off = 0;
      uint32_t gen = 0;
      if (p->alloc(len, 16, kNoHint, 0, &off, &gen) != Status::ok) {
        usleep(100);
        continue;
      }
      fill_block(p->base() + off, off, len);
      if ((gen & kGenOwnerMask) == 0) return 7;
      QueueResult r = QueueResult::ok;
      if (p->queue_push_block(cq, off, gen, len, w, true, &r) != Status::ok || r != QueueResult::ok) return 2;
    }
  };
  auto consumer = [&name]() -> int {
    std::unique_ptr<SharedPool> p = coretest::open_pool(name);
    SharedQueue cq;
    if (!p || open_queue(*p, "b", 0, 0, &cq) != Status::ok) return 1;
    Waiter w = sync_waiter(kNoDeadline, true);
    uint8_t scratch[64];
    for (;;) {
      PopBuffer b;
      b.data = scratch;
      b.capacity = sizeof scratch;
      NamedBlock got;
      bool is_block = false;
      uint64_t pos = 0;
      QueueResult r = QueueResult::ok;
      if (p->queue_pop(cq, &b, 0, &pos, &got, &is_block, w, true, &r) != Status::ok || r != QueueResult::ok || !is_block) return 3;
      if (!block_whole(p->base() + got.offset, got.offset, got.length)) return 4;
      if ((got.gen & kGenOwnerMask) == 0) return 6;
      if (p->free(got.offset, got.gen) != Status::ok) return 5;
    }
  };
  uint32_t seed = 12345;
  for (int round = 0; round < 24; ++round) {
    pid_t kids[3] = {fork_child(producer), fork_child(producer), fork_child(consumer)};
    seed = seed * 1103515245u + 12345u;
    usleep(20000 + (seed >> 16) % 40000);
    for (pid_t k : kids) kill(k, SIGKILL);
    for (pid_t k : kids) EXPECT(wait_child(k) == 128 + SIGKILL);  // no child failed a check before
  }
  // Drain what is queued, checking each block; then nothing is left but the queue's own block.
  Waiter w = sync_waiter(kNoDeadline, true);
  uint8_t scratch[64];
  uint64_t drained = 0;
  for (;;) {
    PopBuffer b;
    b.data = scratch;
    b.capacity = sizeof scratch;
    NamedBlock got;
    bool is_block = false;
    uint64_t pos = 0;
    QueueResult r = QueueResult::ok;
    REQUIRE(pool->queue_pop(q, &b, 0, &pos, &got, &is_block, w, false, &r) == Status::ok);
    if (r == QueueResult::empty) break;
    REQUIRE(r == QueueResult::ok && is_block);
    EXPECT(block_whole(pool->base() + got.offset, got.offset, got.length));
    EXPECT(pool->free(got.offset, got.gen) == Status::ok);
    ++drained;
  }
  CheckResult c;
  EXPECT(pool->check(&c) == Status::ok && c.violations == 0);
  HeapStats end;
  EXPECT(pool->stats(&end) == Status::ok);
  // Every block freed once: none twice (check above), and none stranded: the queue's transfers leave a block
  // named, or owned by the dead, and repair or trackOwners' collection frees it; a process killed between
  // the heap's alloc and the store of the block's word leaves the word saying kOwnerFree, and repair frees
  // that block too. Only the queue's own block is left.
  uint64_t stranded = 0;
  pool->walk([&](const BlockInfo& bi) {
    if (!bi.used || bi.offset == q_block_offset(*pool)) return true;  // walk gives segment offsets
    ++stranded;
    return true;
  });
  EXPECT(end.live_allocations == start.live_allocations + stranded);
  EXPECT(stranded == 0);
  QueueStats st;
  EXPECT(q.stats(&st, w) == QueueResult::ok && st.count == 0 && st.pushed > 100);
  std::printf("  (%llu drained, %llu pushed, %u queue lock recoveries, %llu unowned blocks stranded)\n",
              static_cast<unsigned long long>(drained), static_cast<unsigned long long>(st.pushed), st.recoveries,
              static_cast<unsigned long long>(stranded));
}
