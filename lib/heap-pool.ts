// What every pool offers, over one or more regions, each managed by one of the core's heaps and seen
// from JavaScript as one ArrayBuffer: allocations are Buffer views into it, or plain offsets.
// Pool (malloc'd regions, grow, fallback) and SharedPool (a named segment) build on it.
import { checkAlign, checkBoolean, checkBuffer, checkObject, checkOffset, checkSize } from './args';
import { closedError, outOfRange, PoolError, queryError, Status, statusError } from './errors';
import { allocChannel, freeChannel, outOfMemoryChannel } from './events';
import { NativePool } from './native';
import { SiteTable } from './sites';
import { SMALL_MAX, SmallCache } from './small-cache';
import { SystemBlocks } from './system-blocks';
import { ViewKeeper } from './view-keeper';
import type { Algorithm, AllocOptions, BlockInfo, HeapRun, LeakSite, PoolStats, SizeClassCount, StatsOptions } from './types';

export interface Chunk {
  native: NativePool;
  buffer: ArrayBuffer;
  /** Offset of the region's first byte in the pool's offset space. */
  base: number;
  size: number;
}


/** The generation a view that carries none presents in a shared pool (native kNoHandle). */
const NO_HANDLE = 0xfffffffe;

// The fast path across the boundary: one argument in, one result out, through the pool's mailbox.
function fastAlloc(native: NativePool, size: number): number {
  native.mailbox[0] = size;
  native.fastAlloc();
  return native.mailbox[0];
}

function fastFree(native: NativePool, offset: number, gen: number): number {
  native.mailbox[0] = offset;
  native.mailbox[1] = gen;
  native.fastFree();
  return native.mailbox[0];
}

/** What Pool and SharedPool share: allocation, freeing, views, stats, checks and walks. */
export abstract class HeapPool {
  /** The heap that manages the memory: 'tlsf', 'buddy' or 'bitmap' (a SharedPool takes it from the segment). */
  readonly algorithm: Algorithm;
  /**
   * Bytes asked for: a Pool's first region (`options.size`; regions added by grow are not counted), a
   * SharedPool's whole segment (header and directory included).
   */
  readonly size: number;

  protected chunks: Chunk[] = [];
  /** The chunk that served the last allocation: tried first. */
  protected current!: Chunk;
  /** Serve what the heaps cannot from the system allocator (Pool's fallback option). */
  protected fallback = false;
  protected closed = false;
  /** The heap's counters describe every process using the memory (a shared segment), not this object. */
  protected segmentWide = false;
  private readonly fallbackBlocks = new SystemBlocks();
  private failed = 0;
  /**
   * Whether the pool is in debug mode: guard bytes around allocations, poisoned and quarantined frees,
   * owner pids and call sites (see leaks()).
   */
  readonly debug: boolean;
  private readonly sites: SiteTable | undefined;
  /** Pool only (not debug, not shared): small allocations served in JavaScript from slabs. */
  protected cache: SmallCache | undefined;
  /**
   * Pools without the slab cache, not debug (keepFreedViews()): the views allocSlow() makes carry their
   * offset, and freed small ones come back (view-keeper.ts). A pool with the cache has none: each of its
   * frees must ask the cache first.
   */
  private views: ViewKeeper | undefined;

  protected constructor(algorithm: Algorithm, size: number, debug: boolean) {
    this.algorithm = algorithm;
    this.size = size;
    this.debug = debug;
    this.sites = debug ? new SiteTable() : undefined;
  }

  /** For a pool without the slab cache: stamp views and keep freed ones (not in debug mode). */
  protected keepFreedViews(): void {
    // Debug pools stamp too (a shared pool's views carry generations), but keep no freed view: a late
    // free through a freed Buffer must find the block's generation moved, never a view handed out again.
    this.views = new ViewKeeper(!this.debug);
  }

  /** A view over [offset, offset + length) carrying the handle (offset, gen) a free or set presents. */
  protected handleView(offset: number, length: number, gen: number): Buffer {
    const view = this.makeView(offset, length);
    return this.views ? this.views.stamp(view, offset, gen) : view;
  }

