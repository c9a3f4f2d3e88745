// Cross-process coordination inside a shared segment: wait/notify on a word, and the robust SharedMutex
// and SharedSemaphore, found by name (native/core/sync.h states their formats and crash rules).
//
// Identity: a mutex or a permit is held by a thread (the main thread or a worker), as a pthread mutex is,
// not by an async task: any task of the holding thread may unlock it, and lock() by the holding thread is
// refused (ERR_SYNC_DEADLOCK) because blocking it could never end. lockAsync() by the holding thread waits
// for the other task instead.
import { closedError, invalidArgType, outOfRange, PoolError } from './errors';
import type { NativeSync } from './native';
import { SyncResult } from './native';

/** What pool.wait()/waitAsync() ended with, as Atomics.wait says it. */
export type WaitResult = 'ok' | 'not-equal' | 'timed-out';
/** How a lock or acquire succeeded: 'owner-died' when it was taken over from a thread that died holding it. */
export type Acquired = 'ok' | 'owner-died';

/** A timeout in ms (Infinity or undefined: none) as the addon takes it: -1 for none. */
export function checkTimeoutMs(value: unknown, name = 'timeoutMs'): number {
  if (value === undefined || value === Infinity) return -1;
  if (typeof value !== 'number') throw invalidArgType(name, 'a number of milliseconds', value);
  if (!(value >= 0)) throw outOfRange(name, 'a number of milliseconds >= 0, or Infinity', value);
  return value;
}

/** A name of a mutex, semaphore or queue: 1 to 200 UTF-8 bytes. */
export function checkObjectName(name: unknown): string {
  if (typeof name !== 'string') throw invalidArgType('name', 'a string', name);
  const bytes = Buffer.byteLength(name);
  if (bytes < 1 || bytes > 200) throw outOfRange('name', '1 to 200 UTF-8 bytes', name);
  return name;
}

export function waitResult(r: number, what: string): WaitResult {
  if (r === SyncResult.Ok) return 'ok';
  if (r === SyncResult.NotEqual) return 'not-equal';
  if (r === SyncResult.TimedOut) return 'timed-out';
  throw syncError(r, what);
}

/** The coded error for a SyncResult that is not a success. */
export function syncError(r: number, what: string): Error {
  switch (r) {
    case SyncResult.TimedOut:
      return new PoolError('ERR_SYNC_TIMEOUT', `Timed out: ${what}. Pass a longer timeoutMs, or find out what holds it (holder())`);
    case SyncResult.Deadlock:
      return new PoolError('ERR_SYNC_DEADLOCK', `${what}: this thread holds it already, and blocking would never end. Unlock it first, or use the async form`);
    case SyncResult.NotOwner:
      return new PoolError('ERR_SYNC_NOT_OWNER', `${what}: this thread does not hold it (only the thread that locked or acquired it may release it)`);
    case SyncResult.Closed:
    case SyncResult.Cancelled:
      return closedError(what);
    default:
      return new PoolError('ERR_POOL_CORRUPTED', `Unexpected result ${r} (${what})`);
  }
}

// The fast calls (native.ts NativeSync.mailbox): one argument in, the result out.
function fastLock(native: NativeSync, timeoutMs: number): number {
  native.mailbox[0] = timeoutMs;
  native.fastLock();
  return native.mailbox[0];
}
function fastTryLock(native: NativeSync): number {
  native.fastTryLock();
  return native.mailbox[0];
}
function fastUnlock(native: NativeSync): number {
  native.fastUnlock();
  return native.mailbox[0];
}

// An op and an object ("lock", "mutex 'm'"): the message is made only when it is needed.
function acquired(r: number, op: string, object: string): Acquired {
  if (r === SyncResult.Ok) return 'ok';
  if (r === SyncResult.OwnerDied) return 'owner-died';
  throw syncError(r, `${op} of ${object}`);
}

function tried(r: number, op: string, object: string): Acquired | false {
  if (r === SyncResult.Busy) return false;
  return acquired(r, op, object);
}

/**
 * A mutex inside a shared segment, the same one for every process and thread that opens its name
 * (`pool.mutex(name)`). Robust: when a holder dies (a process killed with -9, a worker that exits), the next
 * locker takes it over within about 20 ms of asking and is told so ('owner-died'): what the mutex guards may
 * be half changed.
 */
export class SharedMutex {
  /** The name given to pool.mutex(). */
  readonly name: string;
  private readonly native: NativeSync;
  private readonly label: string;
  /** @internal */
  constructor(native: NativeSync, name: string) {
    this.native = native;
    this.name = name;
    this.label = `mutex '${name}'`;
  }

