// Native benchmark of mempool's heaps against the system allocators.
//
// Workloads, trace, tail-latency pass and JSON output are defined in /work/shared/workloads.md (W1-W4, F1).
// Build and run through `npm run bench:native -- [--json] [--scale F] [--repeat R] [--only a,b] [--workloads W1,F1]`
// (scripts/bench-native.js) or `make -C scripts/bench run ARGS="..."`.
//
// Allocators: tlsf, buddy, bitmap (1 GiB region from aligned_alloc, no lock); shared-tlsf, shared-buddy,
// shared-bitmap (the same heaps in a real mempool segment through the facade, native/core/shared_pool.h, as
// the addon uses it: slab caches for small blocks, the segment's lock for the rest); glibc (malloc/free); jemalloc and
// mimalloc loaded with dlopen at run time (skipped with a note on stderr when not installed); boost
// (Boost.Interprocess managed_shared_memory, compiled in only when the Boost headers are installed);
// floor (no allocator at all: the same trace over fixed cells, so the workload's own memory cost shows and
// every other line can be read as that cost plus what the allocator adds).
//
// stdout: with --json exactly one JSON object per result line and nothing else; without --json a table.
// Everything else (notes, clock cost, progress) goes to stderr.
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "heap.h"
#include "segment.h"
#include "shared_pool.h"

#if __has_include(<boost/interprocess/managed_shared_memory.hpp>)
#include <boost/interprocess/managed_shared_memory.hpp>
#define MEMPOOL_BENCH_BOOST 1
#endif

