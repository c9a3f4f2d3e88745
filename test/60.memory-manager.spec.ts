// The seeds' MemoryManager interface over Pool and SharedPool.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { MemoryManager, PoolError, SharedPool } from '../lib';
import { expectCode } from './helpers';

const MiB = 1 << 20;
const root = path.join(__dirname, '..');

describe('MemoryManager', () => {
  const mm = MemoryManager.getInstance();
  afterEach(() => mm.close());

  it('is one instance per thread', async () => {
    expect(MemoryManager.getInstance()).to.equal(mm);
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { MemoryManager } = require(workerData.root);
      const mm = MemoryManager.getInstance();
      mm.initNormal({ memorySizeBytes: 1 << 20 });
      const b = mm.allocate(10);
      parentPort.postMessage([MemoryManager.getInstance() === mm, mm.memoryType(b)]);
      mm.close();
    `;
    const result = await new Promise((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { root } });
      w.on('message', resolve);
      w.on('error', reject);
    });
    expect(result).to.deep.equal([true, 'normal']);
    // the worker's initNormal did not touch this thread's manager
    expect(mm.memoryType(mm.allocate(4))).to.equal('other');
  });

  it("before initNormal, allocate returns system memory ('other') and deallocate releases it", () => {
    const b = mm.allocate(100);
    expect(b.length).to.equal(100);
    expect(mm.memoryType(b)).to.equal('other');
    mm.deallocate(b, 100);
    expect(b.length).to.equal(0);
    // more than one ArrayBuffer can view: refused cleanly, before any malloc
    expectCode(() => mm.allocate(5 * 2 ** 30), 'ERR_POOL_OUT_OF_MEMORY', PoolError);
    expectCode(() => mm.deallocate(b), 'ERR_POOL_DOUBLE_FREE', PoolError);
    expectCode(() => mm.deallocate(Buffer.alloc(3)), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
  });

  it("initNormal: allocate serves from the pool, with the prefix hint, and from the system when full", () => {
    mm.initNormal({ memorySizeBytes: MiB, algorithm: 'bitmap', blockSize: 16 });
    expectCode(() => mm.initNormal({ memorySizeBytes: MiB }), 'ERR_MM_ALREADY_INITIALIZED', PoolError);
    const blocks = Array.from({ length: 20 }, () => mm.allocate(64));
    for (const b of blocks) expect(mm.memoryType(b)).to.equal('normal');
    mm.deallocate(blocks[2]);
    expectCode(() => mm.deallocate(blocks[2]), 'ERR_POOL_DOUBLE_FREE', PoolError);
    mm.deallocate(blocks[15], 64);
    const hinted = mm.allocate(64, blocks[14]);
    expect(hinted.byteOffset).to.be.at.least(blocks[14].byteOffset);
    expect(mm.allocate(8, Buffer.alloc(1)).length).to.equal(8); // a hint into other memory is ignored
    const big = mm.allocate(4 * MiB); // more than the pool: straight from malloc
    expect(mm.memoryType(big)).to.equal('other');
    mm.deallocate(big);
    expect(big.length).to.equal(0);
    expectCode(() => mm.deallocate(blocks[0], 65), 'ERR_POOL_SIZE_MISMATCH', PoolError);
  });

  it('initShared: allocateShared, the segment getters, and deallocate finding the owner', () => {
    const name = `mempool-test-mm-${process.pid}`;
    try {
      expect(mm.initShared({ name, memorySizeBytes: 2 * MiB, create: false })).to.equal(false);
      expectCode(() => mm.allocateShared(8), 'ERR_MM_NOT_INITIALIZED', PoolError);
      expectCode(() => mm.getMemorySizeBytes(), 'ERR_MM_NOT_INITIALIZED', PoolError);
      expect(mm.initShared({ name, memorySizeBytes: 2 * MiB })).to.equal(true);
      expect(mm.getMemorySizeBytes()).to.equal(2 * MiB);
      expect(mm.getSharedMemoryName()).to.equal(name);
      expect(typeof mm.getSharedMemoryStartAddress()).to.equal('bigint');
      mm.initNormal({ memorySizeBytes: MiB });
      const s = mm.allocateShared(32);
      const n = mm.allocate(32);
      const o = Buffer.alloc(32);
      expect([mm.memoryType(s), mm.memoryType(n), mm.memoryType(o)]).to.deep.equal(['shared', 'normal', 'other']);
      s.write('shared bytes');
      // another process sees them at the same offset
      const offset = s.byteOffset; // a view of the whole segment: its byteOffset is the segment offset
      const script = `const { SharedPool } = require(${JSON.stringify(root)}); const p = SharedPool.open(${JSON.stringify(name)}); process.stdout.write(p.view(${offset}, 12).toString());`;
      expect(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })).to.equal('shared bytes');
      mm.deallocate(s);
      mm.deallocate(n);
      expectCode(() => mm.deallocate(o), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
      mm.close();
      // attaching an existing segment with create: false
      expect(mm.initShared({ name, memorySizeBytes: 0 + 1, create: false })).to.equal(true);
      expect(mm.getMemorySizeBytes()).to.equal(2 * MiB);
    } finally {
      mm.close();
      SharedPool.unlink(name);
    }
  });

  it('initShared passes the segment options through, and attaching needs no size', () => {
    const name = `mempool-test-mm-opts-${process.pid}`;
    try {
      expect(mm.initShared({ name, memorySizeBytes: MiB, algorithm: 'buddy', debug: true, maxKeys: 4, lockTimeoutMs: 100 })).to.equal(true);
      const b = mm.allocateShared(10);
      const pool = SharedPool.open(name);
      expect(pool.algorithm).to.equal('buddy');
      expect(pool.debug).to.equal(true);
      expect(pool.stats().maxKeys).to.equal(4);
      mm.deallocate(b); // before closing the debug attachment `pool`, which would warn about b as a leak
      pool.close();
      mm.close();
      expect(mm.initShared({ name, create: false })).to.equal(true);
      expect(mm.getMemorySizeBytes()).to.equal(MiB);
      expectCode(() => MemoryManager.getInstance().initShared({ name } as never), 'ERR_MM_ALREADY_INITIALIZED', PoolError);
      mm.close();
      expectCode(() => mm.initShared({ name: 'other' } as never), 'ERR_INVALID_ARG_TYPE', TypeError); // creating needs a size
    } finally {
      mm.close();
      SharedPool.unlink(name);
    }
  });

  it('initShared refuses an existing segment of other settings unless acceptExisting: true', () => {
    const name = `mempool-test-mm-existing-${process.pid}`;
    const existing = SharedPool.create(name, { size: 2 * MiB, algorithm: 'buddy' });
    try {
      const e = expectCode(() => mm.initShared({ name, memorySizeBytes: MiB }), 'ERR_SHM_MISMATCH', PoolError);
      expect(e.message).to.include('size: asked 1048576, segment has 2097152');
      expectCode(() => mm.getMemorySizeBytes(), 'ERR_MM_NOT_INITIALIZED', PoolError); // nothing set up
      expect(mm.initShared({ name, memorySizeBytes: 2 * MiB })).to.equal(true); // the same size: fine
      mm.close();
      expect(mm.initShared({ name, memorySizeBytes: MiB, algorithm: 'tlsf', acceptExisting: true })).to.equal(true);
      expect(mm.getMemorySizeBytes()).to.equal(2 * MiB);
    } finally {
      mm.close();
      existing.close();
      SharedPool.unlink(name);
    }
  });

  it('checks its arguments', () => {
    const any = mm as unknown as Record<string, (...a: unknown[]) => unknown>;
    expectCode(() => any.allocate('1'), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => any.allocate(0), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => any.initNormal({ memorySizeBytes: -1 }), 'ERR_OUT_OF_RANGE', RangeError);
    expectCode(() => any.initShared({ name: 3, memorySizeBytes: MiB }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => any.initShared({ name: 'a/b', memorySizeBytes: MiB }), 'ERR_SHM_INVALID_NAME', PoolError);
    expectCode(() => any.deallocate(5), 'ERR_INVALID_ARG_TYPE', TypeError);
  });
});
