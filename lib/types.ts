// Option and result shapes shared by Pool and SharedPool.

export type Algorithm = 'tlsf' | 'buddy' | 'bitmap';
export const ALGORITHMS: readonly Algorithm[] = ['tlsf', 'buddy', 'bitmap'];

export interface HeapOptions {
  /** bitmap: bytes per block, a power of two >= 16 (default 16). */
  blockSize?: number;
  /** buddy: smallest block, a power of two >= 16 (default 16). */
  minBlock?: number;
  /** buddy: largest block, a power of two (default: the largest that fits). */
  maxBlock?: number;
}

export interface AllocOptions {
  /** A power of two up to 4096 (default 16; smaller values give 16). */
  align?: number;
  /** Where the block should go (the seeds' prefix_address): placed at or after it when a free block there fits. */
  near?: Uint8Array | number;
  /** Fill the block with zeros (pool memory is otherwise not cleared). */
  zero?: boolean;
}

export interface PoolStats {
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
  liveAllocations: number;
  allocations: number;
  frees: number;
  /** Requests the pool's heaps could not serve (including those then served by the fallback). */
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

export interface StatsOptions {
  /** Add counts and bytes of live allocations per size class (walks the heap). */
  histogram?: boolean;
}

export interface SizeClassCount {
  /** Allocations of at most this many usable bytes (and more than half of it). */
  maxSize: number;
  count: number;
  bytes: number;
}

/** A run of neighbouring used or free blocks (pool.map()). */
export interface HeapRun {
  offset: number;
  length: number;
  used: boolean;
  blocks: number;
}

/** Live allocations made at one place (pool.leaks(), debug mode). */
export interface LeakSite {
  /** The JavaScript frames that called alloc, or "(process PID)" for another process's allocations. */
  site: string;
  count: number;
  bytes: number;
  /** Offsets of up to 16 of them. */
  offsets: number[];
}

export interface BlockInfo {
  offset: number;
  size: number;
  used: boolean;
}
