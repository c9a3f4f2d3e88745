// Every error mempool throws is an Error with a string `code`. Argument errors use Node's own codes and
// classes (TypeError ERR_INVALID_ARG_TYPE, RangeError ERR_OUT_OF_RANGE); everything about the memory
// itself is a PoolError.

import { constants as osConstants } from 'node:os';

/** The `code` of a PoolError: see README "Errors" for when each is thrown. */
export type PoolErrorCode =
  | 'ERR_POOL_OUT_OF_MEMORY'
  | 'ERR_POOL_FOREIGN_BUFFER'
  | 'ERR_POOL_DOUBLE_FREE'
  | 'ERR_POOL_BLOCK_FREED'
  | 'ERR_POOL_SIZE_MISMATCH'
  | 'ERR_POOL_CLOSED'
  | 'ERR_POOL_CORRUPTED'
  | 'ERR_POOL_STALE_HANDLE'
  | 'ERR_POOL_BLOCK_NAMED'
  | 'ERR_POOL_NO_HANDLE'
  | 'ERR_SHM_DIRECTORY_FULL'
  | 'ERR_SHM_PIN_TABLE_FULL'
  | 'ERR_SHM_EXISTS'
  | 'ERR_SHM_MISMATCH'
  | 'ERR_SHM_NOT_FOUND'
  | 'ERR_SHM_PERMISSION'
  | 'ERR_SHM_INVALID_NAME'
  | 'ERR_SHM_INCOMPATIBLE'
  | 'ERR_SHM_EMPTY'
  | 'ERR_SHM_MISMATCH'
  | 'ERR_SHM_LOCK_TIMEOUT'
  | 'ERR_SHM_SYSTEM'
  | 'ERR_MM_NOT_INITIALIZED'
  | 'ERR_MM_ALREADY_INITIALIZED'
  | 'ERR_POOL_NOT_DEBUG'
  | 'ERR_PROCESS_ALIVE'
  | 'ERR_SHM_OBJECT_MISMATCH'
  | 'ERR_SYNC_TIMEOUT'
  | 'ERR_SYNC_DEADLOCK'
  | 'ERR_SYNC_NOT_OWNER'
  | 'ERR_QUEUE_FULL'
  | 'ERR_QUEUE_CLOSED'
  | 'ERR_QUEUE_MESSAGE_TOO_LARGE'
  | 'ERR_QUEUE_NOT_LEASED'
  | 'ERR_CACHE_VALUE_TOO_LARGE'
  | 'ERR_CACHE_INCOMPATIBLE';

/**
 * Every `code` mempool's errors carry: PoolError's, plus Node's ERR_INVALID_ARG_TYPE (a TypeError: an
 * argument of the wrong type), ERR_INVALID_ARG_VALUE (a TypeError: an unknown option name) and
 * ERR_OUT_OF_RANGE (a RangeError: a value outside what is accepted); and ERR_ADDON_LOAD (an Error thrown
 * when mempool is first loaded: the native addon is missing or was built for another Node).
 */
const POOL_ERROR_BRAND = Symbol.for('mempool.PoolError');

export type ErrorCode = PoolErrorCode | 'ERR_INVALID_ARG_TYPE' | 'ERR_INVALID_ARG_VALUE' | 'ERR_OUT_OF_RANGE' | 'ERR_ADDON_LOAD';

/**
 * An error about pool memory (out of memory, a foreign or double free, a closed or corrupted pool) or
 * about a shared segment (its name, existence, permissions, format or lock).
 */
export class PoolError extends Error {
  /** What went wrong, stable across versions (the message may change): test this, not the message. */
  readonly code: PoolErrorCode;
  constructor(code: PoolErrorCode, message: string) {
    super(message);
    this.name = 'PoolError';
    this.code = code;
    Object.defineProperty(this, POOL_ERROR_BRAND, { value: true });
  }

  // Two copies of mempool in one process (a bundled and an installed one, dist/ beside lib/ under ts-node)
  // share one native addon, whose errors are made by the copy that loaded last: `instanceof PoolError`
  // holds for a PoolError of any copy.
  static [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[POOL_ERROR_BRAND] === true;
  }
}

export interface CodedTypeError extends TypeError {
  code: 'ERR_INVALID_ARG_TYPE';
}
export interface CodedValueError extends TypeError {
  code: 'ERR_INVALID_ARG_VALUE';
}
export interface CodedRangeError extends RangeError {
  code: 'ERR_OUT_OF_RANGE';
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `'${value.length > 40 ? value.slice(0, 40) + '...' : value}'`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return `${typeof value} ${String(value)}`;
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') return `an instance of ${(value as object).constructor?.name ?? 'Object'}`;
  return typeof value;
}