  /**
   * The generation a view carries. A view this pool did not make (a subarray, view()) carries none: in a
   * shared pool that is NO_HANDLE, which the core refuses for a live block's start (ERR_POOL_NO_HANDLE),
   * since it cannot tell a stale view from a current one; elsewhere -1 (no generations to check).
   */
  protected genOf(view: Uint8Array): number {
    const gen = this.views ? this.views.genOf(view) : -1;
    return gen < 0 && this.segmentWide ? NO_HANDLE : gen;
  }

  /** A coded error for a status; in debug mode a damaged block is named by the heap's own report. */
  protected error(status: number, what: string): Error {
    let detail: string | undefined;
    if (status === Status.Corrupted && this.debug && !this.closed) {
      for (const chunk of this.chunks) {
        const report = chunk.native.debugReport();
        if (typeof report === 'string' && report) detail = report;
      }
    }
    return statusError(status, what, detail);
  }

  /** Another region when the existing ones are full (Pool with grow), or undefined. */
  protected grow(_atLeast: number): Chunk | undefined {
    return undefined;
  }

  /**
   * A Buffer of `size` bytes viewing the pool's memory (no copy). The bytes are not cleared unless
   * `options.zero` is true. With a Pool's `fallback`, a request the pool cannot serve comes from the
   * system allocator instead (memoryType 'other').
   *
   * **Warning:** the Buffer stays usable after `free()` or `realloc()` (here or, for a shared pool, in
   * another process) and then shows memory that may belong to another allocation; only `close()` empties it.
   *
   * @param size Bytes, an integer >= 1.
   * @throws ERR_POOL_OUT_OF_MEMORY when no free block fits (and there is no fallback or grow room);
   *   ERR_POOL_CLOSED after close(); ERR_OUT_OF_RANGE / ERR_INVALID_ARG_TYPE for bad arguments;
   *   ERR_POOL_FOREIGN_BUFFER when `options.near` is a Buffer that does not view this pool;
   *   ERR_SHM_LOCK_TIMEOUT when a shared pool's lock is not free within lockTimeoutMs.
   */
  alloc(size: number, options?: AllocOptions): Buffer {
    const cache = this.cache; // undefined once closed
    if (cache !== undefined && options === undefined && typeof size === 'number' && (size | 0) === size && size > 0 && size <= SMALL_MAX) {
      const view = cache.allocView(size) ?? this.newSlotView(cache, size);
      if (view !== undefined) {
        if (allocChannel.hasSubscribers) this.publishAlloc(cache.offsetOfView(view), size);
        return view;
      }
    }
    return this.allocSlow(size, options);
  }

  /** A new view of a new slot of the cache, or undefined when the cache has none. */
  private newSlotView(cache: SmallCache, size: number): Buffer | undefined {
    const offset = cache.alloc(size);
    return offset < 0 ? undefined : cache.stamp(this.makeView(offset, size), offset);
  }

  // Publishing is out of line: the fast paths stay small enough for V8 to inline into their callers.
  private publishAlloc(offset: number, size: number): void {
    allocChannel.publish({ pool: this, offset, size });
  }

  private publishFree(offset: number): void {
    freeChannel.publish({ pool: this, offset });
  }

  // The fast paths above are kept small so that V8 inlines them into the caller; the rest is here.
  private allocSlow(size: number, options: AllocOptions | undefined): Buffer {
    if (this.closed) throw closedError();
    checkSize(size, 'size');
    const offset = this.allocate(size, options, true);
    if (offset < 0) return this.fallbackBlocks.alloc(size, options?.zero === true);
    if (allocChannel.hasSubscribers) allocChannel.publish({ pool: this, offset, size });
    const views = this.views;
    if (views === undefined) return this.makeView(offset, size);
    const gen = this.current.native.mailbox[1]; // the block's generation (0 in a private pool)
    return views.take(size, offset, gen) ?? views.stamp(this.makeView(offset, size), offset, gen);
  }

  /** A new Buffer over [offset, offset + size) of the region that holds it. */
  private makeView(offset: number, size: number): Buffer {
    const chunk = this.chunks.length === 1 ? this.chunks[0] : this.chunkAt(offset)!;
    return Buffer.from(chunk.buffer, offset - chunk.base, size);
  }

