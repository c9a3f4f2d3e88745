// Helpers for the tests that use shared segments through the facade (shared_pool.h): unique segment names,
// create/open, and check/stats/usable through the pool. Tests call the facade for every rule (free, names,
// pins); they reach under it (pool.segment(), pool.locked()) only to inspect or to play a hostile writer.
#pragma once
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>

#include "../shared_pool.h"

namespace coretest {

// A segment name no other test (or concurrent run) uses: tag, pid and a per-process counter.
inline std::string unique_segment_name(const std::string& tag) {
  static std::atomic<uint32_t> serial{0};
  return "mempool-core-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(serial.fetch_add(1));
}

inline std::unique_ptr<mempool::SharedPool> create_pool(const std::string& name, uint64_t size,
                                                        const mempool::SegmentOptions& o) {
  int err = 0;
  mempool::Segment::unlink(name, &err);
  bool created = false;
  std::unique_ptr<mempool::SharedPool> p;
  mempool::Status s = mempool::SharedPool::create(name, size, o, &p, &err, &created);
  if (s != mempool::Status::ok) {
    std::fprintf(stderr, "  create %s: %s (errno %d)\n", name.c_str(), mempool::status_name(s), err);
    return nullptr;
  }
  return p;
}

inline std::unique_ptr<mempool::SharedPool> open_pool(const std::string& name) {
  int err = 0;
  std::unique_ptr<mempool::SharedPool> p;
  mempool::Status s = mempool::SharedPool::open(name, 5000, &p, &err);
  if (s != mempool::Status::ok) {
    std::fprintf(stderr, "  open %s: %s (errno %d)\n", name.c_str(), mempool::status_name(s), err);
    return nullptr;
  }
  return p;
}

// Unlinks the segment when the test leaves (however it leaves).
struct Unlinker {
  std::string name;
  explicit Unlinker(std::string n) : name(std::move(n)) {}
  ~Unlinker() {
    int err = 0;
    mempool::Segment::unlink(name, &err);
  }
};

// check() through the facade: heap, slabs, directory, names against words, pins. Prints the first finding.
inline uint64_t violations(mempool::SharedPool& p, const char* where = "") {
  mempool::CheckResult r;
  mempool::Status s = p.check(&r);
  if (s != mempool::Status::ok) {
    std::fprintf(stderr, "  check%s%s: %s\n", *where ? " " : "", where, mempool::status_name(s));
    return 1;
  }
  if (r.violations != 0) std::fprintf(stderr, "  check%s%s: %s\n", *where ? " " : "", where, r.first.c_str());
  return r.violations;
}

inline mempool::HeapStats pool_stats(mempool::SharedPool& p) {
  mempool::HeapStats st;
  p.stats(&st);
  return st;
}

inline uint64_t pool_usable(mempool::SharedPool& p, uint64_t off) {
  uint64_t u = 0;
  return p.usable_size(off, &u) == mempool::Status::ok ? u : 0;
}

}  // namespace coretest
