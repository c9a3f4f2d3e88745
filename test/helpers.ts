import { expect } from 'chai';
import { ChildProcess, spawn } from 'node:child_process';

/** Runs fn and asserts it throws an Error whose `code` is `code` (and, when given, of class `cls`). */
export function expectCode(fn: () => unknown, code: string, cls?: new (...args: never[]) => Error): Error {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected an error with code ${code}`).to.be.instanceOf(Error);
  expect((caught as { code?: unknown }).code).to.equal(code);
  if (cls) expect(caught).to.be.instanceOf(cls);
  return caught as Error;
}

/** A deterministic byte pattern for a block, so a check can tell whose bytes are where. */
export function pattern(buffer: Uint8Array, seed: number): void {
  for (let i = 0; i < buffer.length; i++) buffer[i] = (seed * 131 + i * 7) & 0xff;
}

export function hasPattern(buffer: Uint8Array, seed: number): boolean {
  for (let i = 0; i < buffer.length; i++) if (buffer[i] !== ((seed * 131 + i * 7) & 0xff)) return false;
  return true;
}

/**
 * Segment names for one spec file: name(tag) gives one that no other run or test uses and remembers it;
 * made() hands back (and forgets) the names given since its last call, for the file's cleanup to unlink.
 */
export function segmentNames(spec: string): { name(tag: string): string; made(): string[] } {
  let counter = 0;
  const given: string[] = [];
  return {
    name(tag: string): string {
      const name = `mempool-test-${process.pid}-${spec}-${tag}-${counter++}`;
      given.push(name);
      return name;
    },
    made: () => given.splice(0),
  };
}

/** Skips the running test because this machine lacks something, and says what in mocha's output. */
export function skipBecause(ctx: Mocha.Context, why: string): never {
  console.log(`      (skipped: ${why})`);
  ctx.skip();
}

/**
 * Runs fn with the process's 'warning' listeners (Node's printer among them) replaced by a collector,
 * and returns the warnings emitted. process.emitWarning() emits on the next tick, so this waits a turn
 * of the event loop before restoring the listeners: swapping them only around a synchronous call lets
 * the warning through to stderr.
 */
export async function captureWarnings(fn: () => unknown): Promise<(Error & { code?: string })[]> {
  const saved = process.listeners('warning');
  const caught: (Error & { code?: string })[] = [];
  const collect = (w: Error): void => void caught.push(w);
  process.removeAllListeners('warning');
  process.on('warning', collect);
  try {
    await fn();
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.removeListener('warning', collect);
    for (const l of saved) process.on('warning', l);
  }
  return caught;
}

/** A node child process that prints one line of JSON per event (test/fixtures/*-child.js). */
export interface JsonChild {
  proc: ChildProcess;
  /** Every line printed so far, parsed. */
  lines: unknown[];
  /** Resolves with the first line that satisfies `pred` (waiting for it). */
  until(pred: (line: unknown) => boolean): Promise<unknown>;
  /** The exit code, or the signal's name when a signal killed it. */
  exit: Promise<number | string>;
}

/** Runs `node script ...args` and parses what it prints line by line (stderr goes to this process's). */
export function runJsonChild(script: string, args: (string | number)[]): JsonChild {
  const proc = spawn(process.execPath, [script, ...args.map(String)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: unknown[] = [];
  const waiters: [(line: unknown) => boolean, (line: unknown) => void][] = [];
  let rest = '';
  proc.stdout!.on('data', (chunk: Buffer) => {
    rest += chunk.toString();
    let nl;
    while ((nl = rest.indexOf('\n')) >= 0) {
      const line = JSON.parse(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
      lines.push(line);
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i][0](line)) waiters.splice(i, 1)[0][1](line);
      }
    }
  });
  const exit = new Promise<number | string>((resolve) => proc.on('exit', (code, signal) => resolve(signal ?? code ?? -1)));
  return {
    proc,
    lines,
    exit,
    until(pred) {
      const seen = lines.find(pred);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push([pred, resolve]));
    },
  };
}
