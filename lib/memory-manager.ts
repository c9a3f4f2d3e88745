// MemoryManager: the seeds' singleton interface (init_normal, allocate(size, prefix_address),
// init_shared, allocate_shared, deallocate, memory_type, ...) as a thin facade over Pool and SharedPool.
import { checkBoolean, checkBuffer, checkKnownOptions, checkObject, checkSize, HEAP_OPTION_NAMES } from './args';
import { invalidArgType, PoolError } from './errors';
import { memoryType, MemoryType } from './memory-type';
import { Pool } from './pool';
import { SharedPool } from './shared-pool';
import { SystemBlocks } from './system-blocks';
import type { Algorithm, HeapOptions } from './types';

/** Options of MemoryManager.initNormal(): those of a Pool, which always has `fallback: true`. */
export interface InitNormalOptions extends HeapOptions {
  /** Bytes of the pool's region, taken with one malloc. */
  memorySizeBytes: number;
  /** The heap: 'tlsf' (default), 'buddy' or 'bitmap'. */
  algorithm?: Algorithm;
  /** When full, take more regions before falling back to malloc (default false); as Pool's `grow`. */
  grow?: boolean | {
    /** Bytes of each extra region (default: memorySizeBytes); more when one request needs more. */
    chunkSize?: number;
    /** Most bytes all regions together may hold (default: no limit; at least memorySizeBytes). */
    maxSize?: number;
  };
}

/** Options of MemoryManager.initShared(). */
export interface InitSharedOptions extends HeapOptions {
  /** The segment's name (/dev/shm/<name>): 1 to 250 bytes, no '/' or NUL. */
  name: string;
  /**
   * Bytes of the whole segment when it is created. Needed only to create; a segment that exists must
   * have this size (ERR_SHM_MISMATCH otherwise, unless acceptExisting: true).
   */
  memorySizeBytes?: number;
  /**
   * The heap when the segment is created: 'tlsf' (default), 'buddy' or 'bitmap'; when given, a segment
   * that exists must have it (as every setting given: see SharedPool.create's exclusive: false).
   */
  algorithm?: Algorithm;
  /**
   * When creating finds the segment already there: take it as it is, whatever its size and other
   * settings (default false: a setting given that it lacks throws ERR_SHM_MISMATCH). As SharedPool's.
   */
  acceptExisting?: boolean;
  /** Create the segment when it does not exist (default true); false only attaches. */
  create?: boolean;
  /** Longest wait for the segment's lock, in ms (default 5000). */
  lockTimeoutMs?: number;
  /** When creating: capacity of the directory of named allocations (default: one key per 8 KiB, at least 256). */
  maxKeys?: number;
  /** When creating: debug mode for the segment (guards, poison, owners; see SharedPool). */
  debug?: boolean;
  /** When creating: permission bits of /dev/shm/<name> (default 0o600). */
  mode?: number;
  /** When creating: record block owners, so a dead process's unnamed blocks are freed (see SharedPool). */
  trackOwners?: boolean;
}

/** Every option of initNormal() / initShared(): any other name is refused (ERR_INVALID_ARG_VALUE). */
const INIT_NORMAL_OPTION_NAMES: readonly (keyof InitNormalOptions)[] = ['memorySizeBytes', 'algorithm', 'grow', ...HEAP_OPTION_NAMES];
const INIT_SHARED_OPTION_NAMES: readonly (keyof InitSharedOptions)[] = [
  'name', 'memorySizeBytes', 'algorithm', 'acceptExisting', 'create', 'lockTimeoutMs', 'maxKeys', 'debug', 'mode', 'trackOwners', ...HEAP_OPTION_NAMES,
];

function notInitialized(what: string): PoolError {
  return new PoolError('ERR_MM_NOT_INITIALIZED', `${what} is not initialized: call ${what === 'Shared memory' ? 'initShared' : 'initNormal'} first`);
}

/**
 * One instance per thread (each worker thread has its own). Normal memory comes from a Pool with the
 * system allocator as fallback; before initNormal, allocate() returns system memory (memoryType 'other'),
 * as the seeds say. Shared memory comes from a SharedPool found by name.
 */
export class MemoryManager {
  private static instance: MemoryManager | undefined;
  private normal: Pool | undefined;
  private shared: SharedPool | undefined;
  private readonly system = new SystemBlocks();

  private constructor() {}

  /** The manager of this thread, made on first use. */
  static getInstance(): MemoryManager {
    MemoryManager.instance ??= new MemoryManager();
    return MemoryManager.instance;
  }

  /**
   * Creates the normal pool (a Pool with `fallback: true`). Throws ERR_MM_ALREADY_INITIALIZED when one
   * exists (close() first), ERR_INVALID_ARG_VALUE for an option name it does not know, and the errors
   * of `new Pool()`.
   */
  initNormal(options: InitNormalOptions): void {
    const o = checkObject<InitNormalOptions>(options, 'options');
    checkKnownOptions(o, INIT_NORMAL_OPTION_NAMES, 'MemoryManager.initNormal()');
    if (this.normal) throw new PoolError('ERR_MM_ALREADY_INITIALIZED', 'Normal memory is already initialized');
    const { memorySizeBytes, ...rest } = o;
    this.normal = new Pool({ ...rest, size: checkSize(memorySizeBytes, 'options.memorySizeBytes'), fallback: true });
  }

