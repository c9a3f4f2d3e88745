#include "heap.h"

#include <cstring>

#include "bitmap.h"
#include "buddy.h"
#include "debug_heap.h"
#include "tlsf.h"

namespace mempool {

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::out_of_memory: return "out_of_memory";
    case Status::invalid_argument: return "invalid_argument";
    case Status::foreign: return "foreign";
    case Status::double_free: return "double_free";
    case Status::corrupted: return "corrupted";
    case Status::incompatible: return "incompatible";
    case Status::exists: return "exists";
    case Status::not_found: return "not_found";
    case Status::permission: return "permission";
    case Status::invalid_name: return "invalid_name";
    case Status::lock_timeout: return "lock_timeout";
    case Status::system_error: return "system_error";
    case Status::too_large: return "too_large";
    case Status::directory_full: return "directory_full";
    case Status::stale: return "stale";
    case Status::named: return "named";
    case Status::pins_full: return "pins_full";
    case Status::no_handle: return "no_handle";
    case Status::object_mismatch: return "object_mismatch";
    case Status::empty: return "empty";
    case Status::size_mismatch: return "size_mismatch";
  }
  return "unknown";
}

const char* algorithm_name(Algorithm a) {
  switch (a) {
    case Algorithm::tlsf: return "tlsf";
    case Algorithm::buddy: return "buddy";
    case Algorithm::bitmap: return "bitmap";
  }
  return "unknown";
}

bool algorithm_from_name(const std::string& name, Algorithm* out) {
  if (name == "tlsf") *out = Algorithm::tlsf;
  else if (name == "buddy") *out = Algorithm::buddy;
  else if (name == "bitmap") *out = Algorithm::bitmap;
  else return false;
  return true;
}

void Heap::count_failure() { region_header()->counters.failed += 1; }

void Heap::count_resize(uint64_t old_usable, uint64_t new_usable) {
  HeapCounters& c = region_header()->counters;
  c.used = c.used >= old_usable ? c.used - old_usable : 0;
  c.used += new_usable;
  if (c.used > c.peak_used) c.peak_used = c.used;
}

void Heap::fill_counter_stats(HeapStats* out) const {
  const HeapCounters& c = region_header()->counters;
  out->capacity = size_;
  out->used = c.used;
  out->peak_used = c.peak_used;
  out->live_allocations = c.live;
  out->allocations = c.allocations;
  out->frees = c.frees;
  out->failed_allocations = c.failed;
}

Status heap_format(Algorithm algorithm, uint8_t* base, uint64_t size, const HeapOptions& options,
                   std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  if (options.debug) return debug_format(algorithm, base, size, options, out);
  switch (algorithm) {
    case Algorithm::tlsf: return tlsf_format(base, size, options, out);
    case Algorithm::buddy: return buddy_format(base, size, options, out);
    case Algorithm::bitmap: return bitmap_format(base, size, options, out);
  }
  return Status::invalid_argument;
}

Status heap_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % kMaxAlign != 0) return Status::invalid_argument;
  if (size < sizeof(RegionHeader)) return Status::incompatible;
  RegionHeader header;
  std::memcpy(&header, base, sizeof header);  // one snapshot: the region may change under us
  if (header.magic != kRegionMagic) return Status::incompatible;
  if (header.size != size) return Status::incompatible;
  if (header.algorithm == kDebugRegionAlgorithm) return debug_attach(base, size, out);
  switch (static_cast<Algorithm>(header.algorithm)) {
    case Algorithm::tlsf: return tlsf_attach(base, size, out);
    case Algorithm::buddy: return buddy_attach(base, size, out);
    case Algorithm::bitmap: return bitmap_attach(base, size, out);
  }
  return Status::incompatible;
}

uint64_t heap_min_region_size(Algorithm algorithm, const HeapOptions& options) {
  if (options.debug) return debug_min_region_size(algorithm, options);
  switch (algorithm) {
    case Algorithm::tlsf: return tlsf_min_region_size(options);
    case Algorithm::buddy: return buddy_min_region_size(options);
    case Algorithm::bitmap: return bitmap_min_region_size(options);
  }
  return 0;
}

Status heap_realloc(Heap& heap, uint64_t offset, uint64_t size, uint64_t align, uint64_t* new_offset) {
  if (size == 0 || size > kMaxRequest || !valid_align(align) || align < kDefaultAlign) {
    return Status::invalid_argument;
  }
  uint64_t old_usable = 0;
  Status s = heap.usable_size(offset, &old_usable);
  if (s != Status::ok) return s;
  if (offset % align == 0) {
    s = heap.resize_in_place(offset, size);
    if (s == Status::ok) {
      *new_offset = offset;
      return Status::ok;
    }
    if (s != Status::out_of_memory) return s;
  }
  uint64_t moved = 0;
  s = heap.alloc(size, align, kNoHint, &moved);
  if (s != Status::ok) return s;
  std::memmove(heap.base() + moved, heap.base() + offset, old_usable < size ? old_usable : size);
  s = heap.free(offset);
  if (s != Status::ok) {
    // The old block could not be freed (its metadata changed under us): undo, report.
    heap.free(moved);
    return s;
  }
  *new_offset = moved;
  return Status::ok;
}

}  // namespace mempool
