// The argument checks of the calls on 32- and 64-bit words of shared memory (atomics, wait, notify) that
// SharedPool and SharedMemory share, so both accept the same arguments with the same messages.
import { checkOffset, checkSize } from './args';
import { invalidArgType, outOfRange, statusError } from './errors';
import { SyncResult } from './native';
import { checkTimeoutMs, waitResult, type WaitResult } from './sync';

/** The largest count a futex wake takes (notify's default: everyone). */
const MAX_WAKE = 2 ** 32 - 1;

/** `count` words of `width` bytes at `offset`: width-aligned, ending inside `size` bytes. Returns the offset. */
export function checkWords(offset: number, count: number, width: number, size: number): number {
  const o = checkOffset(offset);
  const n = checkSize(count, 'count');
  if (o % width !== 0) throw outOfRange('offset', `a multiple of ${width}`, offset);
  if (o + n * width > size) throw outOfRange('count', `words that end inside the segment (${size} bytes)`, count);
  return o;
}

/** wait()'s [offset, expected as Int32, timeoutMs (-1: none)]; the addon checks the offset's alignment and range. */
function waitArgs(offset: number, expected: number, timeoutMs: number | undefined): [number, number, number] {
  if (typeof expected !== 'number') throw invalidArgType('expected', 'a number', expected);
  return [checkOffset(offset), expected | 0, checkTimeoutMs(timeoutMs)];
}

/** notify()'s [offset, count]: count undefined or Infinity wakes every waiter. */
function notifyArgs(offset: number, count: number | undefined): [number, number] {
  const o = checkOffset(offset);
  const n = count === undefined || count === Infinity ? MAX_WAKE : checkSize(count, 'count', 0);
  return [o, Math.min(n, MAX_WAKE)];
}

/** A wait or notify result: the number (>= 0), or the error for a negative Status or for closed memory. */
function syncNumber(r: number, what: string, closedError: () => Error): number {
  if (r === SyncResult.Closed) throw closedError();
  if (r < 0) throw statusError(r, what);
  return r;
}

/** What wait/waitAsync/notify run on: a NativePool's or a NativeSegment's futex calls. */
export interface FutexWords {
  wait(offset: number, expected: number, timeoutMs: number): number;
  waitAsync(offset: number, expected: number, timeoutMs: number): Promise<number>;
  notify(offset: number, count: number): number;
}

/** wait() of SharedPool and SharedMemory: checks the arguments, waits, maps the result. */
export function waitOn(words: FutexWords, closedError: () => Error, offset: number, expected: number, timeoutMs: number | undefined): WaitResult {
  const [o, e, t] = waitArgs(offset, expected, timeoutMs);
  return waitResult(syncNumber(words.wait(o, e, t), 'wait', closedError), `wait at ${o}`);
}

/** waitAsync() of SharedPool and SharedMemory. */
export async function waitOnAsync(words: FutexWords, closedError: () => Error, offset: number, expected: number, timeoutMs: number | undefined): Promise<WaitResult> {
  const [o, e, t] = waitArgs(offset, expected, timeoutMs);
  return waitResult(syncNumber(await words.waitAsync(o, e, t), 'waitAsync', closedError), `waitAsync at ${o}`);
}

/** notify() of SharedPool and SharedMemory: how many woke. */
export function notifyOn(words: FutexWords, closedError: () => Error, offset: number, count: number | undefined): number {
  const [o, n] = notifyArgs(offset, count);
  return syncNumber(words.notify(o, n), 'notify', closedError);
}
