// SharedMemory: a raw named POSIX shared-memory segment (/dev/shm/<name>): plain bytes with no header and
// no heap, which other processes and other languages (Python's multiprocessing.shared_memory) open by name
// and see byte for byte. native/core/raw_segment.h states its invariants and crash rules.
import { checkBoolean, checkKnownOptions, checkMode, checkObject, checkSize } from './args';
import { invalidArgType, outOfRange, PoolError } from './errors';
import { registerRegion } from './memory-type';
import { addon, NativeSegment } from './native';
import { checkName } from './shared-pool';
import type { WaitResult } from './sync';
import { checkWords, notifyOn, waitOn, waitOnAsync } from './words';

/** The largest segment one ArrayBuffer can view (Node 20's buffer.constants.MAX_LENGTH). */
const MAX_SIZE = 2 ** 32;

/** Options of `SharedMemory.create(name, options)`. */
export interface SharedMemoryCreateOptions {
  /** Bytes of the segment, 1 to 2^32. */
  size: number;
  /** Permission bits of /dev/shm/<name>, 0 to 0o777 (default 0o600: the owner only). */
  mode?: number;
  /**
   * Fail with ERR_SHM_EXISTS when the name exists (default true). false opens the existing segment
   * instead, which must then be `size` bytes (ERR_SHM_MISMATCH otherwise); its bytes are left as they are.
   */
  exclusive?: boolean;
}

/** Options of `SharedMemory.open(name, options)`. */
export interface SharedMemoryOpenOptions {
  /**
   * Map the segment read-only (PROT_READ; default false). JavaScript has no read-only Buffer: **a write
   * through `buffer` (or a store through atomics()) then kills the process with SIGSEGV**. Reads, Atomics
   * loads, wait() and notify() work.
   */
  readOnly?: boolean;
}

/**
 * A raw named shared-memory segment: `size` plain bytes under /dev/shm/<name>, no header, no heap, the
 * same bytes at the same offsets in every process that maps it, in any language. Use it to share a
 * fixed layout (an array of numbers, a frame buffer) with a program that knows nothing of mempool;
 * use SharedPool to allocate blocks and name them.
 *
 * @example
 * const shm = SharedMemory.create('frames', { size: 4096 });
 * shm.buffer.write('hello');
 * // Python: SharedMemory(name='frames').buf[:5] == b'hello'
 */
export class SharedMemory {
  /** The segment's name (without the leading '/': Python's SharedMemory(name=...) takes the same). */
  readonly name: string;
  /** Bytes of the segment (its size when opened: fixed for the life of this object). */
  readonly size: number;
  /** Mapped read-only (open() with readOnly: true): see SharedMemoryOpenOptions.readOnly. */
  readonly readOnly: boolean;
  private readonly native: NativeSegment;
  private readonly view: Buffer;
  private closed = false;

  private constructor(native: NativeSegment, name: string) {
    this.native = native;
    this.name = name;
    this.readOnly = native.readOnly;
    this.size = native.buffer.byteLength;
    this.view = Buffer.from(native.buffer);
    registerRegion(native.buffer, 'shared');
  }

  /**
   * Creates /dev/shm/<name> of `options.size` zero bytes and maps it read-write (or, with `exclusive:
   * false`, opens it when it exists). The segment outlives every process until unlinked.
   *
   * @throws ERR_SHM_EXISTS when the name exists (unless exclusive: false); ERR_SHM_MISMATCH when
   *   exclusive: false finds it at another size; ERR_SHM_EMPTY when it finds it empty (0 bytes);
   *   ERR_SHM_INVALID_NAME for a name that is not plain (1 to 250 bytes, no '/' or NUL, not '.' or '..');
   *   ERR_SHM_PERMISSION; ERR_POOL_OUT_OF_MEMORY when /dev/shm has no room; ERR_SHM_SYSTEM;
   *   ERR_OUT_OF_RANGE / ERR_INVALID_ARG_TYPE for bad options.
   */
  static create(name: string, options: SharedMemoryCreateOptions): SharedMemory {
    checkKnownOptions(options, ['size', 'mode', 'exclusive'], 'SharedMemory.create()');
    checkName(name);
    if (typeof options !== 'object' || options === null) throw invalidArgType('options', 'an object', options);
    const size = checkSize(options.size, 'options.size');
    if (size > MAX_SIZE) throw outOfRange('options.size', `an integer from 1 to ${MAX_SIZE} (the largest ArrayBuffer)`, size);
    const mode = checkMode(options.mode);
    const exclusive = options.exclusive === undefined ? true : checkBoolean(options.exclusive, 'options.exclusive');
    return new SharedMemory(new addon.NativeSegment('create', name, size, mode, exclusive), name);
  }

