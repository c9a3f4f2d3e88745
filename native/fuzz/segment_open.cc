// libFuzzer harness 2a: Segment::open on a shared-memory object holding arbitrary bytes.
//
// Input: [mode] then
//   mode % 4 == 0: the rest of the input is the whole object, as it is;
//   mode % 4 == 1..3: a valid tlsf/buddy/bitmap segment of 64 KiB with 8 directory slots, live blocks
//                     and names (built once with Segment::create), patched by the input (apply_patches);
//                     bit 0x10 of mode writes 0x40000000 into the lock word: FUTEX_OWNER_DIED for the
//                     former robust pthread mutex, a holder thread that does not exist for the futex
//                     word lock; either way lock() takes over and runs the repair over the patched image.
// The bytes go into /dev/shm/mempool-fuzz-<pid>; Segment::open must refuse or succeed, and after success
// lock, directory reads (dir_get, dir_keys, dir_check), heap ops, check, stats, walk and unlock must
// return statuses: never crash. What the addon turns into Buffer views is asserted to lie inside the
// segment: directory (offset, length) pairs, allocated blocks, usable sizes.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "segment.h"
#include "shared_cache.h"

using namespace mempool;

namespace {

constexpr uint64_t kImageSize = 64 * 1024;
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
  std::unique_ptr<Segment> seg;
  bool created = false;
  if (Segment::create(name, kImageSize, o, &seg, &err, &created) != Status::ok) FUZZ_FAIL("template create");
  Heap& h = seg->heap();
  for (uint64_t i = 0; i < 24; ++i) {
    uint64_t off = 0;
    if (h.alloc(16 + (i * 53) % 700, kDefaultAlign, kNoHint, &off) != Status::ok) break;
    out.offsets.push_back(off + seg->heap_offset());
  }
  for (size_t i = 0; i < 5 && i < out.offsets.size(); ++i) seg->dir_set(kKeys[i], out.offsets[i * 2], 16);
  seg->dir_delete("gamma");
  for (size_t i = 1; i < out.offsets.size(); i += 4) {
    h.free(out.offsets[i] - seg->heap_offset());
    seg->dir_forget_offset(out.offsets[i]);
  }
  out.image.assign(seg->base(), seg->base() + kImageSize);
  seg.reset();
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

void expect_inside(const Segment& seg, uint64_t off, uint64_t n, const char* what) {
  if (off < seg.heap_offset() || off >= seg.size() || n > seg.size() - off) {
    FUZZ_FAIL("%s: [%llu, +%llu) is outside the segment's heap (segment of %llu bytes)", what,
              (unsigned long long)off, (unsigned long long)n, (unsigned long long)seg.size());
  }
}

void exercise(Segment& seg, fuzz::Reader& in, const std::vector<uint64_t>& known) {
  bool recovered = false;
  if (seg.lock(&recovered) != Status::ok) return;  // timeout or corrupted: refused cleanly
  Heap& h = seg.heap();
  uint64_t bias = seg.heap_offset();
  std::vector<uint64_t> offs = known;
  for (const char* k : kKeys) {
    uint64_t off = 0, len = 0;
    if (seg.dir_get(k, &off, &len) == Status::ok) {
      expect_inside(seg, off, len, "dir_get");
      offs.push_back(off);
    }
  }
  std::vector<std::string> keys;
  seg.dir_keys(&keys);
  for (const std::string& k : keys) {
    uint64_t off = 0, len = 0;
    if (seg.dir_get(k, &off, &len) == Status::ok) expect_inside(seg, off, len, "dir_get of a listed key");
  }
  CheckResult r;
  h.check(&r);
  shared_check(seg, &r);
  seg.dir_check(&r);
  HeapStats st;
  h.stats(&st);
  shared_adjust_stats(seg, &st);
  h.walk([&](const BlockInfo& b) {
    expect_inside(seg, b.offset + bias, b.size, "walk");
    return true;
  });
  shared_walk(seg, [&](const BlockInfo& b) {  // slabs (if the header claims any) shown as slots
    expect_inside(seg, b.offset + bias, b.size, "shared_walk");
    return true;
  });
  for (int n = 0; n < 32 && !in.empty(); ++n) {
    uint8_t op = in.u8();
    uint64_t off = offs.empty() || (op & 0x80) ? in.u32() % (seg.size() + 64) : offs[in.u8() % offs.size()];
    uint64_t size = 1 + in.u8() * ((op & 0x40) ? 64u : 1u);
    switch (op % 8) {
      case 0: {
        uint64_t got = 0;
        if (h.alloc(size, kDefaultAlign, kNoHint, &got) == Status::ok) {
          expect_inside(seg, got + bias, size, "alloc");
          std::memset(seg.base() + bias + got, 0, size);
          offs.push_back(got + bias);
        }
        break;
      }
      case 1:
        if (off >= bias && h.free(off - bias) == Status::ok) seg.dir_forget_offset(off);
        break;
      case 2: {
        uint64_t u = 0;
        if (off >= bias && h.usable_size(off - bias, &u) == Status::ok) expect_inside(seg, off, u, "usable_size");
        if (off >= bias && seg.usable_any(off - bias, &u) == Status::ok) expect_inside(seg, off, u, "usable_any");
        break;
      }
      case 3: {
        uint64_t moved = 0;
        if (off >= bias && heap_realloc(h, off - bias, size, kDefaultAlign, &moved) == Status::ok) {
          expect_inside(seg, moved + bias, size, "realloc");
          if (moved + bias != off) seg.dir_forget_offset(off);
        }
        break;
      }
      case 4: seg.dir_set(kKeys[in.u8() % 5], off, size); break;
      case 5: seg.dir_delete(kKeys[in.u8() % 5]); break;
      case 6: {
        uint64_t o = 0, l = 0;
        if (seg.dir_get(kKeys[in.u8() % 5], &o, &l) == Status::ok) expect_inside(seg, o, l, "dir_get");
        break;
      }
      default: {
        CheckResult r2;
        h.check(&r2);
        seg.dir_check(&r2);
      }
    }
  }
  seg.unlock();
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
  std::unique_ptr<Segment> seg;
  int err = 0;
  Status s = Segment::open(shm_name(), kLockTimeoutMs, &seg, &err);
  if (s == Status::ok) exercise(*seg, in, known);
  return 0;
}
