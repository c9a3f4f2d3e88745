// The one place that loads the compiled addon and describes it to TypeScript.
import * as path from 'node:path';
import { makeError, shmStatusError } from './errors';

export interface NativePool {
  readonly buffer: ArrayBuffer;
  readonly address: bigint;
  readonly algorithm: string;
  /** Fast path: write the argument to mailbox[0], call, read the result from mailbox[0]. */
  readonly mailbox: Float64Array;
  /** mailbox[0] = size -> offset or a negative Status (default alignment, no hint). */
  readonly fastAlloc: () => void;
  /** mailbox[0] = offset, mailbox[1] = generation (-1: none) -> 0 or a negative Status. */
  readonly fastFree: () => void;
  /** offset, or a negative Status; the block's generation is left in mailbox[1] (fastAlloc too) */
  alloc(size: number, align: number, hint: number, zero: boolean, site?: number): number;
  free(offset: number, gen?: number): number;
  /** new offset, or a negative Status; the new generation is left in mailbox[1] */
  realloc(offset: number, size: number, align: number, gen?: number): number;
  usableSize(offset: number): number;
  /** [capacity, used, free, overhead, peakUsed, live, allocations, frees, failed, largestFree], or a negative Status */
  stats(): Float64Array | number;
  check(): [number, string] | number;
  /** (offset, size, used) triples, or a negative Status */
  blocks(): Float64Array | number;
  close(): void;
  // Shared segments only:
  // Named entries: [offset, length, generation] triples (shared_pool.h's ownership rules).
  setKey(key: string, offset: number, length: number, gen: number): number;
  getKey(key: string): [number, number, number] | null | number;
  replaceKey(key: string, offset: number, length: number, gen: number): [number, number, number] | null | number;
  takeKey(key: string): [number, number, number] | null | number;
  copyKey(key: string): Buffer | null | number;
  /** [offset, length, generation, pin] */
  pinKey(key: string): [number, number, number, number] | null | number;
  unpinKey(pin: number, offset: number): number;
  deleteKey(key: string): boolean | number;
  keys(): string[] | number;
  /** [recoveries, creatorPid, createdUnixMs, keys, maxKeys, heapOffset, trackOwners, reclaimedAllocations, reclaimedBytes, blockSize, minBlock, maxBlock, heapRepairs] */
  segmentInfo(): Float64Array | null;
  /** (pid, startUnixMs) pairs of the processes attached to a shared segment, or a negative Status */
  processes(): Float64Array | number;
  // Debug mode only:
  readonly debug: boolean;
  /** The last misuse debug mode detected, or ''. */
  debugReport(): string | number;
  /** (offset, size, ownerPid, site) quads, or a negative Status */
  liveAllocations(): Float64Array | number;
  /** [count, bytes] freed, or a negative Status */
  reclaim(pid: number): [number, number] | number;
  /** futex wait on the 32-bit word at a segment offset: a SyncResult */
  wait(offset: number, expected: number, timeoutMs: number): number;
  waitAsync(offset: number, expected: number, timeoutMs: number): Promise<number>;
  notify(offset: number, count: number): number;
  /** kind 'mutex' | 'semaphore' (a = permits) | 'queue' (a = maxBytes, b = maxMessages); 0 = what exists */
  openObject(kind: string, name: string, a: number, b: number): NativeSync | number;
}

/** A raw named shared-memory segment (native/addon/raw_glue.cc): plain bytes, no heap. */
export interface NativeSegment {
  /** The whole mapping; detached (length 0) once closed. */
  readonly buffer: ArrayBuffer;
  readonly readOnly: boolean;
  close(): void;
  /** futex wait on the 32-bit word at an offset: a SyncResult, or -100 once closed */
  wait(offset: number, expected: number, timeoutMs: number): number;
  waitAsync(offset: number, expected: number, timeoutMs: number): Promise<number>;
  notify(offset: number, count: number): number;
}

export interface SegmentListing {
  name: string;
  size: number;
  algorithm: string;
  used: number;
  liveAllocations: number;
}

/** What a cross-process wait or acquire ended with (native/core/sync.h SyncResult), or -100: the pool closed. */
export const enum SyncResult {
  Ok = 0,
  OwnerDied = 1,
  NotEqual = 2,
  TimedOut = 3,
  Busy = 4,
  Deadlock = 5,
  NotOwner = 6,
  Cancelled = 7,
  Closed = -100,
}

/** What a queue call ended with (native/core/shared_queue.h QueueResult), or -100: the pool closed. */
export const enum QueueResult {
  Ok = 0,
  Empty = 1,
  Full = 2,
  Closed = 3,
  TooLarge = 4,
  TimedOut = 5,
  Cancelled = 6,
  Corrupted = 7,
  NotLeased = 8,
  TooSmall = 9,
  Block = 10,
  PoolClosed = -100,
  BadArgument = -101,
}

