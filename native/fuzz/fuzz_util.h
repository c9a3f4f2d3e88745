// Helpers shared by the libFuzzer harnesses: a reader that decodes the fuzz input as a stream of small
// integers (running out of input yields zeros, so every input decodes to something), and a failure
// macro that aborts with a message (libFuzzer records the input as a crash).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "heap.h"

namespace fuzz {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  size_t left() const { return n_; }
  uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  uint64_t u64() { return static_cast<uint64_t>(u32()) | (static_cast<uint64_t>(u32()) << 32); }
  // Takes up to n bytes as they are.
  size_t bytes(uint8_t* out, size_t n) {
    size_t k = n < n_ ? n : n_;
    if (k) std::memcpy(out, p_, k);
    p_ += k;
    n_ -= k;
    return k;
  }
  const uint8_t* rest() const { return p_; }

 private:
  const uint8_t* p_;
  size_t n_;
};

// A 4096-aligned heap buffer (ASan puts redzones around it: any access outside is reported).
struct AlignedBuffer {
  uint8_t* bytes = nullptr;
  uint64_t size = 0;
  explicit AlignedBuffer(uint64_t n) : size(n) {
    void* p = nullptr;
    if (posix_memalign(&p, mempool::kMaxAlign, n ? n : 1) != 0) std::abort();
    bytes = static_cast<uint8_t*>(p);
  }
  ~AlignedBuffer() { std::free(bytes); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// Applies up to max_patches patches decoded from the input to image[0, size): each is a 16-bit offset
// (scaled to the image), a kind byte (width 1/2/4/8 bytes; value raw, small, an offset into the image,
// or huge) and the value. Aimed at metadata: half of the offsets fall in the first 16 KiB.
inline void apply_patches(Reader& in, uint8_t* image, uint64_t size, unsigned max_patches) {
  unsigned count = in.u8() % (max_patches + 1);
  for (unsigned i = 0; i < count && !in.empty(); ++i) {
    uint64_t at = in.u16();
    uint8_t kind = in.u8();
    at = (kind & 0x80) ? at % (size < 16384 ? size : 16384) : (at * size) >> 16;
    unsigned width = 1u << (kind & 3);
    uint64_t v;
    switch ((kind >> 2) & 3) {
      case 0: v = in.u64(); break;
      case 1: v = in.u8(); break;
      case 2: v = (in.u16() * size) >> 16; break;
      default: v = ~uint64_t(0) - in.u8(); break;
    }
    if (at + width > size) continue;
    std::memcpy(image + at, &v, width);  // little-endian
  }
}

inline uint8_t pattern(uint64_t seed, uint64_t i) { return static_cast<uint8_t>((seed * 131 + i * 7 + 1) & 0xff); }

}  // namespace fuzz

#define FUZZ_FAIL(...)                                         \
  do {                                                         \
    std::fprintf(stderr, "FUZZ FAILURE %s:%d: ", __FILE__, __LINE__); \
    std::fprintf(stderr, __VA_ARGS__);                         \
    std::fprintf(stderr, "\n");                                \
    std::abort();                                              \
  } while (0)
#define FUZZ_ASSERT(cond, what)                          \
  do {                                                   \
    if (!(cond)) FUZZ_FAIL("%s (%s)", what, #cond);      \
  } while (0)
