// Review of 796d898 (fast functions reach their pool through a FastLink) and e40c59b (stamped and kept
// views): reproducers of the problems found.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ALGORITHMS, Pool } from '../lib';
import { expectCode } from './helpers';

const root = path.join(__dirname, '..');
const MiB = 1 << 20;

describe('Review: fast functions (796d898)', () => {
  it('a fast function kept without its pool, called after a GC but before the deferred finalizers, touches no freed memory', function () {
    this.timeout(120000);
    // The pool's JavaScript object and its mailbox's ArrayBuffer die in the GC; ~NativePool (which clears
    // link->pool) runs later, from a deferred finalizer. In between, the link still leads to the
    // NativePool and FastAlloc reads and writes mailbox_, whose backing store was freed. The ArrayBuffers
    // made after the GC reuse that memory: a write through the stale mailbox changes one of them (or
    // corrupts malloc and the process dies). With napi_unwrap on the receiver (before 796d898) nothing
    // answered a function called without its pool.
    const code = `
      const { Pool } = require(${JSON.stringify(root)});
      function kept() {
        const pool = new Pool({ size: 1 << 16, cache: false });
        const fastAlloc = pool.chunks[0].native.fastAlloc;
        return () => fastAlloc.call(undefined);
      }
      let changed = 0;
      for (let round = 0; round < 50; round++) {
        const fns = [];
        for (let i = 0; i < 20; i++) fns.push(kept());
        globalThis.gc();
        const arrays = [];
        for (let i = 0; i < 2000; i++) { const a = new Float64Array(new ArrayBuffer(32)); a.fill(64); arrays.push(a); }
        for (const f of fns) f();
        for (const a of arrays) for (let k = 0; k < 4; k++) if (a[k] !== 64) changed++;
      }
      console.log('changed ' + changed);
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', code], { encoding: 'utf8', timeout: 100000 });
    expect({ status: r.status, signal: r.signal, stdout: r.stdout.trim() }).to.deep.equal({ status: 0, signal: null, stdout: 'changed 0' });
  });
});

describe('Review: stamped views (e40c59b)', () => {
  for (const algorithm of ALGORITHMS) {
    it(`${algorithm}, cache on: a double free of a heap-served Buffer whose block became a slab is still ERR_POOL_DOUBLE_FREE and changes nothing`, () => {
      // The keeper is made for every pool that is not in debug mode, cache: true included, and
      // freeStamped() goes straight to the heap: the cache.free(offset) the byteOffset path asks first
      // is skipped. A stale Buffer whose block is now a slab then frees the whole slab under the
      // cache's live slots. Before e40c59b the cache refused it (ERR_POOL_DOUBLE_FREE).
      const pool = new Pool({ size: MiB, algorithm });
      try {
        const v = pool.alloc(4096, { align: 4096 }); // served by the heap (options): a stamped view
        const at = pool.offsetOf(v);
        pool.free(v);
        const a = pool.allocOffset(64); // the cache takes a slab: the heap hands the block back
        const b = pool.allocOffset(64);
        expect([a, b].sort((x, y) => x - y)).to.deep.equal([at, at + 64]); // the slab starts at the freed block
        pool.free(at); // the slot at the freed block's offset is free again; the other slot stays live
        const live = a === at ? b : a;
        expectCode(() => pool.free(v), 'ERR_POOL_DOUBLE_FREE');
        pool.check();
        const c = pool.alloc(3000); // a heap allocation must not overlap the live slot
        const co = pool.offsetOf(c);
        expect(live >= co && live < co + 3000, 'a new heap block overlaps a live slot').to.equal(false);
      } finally {
        pool.close();
      }
    });
  }

  it('a view kept by the caller does not keep the other regions of a Pool dropped without close()', async () => {
    // Each stamped view holds the pool's ViewKeeper in a private field, and the keeper holds the freed
    // views it keeps, which hold their regions' ArrayBuffers (and so the malloc'd regions). Before
    // e40c59b a view held only its own region.
    const gc = (globalThis as { gc?: () => void }).gc!;
    let collected = false;
    const registry = new FinalizationRegistry(() => (collected = true));
    const small = (() => {
      const pool = new Pool({ size: MiB, cache: false, grow: { chunkSize: 64 * MiB } });
      const first = pool.alloc(64); // region 0
      const big = pool.alloc(MiB); // does not fit region 0: region 1 (64 MiB) is added
      const views = Array.from({ length: 4 }, (_, i) => pool.alloc(100 + i));
      for (const view of views) expect(view.buffer).to.equal(big.buffer);
      for (const view of views) pool.free(view); // kept by the pool for reuse
      pool.free(big);
      registry.register(big.buffer, 'region 1');
      return first;
    })();
    for (let i = 0; i < 30 && !collected; i++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(small.length).to.equal(64);
    expect(collected, 'region 1 was not collected').to.equal(true);
  });
});
