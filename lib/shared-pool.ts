// SharedPool: a heap inside a named POSIX shared-memory segment (/dev/shm/<name>) that other processes,
// worker threads and other languages open by name. Offsets are segment offsets: the same number in
// every process and in the file under /dev/shm.
import { checkAlgorithm, checkBoolean, checkBuffer, checkHeapOptions, checkObject, checkSize } from './args';
import { invalidArgType, outOfRange, PoolError } from './errors';
import { closedError, HeapPool, statusError } from './heap-pool';
import { registerRegion } from './memory-type';
import { addon, NativePool, Status } from './native';
import type { Algorithm, HeapOptions, PoolStats, StatsOptions } from './types';

export interface SharedPoolCreateOptions extends HeapOptions {
  /** Bytes of the whole segment: header, directory and heap. */
  size: number;
  algorithm?: Algorithm;
  /** Permission bits of /dev/shm/<name> (default 0o600: the owner only). */
  mode?: number;
  /** Fail with ERR_SHM_EXISTS when the name exists (default true); false opens the existing segment. */
  exclusive?: boolean;
  /** Capacity of the directory of named allocations (default 256). */
  maxKeys?: number;
  /** Longest wait for the segment's lock, in ms (default 5000). */
  lockTimeoutMs?: number;
  /**
   * Debug mode for every process that uses the segment: guard bytes, poisoned and quarantined frees,
   * each allocation's owner pid (for reclaim) and, in the allocating process, its call site.
   */
  debug?: boolean;
}

export interface SharedPoolOpenOptions {
  /** Longest wait for the segment's lock, in ms (default 5000). */
  lockTimeoutMs?: number;
}

export interface SharedSegmentInfo {
  name: string;
  size: number;
  algorithm: Algorithm;
  used: number;
  liveAllocations: number;
}

export interface SharedPoolStats extends PoolStats {
  /** Times a process found the lock held by a dead process and repaired the heap. */
  recoveries: number;
  /** Names in the directory, and its capacity. */
  keys: number;
  maxKeys: number;
  creatorPid: number;
  createdAt: Date;
  /** The processes attached now (kept in the segment), and in debug mode what each holds. */
  processes: AttachedProcess[];
}

