// SharedQueue: a bounded multi-producer multi-consumer queue of byte messages inside a shared segment,
// found by name (native/core/shared_queue.h states its layout, invariants and crash rules).
import { closedError, invalidArgType, PoolError } from './errors';
import type { NativeSync } from './native';
import { QueueResult } from './native';
import { checkTimeoutMs } from './sync';

/** A message taken with receive(): its bytes, and ack() to say it is done. */
export interface ReceivedMessage {
  readonly data: Buffer;
  /**
   * Marks the message done. Until then it is leased to this thread: if the thread or its process dies
   * first, the message is delivered again. Throws ERR_QUEUE_NOT_LEASED when called twice or from another thread.
   */
  ack(): void;
}

/** @internal What a queue needs from its pool for block messages (lib/shared-pool.ts supplies it). */
export interface BlockBridge {
  /** [offset, length, generation] of a Buffer the pool handed out. */
  handleOf(block: Uint8Array): [number, number, number];
  /** The Buffer for a block handle. */
  handleView(offset: number, length: number, gen: number): Buffer;
  /** The coded error for a pool Status (negative, as lib/native.ts Status). */
  error(status: number, what: string): Error;
}

/** What queue.stats() reports (a snapshot). */
export interface SharedQueueStats {
  /** Messages in the queue: waiting, plus received and not yet acked. */
  messages: number;
  /** Messages received and not yet acked. */
  leased: number;
  /** Ring bytes in use (messages take 16 bytes of header each, rounded up to 16). */
  usedBytes: number;
  maxBytes: number;
  maxMessages: number;
  pushed: number;
  popped: number;
  /** Messages delivered again because the thread that received them died before ack(). */
  redelivered: number;
  /** Times a process died holding the queue's lock and the next one repaired it. */
  recoveries: number;
  closed: boolean;
}

function toBytes(message: unknown): Uint8Array {
  if (typeof message === 'string') return Buffer.from(message);
  if (message instanceof Uint8Array) return message;
  throw invalidArgType('message', 'a Buffer, Uint8Array or string', message);
}

/**
 * A queue of byte messages shared by every process and thread that opens its name (`pool.queue(name)`).
 * Bounded by messages and by bytes: push() waits while it is full (backpressure), tryPush() says false.
 * pop() takes a message for good (at most once: a consumer killed after pop() returned loses that message);
 * receive() leases it until ack() (at least once: the message comes back if the consumer dies first).
 * close() stops pushes; consumers drain what is left, then see the end.
 */
export class SharedQueue implements AsyncIterable<Buffer> {
  readonly name: string;
  /** Ring bytes (each message takes 16 + its length rounded up to 16). */
  readonly maxBytes: number;
  readonly maxMessages: number;
  /** The largest message that fits (maxBytes - 16). */
  readonly maxMessageBytes: number;
  private readonly native: NativeSync;
  /** Where fastPop copies a message (grown when one does not fit); the result is copied out of it. */
  private scratch: Buffer = Buffer.allocUnsafeSlow(4096);

  private readonly pool: BlockBridge;

  /** @internal */
  constructor(native: NativeSync, name: string, pool: BlockBridge) {
    this.native = native;
    this.name = name;
    this.pool = pool;
    const [maxBytes, maxMessages, maxMessage] = native.geometry;
    this.maxBytes = maxBytes;
    this.maxMessages = maxMessages;
    this.maxMessageBytes = maxMessage;
  }

  /**
   * Appends a message (its bytes are copied), waiting while the queue is full. Throws ERR_QUEUE_FULL when
   * still full after timeoutMs (default: no limit), ERR_QUEUE_CLOSED after close(),
   * ERR_QUEUE_MESSAGE_TOO_LARGE when it can never fit, ERR_POOL_CLOSED.
   */
  push(message: Uint8Array | string, timeoutMs?: number): void {
    const bytes = toBytes(message);
    this.pushed(this.fastPush(bytes, checkTimeoutMs(timeoutMs), true), bytes.length);
  }

  /** Appends a message if there is room now: false when the queue is full. Throws as push() does otherwise. */
  tryPush(message: Uint8Array | string): boolean {
    const bytes = toBytes(message);
    const r = this.fastPush(bytes, -1, false);
    if (r === QueueResult.Full) return false;
    this.pushed(r, bytes.length);
    return true;
  }

  /** As push(), without blocking the event loop: a waiter thread waits for room. */
  async pushAsync(message: Uint8Array | string, timeoutMs?: number): Promise<void> {
    const bytes = toBytes(message);
    const t = checkTimeoutMs(timeoutMs);
    let r = this.fastPush(bytes, -1, false);  // room now: no thread needed
    if (r === QueueResult.Full) r = await this.native.pushAsync(bytes, t);
    this.pushed(r, bytes.length);
  }

