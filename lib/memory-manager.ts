// MemoryManager: the seeds' singleton interface (init_normal, allocate(size, prefix_address),
// init_shared, allocate_shared, deallocate, memory_type, ...) as a thin facade over Pool and SharedPool.
import { checkBoolean, checkBuffer, checkObject, checkSize } from './args';
import { invalidArgType, PoolError } from './errors';
import { memoryType, MemoryType } from './memory-type';
import { Pool } from './pool';
import { SharedPool } from './shared-pool';
import { SystemBlocks } from './system-blocks';
import type { Algorithm, HeapOptions } from './types';

export interface InitNormalOptions extends HeapOptions {
  memorySizeBytes: number;
  algorithm?: Algorithm;
  grow?: boolean | { chunkSize?: number; maxSize?: number };
}

export interface InitSharedOptions {
  name: string;
  memorySizeBytes: number;
  algorithm?: Algorithm;
  /** Create the segment when it does not exist (default true); false only attaches. */
  create?: boolean;
}

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

  static getInstance(): MemoryManager {
    MemoryManager.instance ??= new MemoryManager();
    return MemoryManager.instance;
  }

  /** Creates the normal pool. Throws ERR_MM_ALREADY_INITIALIZED when one exists (close() first). */
  initNormal(options: InitNormalOptions): void {
    const o = checkObject<InitNormalOptions>(options, 'options');
    if (this.normal) throw new PoolError('ERR_MM_ALREADY_INITIALIZED', 'Normal memory is already initialized');
    const { memorySizeBytes, ...rest } = o;
    this.normal = new Pool({ ...rest, size: checkSize(memorySizeBytes, 'options.memorySizeBytes'), fallback: true });
  }

  /** `size` bytes of normal memory; `prefix` (a Buffer or offset of the normal pool) hints where. */
  allocate(size: number, prefix?: Uint8Array | number): Buffer {
    checkSize(size, 'size');
    if (!this.normal) return this.system.alloc(size, false);
    return this.normal.alloc(size, this.hint(this.normal, prefix));
  }

  /**
   * Creates (or, with create: false, attaches to) the named shared pool. True when it is ready; false
   * only when create is false and no segment of that name exists yet.
   */
  initShared(options: InitSharedOptions): boolean {
    const o = checkObject<InitSharedOptions>(options, 'options');
    if (this.shared) throw new PoolError('ERR_MM_ALREADY_INITIALIZED', 'Shared memory is already initialized');
    if (typeof o.name !== 'string') throw invalidArgType('options.name', 'a string', o.name);
    const create = o.create === undefined ? true : checkBoolean(o.create, 'options.create');
    const size = checkSize(o.memorySizeBytes, 'options.memorySizeBytes');
    if (create) {
      this.shared = SharedPool.create(o.name, { size, algorithm: o.algorithm, exclusive: false });
      return true;
    }
    try {
      this.shared = SharedPool.open(o.name);
    } catch (e) {
      if ((e as PoolError).code === 'ERR_SHM_NOT_FOUND') return false;
      throw e;
    }
    return true;
  }

  allocateShared(size: number, prefix?: Uint8Array | number): Buffer {
    checkSize(size, 'size');
    const shared = this.sharedPool();
    return shared.alloc(size, this.hint(shared, prefix));
  }

  /** The shared segment's size in bytes. */
  getMemorySizeBytes(): number {
    return this.sharedPool().size;
  }

  /** Where this process mapped the shared segment (different in every process). */
  getSharedMemoryStartAddress(): bigint {
    return this.sharedPool().startAddress;
  }

  getSharedMemoryName(): string {
    return this.sharedPool().name;
  }

  /** Frees memory from any of the three sources; `size`, when given, must be the buffer's length. */
  deallocate(buffer: Uint8Array, size?: number): void {
    checkBuffer(buffer);
    if (this.normal?.owns(buffer) || this.normal?.ownsFallback(buffer)) return this.normal.free(buffer, size);
    if (this.shared?.owns(buffer)) return this.shared.free(buffer, size);
    if (size !== undefined && checkSize(size, 'size') !== buffer.length) {
      throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} is not the buffer's length ${buffer.length}`);
    }
    this.system.free(buffer);
  }

  memoryType(buffer: Uint8Array): MemoryType {
    return memoryType(buffer);
  }

  /** Closes both pools and frees system memory handed out before initNormal; the manager can be initialized again. */
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
