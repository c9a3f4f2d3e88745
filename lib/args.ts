// Argument checks shared by every public call, with one message template (see errors.ts).
import { invalidArgType, outOfRange } from './errors';
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