  /**
   * Hands a block of this pool you own (a Buffer that alloc, realloc, take or replace returned) to the queue
   * without copying it: the queue owns it from now on (a free through your Buffer is refused with
   * ERR_POOL_BLOCK_NAMED while it is queued, and with ERR_POOL_STALE_HANDLE once a consumer has it),
   * and the consumer that pops it owns it next. Waits while the queue is full; throws ERR_QUEUE_FULL after
   * timeoutMs, ERR_QUEUE_CLOSED, and the pool's errors for a block you do not own (ERR_POOL_STALE_HANDLE,
   * ERR_POOL_BLOCK_NAMED, ERR_POOL_FOREIGN_BUFFER, ERR_POOL_NO_HANDLE). The message is the whole Buffer.
   */
  pushBlock(block: Uint8Array, timeoutMs?: number): void {
    const r = this.pushBlockNow(block, checkTimeoutMs(timeoutMs), true);
    this.pushed(r, block.length);
  }

  /** As pushBlock() if there is room now: false when the queue is full (the block stays yours). */
  tryPushBlock(block: Uint8Array): boolean {
    const r = this.pushBlockNow(block, -1, false);
    if (r === QueueResult.Full) return false;
    this.pushed(r, block.length);
    return true;
  }

  private pushBlockNow(block: Uint8Array, timeoutMs: number, wait: boolean): number {
    if (!(block instanceof Uint8Array)) throw invalidArgType('block', 'a Buffer from this pool', block);
    const [offset, length, gen] = this.pool.handleOf(block);
    const r = this.native.pushBlock(offset, gen, length, timeoutMs, wait);
    if (r < 0 && r !== QueueResult.PoolClosed) throw this.pool.error(r, `pushBlock to queue '${this.name}'`);
    return r;
  }

  // A message through the pool (segment lock, then queue lock): what fastPop hands over when the oldest
  // message is a block. Bytes are copied out of scratch; a block message is the block: owned by the caller
  // (pop), or borrowed until ack (lease).
  private sharedPop(lease: boolean, timeoutMs: number, wait: boolean): Buffer | [Buffer, number] | number {
    for (;;) {
      const r = this.native.popShared(this.scratch, lease, timeoutMs, wait);
      if (typeof r === 'number') {
        if (r < 0 && r !== QueueResult.PoolClosed) throw this.pool.error(r, `pop from queue '${this.name}'`);
        return r;
      }
      if (r.length === 1) {
        this.scratch = Buffer.allocUnsafeSlow(Math.max(r[0], this.scratch.length * 2));
        continue;
      }
      const [length, position, isBlock, offset, gen, blockLength] = r;
      let out: Buffer;
      if (isBlock === 1) {
        out = this.pool.handleView(offset, blockLength, gen);
      } else {
        out = Buffer.allocUnsafe(length);
        this.scratch.copy(out, 0, 0, length);
      }
      return lease ? [out, position] : out;
    }
  }

  // The fast calls (native.ts NativeSync.mailbox).
  private fastPush(bytes: Uint8Array, timeoutMs: number, wait: boolean): number {
    const m = this.native.mailbox;
    m[0] = timeoutMs;
    m[1] = wait ? 1 : 0;
    this.native.fastPush(bytes);
    return m[0];
  }

  // A message copied out of the scratch buffer (a pooled Buffer.allocUnsafe for small ones), [message,
  // position] when leased, or the QueueResult.
  private fastPop(lease: boolean, timeoutMs: number, wait: boolean): Buffer | [Buffer, number] | number {
    const m = this.native.mailbox;
    for (;;) {
      m[0] = timeoutMs;
      m[1] = wait ? 1 : 0;
      m[2] = lease ? 1 : 0;
      this.native.fastPop(this.scratch);
      const r = m[0];
      if (r === QueueResult.TooSmall) {
        // Nothing was taken: grow and ask again (the time waited so far is not counted twice: a message is there).
        this.scratch = Buffer.allocUnsafeSlow(Math.max(m[1], this.scratch.length * 2));
        continue;
      }
      if (r === QueueResult.Block) return this.sharedPop(lease, timeoutMs, wait);
      if (r !== QueueResult.Ok) return r;
      const length = m[1];
      const out = Buffer.allocUnsafe(length);
      this.scratch.copy(out, 0, 0, length);
      return lease ? [out, m[2]] : out;
    }
  }

  private pushed(r: number, length: number): void {
    if (r === QueueResult.Ok) return;
    if (r === QueueResult.Full || r === QueueResult.TimedOut) {
      throw new PoolError('ERR_QUEUE_FULL', `Queue '${this.name}' stayed full (${this.maxMessages} messages or ${this.maxBytes} bytes): consume faster, push with a longer timeoutMs, or make a larger queue`);
    }
    if (r === QueueResult.TooLarge) {
      throw new PoolError('ERR_QUEUE_MESSAGE_TOO_LARGE', `A message of ${length} bytes never fits queue '${this.name}' (at most ${this.maxMessageBytes}): split it, or put it in the pool and push its offset`);
    }
    throw this.error(r, 'push');
  }

  /**
   * Takes the oldest message, waiting up to timeoutMs (default: no limit) for one. undefined when the time
   * ran out, or when the queue is closed and empty (`stats().closed` tells which).
   */
  pop(timeoutMs?: number): Buffer | undefined {
    return this.popped(this.fastPop(false, checkTimeoutMs(timeoutMs), true), 'pop') as Buffer | undefined;
  }

