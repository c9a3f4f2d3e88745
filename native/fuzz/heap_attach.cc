// libFuzzer harness 2b: heap_attach on a 4096-aligned buffer filled with the input.
//
// Input: [mode] then
//   mode % 4 == 0: the rest of the input is the region, as it is (any length);
//   mode % 4 == 1..3: a valid tlsf/buddy/bitmap heap of 64 KiB with live and freed blocks (built once),
//                     patched by the input (fuzz_util.h apply_patches), then ops from the rest.
// Whatever the bytes, nothing may crash or touch memory outside the buffer (ASan's redzones sit right
// after it): attach either refuses or gives a heap on which check, stats, walk, rebuild, alloc, free,
// resize, usable_size and realloc all return a status. Besides no crash, what the addon relies on is
// asserted: a block the heap hands out (alloc, usable_size, walk) lies inside the region, so a Buffer
// view over it cannot reach outside the pool.
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "heap.h"

using namespace mempool;

namespace {

constexpr uint64_t kTemplateSize = 64 * 1024;

struct Template {
  std::vector<uint8_t> image;
  std::vector<uint64_t> offsets;  // live and freed blocks, for ops to aim at
};

const Template& template_for(Algorithm a) {
  static Template t[3];
  Template& out = t[static_cast<int>(a) - 1];
  if (!out.image.empty()) return out;
  fuzz::AlignedBuffer buf(kTemplateSize);
  std::memset(buf.bytes, 0, kTemplateSize);
  std::unique_ptr<Heap> h;
  if (heap_format(a, buf.bytes, kTemplateSize, HeapOptions{}, &h) != Status::ok) FUZZ_FAIL("template format");
  for (uint64_t i = 0; i < 48; ++i) {
    uint64_t off = 0;
    if (h->alloc(16 + (i * 37) % 900, kDefaultAlign << (i % 3), kNoHint, &off) != Status::ok) break;
    std::memset(buf.bytes + off, static_cast<int>(i), 16);
    out.offsets.push_back(off);
  }
  for (size_t i = 0; i < out.offsets.size(); i += 3) h->free(out.offsets[i]);  // free lists, quick lists
  out.image.assign(buf.bytes, buf.bytes + kTemplateSize);
  return out;
}

void expect_inside(uint64_t off, uint64_t n, uint64_t region, const char* what) {
  if (off >= region || n > region - off) {
    FUZZ_FAIL("%s: block [%llu, +%llu) is outside the region of %llu bytes", what, (unsigned long long)off,
              (unsigned long long)n, (unsigned long long)region);
  }
}

void exercise(Heap& h, uint64_t region, fuzz::Reader& in, const std::vector<uint64_t>& known) {
  CheckResult r;
  h.check(&r);
  HeapStats st;
  h.stats(&st);
  std::vector<uint64_t> offs = known;
  h.walk([&](const BlockInfo& b) {
    expect_inside(b.offset, b.size, region, "walk");
    if (b.used && offs.size() < 256) offs.push_back(b.offset);
    return true;
  });
  for (int n = 0; n < 64 && !in.empty(); ++n) {
    uint8_t op = in.u8();
    uint64_t off = offs.empty() || (op & 0x80) ? in.u32() % (region + 64) : offs[in.u8() % offs.size()];
    uint64_t size = (op & 0x40) ? in.u16() : 1 + in.u8();
    switch (op % 8) {
      case 0: {
        uint64_t got = 0;
        uint64_t align = kDefaultAlign << (in.u8() % 9);
        uint64_t hint = (op & 0x20) ? off : kNoHint;
        if (h.alloc(size, align, hint, &got) == Status::ok) {
          expect_inside(got, size, region, "alloc");
          if (got % align) FUZZ_FAIL("alloc on a hostile heap returned a misaligned block");
          std::memset(h.base() + got, 0x5a, size);  // what Pool.alloc({ zero: true }) does
          offs.push_back(got);
        }
        break;
      }
      case 1: h.free(off); break;
      case 2: h.resize_in_place(off, size); break;
      case 3: {
        uint64_t u = 0;
        if (h.usable_size(off, &u) == Status::ok) expect_inside(off, u, region, "usable_size");
        break;
      }
      case 4: {
        uint64_t moved = 0;
        if (heap_realloc(h, off, size, kDefaultAlign, &moved) == Status::ok) {
          expect_inside(moved, size, region, "realloc");
          offs.push_back(moved);
        }
        break;
      }
      case 5: h.rebuild(); break;
      case 6: {
        CheckResult r2;
        h.check(&r2);
        h.stats(&st);
        break;
      }
      default:
        h.walk([&](const BlockInfo& b) {
          expect_inside(b.offset, b.size, region, "walk");
          return true;
        });
    }
  }
  h.check(&r);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader in(data, size);
  uint8_t mode = in.u8();
  if (mode % 4 == 0) {
    uint64_t n = in.left();
    fuzz::AlignedBuffer buf(n);
    in.bytes(buf.bytes, n);
    std::unique_ptr<Heap> h;
    if (heap_attach(buf.bytes, n, &h) == Status::ok) {
      fuzz::Reader none(nullptr, 0);
      exercise(*h, n, none, {});
      fuzz::Reader some(data, size);
      exercise(*h, n, some, {});
    }
    return 0;
  }
  Algorithm a = static_cast<Algorithm>(mode % 4);
  const Template& t = template_for(a);
  fuzz::AlignedBuffer buf(kTemplateSize);
  std::memcpy(buf.bytes, t.image.data(), kTemplateSize);
  fuzz::apply_patches(in, buf.bytes, kTemplateSize, 24);
  std::unique_ptr<Heap> h;
  Status s = heap_attach(buf.bytes, kTemplateSize, &h);
  if (s == Status::ok) exercise(*h, kTemplateSize, in, t.offsets);
  return 0;
}
