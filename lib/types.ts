// Option and result shapes shared by Pool and SharedPool.

/** The heap that manages a region: see README "Choosing an algorithm". */
export type Algorithm = 'tlsf' | 'buddy' | 'bitmap';
/** Every algorithm, for code that tries each. */
export const ALGORITHMS: readonly Algorithm[] = ['tlsf', 'buddy', 'bitmap'];

/** Options of the heaps; each applies to one algorithm and is ignored (but type-checked) by the others. */
export interface HeapOptions {
  /** bitmap: bytes per block, a power of two >= 16 (default 16). */
  blockSize?: number;
  /** buddy: smallest block, a power of two >= 16 (default 16). */
  minBlock?: number;
  /** buddy: largest block, a power of two (default: the largest that fits). */
  maxBlock?: number;
}

/** Options of alloc(), allocOffset() and (align only) realloc(). */
export interface AllocOptions {
  /** Alignment of the block's offset in bytes: a power of two up to 4096 (default 16; smaller values give 16). */
  align?: number;
  /**
   * Where the block should go (the seeds' prefix_address), a Buffer of this pool or an offset: placed at
   * or after it when a free block there fits, else anywhere. A hint, never an error for lack of room.
   */
  near?: Uint8Array | number;
  /** Fill the block with zeros (pool memory is otherwise not cleared). */
  zero?: boolean;
}

/** pool.stats(): sizes in bytes, counts in allocations, over every region of the pool. */
export interface PoolStats {
  /** The pool's heap. */
  algorithm: Algorithm;
  /** Bytes of all regions (for a shared pool: the whole segment). */
  capacity: number;
  /** Usable bytes of live allocations (what the heap handed out, rounded up by the algorithm). */
  used: number;
  /** Bytes still available to allocations. */
  free: number;
  /**
   * Highest `used` the heap has seen (with several regions: the sum of each region's peak). The
   * small-object cache's slabs count whole here: it is the most the heap ever handed out.
   */
  peakUsed: number;
  /** Allocations live now. */
  liveAllocations: number;
  /** Successful allocations ever made (for a shared pool: by every process since the segment was created). */
  allocations: number;
  /** Successful frees ever made (for a shared pool: by every process). */
  frees: number;
  /**
   * Requests the pool's heaps could not serve (including those then served by the fallback); for a
   * shared pool, by every process.
   */
  failedAllocations: number;
  /** The largest request that would succeed now with default alignment. */
  largestFreeBlock: number;
  /** 1 - largestFreeBlock / free: 0 when the free memory is one block. */
  fragmentation: number;
  /** Bookkeeping bytes: capacity - used - free. */
  overhead: number;
  /** Regions the pool holds (1 unless it grew). */
  chunks: number;
  /** Live allocations served by the system allocator (fallback). */
  fallbackAllocations: number;
  /** With stats({ histogram: true }): live allocations by size class. */
  histogram?: SizeClassCount[];
}

/** Options of pool.stats(). */
export interface StatsOptions {
  /** Add counts and bytes of live allocations per size class (walks the heap). */
  histogram?: boolean;
}

/** Live allocations of one size class (PoolStats.histogram): classes are powers of two from 16 bytes. */
export interface SizeClassCount {
  /** Allocations of at most this many usable bytes (and more than half of it; the first class: 1 to 16). */
  maxSize: number;
  /** Live allocations in the class. */
  count: number;
  /** Their usable bytes. */
  bytes: number;
}

/** A run of neighbouring used or free blocks (pool.map()). */
export interface HeapRun {
  /** Pool offset of the run's first block. */
  offset: number;
  /** Bytes from the first block's start to the last block's end (headers between them included). */
  length: number;
  /** Whether the run is of live allocations (true) or free memory (false). */
  used: boolean;
  /** Blocks in the run. */
  blocks: number;
}

/** Live allocations made at one place (pool.leaks(), debug mode). */
export interface LeakSite {
  /** The JavaScript frames that called alloc, or "(process PID)" for another process's allocations. */
  site: string;
  /** Live allocations made there. */
  count: number;
  /** Their bytes. */
  bytes: number;
  /** Offsets of up to 16 of them. */
  offsets: number[];
}

/** One block of the heap (pool.blocks()). */
export interface BlockInfo {
  /** Pool offset: for a used block, what alloc returned (the Buffer's start); for a free run, where it starts. */
  offset: number;
  /** Usable bytes. */
  size: number;
  /** Whether it is a live allocation. */
  used: boolean;
}
