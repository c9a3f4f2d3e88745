// Bitmap heap: the region is cut into fixed blocks of HeapOptions::block_size bytes (a power of two >= 16).
//
// Region layout (every reference is an offset from the region base, never a pointer):
//
//   [0, sizeof(BitmapHeader))          BitmapHeader (begins with RegionHeader)
//   [used_offset, +words*16)           the two bitmaps, interleaved word by word: word w of the "used"
//                                      bitmap (one bit per block, 1 = used or reserved) at used_offset + 16w,
//                                      word w of the "start" bitmap (1 = an allocation starts here) at
//                                      start_offset + 16w = used_offset + 16w + 8
//                                      (used_offset = round_up(sizeof(BitmapHeader), 64))
//   [level_offset[k], +count[k]*node)  summary tree level k+1 (k = 0 .. levels-1), see below
//   [run_offset[k], +round_up(run_count[k], 64))  run index level k (k = 0 .. run_levels-1), see below
//   ... padding up to header_size = first_block * block_size (a multiple of max(4096, block_size))
//   [header_size, total_blocks * block_size)   blocks handed out by alloc()
//
// Blocks [0, first_block) hold the metadata and are permanently marked used (never start bits), as are the
// padding bits of the last bitmap word (blocks >= total_blocks). A live allocation is a run of used blocks
// that begins with a start bit and ends before the next start bit or free block, so no per-block header
// is needed: free() and usable_size() recover the size from the two bitmaps.
//
// Primary record and crash safety. The used and start bitmaps are the heap's primary record; everything else
// (summary tree, run index, free_blocks, counters) is derived from them, and rebuild() recomputes it after a
// writer died in the middle of an operation. Invariant kept by every store: a block's start bit is set or
// cleared only while the block is free. So alloc() stores the start bit first, then the used bits; free()
// stores the used bits first, then clears the start bit; resize_in_place() only changes used bits (a
// compiler barrier pins the order; the used-bit words of one operation may land in any order). After any
// prefix of an operation's stores:
//   - every allocation that was live before and is not the one being operated on keeps exactly its blocks
//     (no live allocation can grow, since a used block is only ever added behind the operation's own start
//     bit or its own blocks, and none can shrink, since start bits only appear on free blocks);
//   - a start bit on a free block is stray (alloc died before its used bits, or free after them);
//   - a used run whose first block has no start bit follows a free block: an orphan (free died half-way);
//   - the allocation in flight may be shorter than asked (alloc or grow died half-way): it was never handed
//     out, so it is leaked, but it is a consistent allocation.
// rebuild() clears stray start bits, frees orphan runs, re-marks metadata and padding blocks used, and then
// recomputes every derived structure. Its own stores keep the invariant, so a rebuild that dies is redone.
//
// Summary tree (requests of more than 126 blocks): level 1 has one node per 8 bitmap words (512 blocks),
// each level above one node per 8 nodes below, up to a single root. Each node holds {start, max, end}: the
// free blocks at its low end, its longest "long" free run, the free blocks at its high end (the scheme of
// Go's page allocator). A long run contains at least one wholly free bitmap word; every run of 127 blocks
// or more is long (a word's free tail and the next word's free head hold at most 63 + 63), so the tree is
// exact for the requests it serves, and a change inside fragmented words (no free word next to it, not at a
// node's edge) does not touch the tree at all. A node of a level whose span is at most 2^20 blocks is packed
// in one uint64_t (start | max << 21 | end << 42: 8 nodes per cache line); wider levels (a handful of nodes)
// use a BitmapSummary.
//
// Run index (requests of at most 126 blocks, the common case): level 0 has one byte per bitmap word w, the
// longest free run (capped at 126) that starts at a block of w (a run may reach into words w + 1 and w + 2).
// Level k + 1 has one byte per 64-byte group of level k, the group's maximum, up to a single root byte. The
// first word at or after a position that holds a run of n is found by scanning at most two 64-byte groups per
// level (16 or 8 bytes at a time); a change to word w rewrites bytes w - 2 .. w at most and goes up only
// while a group maximum changes. First fit stays exact: the search returns the lowest block where a run of n
// starts, at or after the hint.
//
// Both structures are hints: a run is verified against the bitmaps before it is handed out, and a
// disagreement returns Status::corrupted. Every value read from them is clamped or bounds-checked, and every
// loop is bounded by the geometry.
#pragma once
#include <cstddef>

#include "heap.h"

namespace mempool {

// One node of a wide summary level (span above 2^20 blocks). Values are in blocks.
struct BitmapSummary {
  uint64_t start;  // free blocks at the node's low end
  uint64_t max;    // longest free run inside the node that contains a wholly free word
  uint64_t end;    // free blocks at the node's high end
};
static_assert(sizeof(BitmapSummary) == 24, "BitmapSummary is part of the shared layout");

constexpr uint32_t kBitmapVersion = 3;  // 3: used and start bitmaps interleaved (2: one after the other)
constexpr uint32_t kBitmapMaxLevels = 20;     // 64-bit regions need at most 18 summary levels
constexpr uint32_t kBitmapMaxRunLevels = 12;  // 64-bit regions need at most 11 run index levels
constexpr uint32_t kBitmapFanoutShift = 3;    // 8 children per summary node
constexpr uint64_t kBitmapSmallRun = 126;      // requests up to this many blocks use the run index, longer ones the tree
constexpr uint32_t kBitmapRunFanoutShift = 6;  // 64 bytes per run index group
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
  uint64_t used_offset;       // offset of used bitmap word 0 (word w at used_offset + 16w)
  uint64_t start_offset;      // offset of start bitmap word 0: used_offset + 8 (interleaved, version 3)
  uint64_t free_blocks;       // free allocatable blocks (kept up to date: stats() is O(1))
  uint32_t levels;            // summary levels (>= 1; the last has a single node, the root)
  uint32_t reserved;          // 0
  uint64_t level_offset[kBitmapMaxLevels];  // offset of summary level k+1; 0 beyond `levels`
  uint64_t level_count[kBitmapMaxLevels];   // nodes in summary level k+1; 0 beyond `levels`
  uint32_t run_levels;        // run index levels (>= 1; level 0 has `words` bytes, the last a single byte)
  uint32_t run_fanout_shift;  // kBitmapRunFanoutShift
  uint64_t run_offset[kBitmapMaxRunLevels];  // offset of run index level k (64-aligned); 0 beyond run_levels
  uint64_t run_count[kBitmapMaxRunLevels];   // bytes in use in level k (stored rounded up to 64, padding 0)
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
static_assert(offsetof(BitmapHeader, run_levels) == 472, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, run_fanout_shift) == 476, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, run_offset) == 480, "BitmapHeader is part of the shared layout");
static_assert(offsetof(BitmapHeader, run_count) == 576, "BitmapHeader is part of the shared layout");
static_assert(sizeof(BitmapHeader) == 672, "BitmapHeader is part of the shared layout");

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
