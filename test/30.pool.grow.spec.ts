// grow, trim and fallback: what a pool does when it is full.
import { expect } from 'chai';
import { ALGORITHMS, memoryType, Pool, PoolError } from '../lib';
import { expectCode, hasPattern, pattern } from './helpers';

const KiB = 1024;

for (const algorithm of ALGORITHMS) {
  describe(`Pool grow, trim, fallback (${algorithm})`, () => {
    it('without grow, never holds more than its size', () => {
      const pool = new Pool({ size: 256 * KiB, algorithm });
      const blocks: Buffer[] = [];
      expectCode(() => {
        for (;;) blocks.push(pool.alloc(1000));
      }, 'ERR_POOL_OUT_OF_MEMORY', PoolError);
      expect(pool.stats().capacity).to.equal(256 * KiB);
      expect(pool.stats().chunks).to.equal(1);
      pool.close();
    });

    it('grows by chunks when full, keeps every block, and trim() returns empty chunks', () => {
      const pool = new Pool({ size: 256 * KiB, algorithm, grow: { chunkSize: 256 * KiB } });
      const blocks: Buffer[] = [];
      for (let i = 0; i < 1500; i++) {
        const b = pool.alloc(500);
        pattern(b, i);
        blocks.push(b);
      }
      const s = pool.stats();
      expect(s.chunks).to.be.greaterThan(2);
      expect(s.capacity).to.equal(256 * KiB * s.chunks);
      expect(s.liveAllocations).to.equal(1500);
      blocks.forEach((b, i) => expect(hasPattern(b, i)).to.equal(true));
      // offsets are unique across chunks and view() finds each chunk's bytes
      const offsets = new Set(blocks.map((b) => pool.offsetOf(b)));
      expect(offsets.size).to.equal(1500);
      expect(hasPattern(pool.view(pool.offsetOf(blocks[1400]), 500), 1400)).to.equal(true);
      expect(pool.trim()).to.equal(0);
      // Free everything in the later chunks: trim gives them back.
      for (const b of blocks.slice(300)) pool.free(b);
      const released = pool.trim();
      expect(released).to.be.greaterThan(0);
      expect(released % (256 * KiB)).to.equal(0);
      expect(pool.stats().capacity).to.equal(s.capacity - released);
      blocks.slice(0, 300).forEach((b, i) => expect(hasPattern(b, i)).to.equal(true));
      pool.check();
      for (const b of blocks.slice(0, 300)) pool.free(b);
      expect(pool.stats().used).to.equal(0);
      pool.close();
    });

    it('grow honours maxSize', () => {
      const pool = new Pool({ size: 128 * KiB, algorithm, grow: { chunkSize: 128 * KiB, maxSize: 384 * KiB } });
      expectCode(() => {
        for (;;) pool.alloc(1000);
      }, 'ERR_POOL_OUT_OF_MEMORY');
      expect(pool.stats().capacity).to.be.at.most(384 * KiB);
      expect(pool.stats().chunks).to.equal(3);
      pool.close();
    });

    it('grow serves a request larger than a chunk', () => {
      const pool = new Pool({ size: 64 * KiB, algorithm, grow: true });
      const big = pool.alloc(1 << 20);
      expect(big.length).to.equal(1 << 20);
      expect(memoryType(big)).to.equal('normal');
      pool.free(big);
      pool.close();
    });

    it('fallback serves from the system allocator when full, and free/realloc/usableSize accept it', () => {
      const pool = new Pool({ size: 64 * KiB, algorithm, fallback: true });
      const big = pool.alloc(1 << 20, { zero: true });
      expect(big.length).to.equal(1 << 20);
      expect(big.every((x) => x === 0)).to.equal(true);
      expect(memoryType(big)).to.equal('other');
      expect(pool.owns(big)).to.equal(false);
      expect(pool.usableSize(big)).to.equal(1 << 20);
      expect(pool.stats().fallbackAllocations).to.equal(1);
      expect(pool.stats().failedAllocations).to.equal(1);
      pattern(big.subarray(0, 100), 4);
      const bigger = pool.realloc(big, 2 << 20);
      expect(hasPattern(bigger.subarray(0, 100), 4)).to.equal(true);
      expect(big.length).to.equal(0); // released: the old view is detached
      expectCode(() => pool.free(big), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expectCode(() => pool.free(bigger.subarray(1)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      pool.free(bigger);
      expect(bigger.length).to.equal(0);
      expectCode(() => pool.free(bigger), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expect(pool.stats().fallbackAllocations).to.equal(0);
      // allocOffset has no offset to give for system memory: it still fails cleanly.
      expectCode(() => pool.allocOffset(1 << 20), 'ERR_POOL_OUT_OF_MEMORY');
      // close releases fallback blocks too
      const left = pool.alloc(1 << 20);
      pool.close();
      expect(left.length).to.equal(0);
    });
  });
}
