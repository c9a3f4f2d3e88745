// Two-level segregated fit (Masmano et al., ECRTS 2004) over a region, with offsets instead of pointers.
#pragma once
#include "heap.h"

namespace mempool {
Status tlsf_format(uint8_t* base, uint64_t size, const HeapOptions& options, std::unique_ptr<Heap>* out);
Status tlsf_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out);
uint64_t tlsf_min_region_size(const HeapOptions& options);
}  // namespace mempool
