// SharedPool: a heap inside a named POSIX shared-memory segment (/dev/shm/<name>) that other processes,
// worker threads and other languages open by name. Offsets are segment offsets: the same number in
// every process and in the file under /dev/shm.
import * as fs from 'node:fs';
import { checkAlgorithm, checkBoolean, checkBuffer, checkHeapOptions, checkMode, checkObject, checkOffset, checkSize } from './args';
import { closedError, invalidArgType, invalidArgValue, outOfRange, PoolError, Status, statusError } from './errors';
import { HeapPool } from './heap-pool';
import { registerRegion } from './memory-type';
import { addon, NativePool, NativeSync } from './native';
import { SharedQueue } from './shared-queue';
import { checkObjectName, SharedMutex, SharedSemaphore, type WaitResult } from './sync';
import { checkWords, notifyOn, waitOn, waitOnAsync } from './words';
import type { Algorithm, HeapOptions, PoolStats, StatsOptions } from './types';

import { checkKnownOptions } from './args';

/** Options of `SharedPool.create(name, options)`. */
export interface SharedPoolCreateOptions extends HeapOptions {
  /** Bytes of the whole segment: header, directory and heap (ERR_OUT_OF_RANGE when too small for them). */
  size: number;
  /** The heap: 'tlsf' (default), 'buddy' or 'bitmap'; stored in the segment for every process. */
  algorithm?: Algorithm;
  /** Permission bits of /dev/shm/<name>, 0 to 0o777 (default 0o600: the owner only). */
  mode?: number;
  /**
   * Fail with ERR_SHM_EXISTS when the name exists (default true). false opens the existing segment
   * instead, after checking that it has every setting given here (size, algorithm, debug, trackOwners,
   * maxKeys, blockSize, minBlock, maxBlock; those left out are not compared): a difference throws
   * ERR_SHM_MISMATCH and leaves the segment as it was.
   */
  exclusive?: boolean;
  /**
   * With `exclusive: false`: take an existing segment as it is, whatever its size and other settings
   * (its own apply, not these options). Default false. Only valid with `exclusive: false`.
   */
  acceptExisting?: boolean;
  /**
   * Capacity of the directory of named allocations, at most 2^20 (default: one key per 8 KiB of segment,
   * at least 256). A set() of a new key into a full directory fails with ERR_SHM_DIRECTORY_FULL.
   */
  maxKeys?: number;
  /**
   * Longest wait for the segment's lock, in ms (default 5000; 0: do not wait; at most 86400000), for
   * this process only. Exceeded: ERR_SHM_LOCK_TIMEOUT.
   */
  lockTimeoutMs?: number;
  /**
   * Debug mode for every process that uses the segment: guard bytes, poisoned and quarantined frees,
   * each allocation's owner pid (for reclaim) and, in the allocating process, its call site.
   */
  debug?: boolean;
  /**
   * Record in each block's generation word which attachment owns it, so that when a process dies the
   * unnamed blocks it owned are freed by the next process that notices (attach, stats(), a full heap,
   * reclaim()). Costs one store per small alloc; a process beyond the 16 attachments that have a slab
   * cache allocates blocks with no recorded owner. Default false.
   */
  trackOwners?: boolean;
}

/** Options of `SharedPool.open(name, options)`. */
export interface SharedPoolOpenOptions {
  /**
   * Longest wait for the segment's lock, in ms (default 5000; 0: do not wait; at most 86400000), for
   * this process only. Exceeded: ERR_SHM_LOCK_TIMEOUT.
   */
  lockTimeoutMs?: number;
}

/** Options of `SharedPool.unlink(name, options)`. */
export interface SharedPoolUnlinkOptions {
  /**
   * Remove the file even when it is not a mempool segment (default false: a file whose first 8 bytes
   * are not mempool's magic, such as another program's shared memory, is refused).
   */
  force?: boolean;
}

/**
 * One mempool segment under /dev/shm (SharedPool.list()). `used` and `liveAllocations` are read without
 * the segment's lock: a snapshot that may be mid-change.
 */
export interface SharedSegmentInfo {
  /** The segment's name (without the leading '/'). */
  name: string;
  /** Bytes of the whole segment. */
  size: number;
  /** The segment's heap. */
  algorithm: Algorithm;
  /** Usable bytes of live allocations (0 when the heap header could not be read). */
  used: number;
  /** Live allocations, from every process (0 when the heap header could not be read). */
  liveAllocations: number;
}

