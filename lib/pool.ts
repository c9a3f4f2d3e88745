// Pool: memory from the system allocator, one malloc per region, managed by one of the core's heaps.
// With grow it takes more regions when full; with fallback it serves what it cannot from malloc.
import { checkAlgorithm, checkBoolean, checkHeapOptions, checkKnownOptions, checkObject, checkSize, HEAP_OPTION_NAMES } from './args';
import { invalidArgType, outOfRange } from './errors';
import { closedError } from './errors';
import { Chunk, HeapPool } from './heap-pool';
import { registerRegion } from './memory-type';
import { addon } from './native';
import { SmallCache } from './small-cache';
import type { HeapOptions } from './types';

/** How a Pool grows when full (`PoolOptions.grow`). */
export interface GrowOptions {
  /** Bytes of each extra region (default: the pool's size); more when one request needs more. */
  chunkSize?: number;
  /**
   * Most bytes all regions together may hold, the first included (default: no limit). Must be at least
   * `size` (ERR_OUT_OF_RANGE).
   */
  maxSize?: number;
}

/** Options of `new Pool(...)`; the heap options apply to every region. */
export interface PoolOptions extends HeapOptions {
  /** Bytes of the region, taken from the system with one malloc; an integer >= 1 large enough for the heap's metadata. */
  size: number;
  /** The heap: 'tlsf' (default), 'buddy' or 'bitmap'. */
  algorithm?: import('./types').Algorithm;
  /**
   * When full, take another region from the system instead of failing (default false: the pool never
   * holds more than `size` bytes). `true` is `{}`; trim() gives empty regions back.
   */
  grow?: boolean | GrowOptions;
  /**
   * When the pool cannot serve a request, alloc() and realloc() serve it from the system allocator
   * (memoryType 'other'; not counted in the pool's memory; released by close()). Default false.
   * allocOffset() never falls back.
   */
  fallback?: boolean;
  /**
   * Debug mode (default false): guard bytes, poisoned and quarantined frees, call sites, leak reports.
   * Costs about 80 bytes and a stack capture per allocation.
   */
  debug?: boolean;
  /**
   * Serve allocations of up to 1024 bytes with default options from 4096-aligned slabs managed in
   * JavaScript, with no call into C++ (default true; debug mode turns it off). Such an allocation's
   * usableSize() is its slot (a multiple of 16 bytes), and the slabs count as used in peakUsed.
   */
  cache?: boolean;
}

/** Every option of `new Pool()`: any other name is refused (ERR_INVALID_ARG_VALUE), so a typo is not ignored. */
const POOL_OPTION_NAMES: readonly (keyof PoolOptions)[] = ['size', 'algorithm', 'grow', 'fallback', 'debug', 'cache', ...HEAP_OPTION_NAMES];
const GROW_OPTION_NAMES: readonly (keyof GrowOptions)[] = ['chunkSize', 'maxSize'];

/** Regions start at multiples of this in a pool's offset space, so offset alignment is address alignment. */
const REGION_ALIGN = 4096;

/**
 * A memory pool in this process: one `malloc` per region, managed by the heap you choose.
 *
 * Allocations are `Buffer` views into the region (no copy) or plain offsets. **A view stays usable
 * after its block is freed or moved by `realloc`, and then shows memory that may belong to another
 * allocation**: do not use a Buffer after freeing it. `close()` is the one point at which every view
 * becomes empty.
 *
 * @example
 * const pool = new Pool({ size: 64 << 20 });
 * const buf = pool.alloc(100);
 * pool.free(buf);
 */
export class Pool extends HeapPool {
  private readonly heapOptions: [number, number, number];
  private readonly canGrow: boolean;
  private readonly growChunkSize: number;
  private readonly growMaxSize: number;
  private nextBase = 0;