namespace {

using mempool::Algorithm;
using mempool::Heap;
using mempool::Status;

constexpr uint64_t kRegionBytes = uint64_t(1) << 30;

[[noreturn]] __attribute__((cold, noinline)) void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("bench-native: error: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  std::exit(1);
}

void note(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("bench-native: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

// ---------------------------------------------------------------------------------------------------------
// The trace (workloads.md): xorshift64 from 88172645463325252.

struct Rng {
  uint64_t s = 88172645463325252ULL;
  inline uint64_t draw() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

struct Workload {
  const char* name;
  uint64_t slots;
  uint64_t lo, hi;
  uint64_t steps;  // at scale 1
};

const Workload kWorkloads[] = {
    {"W1", 10000, 16, 512, 20000000},
    {"W2", 1000, 16, 64, 20000000},
    {"W3", 10000, 16, 65536, 5000000},
    {"W4", 1000000, 16, 256, 10000000},
};
// F1 runs W3's trace.
constexpr int kF1Trace = 2;

// ---------------------------------------------------------------------------------------------------------
// Clock for the tail pass: clock_gettime(CLOCK_MONOTONIC) (vDSO, TSC-backed on this kind of machine).

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------------------------------------------------
// The allocator interface. Every allocator is a final class with these members; the benchmark loops are
// templates over the class, so the harness adds no indirect call of its own (the heaps' alloc/free are
// virtual, as in real use; jemalloc/mimalloc are called through dlsym'd pointers, like a PLT call).
//
//   const char* name;
//   bool open(std::string* why)      once per (allocator, workload): acquire the region / library;
//                                     false = not available here (skipped with a note)
//   void setup()                     per pass: a fresh, empty heap
//   uint64_t alloc(uint64_t size)    a handle, 0 on failure
//   void free(uint64_t handle)
//   uint8_t* pointer(uint64_t h)     where the benchmark writes its byte
//   bool teardown(std::string* err)  per pass, after every slot was freed: verify (heaps: stats().used == 0
//                                     and check() without violations)
//   void close()                     release what open() acquired
//   static constexpr bool kHasOffsets; uint64_t extent(uint64_t h): offset of the block's last byte + 1
//                                     within the region (F1; heaps only)

// --- heaps over an aligned_alloc region, no lock -----------------------------------------------------------

bool verify_heap(const char* name, Heap* heap, std::string* err) {
  mempool::HeapStats st;
  heap->stats(&st);
  if (st.used != 0 || st.live_allocations != 0) {
    *err = std::string(name) + ": after tear-down stats().used = " + std::to_string(st.used) +
           ", live = " + std::to_string(st.live_allocations) + " (expected 0)";
    return false;
  }
  mempool::CheckResult cr;
  heap->check(&cr);
  if (cr.violations != 0) {
    *err = std::string(name) + ": check() found " + std::to_string(cr.violations) +
           " violation(s), first: " + cr.first;
    return false;
  }
  return true;
}

void format_heap(const char* name, Algorithm algo, uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  mempool::HeapOptions opt;  // defaults: bitmap block 16, buddy min block 16, max block = largest fitting
  out->reset();
  Status s = mempool::heap_format(algo, base, size, opt, out);
  if (s != Status::ok) die("%s: heap_format failed: %s", name, mempool::status_name(s));
}

class LocalHeap final {
 public:
  LocalHeap(const char* n, Algorithm a) : name(n), algo_(a) {}
  const char* name;
  static constexpr bool kHasOffsets = true;

  bool open(std::string* why) {
    region_ = static_cast<uint8_t*>(aligned_alloc(4096, kRegionBytes));
    if (region_ == nullptr) {
      *why = "aligned_alloc(4096, 1 GiB) failed";
      return false;
    }
    return true;
  }
  void setup() { format_heap(name, algo_, region_, kRegionBytes, &heap_); }
  inline uint64_t alloc(uint64_t size) {
    uint64_t off = 0;
    if (__builtin_expect(heap_->alloc(size, mempool::kDefaultAlign, mempool::kNoHint, &off) != Status::ok, 0))
      return 0;
    return off;
  }
  inline void free(uint64_t h) {
    Status s = heap_->free(h);
    if (__builtin_expect(s != Status::ok, 0)) die("%s: free(%llu) failed: %s", name, (unsigned long long)h, mempool::status_name(s));
  }
  inline uint8_t* pointer(uint64_t h) const { return region_ + h; }
  uint64_t header_bytes() const { return reinterpret_cast<const mempool::RegionHeader*>(region_)->header_size; }
  uint64_t extent(uint64_t h) const {
    uint64_t u = 0;
    if (heap_->usable_size(h, &u) != Status::ok) die("%s: usable_size failed", name);
    return h + u;
  }
  bool teardown(std::string* err) {
    bool ok = verify_heap(name, heap_.get(), err);
    heap_.reset();
    return ok;
  }
  void close() {
    heap_.reset();
    std::free(region_);
    region_ = nullptr;
  }

 private:
  Algorithm algo_;
  uint8_t* region_ = nullptr;
  std::unique_ptr<Heap> heap_;
};

// --- heaps inside a real mempool segment, through the facade (native/core/shared_pool.h) -------------------
//
// Exactly what the addon does: SharedPool::create (Segment::create: shm_open + ftruncate + posix_fallocate +
// mmap MAP_SHARED, the header with its futex-word lock, the pin table, the directory, the generation words,
// the heap formatted at heap_offset; then this attachment's SharedCache), and every alloc and free through
// SharedPool with the handle's generation: small blocks from the attachment's slabs (the lock taken once per
// slab, not per operation), everything else under the lock; Segment::unlink at the end. The segment's heap is
// at least 1 GiB, as the local heaps' region, so F1 is comparable. A fresh segment per pass (setup/teardown).
// A benchmark handle packs the block's generation into its high 32 bits (segment offsets stay below 2^32).

// The shm path ("/name") of the segment that exists right now, so that an interrupted run (Ctrl-C, die())
// does not leave 1 GiB of /dev/shm behind. Only async-signal-safe calls in the handler.
char g_live_segment[300];

void unlink_on_signal(int sig) {
  if (g_live_segment[0] != '\0') shm_unlink(g_live_segment);
  signal(sig, SIG_DFL);
  raise(sig);
}

void unlink_at_exit() {
  if (g_live_segment[0] != '\0') shm_unlink(g_live_segment);
}

void track_segment(const std::string& name) {
  static bool installed = false;
  if (!installed) {
    installed = true;
    signal(SIGINT, unlink_on_signal);
    signal(SIGTERM, unlink_on_signal);
    signal(SIGHUP, unlink_on_signal);
    std::atexit(unlink_at_exit);  // die() exits through here
  }
  std::snprintf(g_live_segment, sizeof g_live_segment, "/%s", name.c_str());
}

void untrack_segment() { g_live_segment[0] = '\0'; }

class SharedHeap final {
 public:
  SharedHeap(const char* n, Algorithm a) : name(n), algo_(a) {}
  const char* name;
  static constexpr bool kHasOffsets = true;

  bool open(std::string* why) {
    // The generation table grows with the segment: lay out twice so that the heap gets kRegionBytes.
    uint64_t gen_offset = 0, heap_offset = 0, size = kRegionBytes;
    for (int i = 0; i < 2; ++i) {
      if (!mempool::Segment::layout(size, mempool::Segment::default_directory_capacity(size), 8, &gen_offset, &heap_offset)) {
        *why = "Segment::layout refused the size";
        return false;
      }
      size = kRegionBytes + heap_offset;
    }
    seg_size_ = size;
    seg_name_ = std::string("mempool-bench-") + std::to_string(getpid()) + "-" + name;
    // Probe once: a missing /dev/shm or a full one is "not available here", not a crash.
    if (probed_) return true;
    if (!create(why)) return false;
    destroy();
    probed_ = true;
    return true;
  }
  void setup() {
    std::string why;
    if (!create(&why)) die("%s: %s", name, why.c_str());
  }
  inline uint64_t alloc(uint64_t size) {
    uint64_t off = 0;
    uint32_t gen = 0;
    Status s = pool_->alloc(size, mempool::kDefaultAlign, mempool::kNoHint, 0, &off, &gen);
    if (__builtin_expect(s == Status::lock_timeout || s == Status::corrupted, 0)) die("%s: lock failed", name);
    return __builtin_expect(s == Status::ok, 1) ? (uint64_t(gen) << 32) | off : 0;
  }
  inline void free(uint64_t h) {
    Status s = pool_->free(h & 0xffffffffu, static_cast<uint32_t>(h >> 32));
    if (__builtin_expect(s != Status::ok, 0)) die("%s: free(%llu) failed: %s", name, (unsigned long long)(h & 0xffffffffu), mempool::status_name(s));
  }
  inline uint8_t* pointer(uint64_t h) const { return base_ + (h & 0xffffffffu); }
  uint64_t header_bytes() const { return header_bytes_; }  // asked after the pass, when the segment is gone
  uint64_t extent(uint64_t h) const {
    uint64_t u = 0;
    uint64_t off = h & 0xffffffffu;
    if (pool_->usable_size(off, &u) != Status::ok) die("%s: usable_size failed", name);
    return off - heap_offset_ + u;  // within the heap's region, as the local heaps' offsets
  }
  bool teardown(std::string* err) {
    // Every block was freed: the user's figures are zero, and check() (heap, slabs, directory, names, pins)
    // is clean. Then the attachment closes (its empty slabs go back to the heap) and the segment goes.
    mempool::HeapStats st;
    bool ok = pool_->stats(&st) == Status::ok;
    if (!ok || st.used != 0 || st.live_allocations != 0) {
      *err = std::string(name) + ": after tear-down stats().used = " + std::to_string(st.used) +
             ", live = " + std::to_string(st.live_allocations) + " (expected 0)";
      ok = false;
    }
    mempool::CheckResult cr;
    if (ok && (pool_->check(&cr) != Status::ok || cr.violations != 0)) {
      *err = std::string(name) + ": check() found " + std::to_string(cr.violations) + " violation(s), first: " + cr.first;
      ok = false;
    }
    destroy();
    return ok;
  }
  void close() { destroy(); }

 private:
  bool create(std::string* why) {
    mempool::SegmentOptions so;
    so.algorithm = algo_;  // default HeapOptions, as the local heaps
    int err = 0;
    bool created = false;
    track_segment(seg_name_);
    Status s = mempool::SharedPool::create(seg_name_, seg_size_, so, &pool_, &err, &created);
    if (s != Status::ok) {
      untrack_segment();
      *why = std::string("SharedPool::create(") + seg_name_ + "): " + mempool::status_name(s) +
             (err != 0 ? std::string(" (") + std::strerror(err) + ")" : std::string());
      return false;
    }
    if (pool_->size() > (uint64_t(1) << 32)) {
      *why = "the segment is too large for 32-bit offsets in benchmark handles";
      destroy();
      return false;
    }
    base_ = pool_->base();
    heap_offset_ = pool_->heap_offset();
    header_bytes_ = reinterpret_cast<const mempool::RegionHeader*>(base_ + heap_offset_)->header_size;
    return true;
  }
  void destroy() {
    if (!pool_) return;
    pool_.reset();  // closes: the cache's slabs go back, then unmaps
    int err = 0;
    mempool::Segment::unlink(seg_name_, &err);
    untrack_segment();
    base_ = nullptr;
  }

  Algorithm algo_;
  bool probed_ = false;
  std::string seg_name_;
  uint64_t seg_size_ = 0;
  std::unique_ptr<mempool::SharedPool> pool_;
  uint8_t* base_ = nullptr;
  uint64_t heap_offset_ = 0;
  uint64_t header_bytes_ = 0;
};

#ifdef MEMPOOL_BENCH_BOOST
// --- Boost.Interprocess managed_shared_memory (rbtree_best_fit + its process-shared mutex) -------------------
// Built only when the Boost headers are installed (Debian: libboost-dev). A fresh 1 GiB segment per pass;
// allocate(size, std::nothrow) / deallocate(p), each of which takes the segment manager's mutex.
class BoostShm final {
 public:
  const char* name = "boost";
  static constexpr bool kHasOffsets = false;
  bool open(std::string* why) {
    seg_name_ = std::string("mempool-bench-") + std::to_string(getpid()) + "-boost";
    if (probed_) return true;
    probed_ = true;
    try {
      setup();
    } catch (const std::exception& e) {
      destroy();
      *why = std::string("managed_shared_memory: ") + e.what();
      return false;
    }
    destroy();
    return true;
  }
  void setup() {
    namespace bi = boost::interprocess;
    track_segment(seg_name_);
    bi::shared_memory_object::remove(seg_name_.c_str());
    seg_.reset(new bi::managed_shared_memory(bi::create_only, seg_name_.c_str(), kRegionBytes));
  }
  inline uint64_t alloc(uint64_t size) { return reinterpret_cast<uint64_t>(seg_->allocate(size, std::nothrow)); }
  inline void free(uint64_t h) { seg_->deallocate(reinterpret_cast<void*>(h)); }
  inline uint8_t* pointer(uint64_t h) const { return reinterpret_cast<uint8_t*>(h); }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string* err) {
    bool ok = seg_->all_memory_deallocated();
    if (!ok) *err = "boost: memory still allocated after tear-down";
    destroy();
    return ok;
  }
  void close() { destroy(); }

 private:
  void destroy() {
    seg_.reset();
    boost::interprocess::shared_memory_object::remove(seg_name_.c_str());
    untrack_segment();
  }
  bool probed_ = false;
  std::string seg_name_;
  std::unique_ptr<boost::interprocess::managed_shared_memory> seg_;
};
#endif

// --- system allocators ----------------------------------------------------------------------------------

class Glibc final {
 public:
  const char* name = "glibc";
  static constexpr bool kHasOffsets = false;
  bool open(std::string*) { return true; }
  void setup() {}
  inline uint64_t alloc(uint64_t size) { return reinterpret_cast<uint64_t>(std::malloc(size)); }
  inline void free(uint64_t h) { std::free(reinterpret_cast<void*>(h)); }
  inline uint8_t* pointer(uint64_t h) const { return reinterpret_cast<uint8_t*>(h); }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string*) { return true; }
  void close() {}
};

// jemalloc / mimalloc: dlopen(RTLD_NOW | RTLD_LOCAL), functions taken from that handle so the process's own
// malloc stays glibc's. The handle is never closed (neither library supports being unloaded).
struct DlLib {
  bool tried = false;
  void* handle = nullptr;
  void* (*alloc_fn)(size_t) = nullptr;
  void* (*allocx_fn)(size_t, int) = nullptr;  // jemalloc mallocx
  void (*free_fn)(void*) = nullptr;
  void (*freex_fn)(void*, int) = nullptr;     // jemalloc dallocx
  std::string why;
};

DlLib g_jemalloc, g_mimalloc;

bool load_lib(DlLib* lib, const char* const* sonames, int n, bool jemalloc) {
  if (lib->tried) return lib->handle != nullptr;
  lib->tried = true;
  std::string errs;
  for (int i = 0; i < n && lib->handle == nullptr; ++i) {
    lib->handle = dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL);
    if (lib->handle == nullptr) {
      const char* e = dlerror();
      errs += std::string(errs.empty() ? "" : "; ") + (e ? e : sonames[i]);
    }
  }
  if (lib->handle == nullptr) {
    lib->why = errs;
    return false;
  }
  if (jemalloc) {
    lib->allocx_fn = reinterpret_cast<void* (*)(size_t, int)>(dlsym(lib->handle, "mallocx"));
    lib->freex_fn = reinterpret_cast<void (*)(void*, int)>(dlsym(lib->handle, "dallocx"));
    if (lib->allocx_fn == nullptr || lib->freex_fn == nullptr) {
      lib->allocx_fn = nullptr;
      lib->freex_fn = nullptr;
      lib->alloc_fn = reinterpret_cast<void* (*)(size_t)>(dlsym(lib->handle, "malloc"));
      lib->free_fn = reinterpret_cast<void (*)(void*)>(dlsym(lib->handle, "free"));
    }
  } else {
    lib->alloc_fn = reinterpret_cast<void* (*)(size_t)>(dlsym(lib->handle, "mi_malloc"));
    lib->free_fn = reinterpret_cast<void (*)(void*)>(dlsym(lib->handle, "mi_free"));
  }
  bool ok = lib->allocx_fn != nullptr || (lib->alloc_fn != nullptr && lib->free_fn != nullptr);
  // malloc/free found through the handle must be the library's own, not glibc's.
  if (ok && lib->alloc_fn == reinterpret_cast<void* (*)(size_t)>(&std::malloc)) ok = false;
  if (!ok) {
    lib->why = "entry points not found in the library";
    lib->handle = nullptr;
  }
  return ok;
}

class Jemalloc final {
 public:
  const char* name = "jemalloc";
  static constexpr bool kHasOffsets = false;
  bool open(std::string* why) {
    static const char* const kNames[] = {"libjemalloc.so.2", "libjemalloc.so"};
    if (!load_lib(&g_jemalloc, kNames, 2, true)) {
      *why = "jemalloc not available (" + g_jemalloc.why + "); Debian: libjemalloc-dev";
      return false;
    }
    ax_ = g_jemalloc.allocx_fn;
    fx_ = g_jemalloc.freex_fn;
    a_ = g_jemalloc.alloc_fn;
    f_ = g_jemalloc.free_fn;
    return true;
  }
  void setup() {}
  inline uint64_t alloc(uint64_t size) {
    return reinterpret_cast<uint64_t>(ax_ ? ax_(size, 0) : a_(size));
  }
  inline void free(uint64_t h) {
    if (fx_) fx_(reinterpret_cast<void*>(h), 0);
    else f_(reinterpret_cast<void*>(h));
  }
  inline uint8_t* pointer(uint64_t h) const { return reinterpret_cast<uint8_t*>(h); }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string*) { return true; }
  void close() {}