  /**
   * The same block as alloc(), as a pool offset (use view() to reach it): no JavaScript object is made.
   * The fallback never serves it. Throws the same errors as alloc(), ERR_POOL_OUT_OF_MEMORY included.
   */
  allocOffset(size: number, options?: AllocOptions): number {
    const cache = this.cache; // undefined once closed
    if (cache !== undefined && options === undefined && typeof size === 'number' && (size | 0) === size && size > 0 && size <= SMALL_MAX) {
      const offset = cache.alloc(size);
      if (offset >= 0) {
        if (allocChannel.hasSubscribers) this.publishAlloc(offset, size);
        return offset;
      }
    }
    return this.allocOffsetSlow(size, options);
  }

  private allocOffsetSlow(size: number, options: AllocOptions | undefined): number {
    if (this.closed) throw closedError();
    checkSize(size, 'size');
    const offset = this.allocate(size, options, false);
    if (offset < 0) throw statusError(Status.OutOfMemory, `cannot allocate ${size} bytes`);
    if (allocChannel.hasSubscribers) allocChannel.publish({ pool: this, offset, size });
    return offset;
  }

  /**
   * Frees an allocation, given its Buffer (as alloc returned it) or its offset. `size` (bytes), when
   * given, is checked: for a Buffer it must equal buffer.length; for an offset it must fit the
   * allocation. In a shared pool the allocation's names (set()) are removed too.
   *
   * **Warning:** every view of the block stays usable afterwards and shows memory that may be handed
   * to another allocation at once. Do not use them.
   *
   * @throws ERR_POOL_FOREIGN_BUFFER when it is not the start of a live allocation of this pool (e.g. a
   *   sub-view); ERR_POOL_DOUBLE_FREE when already freed (nothing changes); ERR_POOL_SIZE_MISMATCH;
   *   ERR_POOL_CORRUPTED (in debug mode also an overrun, underrun or write after free, and nothing
   *   changes); ERR_POOL_CLOSED; ERR_SHM_LOCK_TIMEOUT.
   */
  free(bufferOrOffset: Uint8Array | number, size?: number): void {
    const cache = this.cache; // undefined once closed
    // The common case first: a slot of the small-object cache, as an offset or a view the cache made.
    if (cache !== undefined && size === undefined && cache.free(bufferOrOffset)) {
      if (freeChannel.hasSubscribers) this.publishFree(typeof bufferOrOffset === 'number' ? bufferOrOffset : cache.offsetOfView(bufferOrOffset));
      return;
    }
    this.freeSlow(bufferOrOffset, size);
  }

  private freeSlow(bufferOrOffset: Uint8Array | number, size: number | undefined): void {
    if (this.closed) throw closedError();
    if (typeof bufferOrOffset === 'number') {
      checkOffset(bufferOrOffset);
      if (size !== undefined) checkSize(size, 'size');
      // Without a size, free() has already asked the cache; with one, the cache checks it against the slot.
      if (this.cache !== undefined && size !== undefined && this.cache.freeSized(bufferOrOffset, size)) {
        if (freeChannel.hasSubscribers) freeChannel.publish({ pool: this, offset: bufferOrOffset });
        return;
      }
      const chunk = this.chunkAt(bufferOrOffset);
      if (chunk === undefined) throw this.error(Status.Foreign, `offset ${bufferOrOffset}`);
      if (size !== undefined) {
        const usable = chunk.native.usableSize(bufferOrOffset - chunk.base);
        if (usable < 0) throw this.error(usable, `offset ${bufferOrOffset}`);
        if (size > usable) {
          throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} does not fit the allocation at offset ${bufferOrOffset} (${usable} usable bytes)`);
        }
      }
      return this.freeBlock(chunk, bufferOrOffset, 'freeing offset', -1);
    }
    const buffer = checkBuffer(bufferOrOffset);
    if (size !== undefined && checkSize(size, 'size') !== buffer.length) {
      throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} is not the buffer's length ${buffer.length}`);
    }
    const views = this.views;
    if (views !== undefined) {
      const stamped = views.offsetOf(buffer);
      if (stamped >= 0) return this.freeStamped(views, buffer as Buffer, stamped); // only Buffers are stamped
    }
    const chunk = this.chunkOf(buffer.buffer as ArrayBuffer);
    if (chunk !== undefined) {
      const offset = chunk.base + buffer.byteOffset; // the getter once: it costs 8-12 ns
      if (this.cache !== undefined && this.cache.free(offset)) {
        if (freeChannel.hasSubscribers) freeChannel.publish({ pool: this, offset });
        return;
      }
      return this.freeBlock(chunk, offset, 'freeing the Buffer at offset', this.genOf(buffer));
    }
    this.fallbackBlocks.free(buffer);
  }

