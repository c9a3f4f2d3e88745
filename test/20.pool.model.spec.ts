// Random alloc/free/realloc/view sequences on small pools, checked against a model after every step.
import { expect } from 'chai';
import fc from 'fast-check';
import { ALGORITHMS, Pool } from '../lib';
import { hasPattern, pattern } from './helpers';

type Op =
  | { kind: 'alloc'; size: number; align: number; zero: boolean }
  | { kind: 'allocOffset'; size: number }
  | { kind: 'allocView'; size: number }
  | { kind: 'freeStale'; pick: number }
  | { kind: 'free'; pick: number }
  | { kind: 'realloc'; pick: number; size: number }
  | { kind: 'view'; pick: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('alloc' as const),
    size: fc.integer({ min: 1, max: 3000 }),
    align: fc.constantFrom(1, 16, 64, 256, 4096),
    zero: fc.boolean(),
  }),
  fc.record({ kind: fc.constant('allocOffset' as const), size: fc.integer({ min: 1, max: 600 }) }),
  // alloc() without options: the small-object cache's path, whose freed Buffers come back from alloc().
  fc.record({ kind: fc.constant('allocView' as const), size: fc.constantFrom(1, 16, 17, 64, 100, 1024, 1025) }),
  fc.record({ kind: fc.constant('freeStale' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('realloc' as const), pick: fc.nat(), size: fc.integer({ min: 1, max: 5000 }) }),
  fc.record({ kind: fc.constant('view' as const), pick: fc.nat() }),
);

interface Live {
  offset: number;
  size: number;
  seed: number;
  /** The Buffer alloc() returned, freed by Buffer. */
  view?: Buffer;
}

function run(algorithm: (typeof ALGORITHMS)[number], ops: Op[]): void {
  const pool = new Pool({ size: 128 * 1024, algorithm });
  const live: Live[] = [];
  const freed: Buffer[] = []; // Buffers freed earlier: freeing one again must be refused unless it is live again
  let seed = 1;
  const intact = (l: Live) => hasPattern(pool.view(l.offset, l.size), l.seed);
  try {
    for (const o of ops) {
      switch (o.kind) {
        case 'alloc':
        case 'allocOffset': {
          let offset: number;
          try {
            offset = o.kind === 'alloc' ? pool.offsetOf(pool.alloc(o.size, { align: o.align, zero: o.zero })) : pool.allocOffset(o.size);
          } catch (e) {
            expect((e as { code: string }).code).to.equal('ERR_POOL_OUT_OF_MEMORY');
            break;
          }
          if (o.kind === 'alloc') {
            expect(offset % o.align).to.equal(0);
            if (o.zero) expect(pool.view(offset, o.size).every((x) => x === 0)).to.equal(true);
          }
          for (const l of live) expect(offset + o.size <= l.offset || l.offset + l.size <= offset, 'no overlap').to.equal(true);
          const l = { offset, size: o.size, seed: seed++ };
          pattern(pool.view(offset, o.size), l.seed);
          live.push(l);
          break;
        }
        case 'allocView': {
          let view: Buffer;
          try {
            view = pool.alloc(o.size);
          } catch (e) {
            expect((e as { code: string }).code).to.equal('ERR_POOL_OUT_OF_MEMORY');
            break;
          }
          expect(view.length).to.equal(o.size);
          const offset = pool.offsetOf(view);
          for (const l of live) expect(offset + o.size <= l.offset || l.offset + l.size <= offset, 'no overlap').to.equal(true);
          const l = { offset, size: o.size, seed: seed++, view };
          pattern(view, l.seed);
          live.push(l);
          break;
        }
        case 'free': {
          if (live.length === 0) break;
          const [l] = live.splice(o.pick % live.length, 1);
          expect(intact(l)).to.equal(true);
          if (l.view) {
            pool.free(l.view);
            freed.push(l.view);
          } else {
            pool.free(l.offset);
          }
          break;
        }
        case 'freeStale': {
          if (freed.length === 0) break;
          const stale = freed[o.pick % freed.length];
          if (live.some((l) => l.view === stale || l.offset === pool.offsetOf(stale))) break; // handed out again: a legal free
          let code = '';
          try {
            pool.free(stale);
          } catch (e) {
            code = (e as { code: string }).code;
          }
          expect(code).to.be.oneOf(['ERR_POOL_DOUBLE_FREE', 'ERR_POOL_FOREIGN_BUFFER']);
          break;
        }
        case 'realloc': {
          if (live.length === 0) break;
          const i = o.pick % live.length;
          const l = live[i];
          let moved: Buffer;
          try {
            moved = pool.realloc(pool.view(l.offset, l.size), o.size);
          } catch (e) {
            expect((e as { code: string }).code).to.equal('ERR_POOL_OUT_OF_MEMORY');
            expect(intact(l)).to.equal(true);
            break;
          }
          const kept = Math.min(l.size, o.size);
          const old = pool.view(l.offset, kept);
          // the kept prefix moved with the block
          expect(hasPattern(moved.subarray(0, kept), l.seed) || kept === 0).to.equal(true);
          void old;
          if (l.view) freed.push(l.view);
          live[i] = { offset: pool.offsetOf(moved), size: o.size, seed: seed++ };
          pattern(moved, live[i].seed);
          break;
        }
        case 'view': {
          if (live.length === 0) break;
          const l = live[o.pick % live.length];
          expect(pool.usableSize(l.offset)).to.be.at.least(l.size);
          expect(intact(l)).to.equal(true);
          break;
        }
      }
      pool.check();
      const s = pool.stats();
      expect(s.liveAllocations).to.equal(live.length);
      expect(s.used).to.equal(live.reduce((n, l) => n + pool.usableSize(l.offset), 0));
      expect(s.capacity).to.equal(s.used + s.free + s.overhead);
    }
    for (const l of live) {
      expect(intact(l)).to.equal(true);
      pool.free(l.offset);
    }
    expect(pool.stats().used).to.equal(0);
    pool.check();
  } finally {
    pool.close();
  }
}

for (const algorithm of ALGORITHMS) {
  describe(`Pool model (${algorithm})`, () => {
    it('random sequences keep every block intact, disjoint and accounted for', () => {
      fc.assert(
        fc.property(fc.array(op, { maxLength: 300 }), (ops) => run(algorithm, ops)),
        { numRuns: 60, seed: 20261122 },
      );
    });
  });
}