 private:
  void* (*ax_)(size_t, int) = nullptr;
  void (*fx_)(void*, int) = nullptr;
  void* (*a_)(size_t) = nullptr;
  void (*f_)(void*) = nullptr;
};

class Mimalloc final {
 public:
  const char* name = "mimalloc";
  static constexpr bool kHasOffsets = false;
  bool open(std::string* why) {
    static const char* const kNames[] = {"libmimalloc.so.2", "libmimalloc.so"};
    if (!load_lib(&g_mimalloc, kNames, 2, false)) {
      *why = "mimalloc not available (" + g_mimalloc.why + "); Debian: libmimalloc-dev";
      return false;
    }
    a_ = g_mimalloc.alloc_fn;
    f_ = g_mimalloc.free_fn;
    return true;
  }
  void setup() {}
  inline uint64_t alloc(uint64_t size) { return reinterpret_cast<uint64_t>(a_(size)); }
  inline void free(uint64_t h) { f_(reinterpret_cast<void*>(h)); }
  inline uint8_t* pointer(uint64_t h) const { return reinterpret_cast<uint8_t*>(h); }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string*) { return true; }
  void close() {}

 private:
  void* (*a_)(size_t) = nullptr;
  void (*f_)(void*) = nullptr;
};

// A harness baseline (not an allocator, never in the output): every handle is the same static buffer.
// Its ns/pair is what the loop itself costs (trace draws, two divisions, the byte write).
alignas(64) uint8_t g_null_buf[64];
class NullAlloc final {
 public:
  const char* name = "null";
  static constexpr bool kHasOffsets = false;
  bool open(std::string*) { return true; }
  void setup() {}
  inline uint64_t alloc(uint64_t size) {
    asm volatile("" : : "r"(size) : "memory");
    return reinterpret_cast<uint64_t>(g_null_buf);
  }
  inline void free(uint64_t h) { asm volatile("" : : "r"(h) : "memory"); }
  inline uint8_t* pointer(uint64_t h) const { return reinterpret_cast<uint8_t*>(h); }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string*) { return true; }
  void close() {}
};