  /** Frees the heap block at pool offset `offset` of `chunk`; `what` names it in the error (built only then). */
  private freeBlock(chunk: Chunk, offset: number, what: 'freeing offset' | 'freeing the Buffer at offset', gen: number): void {
    const status = fastFree(chunk.native, offset - chunk.base, gen);
    if (status !== 0) throw this.error(status, `${what} ${offset}`);
    if (freeChannel.hasSubscribers) freeChannel.publish({ pool: this, offset });
  }

  /** Lets go of the freed views kept for reuse (regions went away: nothing may hold on to their memory). */
  protected dropKeptViews(): void {
    this.views?.clear();
  }

  /** Frees the allocation a view allocSlow() made (its offset read from the view's stamp), keeping the view. */
  private freeStamped(views: ViewKeeper, view: Buffer, offset: number): void {
    const chunk = this.chunkAt(offset);
    if (chunk === undefined) throw this.error(Status.Foreign, `freeing the Buffer at offset ${offset}`);
    this.freeBlock(chunk, offset, 'freeing the Buffer at offset', views.genOf(view));
    views.keep(view, offset);
  }

  /**
   * Resizes an allocation to `size` bytes and returns the Buffer to use from now on: in place when the
   * memory after it is free, else into a new block (another region or the fallback included) with the
   * bytes copied. `options.align` as for alloc().
   *
   * **Warning:** the old Buffer must not be used afterwards: it stays usable but may view freed memory
   * that belongs to someone else. A moved block of a shared pool loses its names.
   *
   * @throws ERR_POOL_OUT_OF_MEMORY when no block fits (the old allocation is then unchanged);
   *   ERR_POOL_FOREIGN_BUFFER, ERR_POOL_DOUBLE_FREE, ERR_POOL_CLOSED, ERR_OUT_OF_RANGE as for free/alloc.
   */
  realloc(buffer: Uint8Array, size: number, options?: { align?: number }): Buffer {
    if (this.closed) throw closedError();
    checkBuffer(buffer);
    checkSize(size, 'size');
    const align = checkAlign(checkObject<{ align: number }>(options, 'options').align);
    const chunk = this.chunkOf(buffer.buffer as ArrayBuffer);
    const slot = chunk !== undefined && this.cache !== undefined ? this.cache.usableSize(chunk.base + buffer.byteOffset) : -1;
    if (slot >= 0) {
      // A slot of the small-object cache: in place while it fits, else moved like any other block.
      const at = chunk!.base + buffer.byteOffset;
      if (size <= slot && at % align === 0) {
        if (freeChannel.hasSubscribers) freeChannel.publish({ pool: this, offset: at });
        if (allocChannel.hasSubscribers) allocChannel.publish({ pool: this, offset: at, size });
        return Buffer.from(chunk!.buffer, buffer.byteOffset, size);
      }
    } else if (chunk !== undefined) {
      const moved = chunk.native.realloc(buffer.byteOffset, size, align, this.genOf(buffer));
      if (moved >= 0) {
        // To a subscriber a realloc is the old block freed and the new one allocated (even in place).
        if (freeChannel.hasSubscribers) freeChannel.publish({ pool: this, offset: chunk.base + buffer.byteOffset });
        if (allocChannel.hasSubscribers) allocChannel.publish({ pool: this, offset: chunk.base + moved, size });
        const view = Buffer.from(chunk.buffer, moved, size);
        // The new view carries the block's (new) generation: the one to free it with.
        return this.views ? this.views.stamp(view, chunk.base + moved, chunk.native.mailbox[1]) : view;
      }
      if (moved !== Status.OutOfMemory) {
        throw this.error(moved, `reallocating ${size} bytes`);
      }
    } else if (!this.fallbackBlocks.owns(buffer)) {
      throw this.fallbackBlocks.refusal(buffer);
    }
    // Elsewhere: another region or the system allocator. The old block is freed only once the new one exists.
    const fresh = this.alloc(size, { align });
    fresh.set(buffer.subarray(0, Math.min(size, buffer.length)));
    this.free(buffer);
    return fresh;
  }

