// libFuzzer harness 2a: SharedPool::open (shared_pool.h) on a shared-memory object holding arbitrary bytes.
//
// Input: [mode] then
//   mode % 4 == 0: the rest of the input is the whole object, as it is;
//   mode % 4 == 1..3: a valid tlsf/buddy/bitmap segment of 128 KiB with 8 directory slots, live blocks
//                     and names (built once through SharedPool, with a pin of a gone process), patched by the input (apply_patches);
//                     bit 0x10 of mode writes 0x40000000 into the lock word: FUTEX_OWNER_DIED for the
//                     former robust pthread mutex, a holder thread that does not exist for the futex
//                     word lock; either way lock() takes over and runs the repair over the patched image.
// The bytes go into /dev/shm/mempool-fuzz-<pid>; SharedPool::open (the facade, shared_pool.h, as the addon
// opens a segment) must refuse or succeed, and after success every facade operation (alloc, free, realloc,
// usable_size, set, replace, take, get, copy, remove, pin/unpin, keys, check, stats, walk) must return
// statuses: never crash. What the addon turns into Buffer views is asserted to lie inside the segment:
// directory (offset, length) pairs, allocated blocks, usable sizes.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "segment.h"
#include "shared_pool.h"

using namespace mempool;

namespace {

constexpr uint64_t kImageSize = 128 * 1024;  // layout 3 (generation words, pins) no longer fits a heap in 64 KiB
constexpr uint32_t kLockTimeoutMs = 5;
const char* kKeys[] = {"alpha", "beta", "gamma", "delta", "k"};

std::string shm_name() { return "mempool-fuzz-" + std::to_string(getpid()); }

struct Template {
  std::vector<uint8_t> image;
  std::vector<uint64_t> offsets;
};

const Template& template_for(Algorithm a) {
  static Template t[3];
  Template& out = t[static_cast<int>(a) - 1];
  if (!out.image.empty()) return out;
  std::string name = shm_name() + "-t";
  int err = 0;
  Segment::unlink(name, &err);
  SegmentOptions o;
  o.algorithm = a;
  o.directory_capacity = 8;
  o.lock_timeout_ms = kLockTimeoutMs;
  std::unique_ptr<SharedPool> pool;
  bool created = false;
  Status cs = SharedPool::create(name, kImageSize, o, &pool, &err, &created);
  if (cs != Status::ok) FUZZ_FAIL("template create: %s", status_name(cs));
  std::vector<uint32_t> gens;
  for (uint64_t i = 0; i < 24; ++i) {
    uint64_t off = 0;
    uint32_t gen = 0;
    if (pool->alloc(16 + (i * 53) % 700, kDefaultAlign, kNoHint, 0, &off, &gen) != Status::ok) break;
    out.offsets.push_back(off);
    gens.push_back(gen);
  }
  for (size_t i = 0; i < 5 && i * 2 < out.offsets.size(); ++i) pool->set(kKeys[i], out.offsets[i * 2], gens[i * 2], 16);
  bool had = false;
  pool->remove("gamma", &had);
  for (size_t i = 1; i < out.offsets.size(); i += 4) pool->free(out.offsets[i], gens[i]);
  // A pin held by a process that is gone (this one's pid, rewritten below to one that cannot exist).
  NamedBlock nb;
  uint32_t pin = 0;
  if (pool->pin("alpha", &nb, &pin, &had) == Status::ok && had) pool->segment().pins()[pin].pid = 0x7ffffff0u;
  Segment& seg = pool->segment();
  out.image.assign(seg.base(), seg.base() + kImageSize);
  pool.reset();
  Segment::unlink(name, &err);
  return out;
}

int shm_fd() {
  static int fd = -1;
  if (fd >= 0) return fd;
  std::string path = "/" + shm_name();
  fd = shm_open(path.c_str(), O_RDWR | O_CREAT, 0600);
  if (fd < 0) FUZZ_FAIL("shm_open");
  atexit([] { shm_unlink(("/" + shm_name()).c_str()); });  // scripts/fuzz.sh removes leftovers of killed runs
  return fd;
}

void expect_inside(SharedPool& pool, uint64_t off, uint64_t n, const char* what) {
  if (off < pool.heap_offset() || off >= pool.size() || n > pool.size() - off) {
    FUZZ_FAIL("%s: [%llu, +%llu) is outside the segment's heap (segment of %llu bytes)", what,
              (unsigned long long)off, (unsigned long long)n, (unsigned long long)pool.size());
  }
}

struct Known {
  uint64_t off;
  uint32_t gen;
};

void exercise(SharedPool& pool, fuzz::Reader& in, const std::vector<uint64_t>& known) {
  std::vector<Known> offs;
  for (uint64_t o : known) offs.push_back({o, kAnyGen});
  for (const char* k : kKeys) {
    NamedBlock nb;
    bool had = false;
    if (pool.get(k, &nb, &had) == Status::ok && had) {
      expect_inside(pool, nb.offset, nb.length, "get");
      offs.push_back({nb.offset, nb.gen});
    }
  }
  std::vector<std::string> keys;
  pool.keys(&keys);
  for (const std::string& k : keys) {
    NamedBlock nb;
    bool had = false;
    if (pool.get(k, &nb, &had) == Status::ok && had) expect_inside(pool, nb.offset, nb.length, "get of a listed key");
    std::string bytes;
    if (pool.copy(k, &bytes, &had) == Status::ok && had && bytes.size() > pool.size()) FUZZ_FAIL("copy longer than the segment");
  }
  CheckResult r;
  pool.check(&r);
  HeapStats st;
  pool.stats(&st);
  pool.walk([&](const BlockInfo& b) {  // slabs (if the header claims any) shown as slots
    expect_inside(pool, b.offset, b.size, "walk");
    return true;
  });
  std::vector<uint32_t> pins;
  std::vector<uint64_t> pinned;
  for (int n = 0; n < 32 && !in.empty(); ++n) {
    uint8_t op = in.u8();
    Known k = offs.empty() || (op & 0x80) ? Known{in.u32() % (pool.size() + 64), in.u8() % 2 ? kAnyGen : in.u32()}
                                          : offs[in.u8() % offs.size()];
    uint64_t size = 1 + in.u8() * ((op & 0x40) ? 64u : 1u);
    const char* key = kKeys[in.u8() % 5];
    NamedBlock nb;
    bool had = false;
    switch (op % 12) {
      case 0: {
        uint64_t got = 0;
        uint32_t gen = 0;
        if (pool.alloc(size, kDefaultAlign, kNoHint, 0, &got, &gen) == Status::ok) {
          expect_inside(pool, got, size, "alloc");
          std::memset(pool.base() + got, 0, size);
          offs.push_back({got, gen});
        }
        break;
      }
      case 1: pool.free(k.off, k.gen); break;
      case 2: {
        uint64_t u = 0;
        if (pool.usable_size(k.off, &u) == Status::ok) expect_inside(pool, k.off, u, "usable_size");
        break;
      }
      case 3: {
        uint64_t moved = 0;
        uint32_t gen = 0;
        if (pool.realloc(k.off, k.gen, size, kDefaultAlign, &moved, &gen) == Status::ok) {
          expect_inside(pool, moved, size, "realloc");
          offs.push_back({moved, gen});
        }
        break;
      }
      case 4: pool.set(key, k.off, k.gen, size); break;
      case 5: pool.remove(key, &had); break;
      case 6:
        if (pool.get(key, &nb, &had) == Status::ok && had) expect_inside(pool, nb.offset, nb.length, "get");
        break;
      case 7:
        if (pool.replace(key, k.off, k.gen, size, &nb, &had) == Status::ok && had) {
          expect_inside(pool, nb.offset, nb.length, "replace's old block");
          offs.push_back({nb.offset, nb.gen});
        }
        break;
      case 8:
        if (pool.take(key, &nb, &had) == Status::ok && had) {
          expect_inside(pool, nb.offset, nb.length, "take");
          offs.push_back({nb.offset, nb.gen});
        }
        break;
      case 9: {
        uint32_t pin = 0;
        if (pool.pin(key, &nb, &pin, &had) == Status::ok && had) {
          expect_inside(pool, nb.offset, nb.length, "pin");
          pins.push_back(pin);
          pinned.push_back(nb.offset);
        }
        break;
      }
      case 10:
        if (!pins.empty()) {
          pool.unpin(pins.back(), pinned.back());
          pins.pop_back();
          pinned.pop_back();
        }
        break;
      default: {
        CheckResult r2;
        pool.check(&r2);
      }
    }
  }
  for (size_t i = 0; i < pins.size(); ++i) pool.unpin(pins[i], pinned[i]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader in(data, size);
  uint8_t mode = in.u8();
  std::vector<uint8_t> image;
  std::vector<uint64_t> known;
  if (mode % 4 == 0) {
    image.assign(in.rest(), in.rest() + in.left());
    in = fuzz::Reader(nullptr, 0);
  } else {
    const Template& t = template_for(static_cast<Algorithm>(mode % 4));
    image = t.image;
    known = t.offsets;
    fuzz::apply_patches(in, image.data(), image.size(), 24);
    if (mode & 0x10) {
      uint32_t owner_died = 0x40000000;  // a dead holder (see the mode comment above)
      std::memcpy(image.data() + offsetof(SegmentHeader, lock), &owner_died, 4);
    }
  }
  int fd = shm_fd();
  if (ftruncate(fd, 0) != 0 || ftruncate(fd, static_cast<off_t>(image.size())) != 0) FUZZ_FAIL("ftruncate");
  if (!image.empty() && pwrite(fd, image.data(), image.size(), 0) != static_cast<ssize_t>(image.size())) FUZZ_FAIL("pwrite");
  std::unique_ptr<SharedPool> pool;
  int err = 0;
  Status s = SharedPool::open(shm_name(), kLockTimeoutMs, &pool, &err);
  if (s == Status::ok) exercise(*pool, in, known);
  return 0;
}