  /**
   * `size` bytes of normal memory: from the pool after initNormal (from malloc when the pool is full,
   * memoryType 'other'), from malloc before it. `prefix` (a Buffer or offset of the normal pool) hints
   * where: at or after it when a free block there fits; a Buffer of other memory is ignored.
   *
   * **Warning:** as with Pool.alloc(), a Buffer from the pool stays usable after deallocate() and then
   * shows memory that may belong to someone else (a malloc'd one becomes length 0).
   *
   * @throws ERR_POOL_OUT_OF_MEMORY when neither the pool nor the system has the memory; ERR_OUT_OF_RANGE
   *   for a bad size or prefix offset.
   */
  allocate(size: number, prefix?: Uint8Array | number): Buffer {
    checkSize(size, 'size');
    if (!this.normal) return this.system.alloc(size, false);
    return this.normal.alloc(size, this.hint(this.normal, prefix));
  }

  /**
   * Creates the named shared pool, or attaches to it when it exists (mode 0o600, not exclusive) and has
   * the settings given (or whatever it has, with acceptExisting: true); with create: false only attaches. True when it is ready; false only when create is false and no segment
   * of that name exists yet. The segment stays after close(): unlink it with SharedPool.unlink(name).
   *
   * @throws ERR_MM_ALREADY_INITIALIZED when a shared pool is already set up (close() first);
   *   ERR_SHM_MISMATCH when the existing segment lacks a setting given; ERR_INVALID_ARG_VALUE for an option name it does not know; the errors of SharedPool.create() / open().
   */
  initShared(options: InitSharedOptions): boolean {
    const o = checkObject<InitSharedOptions>(options, 'options');
    checkKnownOptions(o, INIT_SHARED_OPTION_NAMES, 'MemoryManager.initShared()');
    if (this.shared) throw new PoolError('ERR_MM_ALREADY_INITIALIZED', 'Shared memory is already initialized');
    if (typeof o.name !== 'string') throw invalidArgType('options.name', 'a string', o.name);
    const create = o.create === undefined ? true : checkBoolean(o.create, 'options.create');
    if (create) {
      const { name, memorySizeBytes, create: _create, ...rest } = o;
      void _create;
      const size = checkSize(memorySizeBytes, 'options.memorySizeBytes');
      // `rest` carries the segment settings and acceptExisting: an existing segment is checked against them.
      this.shared = SharedPool.create(name!, { ...rest, size, exclusive: false });
      return true;
    }
    try {
      this.shared = SharedPool.open(o.name, { lockTimeoutMs: o.lockTimeoutMs });
    } catch (e) {
      if ((e as PoolError).code === 'ERR_SHM_NOT_FOUND') return false;
      throw e;
    }
    return true;
  }

  /**
   * `size` bytes of the shared pool; `prefix` (a Buffer or segment offset) hints where, as for allocate().
   *
   * **Warning:** other processes attached to the segment may write this memory at any time and may
   * free it; the Buffer stays usable after a free and then shows memory that may belong to someone else.
   *
   * @throws ERR_MM_NOT_INITIALIZED before initShared(); ERR_POOL_OUT_OF_MEMORY when no block fits (no
   *   fallback here); ERR_SHM_LOCK_TIMEOUT.
   */
  allocateShared(size: number, prefix?: Uint8Array | number): Buffer {
    checkSize(size, 'size');
    const shared = this.sharedPool();
    return shared.alloc(size, this.hint(shared, prefix));
  }

  /** The shared segment's size in bytes. Throws ERR_MM_NOT_INITIALIZED before initShared(). */
  getMemorySizeBytes(): number {
    return this.sharedPool().size;
  }

  /** Where this process mapped the shared segment (different in every process). Throws ERR_MM_NOT_INITIALIZED before initShared(). */
  getSharedMemoryStartAddress(): bigint {
    return this.sharedPool().startAddress;
  }

  /** The shared segment's name. Throws ERR_MM_NOT_INITIALIZED before initShared(). */
  getSharedMemoryName(): string {
    return this.sharedPool().name;
  }

  /**
   * Frees memory from any of the three sources (normal pool, shared pool, malloc); `size` (bytes), when
   * given, must be the buffer's length. The Buffer must not be used afterwards.
   *
   * @throws ERR_POOL_FOREIGN_BUFFER (not from this manager, or not the start of an allocation);
   *   ERR_POOL_DOUBLE_FREE; ERR_POOL_SIZE_MISMATCH; the other errors of Pool.free().
   */
  deallocate(buffer: Uint8Array, size?: number): void {
    checkBuffer(buffer);
    if (this.normal?.owns(buffer) || this.normal?.ownsFallback(buffer)) return this.normal.free(buffer, size);
    if (this.shared?.owns(buffer)) return this.shared.free(buffer, size);
    if (size !== undefined && checkSize(size, 'size') !== buffer.length) {
      throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} is not the buffer's length ${buffer.length}`);
    }
    this.system.free(buffer);
  }

  /** The same as the exported memoryType(): 'normal', 'shared' or 'other'. */
  memoryType(buffer: Uint8Array): MemoryType {
    return memoryType(buffer);
  }

  /**
   * Closes both pools and frees the malloc'd memory handed out before initNormal; every Buffer this
   * manager handed out becomes length 0. The shared segment is only unmapped, not unlinked. The manager
   * can be initialized again.
   */
  close(): void {
    this.normal?.close();
    this.shared?.close();
    this.system.releaseAll();
    this.normal = undefined;
    this.shared = undefined;
  }

  private sharedPool(): SharedPool {
    if (!this.shared) throw notInitialized('Shared memory');
    return this.shared;
  }

  private hint(pool: Pool | SharedPool, prefix: Uint8Array | number | undefined): { near?: Uint8Array | number } | undefined {
    if (prefix === undefined) return undefined;
    if (typeof prefix === 'number') return { near: prefix };
    checkBuffer(prefix, 'prefix');
    return pool.owns(prefix) ? { near: prefix } : undefined; // a hint into other memory is no hint
  }
}
