// A model-based fuzz of SharedPool's ownership API across processes (scripts/model-fuzz.js, a short run of
// it here): the parent forks children (test/fixtures/model-worker.js) that open one segment, sends each a
// seeded random operation at a time (alloc, free, free by offset, realloc, set, replace, take, get, free
// of a borrowed view, getCopy, read, delete, writes, stale handles on purpose) and compares every result
// with a model of owners, generations and bytes; check(), liveAllocations and keys() are compared as it
// goes. The long run: `node scripts/model-fuzz.js --runs 20 --ops 3000`.
import { expect } from 'chai';
import { PoolError, SharedPool } from '../lib';
import { expectCode, segmentNames } from './helpers';

interface FuzzResult {
  ok: boolean;
  heap: string;
  seed: number;
  ops: number;
  children: number;
  failure?: { message: string; op: number; trace: string[] };
}
interface FuzzModule {
  runOne(options: { heap: string; seed: number; ops: number; children?: number; subviews?: 'strict' | 'offset'; reallocStrict?: boolean }): Promise<FuzzResult>;
  describeFailure(r: FuzzResult, o: object): string;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fuzz = require('../scripts/model-fuzz.js') as FuzzModule;

const MiB = 1 << 20;
const OPS = 400;
// Fixed seeds, so a failure here replays with the command in its message; MEMPOOL_MODEL_SEED adds one.
const SEEDS = [53001, 53002, 53003, ...(process.env.MEMPOOL_MODEL_SEED ? [Number(process.env.MEMPOOL_MODEL_SEED)] : [])];

const names = segmentNames('model');
const uniqueName = names.name;

async function expectAgrees(options: Parameters<FuzzModule['runOne']>[0]): Promise<void> {
  const r = await fuzz.runOne(options);
  expect(r.ok, r.ok ? '' : fuzz.describeFailure(r, options)).to.equal(true);
}

describe('SharedPool ownership: a cross-process model-based fuzz', function () {
  this.timeout(180000);

  after(() => {
    for (const n of names.made()) SharedPool.unlink(n);
  });

  for (const heap of ['tlsf', 'buddy', 'bitmap', 'small']) {
    it(`${heap}: ${SEEDS.length} seeds x ${OPS} operations from 2-3 processes agree with the model`, async () => {
      for (const seed of SEEDS) await expectAgrees({ heap, seed, ops: OPS });
    });
  }

  it('debug-tlsf (no slabs, no kept Buffers): a seed agrees with the model', async () => {
    await expectAgrees({ heap: 'debug-tlsf', seed: SEEDS[0], ops: OPS });
  });

  it('frees, reallocs and names through subarray(0, n) views are refused at a live block (ERR_POOL_NO_HANDLE)', async () => {
    // A view the pool did not hand out carries no generation: the core cannot tell a stale one from a
    // current one, so it refuses it (lib/heap-pool.ts genOf(), native kNoHandle).
    for (const heap of ['tlsf', 'small']) await expectAgrees({ heap, seed: SEEDS[1], ops: OPS, subviews: 'strict' });
  });

  it('an in-place realloc makes the old Buffer stale, as any realloc does', () => {
    const pool = SharedPool.create(uniqueName('realloc'), { size: 4 * MiB });
    const old = pool.alloc(4096);
    const fresh = pool.realloc(old, 256);
    expect(pool.offsetOf(fresh)).to.equal(pool.offsetOf(old)); // shrunk in place
    expectCode(() => pool.free(old), 'ERR_POOL_STALE_HANDLE', PoolError); // the old Buffer spans 4096 bytes
    pool.free(fresh);
    expect(pool.stats().liveAllocations).to.equal(0);
    pool.check();
    pool.close();
  });

  describe('regressions: defects this fuzz found (now refused)', () => {
    // A stale Buffer's subarray(0, n) (the README's own pattern: `pool.set('worker-note', b.subarray(0, 13))`)
    // carries no generation, so set/replace/free/realloc through it are not generation-checked: a process
    // whose block was freed and handed to another attachment names or frees the other's block. The README:
    // "A free, realloc or set through a Buffer from before that is refused with ERR_POOL_STALE_HANDLE";
    // set()'s doc: "ERR_POOL_STALE_HANDLE when the Buffer's block was freed or changed owner since you got it".
    function staleAndReused(): { a: SharedPool; b: SharedPool; stale: Buffer; theirs: Buffer } {
      const name = uniqueName('subview');
      const a = SharedPool.create(name, { size: 4 * MiB });
      const b = SharedPool.open(name); // a second attachment: stands for another process
      const stale = a.alloc(4000);
      a.free(stale);
      const theirs = b.alloc(4000); // a heap block: the same offset comes back at once
      expect(b.offsetOf(theirs)).to.equal(a.offsetOf(stale));
      expectCode(() => a.set('k', stale), 'ERR_POOL_STALE_HANDLE', PoolError); // the Buffer itself: refused
      return { a, b, stale, theirs };
    }

    function codeOf(fn: () => unknown): string {
      try {
        fn();
        return 'ok';
      } catch (e) {
        return String((e as { code?: unknown }).code);
      }
    }

    it('set(key, staleBuffer.subarray(0, n)) no longer names a block another attachment owns', () => {
      const { a, b, stale, theirs } = staleAndReused();
      const code = codeOf(() => a.set('k', stale.subarray(0, 16))); // today: 'ok'
      const keys = a.keys(); // today: ['k'], naming b's block
      const bFree = codeOf(() => b.free(theirs)); // today: ERR_POOL_BLOCK_NAMED: b lost its block
      a.delete('k');
      a.close();
      b.close();
      expect({ code, keys, bFree }).to.deep.equal({ code: 'ERR_POOL_NO_HANDLE', keys: [], bFree: 'ok' });
    });

    it('free(staleBuffer.subarray(0)) no longer frees a block another attachment owns', () => {
      const { a, b, stale, theirs } = staleAndReused();
      const code = codeOf(() => a.free(stale.subarray(0))); // today: 'ok', freeing b's block
      const bFree = codeOf(() => b.free(theirs)); // today: ERR_POOL_DOUBLE_FREE
      const live = a.stats().liveAllocations;
      a.close();
      b.close();
      expect({ code, bFree, live }).to.deep.equal({ code: 'ERR_POOL_NO_HANDLE', bFree: 'ok', live: 0 });
    });

    it('the fuzz with subarray ops (seed 7, tlsf, op #274: a replace through a stale subarray once succeeded)', async () => {
      await expectAgrees({ heap: 'tlsf', seed: 7, ops: 400, subviews: 'strict' });
    });
  });
});