// The floor: the very same trace with no allocator. Each slot owns a fixed cell of the workload's largest
// size (rounded up to 16) in one 1 GiB region from aligned_alloc, as the local heaps' region: cell k at
// offset 4096 + k * cell. free() only remembers the handle it was given and alloc() returns that cell (the
// trace always frees slot i right before it allocates into slot i); during set-up, with nothing freed,
// alloc() hands out the cells in slot order. So its ns/pair is the workload's own memory cost (the slots
// array, the trace, the byte written into a cell spread over slots * cell bytes) and nothing else; the
// difference to another allocator's line is what that allocator adds. Not a heap: no F1.
//
// floor-map: the floor plus the least an allocator that detects double frees exactly must do per step: a
// live bit per 16-byte granule, kept out of line as tlsf's and bitmap's maps are, which free() reads, checks
// and clears and alloc() sets. No size classes, no lists, no counters: its line is a lower bound for any
// heap that keeps per-block state outside the block, and shows what one more cache miss per free costs
// on W4 when no other work hides it.
template <bool kWithMap>
class Floor final {
 public:
  const char* name = kWithMap ? "floor-map" : "floor";
  static constexpr bool kHasOffsets = false;
  void set_workload(const Workload& w) {
    cell_ = (w.hi + 15) & ~uint64_t(15);
    slots_ = w.slots;
  }
  bool open(std::string* why) {
    if (kFirstCell + slots_ * cell_ > kRegionBytes) {
      *why = "the workload's cells do not fit the region";
      return false;
    }
    region_ = static_cast<uint8_t*>(aligned_alloc(4096, kRegionBytes));
    if (region_ == nullptr) {
      *why = "aligned_alloc(4096, 1 GiB) failed";
      return false;
    }
    if (kWithMap) live_.assign(kRegionBytes / 16 / 64, 0);
    return true;
  }
  void setup() {
    next_ = kFirstCell;
    std::fill(live_.begin(), live_.end(), 0);
  }
  inline uint64_t alloc(uint64_t size) {
    asm volatile("" : : "r"(size));  // the trace computes the size as for any allocator (one division)
    const uint64_t h = next_;
    next_ = h + cell_;  // only used by the set-up, where no free comes first
    if constexpr (kWithMap) live_[h / 16 / 64] |= live_bit(h);
    return h;
  }
  inline void free(uint64_t h) {
    if constexpr (kWithMap) {
      uint64_t& word = live_[h / 16 / 64];
      if (__builtin_expect(!(word & live_bit(h)), 0)) die("floor-map: free of %llu, which is not live", (unsigned long long)h);
      word &= ~live_bit(h);
    }
    next_ = h;
  }
  inline uint8_t* pointer(uint64_t h) const { return region_ + h; }
  uint64_t extent(uint64_t) const { return 0; }
  bool teardown(std::string* err) {
    // The tear-down frees the slots in order, so the last handle freed must be the last slot's own cell:
    // otherwise a slot ended up with another slot's cell and the trace was not the one measured.
    if (next_ != kFirstCell + (slots_ - 1) * cell_) {
      *err = "floor: the last slot does not hold its own cell after the pass";
      return false;
    }
    return true;
  }
  void close() {
    std::free(region_);
    region_ = nullptr;
  }