/** "Expected <what> for <name> but received <value>": the one template for argument errors. */
export function invalidArgType(name: string, expected: string, value: unknown): CodedTypeError {
  const e = new TypeError(`Expected ${expected} for ${name} but received ${describe(value)}`) as CodedTypeError;
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

/** An argument of the right type whose value is not one mempool knows (Node's ERR_INVALID_ARG_VALUE, a TypeError). */
export function invalidArgValue(message: string): CodedValueError {
  const e = new TypeError(message) as CodedValueError;
  e.code = 'ERR_INVALID_ARG_VALUE';
  return e;
}

export function outOfRange(name: string, expected: string, value: unknown): CodedRangeError {
  const e = new RangeError(`Expected ${expected} for ${name} but received ${describe(value)}`) as CodedRangeError;
  e.code = 'ERR_OUT_OF_RANGE';
  return e;
}

/** Made for the addon, so errors thrown from C++ carry the same classes and codes. */
export function makeError(kind: string, code: string, message: string): Error {
  if (kind === 'TypeError') {
    const e = new TypeError(message) as CodedTypeError;
    e.code = 'ERR_INVALID_ARG_TYPE';
    return e;
  }
  if (kind === 'RangeError') {
    const e = new RangeError(message) as CodedRangeError;
    e.code = 'ERR_OUT_OF_RANGE';
    return e;
  }
  return new PoolError(code as PoolErrorCode, message);
}

/**
 * The core's statuses (native/core/heap.h's enum, negated: they cross the boundary where an offset or a
 * count would be, as negative numbers). Closed is the addon's own: a call on a closed pool.
 * test/96.error-table.spec.ts checks this list against heap.h.
 */
export const enum Status {
  OutOfMemory = -1,
  InvalidArgument = -2,
  Foreign = -3,
  DoubleFree = -4,
  Corrupted = -5,
  Incompatible = -6,
  Exists = -7,
  NotFound = -8,
  Permission = -9,
  InvalidName = -10,
  LockTimeout = -11,
  SystemError = -12,
  TooLarge = -13,
  DirectoryFull = -14,
  Stale = -15,
  Named = -16,
  PinsFull = -17,
  NoHandle = -18,
  ObjectMismatch = -19,
  Empty = -20,
  SizeMismatch = -21,
  Closed = -100,
}

/**
 * What a status is about: `what` the operation and its input ("freeing offset 4096"), or, for creating,
 * opening and unlinking shared memory, its `name` with the errno behind it and, for a size mismatch, the
 * sizes found and asked for.
 */
export interface StatusContext {
  what?: string;
  name?: string;
  errno?: number;
  found?: number;
  asked?: number;
  /** What check() found, for Corrupted. */
  detail?: string;
}

function where(c: StatusContext): string {
  return c.what ?? (c.name !== undefined ? `shared memory '${c.name}'` : 'an operation');
}

const ERRNO = osConstants.errno as Record<string, number>;

/** " (ENOSPC)" for the errno behind a status, or nothing. */
function systemMessage(c: StatusContext): string {
  if (!c.errno) return '';
  const name = Object.entries(ERRNO).find(([, v]) => v === c.errno)?.[0];
  return ` (${name ?? `errno ${c.errno}`})`;
}

/**
 * The one table from a status to its error: code and message. Every status the core can return has a
 * row; the message names the input and says what to do.
 */
const STATUS_ERRORS: Record<number, (c: StatusContext) => Error> = {
  [Status.OutOfMemory]: (c) => new PoolError('ERR_POOL_OUT_OF_MEMORY', `Out of memory (${where(c)}): free blocks, or make the pool larger (or let it grow)`),
  [Status.InvalidArgument]: (c) => outOfRange('size or align', 'a size the heap can represent', where(c)),
  [Status.Foreign]: (c) => new PoolError('ERR_POOL_FOREIGN_BUFFER', `Not the start of an allocation of this pool (${where(c)}): pass the Buffer or offset alloc returned, to the pool that made it`),
  [Status.DoubleFree]: (c) => new PoolError('ERR_POOL_DOUBLE_FREE', `The block was already freed (${where(c)}); nothing was changed`),
  [Status.Corrupted]: (c) =>
    c.detail
      ? new PoolError('ERR_POOL_CORRUPTED', `${c.detail} (found while ${where(c)})`)
      : c.what === undefined && c.name !== undefined
        ? new PoolError('ERR_POOL_CORRUPTED', `Shared memory '${c.name}' is a mempool segment with a damaged header or heap, or a file shorter than its header says (truncated): it cannot be opened; unlink it and create it again`)
        : new PoolError('ERR_POOL_CORRUPTED', `The pool's bookkeeping is damaged (found while ${where(c)}); run check() for details`),
  [Status.Incompatible]: (c) =>
    new PoolError('ERR_SHM_INCOMPATIBLE', `Shared memory '${c.name}' is not a mempool segment of a known version (too short, another program's, or made by another mempool version): open it with the version that made it, or unlink it`),
  [Status.Exists]: (c) => new PoolError('ERR_SHM_EXISTS', `Shared memory '${c.name}' already exists: open it, pass exclusive: false, or unlink it first`),
  [Status.NotFound]: (c) => new PoolError('ERR_SHM_NOT_FOUND', `No shared memory named '${c.name}'`),
  [Status.Permission]: (c) =>
    new PoolError('ERR_SHM_PERMISSION', `Not permitted to use shared memory '${c.name}'${systemMessage(c)}: run as its owner, or create it with a mode that lets this user in`),
  [Status.InvalidName]: (c) =>
    new PoolError('ERR_SHM_INVALID_NAME', `Expected a plain name of 1 to 250 bytes without '/' or NUL for the shared memory name but received '${c.name ?? ''}'`),
  [Status.LockTimeout]: (c) => new PoolError('ERR_SHM_LOCK_TIMEOUT', `Timed out waiting for the shared pool's lock (${where(c)}): another process holds it; raise lockTimeoutMs, or find the holder`),
  [Status.SystemError]: (c) => {
    if (c.errno === ERRNO.ENOSPC || c.errno === ERRNO.ENOMEM || c.errno === ERRNO.EFBIG) {
      return new PoolError('ERR_POOL_OUT_OF_MEMORY', `The system could not provide ${where(c)}${systemMessage(c)}: free space in /dev/shm, or ask for less`);
    }
    return new PoolError('ERR_SHM_SYSTEM', `The system refused ${where(c)}${systemMessage(c)}`);
  },
  [Status.TooLarge]: (c) => outOfRange('key', 'a key of 1 to 224 UTF-8 bytes', where(c)),
  [Status.DirectoryFull]: (c) => new PoolError('ERR_SHM_DIRECTORY_FULL', `The directory is full (${where(c)}): delete keys, or create the segment with a larger maxKeys`),
  [Status.Stale]: (c) =>
    new PoolError(
      'ERR_POOL_STALE_HANDLE',
      `The block was freed or handed to another owner since this view was obtained (${where(c)}): nothing was changed; use the view the last alloc, take or replace returned`,
    ),
  [Status.Named]: (c) =>
    new PoolError('ERR_POOL_BLOCK_NAMED', `The block is owned by a key of the directory or by a queue it was pushed to (${where(c)}): take(key) or pop it first, or delete(key)`),
  [Status.PinsFull]: (c) => new PoolError('ERR_SHM_PIN_TABLE_FULL', `Every pin of the segment is in use (${where(c)}): finish other reads first, or use getCopy()`),
  [Status.NoHandle]: (c) =>
    new PoolError(
      'ERR_POOL_NO_HANDLE',
      `This Buffer was not handed out by the pool (a subarray or view() carries no generation), so a stale one cannot be told from a current one (${where(c)}): pass the Buffer alloc, realloc, take or replace returned (set(key, buffer, length) names fewer bytes), or its offset`,
    ),
  [Status.ObjectMismatch]: (c) =>
    new PoolError('ERR_SHM_OBJECT_MISMATCH', `An object of that name exists with other parameters (${where(c)}): open it without them to take what exists, or use another name`),
  [Status.Empty]: (c) =>
    new PoolError(
      'ERR_SHM_EMPTY',
      `Shared memory '${c.name}' is empty (0 bytes), probably left by a creator that died before sizing it: unlink it (SharedMemory.unlink('${c.name}')) and create it again`,
    ),
  [Status.SizeMismatch]: (c) =>
    new PoolError(
      'ERR_SHM_MISMATCH',
      `Shared memory '${c.name}' exists with ${c.found} bytes, not the ${c.asked} asked for: pass size ${c.found}, open it with SharedMemory.open(), or unlink it first`,
    ),
  [Status.Closed]: () => closedError(),
};

/** The pool was closed: the one message for every call after close() (`what`: the call, if known). */
export function closedError(what?: string): PoolError {
  return new PoolError('ERR_POOL_CLOSED', what === undefined ? 'The pool is closed' : `The pool is closed (${what})`);
}

/**
 * The error of a negative status: `context` is what was being done ("freeing offset 4096"), or a
 * StatusContext. A status outside the table (a newer core) is reported as corruption with its number.
 */
export function statusError(status: number, context: string | StatusContext, detail?: string): Error {
  const c: StatusContext = typeof context === 'string' ? { what: context, detail } : context;
  const make = STATUS_ERRORS[status];
  if (make === undefined) return new PoolError('ERR_POOL_CORRUPTED', `Unexpected status ${status} while ${where(c)}`);
  return make(c);
}

/** Made for the addon: the error of creating, opening or unlinking shared memory `name`. */
export function shmStatusError(status: number, name: string, errno: number, found: number, asked: number): Error {
  return statusError(status, { name, errno, found, asked });
}

/**
 * A query (usableSize) of a block that is free is no double free: the same refusal under its own code.
 * Other errors pass through.
 */
export function queryError(e: Error, what: string): Error {
  if ((e as PoolError).code !== 'ERR_POOL_DOUBLE_FREE') return e;
  return new PoolError('ERR_POOL_BLOCK_FREED', `The block was freed (${what}): ask about a live allocation, the Buffer or offset the last alloc returned`);
}