  /**
   * A Buffer over [offset, offset + length) of the pool (offset and length in bytes), whatever is
   * there: nothing checks that the range belongs to a live allocation, and writing over another
   * allocation or the heap's bookkeeping is your bug (check() finds damaged bookkeeping). The range
   * must lie inside one region (ERR_OUT_OF_RANGE otherwise); ERR_POOL_CLOSED after close().
   */
  view(offset: number, length: number): Buffer {
    if (this.closed) throw closedError();
    checkOffset(offset);
    checkSize(length, 'length', 0);
    const chunk = this.chunkAt(offset);
    if (chunk === undefined || offset - chunk.base + length > chunk.size) {
      throw outOfRange('offset and length', 'a range inside the pool', `${offset}+${length}`);
    }
    return Buffer.from(chunk.buffer, offset - chunk.base, length);
  }

  /**
   * The offset of a Buffer's first byte in this pool (for a shared pool: the segment offset, the same
   * in every process). Throws ERR_POOL_FOREIGN_BUFFER when it does not view this pool (fallback
   * allocations included), ERR_POOL_CLOSED after close().
   */
  offsetOf(buffer: Uint8Array): number {
    if (this.closed) throw closedError();
    checkBuffer(buffer);
    const chunk = this.chunkOf(buffer.buffer as ArrayBuffer);
    if (chunk === undefined) throw new PoolError('ERR_POOL_FOREIGN_BUFFER', 'The buffer is not a view of this pool');
    return chunk.base + buffer.byteOffset;
  }

  /**
   * Whether the Buffer views this pool's memory, anywhere (not only at the start of a live allocation).
   * Fallback allocations are not the pool's memory. Throws ERR_POOL_CLOSED after close().
   */
  owns(buffer: Uint8Array): boolean {
    if (this.closed) throw closedError();
    checkBuffer(buffer);
    return this.chunkOf(buffer.buffer as ArrayBuffer) !== undefined;
  }

  /** Whether the Buffer is a live fallback allocation of this pool (system memory, memoryType 'other'). */
  ownsFallback(buffer: Uint8Array): boolean {
    return this.fallbackBlocks.owns(buffer);
  }

  /**
   * Bytes the allocation may use: at least what was asked, rounded up by the algorithm (exactly what
   * was asked in debug mode). Throws ERR_POOL_BLOCK_FREED when the block was freed,
   * ERR_POOL_FOREIGN_BUFFER when it is not the start of an allocation of this pool, ERR_POOL_CLOSED
   * after close().
   */
  usableSize(bufferOrOffset: Uint8Array | number): number {
    try {
      return this.usableSizeOf(bufferOrOffset);
    } catch (e) {
      throw queryError(e as Error, `usableSize() of ${typeof bufferOrOffset === 'number' ? `offset ${bufferOrOffset}` : 'a Buffer'}`);
    }
  }

  private usableSizeOf(bufferOrOffset: Uint8Array | number): number {
    if (this.closed) throw closedError();
    let chunk: Chunk | undefined;
    let local: number;
    if (typeof bufferOrOffset === 'number') {
      checkOffset(bufferOrOffset);
      chunk = this.chunkAt(bufferOrOffset);
      local = chunk === undefined ? 0 : bufferOrOffset - chunk.base;
    } else {
      const buffer = checkBuffer(bufferOrOffset);
      chunk = this.chunkOf(buffer.buffer as ArrayBuffer);
      if (chunk === undefined) {
        if (this.fallbackBlocks.owns(buffer)) return buffer.buffer.byteLength;
        throw this.fallbackBlocks.refusal(buffer);
      }
      local = buffer.byteOffset;
    }
    if (chunk === undefined) throw this.error(Status.Foreign, `offset ${String(bufferOrOffset)}`);
    if (this.cache !== undefined) {
      const slot = this.cache.usableSize(chunk.base + local);
      if (slot >= 0) return slot;
    }
    const n = chunk.native.usableSize(local);
    if (n < 0) throw this.error(n, `offset ${chunk.base + local}`);
    return n;
  }