/**
 * SharedPool.stats(): Pool's stats plus what the segment's header records. The counters cover every
 * process using the segment (except failedAllocations, counted by this process only).
 */
export interface SharedPoolStats extends PoolStats {
  /** Times a process found the lock held by a dead process and repaired the heap. */
  recoveries: number;
  /**
   * Times a heap operation (or check()) met heap metadata a stray write had damaged (free lists kept in
   * free blocks, written through a view of a block its process had freed) and rebuilt the heap under the
   * lock instead of failing.
   */
  heapRepairs: number;
  /** Whether the segment records owners (trackOwners), and what it freed of dead processes, ever. */
  trackOwners: boolean;
  reclaimedAllocations: number;
  reclaimedBytes: number;
  /** Names in the directory now. */
  keys: number;
  /** Capacity of the directory (the maxKeys the segment was created with). */
  maxKeys: number;
  /** Pid of the process that created the segment (it may have exited, or the pid been reused). */
  creatorPid: number;
  /** When the segment was created. */
  createdAt: Date;
  /** The processes attached now (kept in the segment), and in debug mode what each holds. */
  processes: AttachedProcess[];
}

/** A process attached to a shared segment (SharedPool.processes()). */
export interface AttachedProcess {
  /** Its process id. */
  pid: number;
  /** When the process started (not when it attached). */
  startedAt: Date;
  /** Debug mode: live allocations this process made. */
  allocations?: number;
  /** Debug mode: bytes of those allocations. */
  bytes?: number;
}

const MAX_KEY_BYTES = 224;

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}
const DEFAULT_LOCK_TIMEOUT_MS = 5000;

/**
 * The settings given to create() that the segment does not have, as 'size: asked 1048576, segment has
 * 2097152'. Settings left out (undefined, or a null algorithm: the default) are not compared. A segment
 * is exactly `size` bytes (no rounding) and pool.size reports that, so the two compare directly.
 */
function settingDifferences(native: NativePool, options: SharedPoolCreateOptions): string[] {
  const info = native.segmentInfo()!;
  const segment: Record<string, unknown> = {
    size: native.buffer.byteLength,
    algorithm: native.algorithm,
    debug: native.debug,
    trackOwners: info[6] === 1,
    maxKeys: info[4],
    blockSize: info[9],
    minBlock: info[10],
    maxBlock: info[11],
  };
  const differences: string[] = [];
  for (const [setting, has] of Object.entries(segment)) {
    const asked = (options as unknown as Record<string, unknown>)[setting];
    if (asked !== undefined && asked !== null && asked !== has) differences.push(`${setting}: asked ${String(asked)}, segment has ${String(has)}`);
  }
  return differences;
}

/** A shared memory name: a string (the addon checks it is plain, ERR_SHM_INVALID_NAME). */
export function checkName(name: unknown): string {
  if (typeof name !== 'string') throw invalidArgType('name', 'a string', name);
  return name;
}

// What every mempool segment starts with (native/core/segment.h kSegmentMagic, "MMPPSEG1").
const SEGMENT_MAGIC = Buffer.from('MMPPSEG1', 'latin1');

/**
 * The first 8 bytes of /dev/shm/<name> (fewer when the file is shorter), or undefined when there is no
 * such file. The name is checked first (native/core/segment.cc valid_name's rules), as it becomes a path.
 */
function segmentHead(name: string): Buffer | undefined {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || Buffer.byteLength(name) > 250) {
    throw statusError(Status.InvalidName, { name });
  }
  let fd: number | undefined;
  try {
    fd = fs.openSync(`/dev/shm/${name}`, 'r');
    const head = Buffer.alloc(SEGMENT_MAGIC.length);
    return head.subarray(0, fs.readSync(fd, head, 0, head.length, 0));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new PoolError('ERR_SHM_PERMISSION', `Cannot read shared memory '${name}' to check it is a mempool segment; pass { force: true } to remove it anyway`);
    }
    throw new PoolError('ERR_SHM_SYSTEM', `Shared memory '${name}': ${(e as Error).message}`);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function checkKey(key: unknown): string {
  if (typeof key !== 'string') throw invalidArgType('key', 'a string', key);
  const bytes = Buffer.byteLength(key);
  if (bytes < 1 || bytes > MAX_KEY_BYTES) throw outOfRange('key', `1 to ${MAX_KEY_BYTES} UTF-8 bytes`, key);
  // Keys that start with NUL name mempool's own objects (mutexes, semaphores, queues: native/core/objects.h).
  if (key.charCodeAt(0) === 0) throw invalidArgValue(`Keys that start with '\\0' are reserved for mempool's own objects: use another key than ${JSON.stringify(key)}`);
  return key;
}

