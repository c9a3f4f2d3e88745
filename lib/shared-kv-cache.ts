// SharedCache: a key/value cache that every process of a machine shares, in one SharedPool segment, and
// that evicts (CLOCK) by entry count and by bytes, and expires by TTL.
//
// Design. Each entry is one named block of the pool (the name is the key), laid out as ENTRY below: a small
// header, the key's bytes, the value's bytes. A set never writes into a named block: it writes a new block
// and names it (the pool frees the old one, deferred while a reader pins it), so a reader never sees a torn
// value. The eviction order lives in the segment too, in the cache's index block (INDEX below), named under
// a reserved key: a ring of maxEntries slots, each the segment offset of one entry's block, and the CLOCK
// hand. A hit costs no lock: it pins the block (pool.read), sets the entry's visited word with one atomic
// store, and copies. Every change to the set of entries (set, delete, eviction, expiry, clear) is made while
// holding the cache's robust mutex ('cache.index'), so the ring and the directory agree whenever the mutex
// is free.
//
// Why in TypeScript over SharedPool, not native: the pool already gives atomic naming, pinned reads,
// deferred frees, dead-owner reclaim and lock recovery; a get is 2 native calls (pin, unpin) and a set 5
// (alloc, then lock, lookup, name, unlock), against one each for a native index. A first version that is
// correct; docs/benchmarks.md measures what it costs.
//
// Crash rules (kill -9 at any instruction):
// - Outside the mutex a process changes only atomic words (an entry's visited and readers words, the
//   counters), a block it allocated and has not named yet (set() writes the entry there), and the pool's
//   own state (pins, allocations), which the pool recovers: a dead reader's pin is dropped by the next
//   process that meets it; a block a dead setter allocated but never named is freed by trackOwners
//   reclaim (the segment is always made with trackOwners).
// - Inside the mutex the index may be half changed at any point. The next locker is told 'owner-died' and
//   rebuilds the index from the directory (rebuild()), which is the truth: every named block is a complete
//   entry, because its header, key and value are written before it is named. So each change below is
//   finished or undone by that one rule; the comments at each write say what state the rebuild meets.
// - A reader killed inside read(key, fn) leaves the entry's readers word above 0: the hand then skips that
//   entry for at most two sweeps, and evicts it after (its memory is still safe: the pool keeps a pinned
//   block until the pin is dropped).
import { checkKnownOptions, checkObject, checkSize } from './args';
import { closedError, invalidArgType, outOfRange, PoolError } from './errors';
import { SharedPool } from './shared-pool';
import type { SharedMutex } from './sync';

/** Options of `SharedCache.create(name, options)`. */
export interface SharedCacheCreateOptions {
  /** Bytes of the whole segment (its directory, the index and the entries). */
  size: number;
  /** Most entries held at once (default: one per 2 KiB of size, at least 16; at most 2^20 - 64). */
  maxEntries?: number;
  /** Longest value in bytes (default: a quarter of size). A longer set throws ERR_CACHE_VALUE_TOO_LARGE. */
  maxValueBytes?: number;
  /** Time to live of an entry whose set gives none, in ms (default 0: no expiry). Kept in the segment. */
  defaultTtlMs?: number;
  /** This process's clock in ms (default Date.now): a fake one makes TTL testable without sleeping. */
  now?: () => number;
}

/** Options of `SharedCache.open(name, options)`. */
export interface SharedCacheOpenOptions {
  /** This process's clock in ms (default Date.now). */
  now?: () => number;
}

/** Options of `cache.set(key, value, options)` and `getOrSet`. */
export interface SharedCacheSetOptions {
  /** Time to live in ms (0: never expires; default: the cache's defaultTtlMs). */
  ttlMs?: number;
}

/** `cache.stats()`: counters of every process since the cache was made (the counters wrap at 2^32). */
export interface SharedCacheStats {
  hits: number;
  misses: number;
  /** Entries removed by the hand to make room (by count or by bytes). */
  evictions: number;
  /** Entries removed because their TTL had passed (on a get, or by the hand). */
  expirations: number;
  /** Bytes of the values held. */
  bytes: number;
  entries: number;
  maxEntries: number;
  /** Times a process took the cache's mutex over from a dead holder and rebuilt the index. */
  recoveries: number;
}

