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
      expectCode(() => pool.usableSize(a), 'ERR_POOL_DOUBLE_FREE', PoolError);
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

    it('cache: false and debug mode use the heap for every request', () => {
      const plain = new Pool({ size: MiB, algorithm, cache: false });
      const a = plain.alloc(100);
      expect(plain.usableSize(a)).to.equal(plain.stats().used);
      expect(plain.stats().peakUsed).to.equal(plain.stats().used); // no slabs: the peak is exact
      plain.close();
      expectCode(() => new Pool({ size: MiB, cache: 1 as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
    });
  });
}