function checkTimeout(value: unknown): number {
  return value === undefined ? DEFAULT_LOCK_TIMEOUT_MS : checkSize(value, 'options.lockTimeoutMs', 0);
}

/**
 * A pool in named POSIX shared memory (`/dev/shm/<name>`), found by name from other processes,
 * worker threads and other languages; offsets are the same in all of them.
 *
 * **The memory changes under you**: any process attached to the segment may write any byte of it at
 * any time, and may free a block you still view. Coordinate who writes what (for example one writer
 * per block, readers after a key is published). A view stays usable after its block is freed, here or
 * in another process, and then shows memory that may be handed to someone else.
 *
 * Small blocks (up to 1024 bytes, default alignment) come from slabs this attachment owns, so most of
 * their allocs and frees take no lock; any process may still free, name or reallocate them
 * (docs/segment-format.md, "Slabs"). A debug pool uses no slabs.
 *
 * @example
 * const pool = SharedPool.create('orders', { size: 256 << 20 });
 * pool.set('latest', pool.alloc(64));
 * // elsewhere: SharedPool.open('orders').get('latest')
 */
export class SharedPool extends HeapPool {
  /** The segment's name (without the leading '/'). */
  readonly name: string;
  /** Where this process mapped the segment: different in every process. */
  readonly startAddress: bigint;
  private readonly native: NativePool;

  private constructor(native: NativePool, name: string) {
    super(native.algorithm as Algorithm, native.buffer.byteLength, native.debug);
    this.native = native;
    this.name = name;
    this.startAddress = native.address;
    registerRegion(native.buffer, 'shared');
    this.segmentWide = true;
    this.current = { native, buffer: native.buffer, base: 0, size: this.size };
    this.chunks = [this.current];
    this.keepFreedViews();
  }

  /**
   * Creates /dev/shm/<name> of `options.size` bytes, formats it and maps it (or, with `exclusive:
   * false`, opens it when it exists). The segment outlives every process until unlinked.
   *
   * @throws ERR_SHM_EXISTS when the name exists (unless exclusive: false); ERR_SHM_MISMATCH when, with
   *   exclusive: false, the existing segment differs from a setting given (unless acceptExisting: true);
   *   ERR_SHM_INVALID_NAME for a name that is not plain (1 to 250 bytes, no '/' or NUL, not '.' or '..'); ERR_SHM_PERMISSION;
   *   ERR_POOL_OUT_OF_MEMORY when the system has no room; ERR_SHM_SYSTEM for another system error;
   *   ERR_OUT_OF_RANGE / ERR_INVALID_ARG_TYPE for bad options (e.g. a size too small); with exclusive:
   *   false also the errors of open().
   */
  static create(name: string, options: SharedPoolCreateOptions): SharedPool {
    checkKnownOptions(options, ['size', 'algorithm', 'mode', 'exclusive', 'acceptExisting', 'maxKeys', 'lockTimeoutMs', 'debug', 'trackOwners', 'blockSize', 'minBlock', 'maxBlock'], 'SharedPool.create()');
    checkName(name);
    if (typeof options !== 'object' || options === null) throw invalidArgType('options', 'an object', options);
    const size = checkSize(options.size, 'options.size');
    const algorithm = checkAlgorithm(options.algorithm);
    const mode = checkMode(options.mode);
    const exclusive = options.exclusive === undefined ? true : checkBoolean(options.exclusive, 'options.exclusive');
    const acceptExisting = checkBoolean(options.acceptExisting, 'options.acceptExisting');
    // An exclusive create never takes an existing segment, so acceptExisting there is a mistake, not a no-op.
    if (acceptExisting && exclusive) throw invalidArgValue('options.acceptExisting: true is only valid with exclusive: false');
    const maxKeys = options.maxKeys === undefined ? 0 : checkSize(options.maxKeys, 'options.maxKeys'); // 0: sized from `size`
    const debug = checkBoolean(options.debug, 'options.debug');
    const trackOwners = checkBoolean(options.trackOwners, 'options.trackOwners');
    const native = new addon.NativePool('create', name, size, algorithm, ...checkHeapOptions(options), mode, exclusive, maxKeys, checkTimeout(options.lockTimeoutMs), debug, trackOwners);
    if (!exclusive && !acceptExisting) {
      // The segment may be one that existed: the caller asked for these settings and must not get others
      // silently. A fresh segment has them all, so this only ever refuses an existing one.
      const differences = settingDifferences(native, options);
      if (differences.length > 0) {
        native.close(); // detach again: the refused call leaves no attachment and the segment untouched
        throw new PoolError('ERR_SHM_MISMATCH',
          `Shared memory '${name}' exists with other settings (${differences.join('; ')}): open it as it is with ` +
          `SharedPool.open('${name}'), pass acceptExisting: true, or unlink it first`);
      }
    }
    return new SharedPool(native, name);
  }

