// The small-object cache: small allocations served from slabs in JavaScript, validated exactly.
import { expect } from 'chai';
import { ALGORITHMS, Pool, PoolError } from '../lib';
import { expectCode, hasPattern, pattern } from './helpers';

const MiB = 1 << 20;

for (const algorithm of ALGORITHMS) {
  describe(`Small-object cache (${algorithm})`, () => {
    it('serves small requests from slabs: disjoint, intact, accounted like any allocation', () => {
      const pool = new Pool({ size: 16 * MiB, algorithm });
      const sizes = Array.from({ length: 600 }, (_, i) => 1 + ((i * 97) % 1024));
      const offsets = sizes.map((n) => pool.allocOffset(n));
      offsets.forEach((o, i) => pattern(pool.view(o, sizes[i]), i));
      const ranges = offsets.map((o, i) => [o, o + sizes[i]]).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).to.be.at.least(ranges[i - 1][1]);
      const s = pool.stats();
      expect(s.liveAllocations).to.equal(600);
      expect(s.used).to.equal(offsets.reduce((n, o) => n + pool.usableSize(o), 0));
      for (const [i, o] of offsets.entries()) expect(pool.usableSize(o)).to.equal(Math.ceil(sizes[i] / 16) * 16);
      expect(s.capacity).to.equal(s.used + s.free + s.overhead);
      const blocks = [...pool.blocks()];
      expect(blocks.filter((b) => b.used).length).to.equal(600);
      expect(blocks.filter((b) => b.used).reduce((n, b) => n + b.size, 0)).to.equal(s.used);
      expect(blocks.filter((b) => !b.used).reduce((n, b) => n + b.size, 0)).to.equal(s.free);
      pool.check();
      offsets.forEach((o, i) => expect(hasPattern(pool.view(o, sizes[i]), i)).to.equal(true));
      offsets.forEach((o) => pool.free(o));
      expect(pool.stats()).to.include({ used: 0, liveAllocations: 0, allocations: 600, frees: 600 });
      pool.check();
      pool.close();
    });

    it('refuses double frees, interior offsets and wrong sizes of slots, changing nothing', () => {
      const pool = new Pool({ size: MiB, algorithm });
      const a = pool.alloc(40);
      const b = pool.alloc(40);
      pattern(b, 2);
      expectCode(() => pool.free(a.subarray(16)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(pool.offsetOf(a) + 8), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(pool.offsetOf(a), 49), 'ERR_POOL_SIZE_MISMATCH', PoolError);
      pool.free(a, 40);
      expectCode(() => pool.free(a), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expectCode(() => pool.usableSize(a), 'ERR_POOL_BLOCK_FREED', PoolError); // a query: not a double free
      expect(pool.stats().liveAllocations).to.equal(1);
      expect(hasPattern(b, 2)).to.equal(true);
      pool.check();
      pool.close();
    });

    it('realloc of a slot: in place while it fits, moved with its bytes when it grows', () => {
      const pool = new Pool({ size: MiB, algorithm });
      const a = pool.alloc(20);
      pattern(a, 9);
      const same = pool.realloc(a, 32);
      expect(pool.offsetOf(same)).to.equal(pool.offsetOf(a));
      const big = pool.realloc(same, 5000);
      expect(hasPattern(big.subarray(0, 20), 9)).to.equal(true);
      expect(pool.stats().liveAllocations).to.equal(1);
      pool.check();
      pool.close();
    });

    it('gives empty slabs back when a large request needs the space, and on trim()', () => {
      const pool = new Pool({ size: 2 * MiB, algorithm });
      const whole = pool.stats().largestFreeBlock;
      // Spread small allocations over many classes so that many slabs are taken, then free them all.
      const offsets: number[] = [];
      for (let k = 1; k <= 16; k++) for (let i = 0; i < 50; i++) offsets.push(pool.allocOffset(k * 16));
      for (const o of offsets) pool.free(o);
      expect(pool.stats().used).to.equal(0);
      // The whole pool in one piece: only possible once the cached slabs are released.
      pool.free(pool.alloc(whole));
      for (let i = 0; i < 10; i++) pool.allocOffset(100);
      expect(pool.trim()).to.equal(0); // one region: nothing to give back to the system, but no error
      pool.check();
      pool.close();
    });

    it('a heap that cannot hold a slab is not grown for one again and again', () => {
      const pool = new Pool({ size: MiB, algorithm, maxBlock: algorithm === 'buddy' ? 2048 : undefined, grow: true });
      for (let i = 0; i < 200; i++) pool.alloc(100);
      expect(pool.stats().chunks).to.be.at.most(2);
      expect(pool.stats().liveAllocations).to.equal(200);
      pool.check();
      pool.close();
    });

    it('hands a freed Buffer out again for the same length, and still refuses it freed twice', () => {
      const pool = new Pool({ size: MiB, algorithm });
      const a = pool.alloc(64);
      const at = pool.offsetOf(a);
      pool.free(a);
      expectCode(() => pool.free(a), 'ERR_POOL_DOUBLE_FREE', PoolError);
      const other = pool.alloc(60); // another length of the same class: a new Buffer
      expect(other).to.not.equal(a);
      const again = pool.alloc(64);
      expect(again).to.equal(a); // the same object, at the same slot, whole again
      expect(pool.offsetOf(again)).to.equal(at);
      expect(again.length).to.equal(64);
      expect(pool.stats().liveAllocations).to.equal(2);
      pattern(again, 5);
      pool.free(again);
      expectCode(() => pool.free(again), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expectCode(() => pool.free(at), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expect(pool.stats().liveAllocations).to.equal(1);
      pool.check();
      pool.free(other);
      expect(pool.stats()).to.include({ used: 0, liveAllocations: 0 });
      pool.check();
      pool.close();
    });

    it('a Buffer of one pool is foreign to another, whatever offset it has there', () => {
      const one = new Pool({ size: MiB, algorithm });
      const two = new Pool({ size: MiB, algorithm });
      const a = one.alloc(32);
      const b = two.alloc(32);
      expect(one.offsetOf(a)).to.equal(two.offsetOf(b)); // same offset in each pool
      expectCode(() => two.free(a), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => one.free(b), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expect(one.stats().liveAllocations).to.equal(1);
      expect(two.stats().liveAllocations).to.equal(1);
      pattern(b, 3);
      one.free(a);
      expect(hasPattern(b, 3)).to.equal(true);
      one.close();
      expectCode(() => one.free(a), 'ERR_POOL_CLOSED');
      two.free(b);
      two.close();
    });

    it('a kept Buffer whose slab went back to the heap is refused, not reused', () => {
      const pool = new Pool({ size: 2 * MiB, algorithm });
      const views = Array.from({ length: 3000 }, () => pool.alloc(48));
      for (const v of views) pool.free(v);
      expect(pool.trim()).to.equal(0); // gives the empty slabs back
      const big = pool.alloc(pool.stats().largestFreeBlock); // covers where the slabs were
      pattern(big, 7);
      for (const v of views.slice(0, 50)) {
        if (pool.offsetOf(v) === pool.offsetOf(big)) continue; // the start of a live block: freeing it is legal
        const e = (() => {
          try {
            pool.free(v);
          } catch (err) {
            return err as PoolError;
          }
          return undefined;
        })();
        expect(e?.code).to.be.oneOf(['ERR_POOL_DOUBLE_FREE', 'ERR_POOL_FOREIGN_BUFFER']);
      }
      expect(hasPattern(big, 7)).to.equal(true);
      pool.free(big);
      const fresh = pool.alloc(48);
      expect(views).to.not.include(fresh);
      pool.free(fresh);
      pool.check();
      pool.close();
    });

    it('offsets past 2^31 and odd values go to the heap, which refuses them', () => {
      const pool = new Pool({ size: MiB, algorithm });
      const a = pool.allocOffset(16);
      for (const bad of [2 ** 31, 2 ** 31 + a, 2 ** 32 + a, 2 ** 40]) expectCode(() => pool.free(bad), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(a + 0.5), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => pool.free(-a), 'ERR_OUT_OF_RANGE', RangeError);
      expect(pool.stats().liveAllocations).to.equal(1);
      pool.free(a);
      pool.close();
    });

    it('cache: false and debug mode use the heap for every request', () => {
      const plain = new Pool({ size: MiB, algorithm, cache: false });
      const a = plain.alloc(100);
      expect(plain.usableSize(a)).to.equal(plain.stats().used);
      expect(plain.stats().peakUsed).to.equal(plain.stats().used); // no slabs: the peak is exact
      plain.close();
      expectCode(() => new Pool({ size: MiB, cache: 1 as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
    });

    it('cache: false: a freed view comes back, the same object, only with its own block and length', () => {
      const plain = new Pool({ size: MiB, algorithm, cache: false });
      const a = plain.alloc(100);
      const at = plain.offsetOf(a);
      plain.free(a);
      expectCode(() => plain.free(a), 'ERR_POOL_DOUBLE_FREE');
      const b = plain.alloc(100);
      // Whether the heap hands the same block back first is the algorithm's business; the view follows it.
      expect(b === a).to.equal(plain.offsetOf(b) === at);
      if (algorithm === 'tlsf') expect(b).to.equal(a); // its quick stacks are LIFO
      expect(b.length).to.equal(100);
      plain.free(b);
      const c = plain.alloc(99);
      expect(c).to.not.equal(a);
      expect(c.length).to.equal(99);
      plain.free(c);
      expect(plain.stats().liveAllocations).to.equal(0);
      plain.check();
      plain.close();
    });
  });
}