export type CacheValue = Buffer | Uint8Array | string;

// INDEX: the cache's block, named '\0mempool:cache:index'. Byte offsets from its start; 32-bit words are
// read and written with Atomics where processes meet without the mutex (the counters).
const INDEX_NAME = 'cache:index';
const INDEX_MAGIC = 0x4b564331; // 'KVC1'
const INDEX_VERSION = 1;
const I_MAGIC = 0;
const I_VERSION = 4;
const I_MAX_ENTRIES = 8;
const I_HAND = 12; // the next slot the hand looks at (under the mutex)
const I_ENTRIES = 16; // slots in use (under the mutex; read without it as a snapshot)
const I_FREE_TOP = 20; // slots on the free stack (under the mutex)
const I_BYTES = 24; // f64: value bytes held (under the mutex)
const I_MAX_VALUE = 32; // f64, fixed at creation
const I_DEFAULT_TTL = 40; // f64, fixed at creation
const I_RECOVERIES = 48; // times the index was rebuilt after a holder of the mutex died
// Counters, one per cache line so that processes counting hits do not share a line with misses.
const I_HITS = 64;
const I_MISSES = 128;
const I_EVICTIONS = 192;
const I_EXPIRATIONS = 256;
const I_RING = 320; // f64[maxEntries]: the block offset of each slot's entry, 0 when free
// then i32[maxEntries]: the free stack of slot numbers
function indexBytes(maxEntries: number): number {
  return I_RING + 12 * maxEntries;
}

// ENTRY: one named block per entry. Byte offsets from the block's start.
const E_VISITED = 0; // i32: 1 when read since the hand last passed (atomic store, no lock)
const E_READERS = 4; // i32: read(key, fn) calls inside fn now (atomic add/sub, no lock)
const E_SLOT = 8; // i32: its slot in the ring (under the mutex)
const E_KEY_BYTES = 12; // u32: the key's UTF-8 length
const E_EXPIRES = 16; // f64: when it expires in ms of the clock, 0: never
const E_KEY = 24; // the key's bytes, then the value's
const MAX_KEY_BYTES = 224;

const COMPUTE_STRIPES = 16; // getOrSet's mutexes: keys hash to one, so unrelated keys rarely wait
const MAX_ENTRIES = (1 << 20) - 64; // the pool's directory holds 2^20 names, some taken by mempool's objects

function cacheIncompatible(name: string, why: string): PoolError {
  return new PoolError('ERR_CACHE_INCOMPATIBLE', `Shared memory '${name}' is not a SharedCache (${why}): open it with SharedPool.open, or unlink it and create the cache again`);
}

function checkClock(now: unknown): () => number {
  if (now === undefined) return Date.now;
  if (typeof now !== 'function') throw invalidArgType('options.now', 'a function returning ms', now);
  return now as () => number;
}

function checkTtl(value: unknown, name: string): number {
  if (value === undefined) return -1; // the cache's default
  if (typeof value !== 'number' || !Number.isFinite(value)) throw invalidArgType(name, 'a finite number of ms', value);
  if (value < 0) throw outOfRange(name, 'a number of ms >= 0', value);
  return value;
}