  /**
   * Attaches to an existing segment by name; its algorithm, size and debug mode come from the segment,
   * which is validated field by field first.
   *
   * @throws ERR_SHM_NOT_FOUND; ERR_SHM_INVALID_NAME; ERR_SHM_PERMISSION; ERR_SHM_INCOMPATIBLE for a file
   *   that is not a mempool segment of a known version; ERR_POOL_CORRUPTED for a damaged header or heap;
   *   ERR_SHM_LOCK_TIMEOUT; ERR_SHM_SYSTEM.
   */
  static open(name: string, options?: SharedPoolOpenOptions): SharedPool {
    checkKnownOptions(options, ['lockTimeoutMs'], 'SharedPool.open()');
    checkName(name);
    const o = checkObject<SharedPoolOpenOptions>(options, 'options');
    const native = new addon.NativePool('open', name, checkTimeout(o.lockTimeoutMs));
    return new SharedPool(native, name);
  }

  /**
   * Removes the name; processes attached keep their mapping until they close, and no one can open it
   * any more. True when removed, false when there was no such name. A file that is not a mempool
   * segment (its first 8 bytes are not the magic) is refused unless `force: true`: /dev/shm is shared
   * with every other program, and a typo must not delete their memory. That includes an empty file, which
   * is most likely a segment whose creator was killed before sizing it: force removes it.
   *
   * @throws ERR_SHM_INCOMPATIBLE for a file that is not a mempool segment (without force; nothing is
   *   removed); ERR_SHM_INVALID_NAME; ERR_SHM_PERMISSION (also when the file cannot be read to check it);
   *   ERR_SHM_SYSTEM.
   */
  static unlink(name: string, options?: SharedPoolUnlinkOptions): boolean {
    checkKnownOptions(options, ['force'], 'SharedPool.unlink()');
    checkName(name);
    const force = checkBoolean(checkObject<SharedPoolUnlinkOptions>(options, 'options').force, 'options.force');
    if (!force) {
      // Checked, then unlinked: a file swapped in between is removed unchecked, as with rm after ls.
      const head = segmentHead(name);
      if (head === undefined) return false;
      if (head.length === 0) {
        throw new PoolError('ERR_SHM_INCOMPATIBLE', `Shared memory '${name}' is empty (0 bytes): most likely a mempool segment whose creator died before sizing it, but not surely one; pass { force: true } to remove it`);
      }
      if (!head.equals(SEGMENT_MAGIC)) {
        throw new PoolError('ERR_SHM_INCOMPATIBLE', `Shared memory '${name}' is not a mempool segment; pass { force: true } to remove it anyway`);
      }
    }
    return addon.shmUnlink(name);
  }

  /** The mempool segments under /dev/shm that this process may read (others are skipped silently). */
  static list(): SharedSegmentInfo[] {
    return addon.shmList().map((s) => ({ ...s, algorithm: s.algorithm as Algorithm }));
  }