 private:
  static constexpr uint64_t kFirstCell = 4096;
  static uint64_t live_bit(uint64_t h) { return uint64_t(1) << (h / 16 % 64); }
  std::vector<uint64_t> live_;  // floor-map: bit g of word w = granule 64w + g of the region is live
  uint8_t* region_ = nullptr;
  uint64_t cell_ = 16, slots_ = 0, next_ = kFirstCell;
};

template <class A, class = void>
struct TakesWorkload : std::false_type {};
template <class A>
struct TakesWorkload<A, std::void_t<decltype(std::declval<A&>().set_workload(std::declval<const Workload&>()))>>
    : std::true_type {};

// ---------------------------------------------------------------------------------------------------------
// The passes.

[[noreturn]] __attribute__((cold, noinline)) void alloc_failed(const char* name, const char* wl, uint64_t size) {
  die("%s: %s: allocation of %llu bytes failed", name, wl, (unsigned long long)size);
}

inline void write_byte(uint8_t* p, uint64_t v) { *reinterpret_cast<volatile uint8_t*>(p) = uint8_t(v); }

template <class A>
void set_up_slots(A& a, const Workload& w, Rng& r, std::vector<uint64_t>& h, std::vector<uint32_t>* sizes) {
  a.setup();
  const uint64_t span = w.hi - w.lo + 1;
  for (uint64_t i = 0; i < w.slots; ++i) {
    uint64_t size = w.lo + r.draw() % span;
    uint64_t x = a.alloc(size);
    if (x == 0) alloc_failed(a.name, w.name, size);
    write_byte(a.pointer(x), i);
    h[i] = x;
    if (sizes) (*sizes)[i] = uint32_t(size);
  }
}

template <class A>
void tear_down_slots(A& a, std::vector<uint64_t>& h, const char* wl) {
  for (uint64_t& x : h) {
    a.free(x);
    x = 0;
  }
  std::string err;
  if (!a.teardown(&err)) die("%s: %s: verification after tear-down failed: %s", a.name, wl, err.c_str());
}

long minor_faults() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

// Timed pass: steady_clock around the whole loop. *faults (if given): minor page faults taken inside the
// timed loop (first touches of fresh pages: a kernel cost that lands in ns/pair).
template <class A>
double timed_pass(A& a, const Workload& w, uint64_t steps, long* faults = nullptr) {
  Rng r;
  std::vector<uint64_t> h(w.slots);
  set_up_slots(a, w, r, h, nullptr);
  const uint64_t slots = w.slots, lo = w.lo, span = w.hi - w.lo + 1;
  uint64_t* hp = h.data();
  long f0 = minor_faults();
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t s = 0; s < steps; ++s) {
    uint64_t i = r.draw() % slots;
    a.free(hp[i]);
    uint64_t size = lo + r.draw() % span;
    uint64_t x = a.alloc(size);
    if (__builtin_expect(x == 0, 0)) alloc_failed(a.name, w.name, size);
    write_byte(a.pointer(x), s);
    hp[i] = x;
  }
  auto t1 = std::chrono::steady_clock::now();
  if (faults) *faults = minor_faults() - f0;
  tear_down_slots(a, h, w.name);
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(steps);
}

// Latency samples: an exact histogram with 1 ns buckets below 64 µs, the rare longer samples kept as is.
struct Latencies {
  static constexpr uint64_t kBuckets = 1 << 16;
  std::vector<uint64_t> counts = std::vector<uint64_t>(kBuckets, 0);
  std::vector<uint64_t> big;
  uint64_t n = 0, max = 0;
  inline void add(uint64_t ns) {
    ++n;
    if (ns > max) max = ns;
    if (__builtin_expect(ns < kBuckets, 1)) ++counts[ns];
    else big.push_back(ns);
  }
  // Nearest rank: the smallest sample such that at least ceil(p * n) samples are <= it.
  uint64_t percentile(double p) {
    if (n == 0) return 0;
    uint64_t rank = uint64_t(std::ceil(p * double(n)));
    if (rank < 1) rank = 1;
    uint64_t cum = 0;
    for (uint64_t v = 0; v < kBuckets; ++v) {
      cum += counts[v];
      if (cum >= rank) return v;
    }
    std::sort(big.begin(), big.end());
    return big[rank - cum - 1];
  }
};

