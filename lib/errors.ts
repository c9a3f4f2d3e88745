// Every error mempool throws is an Error with a string `code`. Argument errors use Node's own codes and
// classes (TypeError ERR_INVALID_ARG_TYPE, RangeError ERR_OUT_OF_RANGE); everything about the memory
// itself is a PoolError.

/** The `code` of a PoolError: see README "Errors" for when each is thrown. */
export type PoolErrorCode =
  | 'ERR_POOL_OUT_OF_MEMORY'
  | 'ERR_POOL_FOREIGN_BUFFER'
  | 'ERR_POOL_DOUBLE_FREE'
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
  | 'ERR_QUEUE_NOT_LEASED';

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
