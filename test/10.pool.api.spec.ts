// Every Pool call and every error code, over every algorithm: one conformance suite.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { ALGORITHMS, memoryType, Pool, PoolError } from '../lib';
import { expectCode, hasPattern, pattern } from './helpers';

const MiB = 1 << 20;

for (const algorithm of ALGORITHMS) {
  describe(`Pool (${algorithm})`, () => {
    let pool: Pool;
    beforeEach(() => {
      pool = new Pool({ size: 4 * MiB, algorithm });
    });
    afterEach(() => pool.close());

    it('hands out Buffer views of the pool memory that keep their bytes', () => {
      const a = pool.alloc(100);
      const b = pool.alloc(5000);
      expect(a).to.be.instanceOf(Buffer);
      expect(a.length).to.equal(100);
      expect(b.length).to.equal(5000);
      // views, not copies: one ArrayBuffer for the whole region
      expect(a.buffer).to.equal(b.buffer);
      expect(a.buffer.byteLength).to.equal(4 * MiB);
      pattern(a, 1);
      pattern(b, 2);
      expect(hasPattern(a, 1)).to.equal(true);
      expect(hasPattern(b, 2)).to.equal(true);
      expect(pool.view(pool.offsetOf(a), 100).equals(a)).to.equal(true);
      expect(pool.algorithm).to.equal(algorithm);
      expect(pool.size).to.equal(4 * MiB);
    });

    it('allocOffset gives the same kind of block as an offset', () => {
      const offset = pool.allocOffset(64);
      expect(offset % 16).to.equal(0);
      const view = pool.view(offset, 64);
      view.fill(9);
      expect(pool.usableSize(offset)).to.be.at.least(64);
      expect(pool.stats().liveAllocations).to.equal(1);
      pool.free(offset);
      expect(pool.stats().liveAllocations).to.equal(0);
    });

    it('never hands out overlapping blocks', () => {
      const blocks = Array.from({ length: 200 }, (_, i) => pool.alloc(1 + ((i * 37) % 300)));
      const ranges = blocks.map((b) => [pool.offsetOf(b), pool.offsetOf(b) + b.length]).sort((x, y) => x[0] - y[0]);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).to.be.at.least(ranges[i - 1][1]);
    });

    it('aligns to any power of two up to 4096', () => {
      for (let align = 1; align <= 4096; align *= 2) {
        const b = pool.alloc(24, { align });
        expect(pool.offsetOf(b) % align).to.equal(0);
        expect(b.byteOffset % align).to.equal(0);
      }
      pool.check();
    });

    it('zeroes on request', () => {
      const dirty = pool.alloc(256);
      dirty.fill(0xff);
      pool.free(dirty);
      const clean = pool.alloc(256, { zero: true });
      expect(clean.every((x) => x === 0)).to.equal(true);
    });

    it('places a block at or after the near hint when a free block there fits', () => {
      const blocks = Array.from({ length: 32 }, () => pool.alloc(64));
      pool.free(blocks[3]);
      pool.free(blocks[20]);
      const near = pool.alloc(64, { near: blocks[19] });
      expect(pool.offsetOf(near)).to.be.at.least(pool.offsetOf(blocks[19]));
      const byOffset = pool.alloc(64, { near: pool.offsetOf(blocks[10]) });
      expect(pool.offsetOf(byOffset)).to.be.at.least(pool.offsetOf(blocks[10]));
      expectCode(() => pool.alloc(64, { near: Buffer.alloc(4) }), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
    });

    it('realloc keeps the bytes, in place or moved', () => {
      const a = pool.alloc(100);
      pattern(a, 5);
      const grown = pool.realloc(a, 3000);
      expect(grown.length).to.equal(3000);
      expect(hasPattern(grown.subarray(0, 100), 5)).to.equal(true);
      const blocker = pool.alloc(16);
      const moved = pool.realloc(grown, 200000);
      expect(hasPattern(moved.subarray(0, 100), 5)).to.equal(true);
      const shrunk = pool.realloc(moved, 10);
      expect(hasPattern(shrunk, 5)).to.equal(true);
      expect(pool.stats().liveAllocations).to.equal(2);
      pool.free(blocker);
      pool.free(shrunk);
      pool.check();
      expect(pool.stats().used).to.equal(0);
    });

    it('realloc that cannot be served leaves the block as it was', () => {
      const a = pool.alloc(100);
      pattern(a, 6);
      expectCode(() => pool.realloc(a, 64 * MiB), 'ERR_POOL_OUT_OF_MEMORY', PoolError);
      expect(hasPattern(a, 6)).to.equal(true);
      expect(pool.usableSize(a)).to.be.at.least(100);
      pool.free(a);
    });

    it('stats: used returns to 0, counters agree, capacity = used + free + overhead', () => {
      const s0 = pool.stats();
      expect(s0).to.include({ algorithm, capacity: 4 * MiB, used: 0, liveAllocations: 0, chunks: 1 });
      const blocks = Array.from({ length: 50 }, (_, i) => pool.alloc(10 + i * 10));
      const s1 = pool.stats();
      expect(s1.liveAllocations).to.equal(50);
      expect(s1.allocations).to.equal(50);
      expect(s1.used).to.equal(blocks.reduce((n, b) => n + pool.usableSize(b), 0));
      expect(s1.capacity).to.equal(s1.used + s1.free + s1.overhead);
      expect(s1.largestFreeBlock).to.be.at.most(s1.free);
      expect(s1.fragmentation).to.be.within(0, 1);
      for (const b of blocks) pool.free(b);
      const s2 = pool.stats();
      expect(s2.used).to.equal(0);
      expect(s2.frees).to.equal(50);
      // The heap's peak: the small-object cache's slabs count whole, so it is at least what was live.
      expect(s2.peakUsed).to.be.at.least(s1.used);
      expect(s2.capacity).to.equal(s2.used + s2.free + s2.overhead);
      // whatever the heap keeps cached, the whole space can be had again in one piece
      pool.free(pool.alloc(s0.largestFreeBlock));
    });

    it('blocks() walks used and free blocks in address order, covering what stats count', () => {
      const a = pool.alloc(300);
      const b = pool.alloc(40);
      pool.free(a);
      const blocks = [...pool.blocks()];
      const used = blocks.filter((x) => x.used);
      expect(used.map((x) => x.offset)).to.deep.equal([pool.offsetOf(b)]);
      for (let i = 1; i < blocks.length; i++) expect(blocks[i].offset).to.be.greaterThan(blocks[i - 1].offset);
      const s = pool.stats();
      expect(used.reduce((n, x) => n + x.size, 0)).to.equal(s.used);
      expect(blocks.filter((x) => !x.used).reduce((n, x) => n + x.size, 0)).to.equal(s.free);
    });

    it('check() passes on a healthy pool and names a violation after a stray write', () => {
      const blocks = Array.from({ length: 20 }, () => pool.alloc(48));
      for (let i = 0; i < 20; i += 2) pool.free(blocks[i]);
      pool.check();
      // A stray write over the heap's bookkeeping at the start of the region.
      const header = pool.view(0, 4096);
      header.fill(0x5a, 32, 4096);
      const e = expectCode(() => pool.check(), 'ERR_POOL_CORRUPTED', PoolError);
      expect(e.message).to.match(/violation/);
    });

    it('refuses a double free, a foreign buffer and a sub-view, and changes nothing', () => {
      const keep = pool.alloc(128);
      pattern(keep, 3);
      const a = pool.alloc(128);
      const before = pool.stats();
      expectCode(() => pool.free(a.subarray(16)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(pool.offsetOf(a) + 16), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(Buffer.alloc(128)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.free(123456789), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      const other = new Pool({ size: MiB, algorithm });
      expectCode(() => pool.free(other.alloc(128)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      expectCode(() => pool.offsetOf(Buffer.alloc(1)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      other.close();
      expect(pool.stats()).to.deep.equal(before);
      pool.free(a);
      expectCode(() => pool.free(a), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expectCode(() => pool.free(pool.offsetOf(a)), 'ERR_POOL_DOUBLE_FREE', PoolError);
      expect(pool.stats().liveAllocations).to.equal(1);
      expect(hasPattern(keep, 3)).to.equal(true);
      pool.check();
    });

    it('checks the size given to free', () => {
      const a = pool.alloc(100);
      expectCode(() => pool.free(a, 99), 'ERR_POOL_SIZE_MISMATCH', PoolError);
      const offset = pool.allocOffset(100);
      expectCode(() => pool.free(offset, 1 << 20), 'ERR_POOL_SIZE_MISMATCH', PoolError);
      expect(pool.stats().liveAllocations).to.equal(2);
      pool.free(a, 100);
      pool.free(offset, 100);
      expect(pool.stats().liveAllocations).to.equal(0);
    });

    it('runs out of memory with a clear error and recovers after frees', () => {
      const blocks: Buffer[] = [];
      const e = expectCode(() => {
        for (;;) blocks.push(pool.alloc(64 * 1024));
      }, 'ERR_POOL_OUT_OF_MEMORY', PoolError);
      expect(e.message).to.match(/65536/);
      expect(blocks.length).to.be.greaterThan(16);
      expect(pool.stats().failedAllocations).to.equal(1);
      pool.free(blocks.pop()!);
      expect(pool.alloc(64 * 1024).length).to.equal(64 * 1024);
      expectCode(() => pool.allocOffset(64 * MiB), 'ERR_POOL_OUT_OF_MEMORY', PoolError);
    });

    it('never returns a small block for a huge request', () => {
      expectCode(() => pool.alloc(Number.MAX_SAFE_INTEGER), 'ERR_POOL_OUT_OF_MEMORY');
      expectCode(() => pool.alloc(2 ** 52), 'ERR_POOL_OUT_OF_MEMORY');
      expectCode(() => pool.alloc(2 ** 48 + 1), 'ERR_POOL_OUT_OF_MEMORY');
      expect(pool.stats().liveAllocations).to.equal(0);
    });

    it('rejects wrong types with ERR_INVALID_ARG_TYPE and bad values with ERR_OUT_OF_RANGE', () => {
      const any = pool as unknown as Record<string, (...args: unknown[]) => unknown>;
      for (const bad of ['64', null, undefined, {}, 64n]) expectCode(() => any.alloc(bad), 'ERR_INVALID_ARG_TYPE', TypeError);
      for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 53]) expectCode(() => pool.alloc(bad), 'ERR_OUT_OF_RANGE', RangeError);
      for (const align of [3, 0, 8192, 24, -16]) expectCode(() => pool.alloc(16, { align }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => any.alloc(16, 'x'), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.alloc(16, { zero: 1 }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.alloc(16, { near: 'x' }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.free('x'), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => pool.free(-1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => pool.view(4 * MiB - 10, 11), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => pool.view(4 * MiB, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => pool.view(0, -1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => any.view(0, '1'), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.realloc(pool.alloc(8), 'big'), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.usableSize({}), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.owns(5), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => any.offsetOf('x'), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => memoryType('x' as never), 'ERR_INVALID_ARG_TYPE', TypeError);
    });

    it('memoryType and owns tell pool memory from other memory', () => {
      const a = pool.alloc(10);
      expect(memoryType(a)).to.equal('normal');
      expect(memoryType(a.subarray(2))).to.equal('normal');
      expect(memoryType(Buffer.alloc(10))).to.equal('other');
      expect(memoryType(new Uint8Array(4))).to.equal('other');
      expect(pool.owns(a)).to.equal(true);
      expect(pool.owns(Buffer.alloc(10))).to.equal(false);
    });

    it('close() detaches every view, is idempotent, and every other call then throws ERR_POOL_CLOSED', () => {
      const a = pool.alloc(100);
      const offset = pool.allocOffset(10);
      pool.close();
      pool.close();
      expect(a.length).to.equal(0);
      expect(a.buffer.byteLength).to.equal(0);
      const calls: Array<() => unknown> = [
        () => pool.alloc(1),
        () => pool.allocOffset(1),
        () => pool.free(a),
        () => pool.free(offset),
        () => pool.realloc(a, 5),
        () => pool.view(0, 1),
        () => pool.offsetOf(a),
        () => pool.owns(a),
        () => pool.usableSize(offset),
        () => pool.stats(),
        () => pool.check(),
        () => [...pool.blocks()],
        () => pool.trim(),
      ];
      for (const call of calls) expectCode(call, 'ERR_POOL_CLOSED', PoolError);
    });

    it('Symbol.dispose closes the pool', () => {
      const p = new Pool({ size: MiB, algorithm });
      const a = p.alloc(8);
      p[Symbol.dispose]();
      expect(a.length).to.equal(0);
      expectCode(() => p.alloc(1), 'ERR_POOL_CLOSED');
    });
  });
}

describe('Pool options', () => {
  it('rejects bad options with coded errors', () => {
    const P = Pool as unknown as new (o: unknown) => Pool;
    expectCode(() => new P(undefined), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => new P({}), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => new P({ size: 0 }), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => new P({ size: 100 }), 'ERR_OUT_OF_RANGE', RangeError); // too small for the heap's metadata
    expectCode(() => new P({ size: MiB, algorithm: 'slab' }), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => new P({ size: MiB, algorithm: 7 }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => new P({ size: MiB, grow: 'yes' }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => new P({ size: MiB, grow: { maxSize: 10 } }), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => new P({ size: MiB, fallback: 1 }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => new P({ size: MiB, algorithm: 'bitmap', blockSize: 24 }), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => new P({ size: MiB, algorithm: 'buddy', minBlock: 48 }), 'ERR_OUT_OF_RANGE', RangeError);
  });

  it('a region larger than one ArrayBuffer can view (4 GiB) is refused with ERR_OUT_OF_RANGE', () => {
    const e = expectCode(() => new Pool({ size: 2 ** 32 + 4096 }), 'ERR_OUT_OF_RANGE', RangeError);
    expect(e.message).to.contain('4294967296');
  });

  it('a pool the system cannot provide is refused with ERR_POOL_OUT_OF_MEMORY', () => {
    // A process whose address space is limited to 3 GB asks for 4 GiB.
    const script = `const { Pool } = require(${JSON.stringify(path.join(__dirname, '..'))});
      try { new Pool({ size: 2 ** 32 }); console.log('made'); } catch (e) { console.log(e.code); }`;
    const out = execFileSync('bash', ['-c', 'ulimit -v 3000000; exec "$0" -e "$1"', process.execPath, script], { encoding: 'utf8' });
    expect(out.trim()).to.equal('ERR_POOL_OUT_OF_MEMORY');
  });
});

describe('usableSize() of a freed block: its own code, not a double free', () => {
  for (const algorithm of ALGORITHMS) {
    it(`${algorithm}: ERR_POOL_BLOCK_FREED by Buffer and by offset, small and large blocks; a free of it is still a double free`, () => {
      const pool = new Pool({ size: MiB, algorithm });
      try {
        for (const size of [24, 5000]) {
          const b = pool.alloc(size);
          const at = pool.offsetOf(b);
          pool.free(b);
          const e = expectCode(() => pool.usableSize(at), 'ERR_POOL_BLOCK_FREED', PoolError);
          expect(e.message).to.include(`offset ${at}`);
          expectCode(() => pool.usableSize(b), 'ERR_POOL_BLOCK_FREED', PoolError);
          expectCode(() => pool.free(at), 'ERR_POOL_DOUBLE_FREE', PoolError);
        }
      } finally {
        pool.close();
      }
    });
  }
});