// Tail pass: the same trace again, each free and each alloc (+ its byte write) timed as one sample.
template <class A>
void tail_pass(A& a, const Workload& w, uint64_t steps, uint64_t* p99, uint64_t* max) {
  Rng r;
  std::vector<uint64_t> h(w.slots);
  set_up_slots(a, w, r, h, nullptr);
  const uint64_t slots = w.slots, lo = w.lo, span = w.hi - w.lo + 1;
  uint64_t* hp = h.data();
  Latencies lat;
  for (uint64_t s = 0; s < steps; ++s) {
    uint64_t i = r.draw() % slots;
    uint64_t size = lo + r.draw() % span;
    uint64_t t0 = now_ns();
    a.free(hp[i]);
    uint64_t t1 = now_ns();
    uint64_t x = a.alloc(size);
    if (__builtin_expect(x == 0, 0)) alloc_failed(a.name, w.name, size);
    write_byte(a.pointer(x), s);
    uint64_t t2 = now_ns();
    hp[i] = x;
    lat.add(t1 - t0);
    lat.add(t2 - t1);
  }
  tear_down_slots(a, h, w.name);
  *p99 = lat.percentile(0.99);
  *max = lat.max;
}

// F1: W3's trace (not timed); after set-up and after every step, live bytes (requested) and footprint
// (highest end offset of a live block, offset + usable size, from the heap region's start).
// *internal: peak usable bytes / peak live bytes (rounding waste alone, whatever the placement; stderr only).
template <class A>
double f1_pass(A& a, const Workload& w, uint64_t steps, double* internal) {
  Rng r;
  std::vector<uint64_t> h(w.slots), end(w.slots);
  std::vector<uint32_t> sizes(w.slots);
  set_up_slots(a, w, r, h, &sizes);
  std::multiset<uint64_t> ends;
  uint64_t live = 0, usable = 0;
  for (uint64_t i = 0; i < w.slots; ++i) {
    end[i] = a.extent(h[i]);
    ends.insert(end[i]);
    live += sizes[i];
    usable += end[i] - h[i];
  }
  uint64_t peak_live = live, peak_foot = *ends.rbegin(), peak_usable = usable;
  const uint64_t span = w.hi - w.lo + 1;
  for (uint64_t s = 0; s < steps; ++s) {
    uint64_t i = r.draw() % w.slots;
    a.free(h[i]);
    ends.erase(ends.find(end[i]));
    live -= sizes[i];
    usable -= end[i] - h[i];
    uint64_t size = w.lo + r.draw() % span;
    uint64_t x = a.alloc(size);
    if (x == 0) alloc_failed(a.name, "F1", size);
    write_byte(a.pointer(x), s);
    h[i] = x;
    sizes[i] = uint32_t(size);
    end[i] = a.extent(x);
    ends.insert(end[i]);
    live += size;
    usable += end[i] - x;
    peak_live = std::max(peak_live, live);
    peak_usable = std::max(peak_usable, usable);
    peak_foot = std::max(peak_foot, *ends.rbegin());
  }
  tear_down_slots(a, h, "F1");
  *internal = double(peak_usable) / double(peak_live);
  return double(peak_foot) / double(peak_live);
}

// ---------------------------------------------------------------------------------------------------------
// Results and output.

struct Result {
  std::string allocator, workload;
  bool frag = false;
  double ns = 0, fragmentation = 0;
  uint64_t p99 = 0, max = 0;
};

struct Options {
  bool json = false;
  double scale = 1.0;
  int repeat = 1;                      // --repeat R: every allocator R times, interleaved; medians reported
  std::vector<std::string> only;       // allocator names, empty = all
  std::vector<std::string> workloads;  // empty = all
};

std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p <= s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    if (q > p) out.push_back(s.substr(p, q - p));
    p = q + 1;
  }
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

void emit(const Options& o, const Result& r) {
  if (!o.json) return;
  if (r.frag)
    std::printf("{\"allocator\":\"%s\",\"workload\":\"%s\",\"fragmentation\":%.3f}\n", r.allocator.c_str(),
                r.workload.c_str(), r.fragmentation);
  else
    std::printf("{\"allocator\":\"%s\",\"workload\":\"%s\",\"nsPerPair\":%.1f,\"p99Ns\":%llu,\"maxNs\":%llu}\n",
                r.allocator.c_str(), r.workload.c_str(), r.ns, (unsigned long long)r.p99,
                (unsigned long long)r.max);
  std::fflush(stdout);
}

uint64_t scaled(uint64_t steps, double scale) {
  double s = std::llround(double(steps) * scale);
  return s < 1 ? 1 : uint64_t(s);
}