export interface AttachedProcess {
  pid: number;
  startedAt: Date;
  /** Debug mode: live allocations this process made, and their bytes. */
  allocations?: number;
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

function checkName(name: unknown): string {
  if (typeof name !== 'string') throw invalidArgType('name', 'a string', name);
  return name;
}

function checkKey(key: unknown): string {
  if (typeof key !== 'string') throw invalidArgType('key', 'a string', key);
  const bytes = Buffer.byteLength(key);
  if (bytes < 1 || bytes > MAX_KEY_BYTES) throw outOfRange('key', `1 to ${MAX_KEY_BYTES} UTF-8 bytes`, key);
  return key;
}

function checkTimeout(value: unknown): number {
  return value === undefined ? DEFAULT_LOCK_TIMEOUT_MS : checkSize(value, 'options.lockTimeoutMs', 0);
}

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
    this.current = { native, buffer: native.buffer, base: 0, size: this.size };
    this.chunks = [this.current];
  }

  /** Creates /dev/shm/<name>, sized and formatted; fails with ERR_SHM_EXISTS when it exists (unless exclusive: false). */
  static create(name: string, options: SharedPoolCreateOptions): SharedPool {
    checkName(name);
    if (typeof options !== 'object' || options === null) throw invalidArgType('options', 'an object', options);
    const size = checkSize(options.size, 'options.size');
    const algorithm = checkAlgorithm(options.algorithm);
    const mode = options.mode === undefined ? 0o600 : checkSize(options.mode, 'options.mode', 0);
    if (mode > 0o777) throw outOfRange('options.mode', 'permission bits from 0 to 0o777', mode);
    const exclusive = options.exclusive === undefined ? true : checkBoolean(options.exclusive, 'options.exclusive');
    const maxKeys = options.maxKeys === undefined ? 256 : checkSize(options.maxKeys, 'options.maxKeys');
    const debug = checkBoolean(options.debug, 'options.debug');
    const native = new addon.NativePool('create', name, size, algorithm, ...checkHeapOptions(options), mode, exclusive, maxKeys, checkTimeout(options.lockTimeoutMs), debug);
    return new SharedPool(native, name);
  }

  /** Attaches to an existing segment by name; its algorithm and size come from the segment. */
  static open(name: string, options?: SharedPoolOpenOptions): SharedPool {
    checkName(name);
    const o = checkObject<SharedPoolOpenOptions>(options, 'options');
    const native = new addon.NativePool('open', name, checkTimeout(o.lockTimeoutMs));
    return new SharedPool(native, name);
  }

  /** Removes the name; processes attached keep their mapping until they close. False when there was no such name. */
  static unlink(name: string): boolean {
    return addon.shmUnlink(checkName(name));
  }

  /** The mempool segments under /dev/shm that this process may read. */
  static list(): SharedSegmentInfo[] {
    return addon.shmList().map((s) => ({ ...s, algorithm: s.algorithm as Algorithm }));
  }

  /** Names an allocation (a Buffer that starts a live allocation of this pool) for other processes to find. */
  set(key: string, buffer: Uint8Array): void {
    if (this.closed) throw closedError();
    checkKey(key);
    checkBuffer(buffer);
    const offset = this.offsetOf(buffer);
    const status = this.native.setKey(key, offset, buffer.length);
    if (status === 0) return;
    if (status === Status.Foreign) {
      throw new PoolError('ERR_POOL_FOREIGN_BUFFER', `set('${key}') needs a Buffer that starts a live allocation of this pool`);
    }
    if (status === Status.DirectoryFull) {
      throw new PoolError('ERR_POOL_OUT_OF_MEMORY', `The directory is full: delete a key or create the pool with a larger maxKeys`);
    }
    throw statusError(status, `naming '${key}'`);
  }

  /** A view of the allocation named `key` (the offset and length set() was given), or undefined. */
  get(key: string): Buffer | undefined {
    if (this.closed) throw closedError();
    checkKey(key);
    const found = this.native.getKey(key);
    if (found === null) return undefined;
    if (typeof found === 'number') throw statusError(found, `looking up '${key}'`);
    return Buffer.from(this.native.buffer, found[0], found[1]);
  }

  /** Removes a name (the allocation stays). True when the key existed. */
  delete(key: string): boolean {
    if (this.closed) throw closedError();
    checkKey(key);
    const r = this.native.deleteKey(key);
    if (typeof r === 'number') throw statusError(r, `deleting '${key}'`);
    return r;
  }

  keys(): string[] {
    if (this.closed) throw closedError();
    const r = this.native.keys();
    if (typeof r === 'number') throw statusError(r, 'listing keys');
    return r;
  }

  /** Removes this segment's name (see SharedPool.unlink). The pool stays usable until close(). */
  unlink(): boolean {
    return SharedPool.unlink(this.name);
  }

  override stats(options?: StatsOptions): SharedPoolStats {
    const base = super.stats(options);
    const info = this.native.segmentInfo()!;
    return {
      ...base,
      recoveries: info[0],
      keys: info[3],
      maxKeys: info[4],
      creatorPid: info[1],
      createdAt: new Date(info[2]),
      processes: this.processes(),
    };
  }

  /** The processes attached to the segment now; in debug mode with what each holds. */
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
   * Debug mode: frees every allocation a dead process held (its names go with them). Refused with
   * ERR_PROCESS_ALIVE for a process that is still running. Returns what was freed.
   */
  reclaim(pid: number): { allocations: number; bytes: number } {
    if (this.closed) throw closedError();
    checkSize(pid, 'pid');
    if (!this.debug) throw new PoolError('ERR_POOL_NOT_DEBUG', 'reclaim() needs a segment created with debug: true (allocations carry their owner only then)');
    if (processAlive(pid)) throw new PoolError('ERR_PROCESS_ALIVE', `Process ${pid} is still running: it may still use its memory`);
    const r = this.native.reclaim(pid);
    if (typeof r === 'number') throw statusError(r, `reclaiming process ${pid}`);
    return { allocations: r[0], bytes: r[1] };
  }
}