  /**
   * Names a block you own (the Buffer alloc, realloc, take or replace returned) for every process to find:
   * from now on **the name owns the block** (README: "Concurrency rules"). Your Buffer stays readable, but
   * a free, realloc or set through it is refused (ERR_POOL_BLOCK_NAMED); take(key) gives the block back.
   * The block `key` named before, if any, is freed (once no reader pins it); replace() hands it to you
   * instead. `length` (default: the Buffer's length) is the length recorded with the name. `block` may also
   * be an offset (then `length` is required): like free(offset), an offset carries no generation, so only
   * liveness and names are checked. A subarray or view() is refused (ERR_POOL_NO_HANDLE): pass the Buffer
   * itself and a length.
   *
   * @throws ERR_POOL_STALE_HANDLE when the Buffer's block was freed or changed owner since you got it;
   *   ERR_POOL_NO_HANDLE for a Buffer the pool did not hand out (a subarray, view());
   *   ERR_POOL_BLOCK_NAMED when the block is already named; ERR_POOL_FOREIGN_BUFFER when the Buffer does
   *   not start a live allocation of this pool; ERR_POOL_DOUBLE_FREE when its block is free;
   *   ERR_SHM_DIRECTORY_FULL (maxKeys); ERR_OUT_OF_RANGE for a key that is not 1 to 224 UTF-8 bytes;
   *   ERR_POOL_CLOSED; ERR_SHM_LOCK_TIMEOUT. Nothing changes when it throws.
   */
  set(key: string, block: Uint8Array | number, length?: number): void {
    if (this.closed) throw closedError();
    checkKey(key);
    const [offset, bytes, gen] = this.handleOf(block, length);
    const status = this.native.setKey(key, offset, bytes, gen);
    if (status !== 0) throw this.keyError(status, 'set', key);
  }