// Runs one allocator over the selected workloads.
template <class A>
void run_allocator(A& a, const Options& o, const std::vector<int>& wls, bool f1, std::vector<Result>* out) {
  for (int wi : wls) {
    const Workload& w = kWorkloads[wi];
    std::string why;
    if constexpr (TakesWorkload<A>::value) a.set_workload(w);
    if (!a.open(&why)) {
      note("skipping %s: %s", a.name, why.c_str());
      return;
    }
    uint64_t steps = scaled(w.steps, o.scale);
    Result r;
    r.allocator = a.name;
    r.workload = w.name;
    long faults = 0;
    r.ns = timed_pass(a, w, steps, &faults);
    tail_pass(a, w, steps, &r.p99, &r.max);
    a.close();
    if (o.repeat == 1) emit(o, r);
    note("%-14s %s  %8.1f ns/pair  p99 %llu ns  max %llu ns  (page faults in the timed loop: %ld)", a.name,
         w.name, r.ns, (unsigned long long)r.p99, (unsigned long long)r.max, faults);
    out->push_back(r);
  }
  if (f1 && A::kHasOffsets) {
    const Workload& w = kWorkloads[kF1Trace];
    std::string why;
    if (!a.open(&why)) {
      note("skipping %s: %s", a.name, why.c_str());
      return;
    }
    Result r;
    r.allocator = a.name;
    r.workload = "F1";
    r.frag = true;
    double internal = 0;
    r.fragmentation = f1_pass(a, w, scaled(w.steps, o.scale), &internal);
    uint64_t header = 0;
    if constexpr (A::kHasOffsets) header = a.header_bytes();
    a.close();
    if (o.repeat == 1) emit(o, r);
    note("%-14s F1  fragmentation %.3f  (peak usable / peak live = %.3f: rounding alone, placement aside; "
         "the heap's header, inside the footprint, is %.1f MiB)",
         a.name, r.fragmentation, internal, double(header) / 1048576.0);
    out->push_back(r);
  }
}

void measure_clock_cost() {
  // Cost of one clock_gettime(CLOCK_MONOTONIC) call (the tail pass reads it 3 times per step; each sample
  // spans one call's worth of it) and of steady_clock::now().
  const int n = 2000000;
  uint64_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) sink += now_ns();
  auto t1 = std::chrono::steady_clock::now();
  double per_call = std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
  // Smallest back-to-back difference: the floor of any sample.
  uint64_t min_diff = UINT64_MAX;
  for (int i = 0; i < 100000; ++i) {
    uint64_t a = now_ns(), b = now_ns();
    min_diff = std::min(min_diff, b - a);
  }
  note("clock: clock_gettime(CLOCK_MONOTONIC) costs %.1f ns a call; back-to-back minimum %llu ns "
       "(every tail sample includes about one call; nothing is subtracted)%s",
       per_call, (unsigned long long)min_diff, sink == 42 ? " " : "");
}

void usage() {
  std::fprintf(stderr,
               "usage: native [--json] [--scale F] [--repeat R] [--only NAME,...] [--workloads W1,W2,W3,W4,F1]\n"
               "  --repeat R: run the whole sequence R times (interleaving allocators in time) and report, per\n"
               "  allocator and workload, the median ns/pair and p99 and the largest max\n"
               "  allocators: tlsf buddy bitmap shared-tlsf shared-buddy shared-bitmap glibc jemalloc mimalloc boost\n"
               "  floor (no allocator: the trace over fixed cells, the workload's own cost)\n"
               "  floor-map (the floor plus a live bit per granule that free() checks: exact double-free detection alone)\n");
}

const char* const kAllocatorNames[] = {"glibc", "floor", "floor-map", "jemalloc", "mimalloc", "tlsf", "buddy", "bitmap",
                                       "shared-tlsf", "shared-buddy", "shared-bitmap", "boost"};

// jemalloc (and some mimalloc builds) use initial-exec TLS, which a dlopen'ed library can only get from the
// small static-TLS surplus glibc reserves at start-up ("cannot allocate memory in static TLS block"). The
// surplus is a start-up tunable, so the benchmark re-executes itself once with a larger one.
void ensure_static_tls_surplus(char** argv) {
  const char* kTunable = "glibc.rtld.optional_static_tls=65536";
  if (getenv("MEMPOOL_BENCH_TLS") != nullptr) return;
  setenv("MEMPOOL_BENCH_TLS", "1", 1);
  const char* old = getenv("GLIBC_TUNABLES");
  std::string t = old && *old ? std::string(old) + ":" + kTunable : std::string(kTunable);
  setenv("GLIBC_TUNABLES", t.c_str(), 1);
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);  // the real path keeps the process name
  if (n > 0) {
    self[n] = '\0';
    execv(self, argv);
  }
  note("re-exec with GLIBC_TUNABLES failed (%s); jemalloc may not load", std::strerror(errno));
}

}  // namespace

