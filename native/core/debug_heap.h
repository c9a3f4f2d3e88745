// Debug mode: a heap decorator that catches misuse of allocations. It wraps any heap (tlsf, buddy,
// bitmap) formatted in the same region and adds, per allocation:
//   - a header (owner pid, requested size, call site id) at the start of the inner block;
//   - guard bytes before and after the user's bytes, checked on free and by check(): an overrun or
//     underrun is reported as corrupted, naming the allocation and the side that was hit;
//   - on free, the bytes are filled with a poison pattern and the block waits in a quarantine (a FIFO
//     in the region) before the inner heap may reuse it; the poison is checked when the block leaves
//     the quarantine and by check(): a write after free is reported.
//
// Region layout: [DebugHeader][quarantine ring][pad to 4096][inner heap's region].
// Allocation layout inside an inner block at I (all offsets from the debug region's base):
//   I + 0   DebugBlock header (32 bytes)
//   I + 32  guard bytes up to user - 24
//   user-24 u64 back pointer: I
//   user-16 16 guard bytes
//   user    the user's `size` bytes          (user = round_up(I + 64, align))
//   ...     guard bytes up to the end of the inner block (at least 16)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "heap.h"

namespace mempool {

constexpr uint32_t kDebugRegionAlgorithm = 4;  // RegionHeader.algorithm of a debug region
constexpr uint8_t kGuardByte = 0xFB;
constexpr uint8_t kPoisonByte = 0xDD;

Status debug_format(Algorithm inner, uint8_t* base, uint64_t size, const HeapOptions& options,
                    std::unique_ptr<Heap>* out);
Status debug_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out);
uint64_t debug_min_region_size(Algorithm inner, const HeapOptions& options);

// What debug mode knows about one live allocation.
struct DebugAllocation {
  uint64_t offset;  // the user's offset
  uint64_t size;    // requested bytes
  uint32_t owner_pid;
  uint32_t site;
};

// The extra calls of a debug heap (Heap::debug() returns this, or null for a plain heap).
class DebugHeapApi {
 public:
  virtual ~DebugHeapApi() = default;
  // The call site id recorded with the next allocations (0 = unknown).
  virtual void set_site(uint32_t site) = 0;
  // The description of the last misuse detected (guard damage, write after free).
  virtual std::string last_violation() const = 0;
  // Visits every live allocation.
  virtual Status live_allocations(const std::function<void(const DebugAllocation&)>& visit) const = 0;
  // Frees every live allocation owned by `pid`; counts them and tells `freed` (if given) each offset.
  virtual Status reclaim(uint32_t pid, uint64_t* count, uint64_t* bytes,
                         const std::function<void(uint64_t offset)>& freed = nullptr) = 0;
};

}  // namespace mempool