  /**
   * Takes the first region (`options.size` bytes) from the system with one malloc.
   *
   * @throws ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE for bad options (a size too small for the heap's
   *   metadata, bad heap options, grow.maxSize below size); ERR_INVALID_ARG_VALUE for an option name
   *   Pool does not know (a typo); ERR_POOL_OUT_OF_MEMORY when the system refuses the memory.
   */
  constructor(options: PoolOptions) {
    if (typeof options !== 'object' || options === null) throw invalidArgType('options', 'an object', options);
    checkKnownOptions(options, POOL_OPTION_NAMES, 'new Pool()');
    const size = checkSize(options.size, 'options.size');
    super(checkAlgorithm(options.algorithm), size, checkBoolean(options.debug, 'options.debug'));
    this.heapOptions = checkHeapOptions(options);
    const grow = options.grow;
    if (grow !== undefined && typeof grow !== 'boolean' && (typeof grow !== 'object' || grow === null)) {
      throw invalidArgType('options.grow', 'a boolean or an object', grow);
    }
    this.canGrow = grow !== undefined && grow !== false;
    checkKnownOptions(grow, GROW_OPTION_NAMES, 'options.grow of new Pool()');
    const growOptions = checkObject<GrowOptions>(typeof grow === 'object' ? grow : undefined, 'options.grow');
    this.growChunkSize = growOptions.chunkSize === undefined ? size : checkSize(growOptions.chunkSize, 'options.grow.chunkSize');
    this.growMaxSize =
      growOptions.maxSize === undefined ? Number.MAX_SAFE_INTEGER : checkSize(growOptions.maxSize, 'options.grow.maxSize');
    if (this.growMaxSize < size) throw outOfRange('options.grow.maxSize', `at least options.size (${size})`, this.growMaxSize);
    this.fallback = checkBoolean(options.fallback, 'options.fallback');
    this.current = this.addChunk(size);
    const cache = options.cache === undefined ? true : checkBoolean(options.cache, 'options.cache');
    if (cache && !this.debug) {
      this.cache = new SmallCache({ allocSlab: (bytes) => this.allocSlab(bytes), freeSlab: (offset) => this.freeSlab(offset) }, size);
    } else {
      this.keepFreedViews();
    }
  }

  /**
   * Gives regions added by grow that hold no live allocation back to the system (the first region
   * stays); returns the bytes released. Throws ERR_POOL_CLOSED after close().
   */
  trim(): number {
    if (this.closed) throw closedError();
    this.cache?.releaseEmpty();
    let released = 0;
    this.chunks = this.chunks.filter((chunk, i) => {
      const stats = chunk.native.stats();
      if (i === 0 || typeof stats === 'number' || stats[5] !== 0) return true;
      chunk.native.close();
      released += chunk.size;
      return false;
    });
    if (!this.chunks.includes(this.current)) this.current = this.chunks[0];
    if (released > 0) this.dropKeptViews();
    return released;
  }

  protected override grow(atLeast: number): Chunk | undefined {
    if (!this.canGrow) return undefined;
    let held = 0;
    for (const chunk of this.chunks) held += chunk.size;
    // Room for the heap's own metadata and, for buddy, rounding up to a power of two.
    const wanted = Math.max(this.growChunkSize, 2 * atLeast + 65536);
    const size = Math.min(wanted, this.growMaxSize - held);
    if (size < atLeast) return undefined;
    try {
      return this.addChunk(size);
    } catch {
      return undefined; // the system or the heap refused: out of memory, reported by the caller
    }
  }

  private addChunk(size: number): Chunk {
    const native = new addon.NativePool('malloc', size, this.algorithm, ...this.heapOptions, this.debug);
    const buffer = native.buffer;
    registerRegion(buffer, 'normal');
    const chunk: Chunk = { native, buffer, base: this.nextBase, size };
    this.nextBase += Math.ceil(size / REGION_ALIGN) * REGION_ALIGN;
    this.chunks.push(chunk);
    return chunk;
  }
}
