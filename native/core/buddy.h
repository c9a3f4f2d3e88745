// Binary buddy heap ("the seeds' arena of fragments") over a region, with offsets instead of pointers.
//
// Power-of-two blocks between options.min_block and options.max_block; a request takes the smallest
// order that fits (size and alignment rounded up to a power of two, at least min_block), splitting a
// larger free block down; on free a block coalesces with its buddy (offset XOR block size, relative to
// the 4096-aligned start of the managed area) while the buddy is free and of the same order.
//
// Region layout (every field an offset from base; see buddy.cc for the exact structs):
//
//   [0, 160)                BuddyHeader: RegionHeader (magic, algorithm = buddy, version, size,
//                           header_size, counters) then the geometry (min/max block, orders, offsets)
//   [160, 168)              guard word (low key)
//   [168, 696)              state: free bytes, non-empty-order mask, 64 free-list heads
//   [696, 696 + units)      side table: one byte per min_block unit of the managed area
//                           (bit 7 = a block starts here, bit 6 = it is allocated, bits 0-5 = its order)
//   [area_offset - 8, area_offset)  guard word (high key), just before the managed area
//   [area_offset, area_offset + area_size)  managed area, area_offset a multiple of 4096
//
// Free blocks hold {next, prev} region offsets (0 = none) in their first 16 bytes; live blocks have no
// header: the whole block is usable.
#pragma once
#include "heap.h"

namespace mempool {

// options.min_block: a power of two >= 16 (default 16); options.max_block: a power of two >= min_block,
// or 0 for the largest power of two that fits the managed area. Both at most kMaxRequest.
// invalid_argument for bad options or base; out_of_memory when the region cannot hold the metadata
// and one min_block.
Status buddy_format(uint8_t* base, uint64_t size, const HeapOptions& options, std::unique_ptr<Heap>* out);

// Validates every header field against the layout recomputed from size and the recorded block sizes,
// and the guard words: incompatible (not a buddy heap of this version and size) or corrupted.
Status buddy_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out);

// Smallest region buddy_format accepts for these options (0 when the options are invalid).
uint64_t buddy_min_region_size(const HeapOptions& options);

}  // namespace mempool
