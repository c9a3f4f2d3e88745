import { expect } from 'chai';

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

/** Skips the running test because this machine lacks something, and says what in mocha's output. */
export function skipBecause(ctx: Mocha.Context, why: string): never {
  console.log(`      (skipped: ${why})`);
  ctx.skip();
}
