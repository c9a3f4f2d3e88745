// The one place that loads the compiled addon and describes it to TypeScript.
import bindings from 'bindings';
import { makeError } from './errors';

/** Statuses the core returns, negated, in place of an offset. */
export const enum Status {
  OutOfMemory = -1,
  InvalidArgument = -2,
  Foreign = -3,
  DoubleFree = -4,
  Corrupted = -5,
  Incompatible = -6,
  Closed = -100,
}

export interface NativePool {
  readonly buffer: ArrayBuffer;
  readonly address: bigint;
  /** offset, or a negative Status */
  alloc(size: number, align: number, hint: number, zero: boolean): number;
  free(offset: number): number;
  realloc(offset: number, size: number, align: number): number;
  usableSize(offset: number): number;
  /** [capacity, used, free, overhead, peakUsed, live, allocations, frees, failed, largestFree] */
  stats(): Float64Array;
  check(): [number, string];
  /** (offset, size, used) triples, or a negative Status */
  blocks(): Float64Array | number;
  close(): void;
}

export interface Addon {
  NativePool: new (size: number, algorithm: string, blockSize: number, minBlock: number, maxBlock: number) => NativePool;
  systemAlloc(size: number): ArrayBuffer | null;
  systemFree(buffer: ArrayBuffer): number;
  setErrorFactory(factory: (kind: string, code: string, message: string) => Error): void;
  noop(): void;
}

function load(): Addon {
  try {
    return bindings('mempool') as Addon;
  } catch (cause) {
    const e = new Error(
      'mempool: the native addon could not be loaded.\n' +
        'Possible solutions:\n' +
        '- run `npm install` (it builds the addon with node-gyp: needs python3, make and a C++17 compiler)\n' +
        '- run `npm run build` after changing Node versions\n' +
        '- mempool supports Linux only',
    );
    (e as Error & { cause: unknown }).cause = cause;
    throw e;
  }
}

export const addon: Addon = load();
addon.setErrorFactory(makeError);
