// Argument checks shared by every public call, with one message template (see errors.ts).
import { invalidArgType, invalidArgValue, outOfRange } from './errors';
import { Algorithm, ALGORITHMS, HeapOptions } from './types';

export const MAX_ALIGN = 4096;

/** An integer size >= min (default 1) and <= Number.MAX_SAFE_INTEGER. */
export function checkSize(value: unknown, name: string, min = 1): number {
  if (typeof value !== 'number') throw invalidArgType(name, 'a number', value);
  if (!Number.isSafeInteger(value) || value < min) throw outOfRange(name, `an integer >= ${min}`, value);
  return value;
}

/** An integer offset >= 0. */
export function checkOffset(value: unknown, name = 'offset'): number {
  return checkSize(value, name, 0);
}

/** A power of two up to 4096; the heaps never align to less than 16. */
export function checkAlign(value: unknown): number {
  if (value === undefined) return 16;
  if (typeof value !== 'number') throw invalidArgType('align', 'a number', value);
  if (!Number.isInteger(value) || value < 1 || value > MAX_ALIGN || (value & (value - 1)) !== 0) {
    throw outOfRange('align', `a power of two from 1 to ${MAX_ALIGN}`, value);
  }
  return value < 16 ? 16 : value;
}

export function checkBuffer(value: unknown, name = 'buffer'): Buffer | Uint8Array {
  if (!(value instanceof Uint8Array)) throw invalidArgType(name, 'a Buffer or Uint8Array', value);
  return value;
}

export function checkBoolean(value: unknown, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw invalidArgType(name, 'a boolean', value);
  return value;
}

/** Permission bits of a file under /dev/shm: 0 to 0o777, default 0o600 (the owner only). */
export function checkMode(value: unknown): number {
  const mode = value === undefined ? 0o600 : checkSize(value, 'options.mode', 0);
  if (mode > 0o777) throw outOfRange('options.mode', 'permission bits from 0 to 0o777', mode);
  return mode;
}

export function checkObject<T extends object>(value: unknown, name: string): Partial<T> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null) throw invalidArgType(name, 'an object', value);
  return value as Partial<T>;
}

export function checkAlgorithm(value: unknown): Algorithm {
  const algorithm = value ?? 'tlsf';
  if (typeof algorithm !== 'string') throw invalidArgType('options.algorithm', 'a string', algorithm);
  if (!(ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw outOfRange('options.algorithm', "'tlsf', 'buddy' or 'bitmap'", algorithm);
  }
  return algorithm as Algorithm;
}

/** [blockSize, minBlock, maxBlock] as the addon takes them; the addon checks the powers of two. */
export function checkHeapOptions(options: HeapOptions): [number, number, number] {
  return [
    options.blockSize === undefined ? 16 : checkSize(options.blockSize, 'options.blockSize'),
    options.minBlock === undefined ? 16 : checkSize(options.minBlock, 'options.minBlock'),
    options.maxBlock === undefined ? 0 : checkSize(options.maxBlock, 'options.maxBlock'),
  ];
}

/** The options every heap takes (HeapOptions), for the lists of known option names. */
export const HEAP_OPTION_NAMES: readonly (keyof HeapOptions)[] = ['blockSize', 'minBlock', 'maxBlock'];

/**
 * Throws ERR_INVALID_ARG_VALUE for an own enumerable option name that is not in `allowed`, so a typo
 * (`debgu: true`) is an error instead of an option silently ignored. `what` names the call, e.g.
 * 'new Pool()'. Anything but a plain object is left to the caller's type checks.
 */
export function checkKnownOptions(options: unknown, allowed: readonly string[], what: string): void {
  if (typeof options !== 'object' || options === null) return;
  for (const key of Object.keys(options)) {
    if (allowed.includes(key)) continue;
    const near = closestName(key, allowed);
    throw invalidArgValue(
      `Unknown option '${key}' for ${what}: expected one of ${allowed.join(', ')}${near === undefined ? '' : ` (did you mean '${near}'?)`}`,
    );
  }
}

/** The allowed name a typo most likely meant: the same ignoring case, or at most two edits away. */
function closestName(key: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const name of allowed) {
    const d = name.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, name);
    if (d < bestDistance) {
      best = name;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance, with a transposition counted as one edit ('debgu' is one from 'debug'). */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3;
  const d: number[][] = [];
  for (let i = 0; i <= a.length; i++) d.push([i]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}