  /** The oldest message if there is one now, else undefined. */
  tryPop(): Buffer | undefined {
    return this.popped(this.fastPop(false, -1, false), 'tryPop') as Buffer | undefined;
  }

  /** As pop(), without blocking the event loop. */
  async popAsync(timeoutMs?: number): Promise<Buffer | undefined> {
    const now = this.fastPop(false, -1, false);
    if (now !== QueueResult.Empty) return this.popped(now, 'popAsync') as Buffer | undefined;
    return this.popped(await this.asyncPop(false, checkTimeoutMs(timeoutMs)), 'popAsync') as Buffer | undefined;
  }

  /** As pop(), but the message is leased to this thread until its ack(): see ReceivedMessage. */
  receive(timeoutMs?: number): ReceivedMessage | undefined {
    return this.received(this.fastPop(true, checkTimeoutMs(timeoutMs), true), 'receive');
  }

  /** As receive(), without blocking the event loop. */
  async receiveAsync(timeoutMs?: number): Promise<ReceivedMessage | undefined> {
    const now = this.fastPop(true, -1, false);
    if (now !== QueueResult.Empty) return this.received(now, 'receiveAsync');
    return this.received(await this.asyncPop(true, checkTimeoutMs(timeoutMs)), 'receiveAsync');
  }

  // popAsync's wait on a waiter thread; a block message found there is taken through the pool here (it may
  // have gone to another consumer meanwhile: then wait again, for what is left of the time).
  private async asyncPop(lease: boolean, timeoutMs: number): Promise<Buffer | [Buffer, number] | number> {
    const end = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
    for (;;) {
      const left = end === Infinity ? -1 : Math.max(0, end - Date.now());
      const r = await this.native.popAsync(lease, left);
      if (r !== QueueResult.Block) return r;
      const now = this.sharedPop(lease, -1, false);
      if (now !== QueueResult.Empty) return now;
    }
  }

  private received(r: Buffer | [Buffer, number] | number, op: string): ReceivedMessage | undefined {
    const got = this.popped(r, op) as [Buffer, number] | undefined;
    if (got === undefined) return undefined;
    const [data, position] = got;
    const native = this.native;
    const name = this.name;
    const pool = this.pool;
    let acked = false;
    return {
      data,
      ack(): void {
        let a = acked ? QueueResult.NotLeased : native.ack(position);
        if (a === QueueResult.Block) a = native.ackShared(position);  // a block message: the pool frees its block
        if (a < 0 && a !== QueueResult.PoolClosed) throw pool.error(a, `ack of a message of queue '${name}'`);
        if (a === QueueResult.NotLeased) {
          throw new PoolError('ERR_QUEUE_NOT_LEASED', `This message of queue '${name}' is not leased to this thread: it was acked already, or received by another thread`);
        }
        if (a !== QueueResult.Ok) throw queueError(a, name, 'ack');
        acked = true;
      },
    };
  }

  private popped(r: Buffer | [Buffer, number] | number, op: string): Buffer | [Buffer, number] | undefined {
    if (typeof r !== 'number') return r;
    if (r === QueueResult.Empty || r === QueueResult.TimedOut || r === QueueResult.Closed) return undefined;
    throw this.error(r, op);
  }

  /** Messages until the queue is closed and drained, waiting asynchronously between them. */
  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const m = await this.popAsync();
      if (m === undefined) return;
      yield m;
    }
  }

  /** Refuses pushes from now on (in every process) and wakes every waiter; what is queued can still be popped. */
  close(): void {
    const r = this.native.closeQueue();
    if (r !== QueueResult.Ok) throw this.error(r, 'close');
  }

  stats(): SharedQueueStats {
    const r = this.native.queueStats();
    if (typeof r === 'number') throw this.error(r, 'stats');
    return {
      messages: r[0],
      leased: r[1],
      usedBytes: r[2],
      maxBytes: this.maxBytes,
      maxMessages: this.maxMessages,
      pushed: r[3],
      popped: r[4],
      redelivered: r[5],
      recoveries: r[6],
      closed: r[7] === 1,
    };
  }

  private error(r: number, op: string): Error {
    return queueError(r, this.name, op);
  }
}

function queueError(r: number, name: string, op: string): Error {
  switch (r) {
    case QueueResult.Closed:
      return new PoolError('ERR_QUEUE_CLOSED', `Queue '${name}' is closed (${op}): no more messages can be pushed`);
    case QueueResult.PoolClosed:
    case QueueResult.Cancelled:
      return closedError(`${op} of queue '${name}'`);
    case QueueResult.TimedOut:
      return new PoolError('ERR_SYNC_TIMEOUT', `Timed out waiting for the lock of queue '${name}' (${op})`);
    case QueueResult.Corrupted:
      return new PoolError('ERR_POOL_CORRUPTED', `Queue '${name}' is damaged (${op}): something wrote over its memory`);
    default:
      return new PoolError('ERR_POOL_CORRUPTED', `Unexpected result ${r} (${op} of queue '${name}')`);
  }
}