int main(int argc, char** argv) {
  ensure_static_tls_surplus(argv);
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      size_t n = std::strlen(flag);
      if (a.size() > n && a.compare(0, n, flag) == 0 && a[n] == '=') return a.substr(n + 1);
      if (i + 1 >= argc) {
        usage();
        die("%s needs a value", flag);
      }
      return argv[++i];
    };
    if (a == "--json") o.json = true;
    else if (a.rfind("--scale", 0) == 0) {
      std::string v = value("--scale");
      char* end = nullptr;
      o.scale = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(o.scale > 0)) die("bad --scale %s", v.c_str());
    } else if (a.rfind("--repeat", 0) == 0) {
      std::string v = value("--repeat");
      o.repeat = std::atoi(v.c_str());
      if (o.repeat < 1 || o.repeat > 100) die("bad --repeat %s", v.c_str());
    } else if (a.rfind("--only", 0) == 0) o.only = split_csv(value("--only"));
    else if (a.rfind("--workloads", 0) == 0) o.workloads = split_csv(value("--workloads"));
    else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      usage();
      die("unknown argument %s", a.c_str());
    }
  }
  for (const std::string& n : o.only)
    if (!contains(std::vector<std::string>(std::begin(kAllocatorNames), std::end(kAllocatorNames)), n))
      die("unknown allocator %s", n.c_str());
  std::vector<int> wls;
  bool f1 = o.workloads.empty();
  for (const std::string& n : o.workloads) {
    if (n == "F1") {
      f1 = true;
      continue;
    }
    int found = -1;
    for (int k = 0; k < 4; ++k)
      if (n == kWorkloads[k].name) found = k;
    if (found < 0) die("unknown workload %s", n.c_str());
    if (std::find(wls.begin(), wls.end(), found) == wls.end()) wls.push_back(found);
  }
  if (o.workloads.empty()) wls = {0, 1, 2, 3};
  std::sort(wls.begin(), wls.end());

  measure_clock_cost();
  if (!wls.empty()) {
    // Harness baseline on the first selected workload (stderr only).
    NullAlloc n;
    const Workload& w = kWorkloads[wls[0]];
    double ns = timed_pass(n, w, scaled(w.steps, o.scale));
    note("harness: the loop alone (trace draws, two divisions, byte write) costs %.1f ns/step on %s; "
         "included in every ns/pair",
         ns, w.name);
  }

  std::vector<Result> raw;
  auto want = [&](const char* n) { return o.only.empty() || contains(o.only, n); };
  for (int rep = 0; rep < o.repeat; ++rep) {
    if (o.repeat > 1) note("repeat %d of %d", rep + 1, o.repeat);
    const bool f1_now = f1 && rep == 0;  // F1 is deterministic: once
    // glibc first, so that every later allocator has its reference from the same run.
    if (want("glibc")) { Glibc a; run_allocator(a, o, wls, false, &raw); }
    if (want("floor")) { Floor<false> a; run_allocator(a, o, wls, false, &raw); }
    if (want("floor-map")) { Floor<true> a; run_allocator(a, o, wls, false, &raw); }
    if (want("jemalloc")) { Jemalloc a; run_allocator(a, o, wls, false, &raw); }
    if (want("mimalloc")) { Mimalloc a; run_allocator(a, o, wls, false, &raw); }
    if (want("tlsf")) { LocalHeap a("tlsf", Algorithm::tlsf); run_allocator(a, o, wls, f1_now, &raw); }
    if (want("buddy")) { LocalHeap a("buddy", Algorithm::buddy); run_allocator(a, o, wls, f1_now, &raw); }
    if (want("bitmap")) { LocalHeap a("bitmap", Algorithm::bitmap); run_allocator(a, o, wls, f1_now, &raw); }
    if (want("shared-tlsf")) { SharedHeap a("shared-tlsf", Algorithm::tlsf); run_allocator(a, o, wls, f1_now, &raw); }
    if (want("shared-buddy")) { SharedHeap a("shared-buddy", Algorithm::buddy); run_allocator(a, o, wls, f1_now, &raw); }
    if (want("shared-bitmap")) { SharedHeap a("shared-bitmap", Algorithm::bitmap); run_allocator(a, o, wls, f1_now, &raw); }
#ifdef MEMPOOL_BENCH_BOOST
    if (want("boost")) { BoostShm a; run_allocator(a, o, wls, false, &raw); }
#else
    if (want("boost") && rep == 0) note("skipping boost: built without the Boost headers (Debian: libboost-dev)");
#endif
  }
  // Medians over the repeats (ns/pair, p99), the largest max; in the order first seen.
  std::vector<Result> results;
  for (const Result& r : raw) {
    bool seen = false;
    for (const Result& x : results) seen = seen || (x.allocator == r.allocator && x.workload == r.workload);
    if (seen) continue;
    Result m = r;
    if (!r.frag && o.repeat > 1) {
      std::vector<double> ns;
      std::vector<uint64_t> p99;
      for (const Result& x : raw) {
        if (x.allocator != r.allocator || x.workload != r.workload) continue;
        ns.push_back(x.ns);
        p99.push_back(x.p99);
        m.max = std::max(m.max, x.max);
      }
      std::sort(ns.begin(), ns.end());
      std::sort(p99.begin(), p99.end());
      size_t k = ns.size() / 2;
      m.ns = ns.size() % 2 ? ns[k] : (ns[k - 1] + ns[k]) / 2;
      m.p99 = p99.size() % 2 ? p99[k] : (p99[k - 1] + p99[k]) / 2;
    }
    if (o.repeat > 1) emit(o, m);
    results.push_back(m);
  }
  if (f1 && (want("glibc") || want("jemalloc") || want("mimalloc")))
    note("F1 is reported for the heaps only: system allocators have no region to measure a footprint in");

  if (o.json) return 0;

  // The table: ns/pair and its ratio to glibc measured in this run.
  auto glibc_ns = [&](const std::string& wl) -> double {
    for (const Result& r : results)
      if (r.allocator == "glibc" && r.workload == wl && !r.frag) return r.ns;
    return 0;
  };
  std::printf("scale %g, %d repeat(s) (medians); ns/pair = timed ns / steps (one free + one alloc + one byte write); "
              "p99/max of single operations\n\n",
              o.scale, o.repeat);
  std::printf("%-4s %-14s %10s %9s %9s %10s\n", "wl", "allocator", "ns/pair", "x glibc", "p99 ns", "max ns");
  for (int wi : wls) {
    const char* wl = kWorkloads[wi].name;
    double g = glibc_ns(wl);
    for (const Result& r : results) {
      if (r.frag || r.workload != wl) continue;
      char ratio[32];
      if (g > 0) std::snprintf(ratio, sizeof ratio, "%.2f", r.ns / g);
      else std::snprintf(ratio, sizeof ratio, "-");
      std::printf("%-4s %-14s %10.1f %9s %9llu %10llu\n", wl, r.allocator.c_str(), r.ns, ratio,
                  (unsigned long long)r.p99, (unsigned long long)r.max);
    }
    std::printf("\n");
  }
  bool any_frag = false;
  for (const Result& r : results)
    if (r.frag) {
      if (!any_frag) std::printf("F1 (W3 trace) fragmentation = peak footprint / peak live bytes\n");
      any_frag = true;
      std::printf("     %-14s %10.3f\n", r.allocator.c_str(), r.fragmentation);
    }
  return 0;
}