  /**
   * Counters in bytes and allocations, O(1). With `{ histogram: true }` also the live allocations by
   * size class (a walk of the heap: O(blocks)). A snapshot: for a shared pool other processes change
   * the numbers at any time. Throws ERR_POOL_CLOSED after close().
   */
  stats(options?: StatsOptions): PoolStats {
    if (this.closed) throw closedError();
    const histogram = checkBoolean(checkObject<StatsOptions>(options, 'options').histogram, 'options.histogram');
    const s: PoolStats = {
      algorithm: this.algorithm,
      capacity: 0,
      used: 0,
      free: 0,
      peakUsed: 0,
      liveAllocations: 0,
      allocations: 0,
      frees: 0,
      failedAllocations: this.segmentWide ? 0 : this.failed,
      largestFreeBlock: 0,
      fragmentation: 0,
      overhead: 0,
      chunks: this.chunks.length,
      fallbackAllocations: this.fallbackBlocks.count,
    };
    for (const chunk of this.chunks) {
      const raw = chunk.native.stats();
      if (typeof raw === 'number') throw this.error(raw, 'reading stats');
      const [capacity, used, free, overhead, peak, live, allocations, frees, failed, largest] = raw;
      // A segment's counters cover every process using it; this pool's own count of refusals would not.
      if (this.segmentWide) s.failedAllocations += failed;
      s.capacity += capacity;
      s.used += used;
      s.free += free;
      s.overhead += overhead;
      s.peakUsed += peak;
      s.liveAllocations += live;
      s.allocations += allocations;
      s.frees += frees;
      s.largestFreeBlock = Math.max(s.largestFreeBlock, largest);
    }
    const cache = this.cache;
    if (cache !== undefined) {
      // The heap sees each slab as one allocation; users see the slots.
      s.used += cache.liveBytes - cache.slabBytes;
      s.free += cache.slabBytes - cache.liveBytes;
      s.liveAllocations += cache.liveSlots - cache.slabs;
      s.allocations += cache.slotAllocations - cache.slabAllocations;
      s.frees += cache.slotFrees - cache.slabFrees;
    }
    s.fragmentation = s.free > 0 ? 1 - s.largestFreeBlock / s.free : 0;
    if (histogram) s.histogram = this.histogram();
    return s;
  }

  /** Live allocations by size class: powers of two from 16 bytes. */
  private histogram(): SizeClassCount[] {
    const classes: SizeClassCount[] = [];
    for (const block of this.blocks()) {
      if (!block.used) continue;
      const i = Math.max(0, Math.ceil(Math.log2(Math.max(block.size, 16))) - 4);
      while (classes.length <= i) classes.push({ maxSize: 2 ** (classes.length + 4), count: 0, bytes: 0 });
      classes[i].count++;
      classes[i].bytes += block.size;
    }
    return classes;
  }

  /**
   * The heap as runs of used and free memory in address order: a picture of fragmentation. Neighbouring
   * blocks of the same kind at most 128 bytes apart are merged into one run. O(blocks); throws
   * ERR_POOL_CLOSED after close().
   */
  map(): HeapRun[] {
    const runs: HeapRun[] = [];
    for (const b of this.blocks()) {
      const last = runs[runs.length - 1];
      if (last && last.used === b.used && last.offset + last.length <= b.offset && b.offset - (last.offset + last.length) <= 128) {
        last.length = b.offset + b.size - last.offset;
        last.blocks++;
      } else {
        runs.push({ offset: b.offset, length: b.size, used: b.used, blocks: 1 });
      }
    }
    return runs;
  }

  /**
   * Debug mode: live allocations grouped by where they were made (this process's JavaScript stack;
   * another process's allocations by its pid), most bytes first. Throws ERR_POOL_NOT_DEBUG for a pool
   * without `debug: true`, ERR_POOL_CLOSED after close().
   */
  leaks(): LeakSite[] {
    if (this.closed) throw closedError();
    if (!this.sites) throw new PoolError('ERR_POOL_NOT_DEBUG', 'leaks() needs a pool created with debug: true');
    const bySite = new Map<string, LeakSite>();
    for (const chunk of this.chunks) {
      const quads = chunk.native.liveAllocations();
      if (typeof quads === 'number') throw this.error(quads, 'listing live allocations');
      for (let i = 0; i < quads.length; i += 4) {
        const pid = quads[i + 2];
        const site = pid === process.pid ? this.sites.name(quads[i + 3]) : `(process ${pid})`;
        const entry = bySite.get(site) ?? { site, count: 0, bytes: 0, offsets: [] };
        entry.count++;
        entry.bytes += quads[i + 1];
        if (entry.offsets.length < 16) entry.offsets.push(chunk.base + quads[i]);
        bySite.set(site, entry);
      }
    }
    return [...bySite.values()].sort((a, b) => b.bytes - a.bytes || b.count - a.count);
  }