  /**
   * Blocks this thread until it holds the mutex. Returns 'ok', or 'owner-died' when the previous holder
   * died holding it. Throws ERR_SYNC_TIMEOUT after timeoutMs (default: no limit), ERR_SYNC_DEADLOCK when
   * this thread holds it already, ERR_POOL_CLOSED.
   */
  lock(timeoutMs?: number): Acquired {
    return acquired(fastLock(this.native, checkTimeoutMs(timeoutMs)), 'lock', this.label);
  }

  /** Locks without waiting: 'ok' or 'owner-died' when it did, false when someone else holds it. */
  tryLock(): Acquired | false {
    return tried(fastTryLock(this.native), 'tryLock', this.label);
  }

  /** As lock(), without blocking the event loop (a waiter thread waits). Other tasks of this thread are waited for. */
  async lockAsync(timeoutMs?: number): Promise<Acquired> {
    return acquired(await this.native.lockAsync(checkTimeoutMs(timeoutMs)), 'lockAsync', this.label);
  }

  /** Releases it. Throws ERR_SYNC_NOT_OWNER when this thread does not hold it (nothing changes). */
  unlock(): void {
    const r = fastUnlock(this.native);
    if (r !== SyncResult.Ok) throw syncError(r, `unlock of ${this.label}`);
  }

  /** Runs fn while holding the mutex (fn is told whether the previous holder died); unlocks however fn ends. */
  withLock<T>(fn: (ownerDied: boolean) => T, timeoutMs?: number): T {
    if (typeof fn !== 'function') throw invalidArgType('fn', 'a function', fn);
    const how = this.lock(timeoutMs);
    try {
      return fn(how === 'owner-died');
    } finally {
      this.unlock();
    }
  }

  /** As withLock(), waiting with lockAsync(); fn may be async. */
  async withLockAsync<T>(fn: (ownerDied: boolean) => T | Promise<T>, timeoutMs?: number): Promise<T> {
    if (typeof fn !== 'function') throw invalidArgType('fn', 'a function', fn);
    const how = await this.lockAsync(timeoutMs);
    try {
      return await fn(how === 'owner-died');
    } finally {
      this.unlock();
    }
  }

  /** Who holds it now: the holder's thread id (0: free) and whether that is this thread. A snapshot. */
  holder(): { tid: number; mine: boolean } {
    const r = this.native.holder();
    if (typeof r === 'number') throw syncError(r, `holder of mutex '${this.name}'`);
    return { tid: r[0], mine: r[1] };
  }
}

/**
 * A counting semaphore inside a shared segment (`pool.semaphore(name, { permits })`): at most `permits`
 * holders at once, across processes and threads. Robust: each permit records the thread holding it, and a
 * permit of a thread that died is taken over by the next acquirer ('owner-died'), so a crashed worker does
 * not shrink the semaphore for good.
 */
export class SharedSemaphore {
  readonly name: string;
  /** How many permits it has (fixed when it was made). */
  readonly permits: number;
  private readonly native: NativeSync;
  private readonly label: string;
  /** @internal */
  constructor(native: NativeSync, name: string) {
    this.native = native;
    this.name = name;
    this.label = `semaphore '${name}'`;
    this.permits = native.geometry[0];
  }

  /** Blocks until this thread holds a permit. 'ok' or 'owner-died'; ERR_SYNC_TIMEOUT, ERR_POOL_CLOSED. */
  acquire(timeoutMs?: number): Acquired {
    return acquired(fastLock(this.native, checkTimeoutMs(timeoutMs)), 'acquire', this.label);
  }

  /** A permit without waiting: 'ok' or 'owner-died', or false when none is free. */
  tryAcquire(): Acquired | false {
    return tried(fastTryLock(this.native), 'tryAcquire', this.label);
  }

  /** As acquire(), without blocking the event loop. */
  async acquireAsync(timeoutMs?: number): Promise<Acquired> {
    return acquired(await this.native.lockAsync(checkTimeoutMs(timeoutMs)), 'acquireAsync', this.label);
  }

  /** Returns one permit this thread holds. Throws ERR_SYNC_NOT_OWNER when it holds none (nothing changes). */
  release(): void {
    const r = fastUnlock(this.native);
    if (r !== SyncResult.Ok) throw syncError(r, `release of ${this.label}`);
  }

  /** Free permits now (a snapshot). */
  available(): number {
    const r = this.native.available();
    if (r < 0) throw syncError(r, `available of semaphore '${this.name}'`);
    return r;
  }
}