function checkValue(value: unknown): Buffer | string {
  if (typeof value === 'string' || Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw invalidArgType('value', 'a Buffer, Uint8Array or string', value);
}

function checkCacheKey(key: unknown): string {
  if (typeof key !== 'string') throw invalidArgType('key', 'a string', key);
  return key; // its length and a reserved NUL start are checked by the pool, with its messages
}

/**
 * A cache shared by every process that opens its name, in one shared segment: values are bytes, held once
 * for all of them, evicted by CLOCK when maxEntries or the segment's memory is reached, expired by TTL.
 * Safe under any number of processes and under kill -9 of any of them (see the file's crash rules).
 *
 * @example
 * const cache = SharedCache.create('pages', { size: 64 << 20 });
 * cache.set('/home', '<html>...</html>', { ttlMs: 60000 });
 * // elsewhere: SharedCache.open('pages').get('/home')
 */
export class SharedCache {
  /** The segment's name. */
  readonly name: string;
  /** Most entries held at once. */
  readonly maxEntries: number;
  /** Longest value in bytes. */
  readonly maxValueBytes: number;
  private readonly pool: SharedPool;
  private readonly now: () => number;
  private readonly lock: SharedMutex;
  private readonly compute: SharedMutex[] = [];
  // Views of the whole segment: entries and the index are read and written through them by offset.
  private readonly bytes: Buffer;
  private readonly u32: Uint32Array;
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;
  private readonly index: number; // the index block's segment offset
  private readonly defaultTtlMs: number;
  private closed = false;

  private constructor(pool: SharedPool, name: string, now: () => number) {
    this.pool = pool;
    this.name = name;
    this.now = now;
    const segment = pool.atomics(0, 1).buffer as ArrayBuffer;
    this.bytes = Buffer.from(segment);
    this.u32 = new Uint32Array(segment);
    this.i32 = new Int32Array(segment);
    this.f64 = new Float64Array(segment, 0, Math.floor(segment.byteLength / 8));
    const index = pool.getReserved(INDEX_NAME);
    if (index === undefined) throw cacheIncompatible(name, 'it has no cache index: not made by SharedCache.create, or its creator died before finishing');
    this.index = index.byteOffset;
    if (this.u32[this.index / 4] !== INDEX_MAGIC || this.u32[(this.index + I_VERSION) / 4] !== INDEX_VERSION) {
      throw cacheIncompatible(name, 'its index has another format');
    }
    this.maxEntries = this.u32[(this.index + I_MAX_ENTRIES) / 4];
    if (index.length < indexBytes(this.maxEntries)) throw cacheIncompatible(name, 'its index is shorter than its maxEntries needs');
    this.maxValueBytes = this.f64[(this.index + I_MAX_VALUE) / 8];
    this.defaultTtlMs = this.f64[(this.index + I_DEFAULT_TTL) / 8];
    this.lock = pool.mutex('cache.index');
    for (let i = 0; i < COMPUTE_STRIPES; i++) this.compute.push(pool.mutex(`cache.compute.${i}`));
  }

  /**
   * Creates the segment /dev/shm/<name> and the cache in it.
   *
   * @throws ERR_SHM_EXISTS and the other errors of SharedPool.create; ERR_OUT_OF_RANGE for a size too small
   *   for maxEntries, or bad options; ERR_INVALID_ARG_VALUE for an unknown option.
   */
  static create(name: string, options: SharedCacheCreateOptions): SharedCache {
    checkKnownOptions(options, ['size', 'maxEntries', 'maxValueBytes', 'defaultTtlMs', 'now'], 'SharedCache.create()');
    if (typeof options !== 'object' || options === null) throw invalidArgType('options', 'an object', options);
    const size = checkSize(options.size, 'options.size');
    const maxEntries = options.maxEntries === undefined ? Math.min(MAX_ENTRIES, Math.max(16, Math.floor(size / 2048))) : checkSize(options.maxEntries, 'options.maxEntries');
    if (maxEntries > MAX_ENTRIES) throw outOfRange('options.maxEntries', `1 to ${MAX_ENTRIES}`, maxEntries);
    const maxValueBytes = options.maxValueBytes === undefined ? Math.floor(size / 4) : checkSize(options.maxValueBytes, 'options.maxValueBytes', 0);
    const defaultTtlMs = Math.max(0, checkTtl(options.defaultTtlMs, 'options.defaultTtlMs'));
    const now = checkClock(options.now);
    // Room in the directory for every entry and mempool's own objects (the index, the mutexes).
    const pool = SharedPool.create(name, { size, maxKeys: maxEntries + 32, trackOwners: true });
    try {
      let index: Buffer;
      try {
        index = pool.alloc(indexBytes(maxEntries));
      } catch (e) {
        if ((e as PoolError).code !== 'ERR_POOL_OUT_OF_MEMORY') throw e;
        throw outOfRange('options.size', `more bytes for ${maxEntries} entries`, size);
      }
      index.fill(0);
      const words = new Uint32Array(index.buffer, index.byteOffset, 8);
      words[I_MAX_ENTRIES / 4] = maxEntries;
      const f64 = new Float64Array(index.buffer, index.byteOffset, 6);
      f64[I_MAX_VALUE / 8] = maxValueBytes;
      f64[I_DEFAULT_TTL / 8] = defaultTtlMs;
      const free = new Int32Array(index.buffer, index.byteOffset + I_RING + 8 * maxEntries, maxEntries);
      for (let i = 0; i < maxEntries; i++) free[i] = maxEntries - 1 - i; // slot 0 on top
      words[I_FREE_TOP / 4] = maxEntries;
      words[I_VERSION / 4] = INDEX_VERSION;
      words[I_MAGIC / 4] = INDEX_MAGIC;
      // Named last: an opener finds a whole index or none (killed before: open says ERR_CACHE_INCOMPATIBLE).
      pool.setReserved(INDEX_NAME, index);
      return new SharedCache(pool, name, now);
    } catch (e) {
      pool.close();
      SharedPool.unlink(name);
      throw e;
    }
  }

  /** Opens the cache made by create(name). Throws ERR_CACHE_INCOMPATIBLE for a segment that is not one, and the errors of SharedPool.open. */
  static open(name: string, options?: SharedCacheOpenOptions): SharedCache {
    checkKnownOptions(options, ['now'], 'SharedCache.open()');
    const now = checkClock(checkObject<SharedCacheOpenOptions>(options, 'options').now);
    const pool = SharedPool.open(name);
    try {
      return new SharedCache(pool, name, now);
    } catch (e) {
      pool.close();
      throw e;
    }
  }

  /** Removes the segment's name (as SharedPool.unlink); processes attached keep using it until they close. */
  static unlink(name: string): boolean {
    return SharedPool.unlink(name);
  }

  /** Detaches this process. Later calls throw ERR_POOL_CLOSED. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pool.close();
  }

  /** Entries held now (a snapshot: other processes may be changing it). */
  get size(): number {
    if (this.closed) throw closedError();
    return Atomics.load(this.u32, (this.index + I_ENTRIES) / 4);
  }

  /** A copy of the value of `key`, or undefined when it is missing or expired. */
  get(key: string): Buffer | undefined {
    return this.lookup(key, true, copyOut);
  }

  /**
   * Zero-copy read: calls fn with a view of the value while its block is pinned, and returns what fn
   * returns (undefined without calling fn when missing or expired). The view is valid only inside fn; fn
   * must not await. The hand does not evict an entry while a read() of it is inside fn.
   */
  read<T>(key: string, fn: (view: Buffer) => T): T | undefined {
    if (typeof fn !== 'function') throw invalidArgType('fn', 'a function', fn);
    return this.lookup(key, true, (block, start, entry) => {
      const readers = (entry + E_READERS) / 4;
      Atomics.add(this.i32, readers, 1);
      try {
        return fn(block.subarray(start));
      } finally {
        Atomics.sub(this.i32, readers, 1);
      }
    });
  }

  /** Whether `key` is held and not expired (not counted as a hit or miss, and not marked visited). */
  has(key: string): boolean {
    return this.lookup(key, false, () => true) === true;
  }

  /**
   * The one read path: pins the entry, and when it is live calls use(block, where its value starts in it,
   * the entry's segment offset) inside the pin. An expired entry is a miss and is removed. `counted`: a get (hits, misses, visited) or a peek.
   */
  private lookup<T>(key: string, counted: boolean, use: (block: Buffer, start: number, entry: number) => T): T | undefined {
    if (this.closed) throw closedError();
    checkCacheKey(key);
    let expired = -1;
    const result = this.pool.read(key, (block) => {
      const entry = block.byteOffset;
      const expires = this.f64[(entry + E_EXPIRES) / 8];
      if (expires !== 0 && expires <= this.now()) {
        expired = entry;
        return undefined;
      }
      if (counted) Atomics.store(this.i32, entry / 4, 1); // visited: the hand gives it another round
      return { value: use(block, E_KEY + this.u32[(entry + E_KEY_BYTES) / 4], entry) };
    });
    if (expired >= 0) this.withLock(() => this.expireIfStill(key, expired));
    if (counted) Atomics.add(this.u32, ((result === undefined ? this.index + I_MISSES : this.index + I_HITS) / 4), 1);
    return result?.value;
  }

  /**
   * Stores a copy of value under key, evicting what it must to make room (by maxEntries and by the
   * segment's memory). ttlMs: 0 never expires (default: the cache's defaultTtlMs).
   *
   * @throws ERR_CACHE_VALUE_TOO_LARGE for a value longer than maxValueBytes; ERR_POOL_OUT_OF_MEMORY when it
   *   does not fit even with every other entry evicted (readers may pin freed ones); ERR_OUT_OF_RANGE for a
   *   key that is not 1 to 224 UTF-8 bytes; ERR_INVALID_ARG_TYPE; ERR_POOL_CLOSED.
   */
  set(key: string, value: CacheValue, options?: SharedCacheSetOptions): void {
    if (this.closed) throw closedError();
    checkCacheKey(key);
    checkKnownOptions(options, ['ttlMs'], 'set()');
    const ttl = checkTtl(checkObject<SharedCacheSetOptions>(options, 'options').ttlMs, 'options.ttlMs');
    const bytes = checkValue(value);
    const valueBytes = typeof bytes === 'string' ? Buffer.byteLength(bytes) : bytes.length;
    if (valueBytes > this.maxValueBytes) {
      throw new PoolError('ERR_CACHE_VALUE_TOO_LARGE', `set('${key}'): a value of ${valueBytes} bytes is longer than this cache's maxValueBytes ${this.maxValueBytes}`);
    }
    const keyBytes = Buffer.byteLength(key);
    if (keyBytes < 1 || keyBytes > MAX_KEY_BYTES) throw outOfRange('key', `1 to ${MAX_KEY_BYTES} UTF-8 bytes`, key);
    const ttlMs = ttl < 0 ? this.defaultTtlMs : ttl;
    const expires = ttlMs === 0 ? 0 : this.now() + ttlMs;
    // The block is made and written outside the mutex (it is this process's until it is named), so the
    // mutex is held only to name it and update the index: sets from many processes queue for less time.
    const block = this.allocEntry(E_KEY + keyBytes + valueBytes);
    // Killed from here until publish() names it: the block is unnamed and ours; trackOwners frees it.
    const entry = block.byteOffset;
    this.i32[(entry + E_VISITED) / 4] = 0; // new entries start unvisited (as in CLOCK and SIEVE)
    this.i32[(entry + E_READERS) / 4] = 0;
    this.u32[(entry + E_KEY_BYTES) / 4] = keyBytes;
    this.f64[(entry + E_EXPIRES) / 8] = expires;
    block.write(key, E_KEY, 'utf8');
    if (typeof bytes === 'string') block.write(bytes, E_KEY + keyBytes, 'utf8');
    else bytes.copy(block, E_KEY + keyBytes);
    try {
      this.withLock(() => this.publish(key, block, valueBytes));
    } catch (e) {
      if (this.pool.get(key)?.byteOffset !== entry) this.pool.free(block); // not named: still ours
      throw e;
    }
  }

  /**
   * A block of `bytes` for a new entry. When the heap is full it evicts one entry (under the mutex) and
   * tries again, until nothing is left to evict: eviction by bytes.
   */
  private allocEntry(bytes: number): Buffer {
    for (;;) {
      try {
        return this.pool.alloc(bytes);
      } catch (e) {
        if ((e as PoolError).code !== 'ERR_POOL_OUT_OF_MEMORY') throw e;
        const evicted = this.withLock(() => (this.entries() === 0 ? false : (this.evictOne(), true)));
        if (!evicted) throw e;
      }
    }
  }

  /** Names the written entry `block` (set()), under the mutex: its slot, the ring, the counts. */
  private publish(key: string, block: Buffer, valueBytes: number): void {
    const old = this.pool.get(key); // under the mutex no one frees a named block
    // By count: a new key needs a free slot.
    while (old === undefined && this.entries() >= this.maxEntries) this.evictOne();
    const entry = block.byteOffset;
    const slot = old !== undefined ? this.i32[(old.byteOffset + E_SLOT) / 4] : this.popFreeSlot();
    this.i32[(entry + E_SLOT) / 4] = slot;
    const oldBytes = old === undefined ? 0 : this.valueBytesOf(old.byteOffset, old.length); // read before the free
    // Killed here: popFreeSlot moved the free stack; the rebuild remakes it from the directory.
    this.pool.set(key, block); // frees the old block (deferred while a reader pins it)
    // Killed from here to the end: the directory names the new block, the ring may still hold the old
    // offset or nothing; the rebuild takes the directory's.
    this.f64[this.ringAt(slot)] = entry;
    this.addBytes(valueBytes - oldBytes);
    if (old === undefined) this.u32[(this.index + I_ENTRIES) / 4] += 1;
  }

  /** Removes key; true when it was held (expired or not). */
  delete(key: string): boolean {
    if (this.closed) throw closedError();
    checkCacheKey(key);
    return this.withLock(() => {
      const entry = this.entryOf(key);
      if (entry < 0) return false;
      this.remove(entry, key);
      return true;
    });
  }

  /** Removes every entry (not counted as evictions). */
  clear(): void {
    if (this.closed) throw closedError();
    this.withLock(() => {
      for (let slot = 0; slot < this.maxEntries && this.entries() > 0; slot++) {
        const entry = this.f64[this.ringAt(slot)];
        if (entry !== 0) this.remove(entry, this.keyOf(entry));
      }
    });
  }

  /** The keys held and not expired, in slot order (a snapshot taken under the mutex). */
  keys(): string[] {
    if (this.closed) throw closedError();
    return this.withLock(() => {
      const keys: string[] = [];
      const now = this.now();
      for (let slot = 0; slot < this.maxEntries; slot++) {
        const entry = this.f64[this.ringAt(slot)];
        if (entry !== 0 && !this.expiredAt(entry, now)) keys.push(this.keyOf(entry));
      }
      return keys;
    });
  }

  /**
   * The value of key; when it is missing, calls compute() (which may be async), stores what it returns
   * with options, and returns that. Of the processes missing the same key at once, one computes; the others
   * wait for it (on a shared mutex, without blocking the event loop) and then get its value. What compute
   * throws is thrown, and nothing is stored.
   */
  async getOrSet(key: string, compute: () => CacheValue | Promise<CacheValue>, options?: SharedCacheSetOptions): Promise<Buffer> {
    if (typeof compute !== 'function') throw invalidArgType('compute', 'a function', compute);
    const hit = this.get(key);
    if (hit !== undefined) return hit;
    const mutex = this.compute[stripeOf(key)];
    await mutex.lockAsync(); // 'owner-died' needs nothing: the mutex guards a computation, not data
    try {
      const computed = this.lookup(key, false, copyOut); // another process's, maybe
      if (computed !== undefined) return computed;
      const value = checkValue(await compute());
      this.set(key, value, options);
      return typeof value === 'string' ? Buffer.from(value) : Buffer.from(value);
    } finally {
      mutex.unlock();
    }
  }

  /** Counters of every process, and what the cache holds now (a snapshot). */
  stats(): SharedCacheStats {
    if (this.closed) throw closedError();
    const word = (at: number): number => Atomics.load(this.u32, (this.index + at) / 4);
    return {
      hits: word(I_HITS),
      misses: word(I_MISSES),
      evictions: word(I_EVICTIONS),
      expirations: word(I_EXPIRATIONS),
      bytes: this.f64[(this.index + I_BYTES) / 8],
      entries: word(I_ENTRIES),
      maxEntries: this.maxEntries,
      recoveries: word(I_RECOVERIES),
    };
  }

  /**
   * Checks the segment's heap (SharedPool.check) and that the index agrees with the directory: every slot
   * in use holds the block its key names, the counts and bytes add up. Throws ERR_POOL_CORRUPTED.
   */
  check(): void {
    if (this.closed) throw closedError();
    this.pool.check();
    this.withLock(() => {
      let entries = 0;
      let bytes = 0;
      for (let slot = 0; slot < this.maxEntries; slot++) {
        const entry = this.f64[this.ringAt(slot)];
        if (entry === 0) continue;
        const key = this.keyOf(entry);
        if (this.entryOf(key) !== entry) throw this.corrupted(`slot ${slot} holds a block that '${key}' does not name`);
        if (this.i32[(entry + E_SLOT) / 4] !== slot) throw this.corrupted(`'${key}' records slot ${this.i32[(entry + E_SLOT) / 4]}, not ${slot}`);
        entries++;
        bytes += this.valueBytesOf(entry, -1);
      }
      const keys = this.pool.keys().length;
      if (entries !== this.entries() || keys !== entries) throw this.corrupted(`${entries} slots in use, ${this.entries()} counted, ${keys} keys in the directory`);
      if (bytes !== this.f64[(this.index + I_BYTES) / 8]) throw this.corrupted(`${bytes} value bytes held, ${this.f64[(this.index + I_BYTES) / 8]} counted`);
      if (this.u32[(this.index + I_FREE_TOP) / 4] !== this.maxEntries - entries) throw this.corrupted('the free stack does not hold every free slot');
    });
  }

  private corrupted(what: string): PoolError {
    return new PoolError('ERR_POOL_CORRUPTED', `SharedCache '${this.name}': ${what}`);
  }

  // ---- under the mutex ----

  private withLock<T>(fn: () => T): T {
    if (this.lock.lock() === 'owner-died') this.rebuild();
    try {
      return fn();
    } finally {
      this.lock.unlock();
    }
  }

  private entries(): number {
    return this.u32[(this.index + I_ENTRIES) / 4];
  }

  private ringAt(slot: number): number {
    return (this.index + I_RING) / 8 + slot;
  }

  private addBytes(delta: number): void {
    this.f64[(this.index + I_BYTES) / 8] += delta;
  }

  /** The segment offset of the block key names, or -1. Under the mutex no one frees a named block. */
  private entryOf(key: string): number {
    const block = this.pool.get(key);
    return block === undefined ? -1 : block.byteOffset;
  }

  private keyOf(entry: number): string {
    const start = entry + E_KEY;
    return this.bytes.toString('utf8', start, start + this.u32[(entry + E_KEY_BYTES) / 4]);
  }

  /** The value bytes of the entry at `entry`, from the length its name records (known: pass it, or -1). */
  private valueBytesOf(entry: number, length: number): number {
    const named = length >= 0 ? length : this.pool.get(this.keyOf(entry))!.length;
    return named - E_KEY - this.u32[(entry + E_KEY_BYTES) / 4];
  }

  private expiredAt(entry: number, now: number): boolean {
    const expires = this.f64[(entry + E_EXPIRES) / 8];
    return expires !== 0 && expires <= now;
  }

  private popFreeSlot(): number {
    const top = (this.index + I_FREE_TOP) / 4;
    this.u32[top] -= 1;
    return this.i32[(this.index + I_RING + 8 * this.maxEntries) / 4 + this.u32[top]];
  }

  /**
   * Takes the entry at `entry` (named by key) out: its name and block go (the pool defers the free while a
   * reader pins it), its slot goes back on the free stack.
   */
  private remove(entry: number, key: string): void {
    const slot = this.i32[(entry + E_SLOT) / 4];
    const valueBytes = this.valueBytesOf(entry, -1);
    this.pool.delete(key);
    // Killed from here to the end: the directory no longer names it, the ring still does; the rebuild
    // remakes the ring from the directory.
    this.f64[this.ringAt(slot)] = 0;
    const top = (this.index + I_FREE_TOP) / 4;
    this.i32[(this.index + I_RING + 8 * this.maxEntries) / 4 + this.u32[top]] = slot;
    this.u32[top] += 1;
    this.u32[(this.index + I_ENTRIES) / 4] -= 1;
    this.addBytes(-valueBytes);
  }

  /** remove(), counted as an eviction or an expiration. */
  private removeCounted(entry: number, key: string, counter: number): void {
    this.remove(entry, key);
    Atomics.add(this.u32, (this.index + counter) / 4, 1);
  }

  /**
   * A get found `entry` expired without the mutex: removes it if key still names it and it is still
   * expired. Both are checked again because meanwhile another process may have removed it, and a new set
   * of the key may have been given the very same block (its offset proves nothing alone).
   */
  private expireIfStill(key: string, entry: number): void {
    if (this.entryOf(key) === entry && this.expiredAt(entry, this.now())) this.removeCounted(entry, key, I_EXPIRATIONS);
  }

  /**
   * CLOCK: moves the hand to the first entry that is expired, or not visited since the hand last passed
   * (clearing the visited words it passes), and removes it. Entries inside a read() are passed over for
   * two sweeps at most (a reader killed inside fn leaves its count up). Returns the removed entry's offset.
   */
  private evictOne(): number {
    const hand = (this.index + I_HAND) / 4;
    const now = this.now();
    for (let step = 0; ; step++) {
      const slot = this.u32[hand];
      this.u32[hand] = slot + 1 === this.maxEntries ? 0 : slot + 1;
      const entry = this.f64[this.ringAt(slot)];
      if (entry === 0) continue;
      const key = this.keyOf(entry);
      if (this.expiredAt(entry, now)) {
        this.removeCounted(entry, key, I_EXPIRATIONS);
        return entry;
      }
      if (Atomics.load(this.i32, (entry + E_READERS) / 4) > 0 && step < 3 * this.maxEntries) continue;
      if (Atomics.exchange(this.i32, (entry + E_VISITED) / 4, 0) === 1 && step < 3 * this.maxEntries) continue;
      this.removeCounted(entry, key, I_EVICTIONS);
      return entry;
    }
  }

  /**
   * After a process died holding the mutex: remakes the ring, the free stack, the counts and the bytes
   * from the directory, which names only complete entries. Killed inside it, the next locker rebuilds again.
   */
  private rebuild(): void {
    const freeStack = (this.index + I_RING + 8 * this.maxEntries) / 4;
    for (let slot = 0; slot < this.maxEntries; slot++) this.f64[this.ringAt(slot)] = 0;
    let entries = 0;
    let bytes = 0;
    for (const key of this.pool.keys()) {
      const block = this.pool.get(key);
      if (block === undefined) continue;
      const entry = block.byteOffset;
      if (entries === this.maxEntries || this.keyOf(entry) !== key) {
        this.pool.delete(key); // more names than slots, or not an entry: it cannot be held
        continue;
      }
      this.i32[(entry + E_SLOT) / 4] = entries;
      this.f64[this.ringAt(entries)] = entry;
      bytes += this.valueBytesOf(entry, block.length);
      entries++;
    }
    for (let i = 0; i < this.maxEntries - entries; i++) this.i32[freeStack + i] = this.maxEntries - 1 - i;
    this.u32[(this.index + I_FREE_TOP) / 4] = this.maxEntries - entries;
    this.u32[(this.index + I_ENTRIES) / 4] = entries;
    this.u32[(this.index + I_HAND) / 4] = 0;
    this.f64[(this.index + I_BYTES) / 8] = bytes;
    this.u32[(this.index + I_RECOVERIES) / 4] += 1;
  }
}

/** A copy of the value, in process memory: one allocation and one memcpy, no intermediate view. */
function copyOut(block: Buffer, start: number): Buffer {
  const copy = Buffer.allocUnsafe(block.length - start);
  block.copy(copy, 0, start);
  return copy;
}

/** Which of getOrSet's mutexes guards key (FNV-1a over its UTF-16 code units). */
function stripeOf(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 16777619);
  return (h >>> 0) % COMPUTE_STRIPES;
}