  /**
   * Verifies the heap's invariants (in debug mode also every guard and quarantined block) and returns
   * nothing when all hold; throws ERR_POOL_CORRUPTED naming the first violation, ERR_POOL_CLOSED after
   * close(). O(blocks).
   */
  check(): void {
    if (this.closed) throw closedError();
    for (const chunk of this.chunks) {
      const result = chunk.native.check();
      if (typeof result === 'number') throw this.error(result, 'checking');
      const [violations, first] = result;
      if (violations > 0) {
        throw new PoolError('ERR_POOL_CORRUPTED', `Pool check failed with ${violations} violation(s); the first: ${first}`);
      }
    }
    if (this.cache !== undefined) {
      const problem = this.cache.check((offset) => {
        const chunk = this.chunkAt(offset);
        return chunk !== undefined && chunk.native.usableSize(offset - chunk.base) >= 0;
      });
      if (problem) throw new PoolError('ERR_POOL_CORRUPTED', `Pool check failed: ${problem}`);
    }
  }

  /**
   * Every block in address order: used allocations and free runs, sizes in usable bytes. Lazy: the
   * ERR_POOL_CLOSED check happens at the first step. Changes made while iterating may not show.
   */
  *blocks(): IterableIterator<BlockInfo> {
    if (this.closed) throw closedError();
    for (const chunk of [...this.chunks]) {
      const triples = chunk.native.blocks();
      if (typeof triples === 'number') throw this.error(triples, 'walking the heap');
      for (let i = 0; i < triples.length; i += 3) {
        const offset = chunk.base + triples[i];
        if (triples[i + 2] === 1 && this.cache !== undefined && this.cache.isSlab(offset)) {
          yield* this.cache.slabBlocks(offset);
        } else {
          yield { offset, size: triples[i + 1], used: triples[i + 2] === 1 };
        }
      }
    }
  }

  /**
   * Releases all memory (fallback blocks included) and detaches the regions' ArrayBuffers: every Buffer
   * the pool handed out becomes length 0. Idempotent; any other call afterwards throws ERR_POOL_CLOSED.
   * A SharedPool is only unmapped in this process: its allocations stay for the others, and the segment
   * exists until unlinked. A debug pool warns (MEMPOOL_LEAK) about this process's live allocations.
   */
  close(): void {
    if (this.closed) return;
    if (this.sites) this.warnLeaks();
    this.closed = true;
    this.cache = undefined;
    this.views?.clear();
    this.views = undefined;
    for (const chunk of this.chunks) chunk.native.close();
    this.fallbackBlocks.releaseAll();
    this.chunks = [];
  }

  private warnLeaks(): void {
    let sites: LeakSite[];
    try {
      sites = this.leaks().filter((l) => !l.site.startsWith('(process '));
    } catch {
      return; // a damaged heap is reported by check(), not here
    }
    if (sites.length === 0) return;
    const count = sites.reduce((n, l) => n + l.count, 0);
    const bytes = sites.reduce((n, l) => n + l.bytes, 0);
    const top = sites
      .slice(0, 3)
      .map((l) => `  ${l.count} allocation(s), ${l.bytes} bytes, at\n    ${l.site.split('\n').join('\n    ')}`)
      .join('\n');
    process.emitWarning(`closing a debug pool with ${count} live allocation(s) (${bytes} bytes); top sites:\n${top}`, {
      type: 'MempoolLeakWarning',
      code: 'MEMPOOL_LEAK',
    });
  }