  /**
   * Names `block` (as set() does) and hands you the block `key` named before, atomically: each old
   * block goes to exactly one caller, however many processes replace the key at once. Returns that block
   * (a Buffer you now own: free it or keep it), or undefined when the key was new. Throws as set() does.
   */
  replace(key: string, block: Uint8Array | number, length?: number): Buffer | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    const [offset, bytes, gen] = this.handleOf(block, length);
    const r = this.native.replaceKey(key, offset, bytes, gen);
    if (typeof r === 'number') throw this.keyError(r, 'replace', key);
    return r === null ? undefined : this.handleView(r[0], r[1], r[2]);
  }

  /** (offset, length, generation) of what set() and replace() were given: a Buffer's handle, or an offset. */
  private handleOf(block: Uint8Array | number, length: number | undefined): [number, number, number] {
    if (typeof block === 'number') {
      checkOffset(block);
      // An offset carries no generation (-1: not checked), as with free(offset); the length must be given.
      return [block, checkSize(length, 'length', 0), -1];
    }
    checkBuffer(block);
    const bytes = length === undefined ? block.length : checkSize(length, 'length', 0);
    if (bytes > block.length) throw outOfRange('length', `at most the Buffer's length ${block.length}`, bytes);
    return [this.offsetOf(block), bytes, this.genOf(block)];
  }

  /**
   * Removes the name and hands you its block (a Buffer you now own), or undefined when there is no such
   * key. Of several processes taking one key at once, one gets the block. Throws ERR_OUT_OF_RANGE for a
   * bad key, ERR_POOL_CLOSED, ERR_SHM_LOCK_TIMEOUT.
   */
  take(key: string): Buffer | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    const r = this.native.takeKey(key);
    if (typeof r === 'number') throw this.keyError(r, 'take', key);
    return r === null ? undefined : this.handleView(r[0], r[1], r[2]);
  }

  /**
   * A raw view of the block named `key`, or undefined: no copy and no pin. **Another process may free the
   * block at any time** (replace, set, delete); the view then shows memory that may be reused, so its bytes
   * can change under you. It is borrowed: a free through it is refused (ERR_POOL_BLOCK_NAMED while named,
   * ERR_POOL_STALE_HANDLE after). For consistent bytes use getCopy() or read(). Throws ERR_OUT_OF_RANGE for
   * a bad key, ERR_POOL_CLOSED, ERR_SHM_LOCK_TIMEOUT.
   */
  get(key: string): Buffer | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    const found = this.native.getKey(key);
    if (found === null) return undefined;
    if (typeof found === 'number') throw this.keyError(found, 'get', key);
    return this.handleView(found[0], found[1], found[2]);
  }

  /**
   * A copy of the bytes named `key` (an ordinary Buffer, not pool memory), or undefined: taken under the
   * segment's lock, so never torn by a concurrent set, replace, take, delete or free. Throws as get() does.
   */
  getCopy(key: string): Buffer | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    const r = this.native.copyKey(key);
    if (typeof r === 'number') throw this.keyError(r, 'getCopy', key);
    return r === null ? undefined : r;
  }

  /**
   * Zero-copy read: calls `fn` with a view of the block named `key` while the block is pinned (not freed
   * or reused, whoever replaces or deletes the key meanwhile), and returns what `fn` returns; undefined
   * without calling `fn` when there is no such key. The view is valid only inside `fn`: do not keep it.
   * `fn` must not await (the pin ends when it returns). A pin of a process killed inside `fn` is released
   * by the next process that meets it. Throws ERR_SHM_PIN_TABLE_FULL when 128 reads are in progress,
   * and as get() does; what `fn` throws is thrown after the pin is released.
   */
  read<T>(key: string, fn: (view: Buffer) => T): T | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    if (typeof fn !== 'function') throw invalidArgType('fn', 'a function', fn);
    const r = this.native.pinKey(key);
    if (r === null) return undefined;
    if (typeof r === 'number') throw this.keyError(r, 'read', key);
    let threw = true;
    try {
      // A borrowed view (its generation is the name's): a free or set through it is refused.
      const result = fn(this.handleView(r[0], r[1], r[2]));
      threw = false;
      return result;
    } finally {
      const status = this.closed ? 0 : this.native.unpinKey(r[3], r[0]);
      // What fn threw goes first; a lost pin (someone judged this process dead, or wrote the pin table) is
      // reported only when fn returned.
      if (status !== 0 && !threw) {
        throw new PoolError('ERR_POOL_CORRUPTED', `read('${key}'): this process's pin was gone when fn returned (the pin table was written by someone else); run check()`);
      }
    }
  }

  /**
   * Removes a name and frees its block (when the last reader's pin goes, if any is reading it). True when
   * the key existed. Throws as get() does.
   */
  delete(key: string): boolean {
    if (this.closed) throw closedError();
    checkKey(key);
    const r = this.native.deleteKey(key);
    if (typeof r === 'number') throw this.keyError(r, 'delete', key);
    return r;
  }

  private keyError(status: number, op: string, key: string): Error {
    if (status === Status.Foreign) {
      return new PoolError('ERR_POOL_FOREIGN_BUFFER', `${op}('${key}') needs a Buffer that starts a live allocation of this pool`);
    }
    return this.error(status, `${op}('${key}')`);
  }

  /** The names in the directory now, in no particular order. Throws ERR_POOL_CLOSED, ERR_SHM_LOCK_TIMEOUT. */
  keys(): string[] {
    if (this.closed) throw closedError();
    const r = this.native.keys();
    if (typeof r === 'number') throw statusError(r, 'listing keys');
    return r.filter((k) => k.charCodeAt(0) !== 0);  // mempool's own objects are not keys
  }

  /**
   * @internal mempool's own blocks (SharedCache's index), named under a reserved key "\0mempool:<name>"
   * that no user call can reach and keys() leaves out (native/core/objects.h). Names `block` as set() does.
   */
  setReserved(name: string, block: Buffer): void {
    if (this.closed) throw closedError();
    const status = this.native.setKey(`\0mempool:${name}`, this.offsetOf(block), block.length, this.genOf(block));
    if (status !== 0) throw this.keyError(status, 'set', name);
  }

  /** @internal A raw view of the reserved block `name` (setReserved), or undefined. */
  getReserved(name: string): Buffer | undefined {
    if (this.closed) throw closedError();
    const found = this.native.getKey(`\0mempool:${name}`);
    if (found === null) return undefined;
    if (typeof found === 'number') throw this.keyError(found, 'get', name);
    return this.handleView(found[0], found[1], found[2]);
  }

  // ---- coordination between processes (lib/sync.ts, lib/shared-queue.ts) ----

  /**
   * An Int32Array over `count` 32-bit words of the segment at `offset` (4-aligned, inside a block you
   * allocated). Atomics.load/store/add/compareExchange on it are atomic across processes (they compile to
   * the same lock-prefixed instructions on any ArrayBuffer); Atomics.wait/notify are not (V8 keeps waiters
   * per process, and the buffer is not a SharedArrayBuffer): use pool.wait()/notify() on the same offset.
   * The view goes empty when the pool closes.
   */
  atomics(offset: number, count: number): Int32Array {
    return new Int32Array(this.wordView(offset, count, 4), offset, count);
  }

  /** As atomics(), 64-bit words (8-aligned) as a BigInt64Array. */
  atomics64(offset: number, count: number): BigInt64Array {
    return new BigInt64Array(this.wordView(offset, count, 8), offset, count);
  }

  private wordView(offset: number, count: number, width: number): ArrayBuffer {
    if (this.closed) throw closedError();
    checkWords(offset, count, width, this.size);
    return this.native.buffer;
  }

  /**
   * Blocks this thread while the 32-bit word at `offset` holds `expected` (compared as Int32, as
   * Atomics.wait does), until pool.notify() on that offset from any process or thread, or timeoutMs
   * (default: no limit). 'ok' means woken (rarely spuriously, as with any futex: re-check the word),
   * 'not-equal' that the word did not hold `expected`, 'timed-out'. Allowed on the main thread.
   */
  wait(offset: number, expected: number, timeoutMs?: number): WaitResult {
    if (this.closed) throw closedError();
    return waitOn(this.native, closedError, offset, expected, timeoutMs);
  }

  /** As wait(), without blocking the event loop (a waiter thread waits; nothing polls). */
  async waitAsync(offset: number, expected: number, timeoutMs?: number): Promise<WaitResult> {
    if (this.closed) throw closedError();
    return waitOnAsync(this.native, closedError, offset, expected, timeoutMs);
  }

  /** Wakes up to `count` (default: all) waiters on the word at `offset`, in any process; returns how many woke. */
  notify(offset: number, count?: number): number {
    if (this.closed) throw closedError();
    return notifyOn(this.native, closedError, offset, count);
  }

  /**
   * The robust mutex called `name` in this segment, made on first use: every process and thread that asks
   * for the name gets the same one. Names are 1 to 200 UTF-8 bytes, apart from the keys of set()/get().
   */
  mutex(name: string): SharedMutex {
    return new SharedMutex(this.object('mutex', name, 0, 0), name);
  }

  /**
   * The robust semaphore called `name`, made on first use with `permits` (1 to 4096, default 1). Opening an
   * existing one with other permits throws ERR_SHM_OBJECT_MISMATCH; leave permits out to take what exists.
   */
  semaphore(name: string, options?: { permits?: number }): SharedSemaphore {
    checkKnownOptions(options, ['permits'], 'semaphore()');
    const o = checkObject<{ permits: number }>(options, 'options');
    const permits = o.permits === undefined ? 0 : checkSize(o.permits, 'options.permits');
    if (permits > 4096) throw outOfRange('options.permits', '1 to 4096', permits);
    return new SharedSemaphore(this.object('semaphore', name, permits, 0), name);
  }

  /**
   * The queue called `name`, made on first use with room for `maxMessages` (default 65536) messages and
   * `maxBytes` ring bytes (a multiple of 16, at least 32; default 1 MiB; each message takes 16 bytes +
   * its length rounded up to 16), taken from this segment's heap. Opening an existing one with other limits
   * throws ERR_SHM_OBJECT_MISMATCH; leave them out to take what exists.
   */
  queue(name: string, options?: { maxBytes?: number; maxMessages?: number }): SharedQueue {
    checkKnownOptions(options, ['maxBytes', 'maxMessages'], 'queue()');
    const o = checkObject<{ maxBytes: number; maxMessages: number }>(options, 'options');
    const maxBytes = o.maxBytes === undefined ? 0 : checkSize(o.maxBytes, 'options.maxBytes', 32);
    if (maxBytes % 16 !== 0) throw outOfRange('options.maxBytes', 'a multiple of 16', maxBytes);
    const maxMessages = o.maxMessages === undefined ? 0 : checkSize(o.maxMessages, 'options.maxMessages');
    return new SharedQueue(this.object('queue', name, maxBytes, maxMessages), name, {
      handleOf: (block) => this.handleOf(block, undefined),
      handleView: (offset, length, gen) => this.handleView(offset, length, gen),
      error: (status, what) => (status === Status.Foreign
        ? new PoolError('ERR_POOL_FOREIGN_BUFFER', `${what} needs a Buffer that starts a live allocation of this pool`)
        : this.error(status, what)),
    });
  }

  private object(kind: string, name: string, a: number, b: number): NativeSync {
    if (this.closed) throw closedError();
    checkObjectName(name);
    const r = this.native.openObject(kind, name, a, b);
    if (typeof r === 'number') throw this.error(r, `opening ${kind} '${name}'`);
    return r;
  }

  /** Removes this segment's name (see SharedPool.unlink). The pool stays usable until close(). */
  unlink(): boolean {
    return SharedPool.unlink(this.name);
  }

  /**
   * Pool's stats plus the segment's: recoveries, keys, maxKeys, creatorPid, createdAt and processes.
   * Not O(1): it lists the attached processes, and in debug mode walks the live allocations.
   */
  override stats(options?: StatsOptions): SharedPoolStats {
    const base = super.stats(options);
    const info = this.native.segmentInfo()!;
    return {
      ...base,
      recoveries: info[0],
      heapRepairs: info[12] ?? 0,
      trackOwners: info[6] === 1,
      reclaimedAllocations: info[7],
      reclaimedBytes: info[8],
      keys: info[3],
      maxKeys: info[4],
      creatorPid: info[1],
      createdAt: new Date(info[2]),
      processes: this.processes(),
    };
  }

  /**
   * The processes attached to the segment now (exited ones are dropped); in debug mode with what each
   * holds (allocations of processes no longer attached are not shown: see leaks()). A process that
   * opened the segment twice appears twice. Throws ERR_POOL_CLOSED, ERR_SHM_LOCK_TIMEOUT.
   */
  processes(): AttachedProcess[] {
    if (this.closed) throw closedError();
    const pairs = this.native.processes();
    if (typeof pairs === 'number') throw statusError(pairs, 'listing processes');
    const list: AttachedProcess[] = [];
    for (let i = 0; i < pairs.length; i += 2) list.push({ pid: pairs[i], startedAt: new Date(pairs[i + 1]) });
    if (this.debug) {
      const quads = this.native.liveAllocations();
      if (typeof quads === 'number') throw statusError(quads, 'listing live allocations');
      for (const p of list) {
        p.allocations = 0;
        p.bytes = 0;
      }
      for (let i = 0; i < quads.length; i += 4) {
        const p = list.find((x) => x.pid === quads[i + 2]);
        if (p) {
          p.allocations! += 1;
          p.bytes! += quads[i + 1];
        }
      }
    }
    return list;
  }

  /**
   * Debug mode: frees every allocation a dead process held (its names go with them). Returns what was
   * freed. Views of those blocks, in any process, then show memory that may be handed to someone else.
   *
   * @throws ERR_PROCESS_ALIVE for a process that is still running (or that exists under another user);
   *   ERR_POOL_NOT_DEBUG for a segment that records no owners (created without debug: true or
   *   trackOwners: true); ERR_POOL_CLOSED; ERR_SHM_LOCK_TIMEOUT. With trackOwners, every dead process's
   *   unnamed blocks are freed when they are noticed: this call collects now and returns what it freed
   *   (0 when another process collected them first).
   */
  reclaim(pid: number): {
    /** Allocations freed. */
    allocations: number;
    /** Their bytes. */
    bytes: number;
  } {
    if (this.closed) throw closedError();
    checkSize(pid, 'pid');
    if (!this.debug && this.native.segmentInfo()![6] !== 1) {
      throw new PoolError('ERR_POOL_NOT_DEBUG', 'reclaim() needs a segment that records owners: create it with trackOwners: true (or debug: true)');
    }
    if (processAlive(pid)) throw new PoolError('ERR_PROCESS_ALIVE', `Process ${pid} is still running: it may still use its memory`);
    const r = this.native.reclaim(pid);
    if (typeof r === 'number') throw statusError(r, `reclaiming process ${pid}`);
    return { allocations: r[0], bytes: r[1] };
  }
}