  /**
   * Maps an existing segment at its current size, read-write or (readOnly) read-only. Any shared-memory
   * object will do: one made by SharedMemory.create, by Python, or a SharedPool's (then you see its header).
   *
   * @throws ERR_SHM_NOT_FOUND; ERR_SHM_EMPTY for a 0-byte object (a creator that died before sizing it:
   *   unlink it and create it again); ERR_SHM_INVALID_NAME; ERR_SHM_PERMISSION; ERR_SHM_SYSTEM;
   *   ERR_OUT_OF_RANGE for an object larger than 2^32 bytes.
   */
  static open(name: string, options?: SharedMemoryOpenOptions): SharedMemory {
    checkKnownOptions(options, ['readOnly'], 'SharedMemory.open()');
    checkName(name);
    const o = checkObject<SharedMemoryOpenOptions>(options, 'options');
    const readOnly = checkBoolean(o.readOnly, 'options.readOnly');
    return new SharedMemory(new addon.NativeSegment('open', name, readOnly), name);
  }

  /**
   * Removes the name; processes that mapped it keep their mapping until they close, and no one can open
   * it any more. True when removed, false when there was no such name. Throws ERR_SHM_INVALID_NAME,
   * ERR_SHM_PERMISSION or ERR_SHM_SYSTEM.
   */
  static unlink(name: string): boolean {
    return addon.shmUnlink(checkName(name));
  }

  /**
   * The whole segment as a Buffer (no copy): its bytes are the segment's, in every process at once. It
   * keeps the mapping alive while you hold it, until close(), which empties it (length 0).
   */
  get buffer(): Buffer {
    return this.view;
  }

  /**
   * Unmaps the segment (the name stays: see unlink). Every view of it (buffer, atomics(), subarrays)
   * becomes empty, and a pending waitAsync settles with ERR_POOL_CLOSED. Idempotent.
   */
  close(): void {
    this.closed = true;
    this.native.close();
  }

  /** The same as close(), for `using shm = ...`: unmapped at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * An Int32Array over `count` 32-bit words at `offset` (4-aligned). Atomics.load/store/add/compareExchange
   * on it are atomic across processes; Atomics.wait/notify are not (V8 keeps waiters per process): use
   * wait()/notify() on the same offset. The view goes empty at close().
   */
  atomics(offset: number, count: number): Int32Array {
    return new Int32Array(this.wordView(offset, count, 4), offset, count);
  }

  /** As atomics(), 64-bit words (8-aligned) as a BigInt64Array. */
  atomics64(offset: number, count: number): BigInt64Array {
    return new BigInt64Array(this.wordView(offset, count, 8), offset, count);
  }

  private wordView(offset: number, count: number, width: number): ArrayBuffer {
    if (this.closed) throw this.closedError();
    checkWords(offset, count, width, this.size);
    return this.native.buffer;
  }

  /**
   * Blocks this thread while the 32-bit word at `offset` holds `expected` (compared as Int32), until
   * notify() on that offset from any process or thread, or timeoutMs (default: no limit): 'ok' (woken;
   * rarely spuriously: re-check the word), 'not-equal' or 'timed-out'. As SharedPool's wait().
   */
  wait(offset: number, expected: number, timeoutMs?: number): WaitResult {
    if (this.closed) throw this.closedError();
    return waitOn(this.native, this.closedError, offset, expected, timeoutMs);
  }

  /** As wait(), without blocking the event loop (a waiter thread waits; nothing polls). */
  async waitAsync(offset: number, expected: number, timeoutMs?: number): Promise<WaitResult> {
    if (this.closed) throw this.closedError();
    return waitOnAsync(this.native, this.closedError, offset, expected, timeoutMs);
  }

  /** Wakes up to `count` (default: all) waiters on the word at `offset`, in any process; returns how many woke. */
  notify(offset: number, count?: number): number {
    if (this.closed) throw this.closedError();
    return notifyOn(this.native, this.closedError, offset, count);
  }

  private readonly closedError = (): PoolError =>
    new PoolError('ERR_POOL_CLOSED', `Shared memory '${this.name}' is closed in this process: open it again (SharedMemory.open('${this.name}'))`);
}