  /** The same as close(), for `using pool = ...`: the pool is closed at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  // Allocates from the regions (growing if allowed); returns the pool offset and leaves this.current on
  // the chunk that served, or -1 when nothing could serve and the caller may fall back.
  private allocate(size: number, options: AllocOptions | undefined, mayFallBack: boolean): number {
    let align = 16;
    let hint = -1;
    let zero = false;
    if (options !== undefined) {
      const o = checkObject<AllocOptions>(options, 'options');
      align = checkAlign(o.align);
      zero = checkBoolean(o.zero, 'options.zero');
      if (o.near !== undefined) hint = this.hintOffset(o.near);
    }
    const site = this.sites ? this.sites.capture() : 0;
    const first = hint >= 0 ? (this.chunkAt(hint) ?? this.current) : this.current;
    let r =
      options === undefined && !this.sites
        ? fastAlloc(first.native, size)
        : first.native.alloc(size, align, hint >= 0 ? hint - first.base : -1, zero, site);
    if (r >= 0) {
      this.current = first;
      return first.base + r;
    }
    if (r !== Status.OutOfMemory) throw this.error(r, `allocating ${size} bytes`);
    for (const chunk of this.chunks) {
      if (chunk === first) continue;
      r = chunk.native.alloc(size, align, -1, zero, site);
      if (r >= 0) {
        this.current = chunk;
        return chunk.base + r;
      }
      if (r !== Status.OutOfMemory) throw this.error(r, `allocating ${size} bytes`);
    }
    if (this.cache !== undefined && this.cache.releaseEmpty() > 0) {
      // Empty slabs went back to the heaps (of any region): try every region once more before growing.
      for (const chunk of this.chunks) {
        r = chunk.native.alloc(size, align, -1, zero, site);
        if (r >= 0) {
          this.current = chunk;
          return chunk.base + r;
        }
      }
    }
    {
      const chunk = this.grow(size + align);
      if (chunk !== undefined) {
        r = chunk.native.alloc(size, align, -1, zero, site);
        if (r >= 0) {
          this.current = chunk;
          return chunk.base + r;
        }
      }
    }
    this.failed++;
    if (outOfMemoryChannel.hasSubscribers) outOfMemoryChannel.publish({ pool: this, size });
    if (mayFallBack && this.fallback) return -1;
    throw statusError(Status.OutOfMemory, `cannot allocate ${size} bytes; the largest free block is ${this.stats().largestFreeBlock}`);
  }

  /** A slab for the small-object cache: any region, growing if allowed; undefined when full. */
  protected allocSlab(bytes: number): { offset: number; usable: number } | undefined {
    // After a failure, small requests go to the heap for a while instead of asking every region for a
    // slab each time; and a heap that cannot hold a slab even in a new region (a buddy heap with a
    // small maxBlock) is never grown for one again.
    if (this.slabFailures > 0) {
      this.slabFailures--;
      return undefined;
    }
    const tryChunk = (chunk: Chunk) => {
      const r = chunk.native.alloc(bytes, 4096, -1, false, 0);
      return r >= 0 ? { offset: chunk.base + r, usable: chunk.native.usableSize(r) } : undefined;
    };
    for (const chunk of [this.current, ...this.chunks]) {
      const got = tryChunk(chunk);
      if (got) return got;
    }
    const grown = this.slabsFitRegions ? this.grow(bytes + 4096) : undefined;
    const got = grown && tryChunk(grown);
    if (grown && !got) this.slabsFitRegions = false;
    if (!got) this.slabFailures = 64;
    return got;
  }

  private slabFailures = 0;
  private slabsFitRegions = true;

  protected freeSlab(offset: number): void {
    const chunk = this.chunkAt(offset)!;
    chunk.native.free(offset - chunk.base);
  }

  private hintOffset(near: unknown): number {
    if (typeof near === 'number') return checkOffset(near, 'options.near');
    const buffer = checkBuffer(near, 'options.near');
    const chunk = this.chunkOf(buffer.buffer as ArrayBuffer);
    if (chunk === undefined) throw new PoolError('ERR_POOL_FOREIGN_BUFFER', 'options.near is not a view of this pool');
    return chunk.base + buffer.byteOffset;
  }

  protected chunkOf(ab: ArrayBuffer): Chunk | undefined {
    const chunks = this.chunks;
    for (let i = 0; i < chunks.length; i++) if (chunks[i].buffer === ab) return chunks[i];
    return undefined;
  }

  protected chunkAt(offset: number): Chunk | undefined {
    const chunks = this.chunks;
    let lo = 0;
    let hi = chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = chunks[mid];
      if (offset < c.base) hi = mid - 1;
      else if (offset >= c.base + c.size) lo = mid + 1;
      else return c;
    }
    return undefined;
  }
}