/** A named mutex, semaphore or queue in a segment (native/addon/sync_glue.cc). Timeouts: ms, or -1 for none. */
export interface NativeSync {
  /**
   * The hot calls' arguments and results (sync_glue.cc FastLock and the like): set the arguments, call, read
   * mailbox[0]. Mutex and semaphore: fastLock ([0] timeoutMs), fastTryLock, fastUnlock. Queue: fastPush(bytes)
   * ([0] timeoutMs, [1] wait), fastPop(scratch) ([0] timeoutMs, [1] wait, [2] lease -> [1] length, [2] position).
   */
  readonly mailbox: Float64Array;
  fastLock(): void;
  fastTryLock(): void;
  fastUnlock(): void;
  fastPush(message: Uint8Array): void;
  fastPop(scratch: Uint8Array): void;
  lockAsync(timeoutMs: number): Promise<number>;
  /** [holder tid (0: free), held by this thread] */
  holder(): [number, boolean] | number;
  available(): number;
  pushAsync(message: Uint8Array, timeoutMs: number): Promise<number>;
  popAsync(lease: boolean, timeoutMs: number): Promise<Buffer | [Buffer, number] | number>;
  ack(position: number): number;
  /** Block messages, through the pool (segment lock, then queue lock): -status, or a QueueResult. */
  pushBlock(offset: number, gen: number, length: number, timeoutMs: number, wait: boolean): number;
  /** [length, position, isBlock, offset, gen, blockLength]; [length] when scratch is too small; else -status or a QueueResult. */
  popShared(scratch: Uint8Array, lease: boolean, timeoutMs: number, wait: boolean): number[] | number;
  ackShared(position: number): number;
  closeQueue(): number;
  /** [count, leased, usedBytes, pushed, popped, redelivered, recoveries, closed] */
  queueStats(): Float64Array | number;
  /** semaphore: [permits]; queue: [maxBytes, maxMessages, maxMessageBytes] */
  readonly geometry: number[];
}

export interface Addon {
  NativePool: {
    new (kind: 'malloc', size: number, algorithm: string, blockSize: number, minBlock: number, maxBlock: number, debug: boolean): NativePool;
    new (
      kind: 'create',
      name: string,
      size: number,
      algorithm: string,
      blockSize: number,
      minBlock: number,
      maxBlock: number,
      mode: number,
      exclusive: boolean,
      maxKeys: number,
      lockTimeoutMs: number,
      debug: boolean,
      trackOwners: boolean,
    ): NativePool;
    new (kind: 'open', name: string, lockTimeoutMs: number): NativePool;
  };
  NativeSegment: {
    new (kind: 'create', name: string, size: number, mode: number, exclusive: boolean): NativeSegment;
    new (kind: 'open', name: string, readOnly: boolean): NativeSegment;
  };
  shmUnlink(name: string): boolean;
  shmList(): SegmentListing[];
  systemAlloc(size: number): ArrayBuffer | null;
  systemFree(buffer: ArrayBuffer): number;
  setErrorFactory(
    make: (kind: string, code: string, message: string) => Error,
    fromStatus: (status: number, name: string, errno: number, found: number, asked: number) => Error,
  ): void;
  noop(): void;
}

function load(): Addon {
  try {
    // node-gyp-build takes build/Release (built from source) first, then the prebuilt binary the package ships
    // in prebuilds/linux-x64/ (N-API 8, glibc): a user without a compiler gets that one.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
    return nodeGypBuild(path.join(__dirname, '..')) as Addon;
  } catch (cause) {
    // Said to a user whose project depends on mempool: `npm run build` exists only in mempool's own repository.
    const e = new Error(
      `mempool: the native addon could not be loaded (${cause instanceof Error ? cause.message.split('\n')[0] : String(cause)}).\n` +
        'Possible solutions:\n' +
        '- mempool ships a prebuilt addon for Linux x64 with glibc; elsewhere it is built at install time\n' +
        '- reinstall mempool (`npm rebuild mempool`): it builds the addon with node-gyp, which needs python3, make and a C++17 compiler (apt-get install -y python3 make g++)\n' +
        '- run `npm rebuild mempool` again after changing Node versions, and do not install with --ignore-scripts\n' +
        '- mempool supports Linux only',
    ) as Error & { code: string; cause: unknown };
    e.code = 'ERR_ADDON_LOAD';
    e.cause = cause;
    throw e;
  }
}

export const addon: Addon = load();
addon.setErrorFactory(makeError, shmStatusError);
