// Bitmap heap: the region is cut into fixed blocks of HeapOptions::block_size bytes (a power of two >= 16).
//
// Region layout (every reference is an offset from the region base, never a pointer):
//
//   [0, sizeof(BitmapHeader))        BitmapHeader (begins with RegionHeader)
//   [used_offset, +words*8)          "used" bitmap, one bit per block (1 = used or reserved)
//   [start_offset, +words*8)         "start" bitmap, one bit per block (1 = an allocation starts here)
//   [level_offset[k], +count[k]*node)  summary level k+1 (k = 0 .. levels-1), see below
//   ... padding up to header_size = first_block * block_size (a multiple of max(4096, block_size))
//   [header_size, total_blocks * block_size)   blocks handed out by alloc()
//
// Blocks [0, first_block) hold the metadata and are permanently marked used (never start bits), as are the
// padding bits of the last bitmap word (blocks >= total_blocks). A live allocation is a run of used blocks
// that begins with a start bit and ends before the next start bit or free block, so no per-block header
// is needed: free() and usable_size() recover the size from the two bitmaps.
//
// Summary tree (for a first-fit search whose cost does not depend on the live set): level 1 has one node
// per 8 bitmap words (512 blocks), each level above one node per 8 nodes below, up to a single root. Each
// node holds {start, max, end}: the free blocks at its low end, its longest free run, the free blocks at
// its high end (the scheme of Go's page allocator). A search for n free blocks walks down from the root and
// only enters nodes that can hold the run, combining runs across node boundaries: its cost is
// O(levels * 8) whatever the fragmentation. A node of a level whose span is at most 2^20 blocks is packed
// in one uint64_t (start | max << 21 | end << 42: 8 nodes per cache line); wider levels (a handful of
// nodes) use a BitmapSummary. The summaries are hints: a run is verified against the bitmap before it is
// handed out, and a disagreement returns Status::corrupted.
#pragma once
#include <cstddef>

#include "heap.h"

namespace mempool {

// One node of a wide summary level (span above 2^20 blocks). Values are in blocks.
struct BitmapSummary {
  uint64_t start;  // free blocks at the node's low end
  uint64_t max;    // longest free run inside the node
  uint64_t end;    // free blocks at the node's high end
};
static_assert(sizeof(BitmapSummary) == 24, "BitmapSummary is part of the shared layout");

constexpr uint32_t kBitmapVersion = 1;
constexpr uint32_t kBitmapMaxLevels = 20;     // 64-bit regions need at most 18 summary levels
constexpr uint32_t kBitmapFanoutShift = 3;    // 8 children per summary node
constexpr uint32_t kBitmapPackedBits = 21;    // field width of a packed (one uint64_t) summary node
constexpr uint64_t kBitmapMaxBlockSize = uint64_t(1) << 30;
// log2 of the blocks a node of summary level `level` (>= 1) covers; level 0 is a bitmap word.
constexpr uint32_t bitmap_span_shift(uint32_t level) { return 6 + kBitmapFanoutShift * level; }
// Whether summary level `level` stores packed uint64_t nodes (else BitmapSummary nodes).
constexpr bool bitmap_level_packed(uint32_t level) { return bitmap_span_shift(level) <= 20; }

// The bitmap heap's header at offset 0 of its region. Everything but `region.counters` and `free_blocks`
// is fixed at format time and is recomputed from (size, block_size) and compared on attach.
struct BitmapHeader {
  RegionHeader region;        // magic, algorithm = bitmap, version = kBitmapVersion, size, header_size
  uint64_t block_size;        // bytes per block, a power of two in [16, kBitmapMaxBlockSize]
  uint32_t block_shift;       // log2(block_size)
  uint32_t fanout_shift;      // kBitmapFanoutShift
  uint64_t total_blocks;      // size / block_size (the tail beyond is unused)
  uint64_t first_block;       // first allocatable block; blocks below hold the metadata
  uint64_t words;             // 64-bit words per bitmap = ceil(total_blocks / 64)
  uint64_t used_offset;       // offset of the used bitmap
  uint64_t start_offset;      // offset of the start bitmap
  uint64_t free_blocks;       // free allocatable blocks (kept up to date: stats() is O(1))
  uint32_t levels;            // summary levels (>= 1; the last has a single node, the root)
  uint32_t reserved;          // 0
  uint64_t level_offset[kBitmapMaxLevels];  // offset of summary level k+1; 0 beyond `levels`
  uint64_t level_count[kBitmapMaxLevels];   // nodes in summary level k+1; 0 beyond `levels`
};
static_assert(offsetof(BitmapHeader, region) == 0, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, block_size) == 80, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, block_shift) == 88, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, fanout_shift) == 92, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, total_blocks) == 96, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, first_block) == 104, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, words) == 112, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, used_offset) == 120, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, start_offset) == 128, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, free_blocks) == 136, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, levels) == 144, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, reserved) == 148, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, level_offset) == 152, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, level_count) == 312, "BitmapHeader is part of the shared layout");
static_assert(sizeof(BitmapHeader) == 472, "BitmapHeader is part of the shared layout");

// Formats a bitmap heap over [base, base + size) (base aligned to kMaxAlign). invalid_argument for a bad
// block_size or base, out_of_memory when the region cannot hold the metadata and one block.
Status bitmap_format(uint8_t* base, uint64_t size, const HeapOptions& options, std::unique_ptr<Heap>* out);
// Attaches to a region formatted by bitmap_format (possibly copied or mapped elsewhere). The header is
// validated against the layout recomputed from (size, block_size): incompatible for a foreign magic,
// algorithm, version or size, corrupted for any other mismatch.
Status bitmap_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out);
// Smallest region bitmap_format accepts for these options (0 when block_size is invalid).
uint64_t bitmap_min_region_size(const HeapOptions& options);

}  // namespace mempool
