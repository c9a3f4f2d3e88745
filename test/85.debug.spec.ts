// Tracking and debugging: guards, poison, leak sites, histograms, events, maps, attach table, reclaim.
import { expect } from 'chai';
import { ChildProcess, spawn } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import * as path from 'node:path';
import { ALGORITHMS, CHANNELS, Pool, PoolError, SharedPool } from '../lib';
import { captureWarnings, expectCode } from './helpers';

const MiB = 1 << 20;
const root = path.join(__dirname, '..');

function makeLeak(pool: Pool): Buffer {
  return pool.alloc(100); // a site of its own
}

for (const algorithm of ALGORITHMS) {
  describe(`Debug mode (${algorithm})`, () => {
    let pool: Pool;
    /** What closing `pool` must warn about: the first line of each MEMPOOL_LEAK warning, set by the test. */
    let expectedLeaks: string[];
    beforeEach(() => {
      pool = new Pool({ size: 4 * MiB, algorithm, debug: true });
      expectedLeaks = [];
    });
    afterEach(async () => {
      // Some tests leave allocations live on purpose: closing then warns, and the warning is checked
      // here instead of being printed among the test results.
      const warnings = await captureWarnings(() => pool.close());
      expect(warnings.map((w) => `${w.name} ${w.code}: ${w.message.split(';')[0]}`)).to.deep.equal(
        expectedLeaks.map((l) => `MempoolLeakWarning MEMPOOL_LEAK: ${l}`),
      );
    });

    it('an overrun is reported on free and by check(), naming the allocation and the side', () => {
      expect(pool.debug).to.equal(true);
      const a = pool.alloc(100);
      const b = pool.alloc(100);
      expect(pool.usableSize(a)).to.equal(100); // in debug mode a byte more is an overrun
      pool.view(pool.offsetOf(a) + 100, 1)[0] = 1; // one byte past the end
      const e = expectCode(() => pool.check(), 'ERR_POOL_CORRUPTED', PoolError);
      expect(e.message).to.contain(`overrun after the allocation at offset ${pool.offsetOf(a)}`);
      const f = expectCode(() => pool.free(a), 'ERR_POOL_CORRUPTED', PoolError);
      expect(f.message).to.contain('overrun');
      expect(pool.stats().liveAllocations).to.equal(2); // the free was refused
      pool.free(b); // the neighbour is fine
      expectedLeaks = ['closing a debug pool with 1 live allocation(s) (100 bytes)']; // a, whose free was refused
    });

    it('an underrun is reported', () => {
      const a = pool.alloc(64);
      pool.view(pool.offsetOf(a) - 1, 1)[0] = 0;
      const e = expectCode(() => pool.free(a), 'ERR_POOL_CORRUPTED', PoolError);
      expect(e.message).to.contain(`underrun before the allocation at offset ${pool.offsetOf(a)}`);
      expectedLeaks = ['closing a debug pool with 1 live allocation(s) (64 bytes)'];
    });

    it('a write after free is reported by check() and before the memory is reused', () => {
      const a = pool.alloc(200);
      const offset = pool.offsetOf(a);
      pool.free(a);
      pool.check();
      expect(pool.view(offset, 200).every((x) => x === 0xdd)).to.equal(true); // poisoned
      pool.view(offset + 10, 1)[0] = 0x42; // through a stale pointer
      const e = expectCode(() => pool.check(), 'ERR_POOL_CORRUPTED', PoolError);
      expect(e.message).to.contain(`write after free to the allocation at offset ${offset}`);
      // Push it out of the quarantine: the free that does so reports it.
      let reported: Error | undefined;
      for (let i = 0; i < 3000 && !reported; i++) {
        try {
          pool.free(pool.alloc(16));
        } catch (err) {
          reported = err as Error;
        }
      }
      expect((reported as PoolError).code).to.equal('ERR_POOL_CORRUPTED');
      expect(reported!.message).to.contain('write after free');
    });

    it('leaks() groups live allocations by call site with counts and bytes', () => {
      for (let i = 0; i < 3; i++) makeLeak(pool);
      const x = pool.alloc(7);
      const leaks = pool.leaks();
      const mine = leaks.find((l) => l.site.includes('makeLeak'));
      expect(mine, JSON.stringify(leaks)).to.include({ count: 3, bytes: 300 });
      expect(mine!.site).to.contain('85.debug.spec.ts');
      expect(mine!.site).to.not.contain('heap-pool'); // trimmed to the caller's frames
      expect(leaks.reduce((n, l) => n + l.count, 0)).to.equal(4);
      pool.free(x);
      expect(pool.leaks().reduce((n, l) => n + l.count, 0)).to.equal(3);
      expectedLeaks = ['closing a debug pool with 3 live allocation(s) (300 bytes)'];
    });

    it('closing a debug pool with live allocations emits a warning naming the top sites', async () => {
      const p = new Pool({ size: MiB, algorithm, debug: true });
      makeLeak(p);
      makeLeak(p);
      const warnings = await captureWarnings(() => p.close());
      expect(warnings).to.have.length(1);
      const w = warnings[0];
      expect(w.name).to.equal('MempoolLeakWarning');
      expect(w.code).to.equal('MEMPOOL_LEAK');
      expect(w.message).to.contain('2 live allocation(s) (200 bytes)');
      expect(w.message).to.contain('makeLeak');
      // A pool with nothing live closes without a word.
      const clean = new Pool({ size: MiB, algorithm, debug: true });
      clean.free(makeLeak(clean));
      expect(await captureWarnings(() => clean.close())).to.deep.equal([]);
    });

    it('leaks() needs debug mode', () => {
      const plain = new Pool({ size: MiB, algorithm });
      expectCode(() => plain.leaks(), 'ERR_POOL_NOT_DEBUG', PoolError);
      plain.close();
    });
  });
}

describe('Stats, maps and events', () => {
  it('stats({ histogram: true }) counts live allocations by size class', () => {
    const pool = new Pool({ size: 4 * MiB });
    const sizes = [8, 16, 17, 100, 100, 1000, 5000, 5000, 5000];
    const blocks = sizes.map((n) => pool.alloc(n));
    const s = pool.stats({ histogram: true });
    const total = s.histogram!.reduce((n, c) => n + c.count, 0);
    expect(total).to.equal(sizes.length);
    expect(s.histogram!.reduce((n, c) => n + c.bytes, 0)).to.equal(s.used);
    const usable = blocks.map((b) => pool.usableSize(b));
    for (const c of s.histogram!) {
      const inClass = usable.filter((u) => u <= c.maxSize && (c.maxSize === 16 || u > c.maxSize / 2));
      expect(c.count, `class <= ${c.maxSize}`).to.equal(inClass.length);
    }
    expect(pool.stats().histogram).to.equal(undefined); // O(1) stats by default
    pool.close();
  });

  it('map() shows a fragmented heap as alternating runs', () => {
    const pool = new Pool({ size: MiB });
    const blocks = Array.from({ length: 40 }, () => pool.alloc(2000));
    blocks.forEach((b, i) => i % 2 === 0 && pool.free(b));
    const runs = pool.map();
    const used = runs.filter((r) => r.used);
    const free = runs.filter((r) => !r.used);
    expect(used.length).to.be.at.least(19);
    expect(free.length).to.be.at.least(20);
    for (let i = 1; i < runs.length; i++) expect(runs[i].offset).to.be.greaterThan(runs[i - 1].offset);
    expect(used.reduce((n, r) => n + r.blocks, 0)).to.equal(20);
    pool.close();
  });

  it('alloc, free and out-of-memory events arrive on diagnostics_channel, in order', () => {
    const pool = new Pool({ size: 256 * 1024 });
    const seen: string[] = [];
    const onAlloc = (m: unknown) => {
      const { pool: p, offset, size } = m as { pool: Pool; offset: number; size: number };
      if (p === pool) seen.push(`alloc ${offset} ${size}`);
    };
    const onFree = (m: unknown) => {
      const { pool: p, offset } = m as { pool: Pool; offset: number };
      if (p === pool) seen.push(`free ${offset}`);
    };
    const onOom = (m: unknown) => {
      const { pool: p, size } = m as { pool: Pool; size: number };
      if (p === pool) seen.push(`oom ${size}`);
    };
    diagnosticsChannel.subscribe(CHANNELS.alloc, onAlloc);
    diagnosticsChannel.subscribe(CHANNELS.free, onFree);
    diagnosticsChannel.subscribe(CHANNELS.outOfMemory, onOom);
    try {
      const a = pool.alloc(10);
      const b = pool.allocOffset(20);
      const aOffset = pool.offsetOf(a);
      pool.free(a);
      pool.free(b);
      const c = pool.alloc(2000);
      const cOffset = pool.offsetOf(c);
      const d = pool.realloc(c, 3000);
      const dOffset = pool.offsetOf(d);
      pool.free(d);
      expectCode(() => pool.alloc(1 << 20), 'ERR_POOL_OUT_OF_MEMORY');
      expect(seen).to.deep.equal([
        `alloc ${aOffset} 10`,
        `alloc ${b} 20`,
        `free ${aOffset}`,
        `free ${b}`,
        `alloc ${cOffset} 2000`,
        `free ${cOffset}`, // a realloc: the old block freed, the new one allocated
        `alloc ${dOffset} 3000`,
        `free ${dOffset}`,
        `oom ${1 << 20}`,
      ]);
    } finally {
      diagnosticsChannel.unsubscribe(CHANNELS.alloc, onAlloc);
      diagnosticsChannel.unsubscribe(CHANNELS.free, onFree);
      diagnosticsChannel.unsubscribe(CHANNELS.outOfMemory, onOom);
      pool.close();
    }
  });
});

describe('Shared pools: attached processes and reclaim', () => {
  const name = `mempool-test-debug-${process.pid}`;
  const children: ChildProcess[] = [];
  after(() => {
    for (const c of children) c.kill('SIGKILL');
    SharedPool.unlink(name);
  });

  // A child that opens the pool, allocates `n` blocks, prints their offsets, then waits.
  function holder(n: number): Promise<{ child: ChildProcess; offsets: number[] }> {
    const script = `
      const { SharedPool } = require(${JSON.stringify(root)});
      const pool = SharedPool.open(${JSON.stringify(name)});
      const offsets = [];
      for (let i = 0; i < ${n}; i++) { const b = pool.alloc(100 + i); b.fill(7); offsets.push(pool.offsetOf(b)); }
      pool.set('child-' + process.pid, offsets[0], 100);
      process.stdout.write(JSON.stringify(offsets) + '\\n');
      setInterval(() => {}, 1000);
    `;
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      child.once('error', reject);
      child.stdout!.once('data', (d) => resolve({ child, offsets: JSON.parse(String(d)) }));
    });
  }

  it('lists the processes attached now, with what each holds (debug), and reclaims a dead one', async () => {
    const pool = SharedPool.create(name, { size: 4 * MiB, debug: true });
    const mine = pool.alloc(64);
    mine.fill(1);
    const x = await holder(5);
    const y = await holder(3);
    const procs = pool.stats().processes;
    const byPid = new Map(procs.map((p) => [p.pid, p]));
    expect(byPid.get(process.pid)).to.include({ allocations: 1, bytes: 64 });
    expect(byPid.get(x.child.pid!)).to.include({ allocations: 5 });
    expect(byPid.get(y.child.pid!)).to.include({ allocations: 3 });
    expect(byPid.get(x.child.pid!)!.startedAt.getTime()).to.be.closeTo(Date.now(), 60000);
    // A live process's memory is not reclaimed.
    expectCode(() => pool.reclaim(x.child.pid!), 'ERR_PROCESS_ALIVE', PoolError);
    // kill -9 the first holder: its blocks are reclaimed, exactly those.
    await new Promise<void>((resolve) => {
      x.child.once('exit', () => resolve());
      x.child.kill('SIGKILL');
    });
    const before = pool.stats();
    const freed = pool.reclaim(x.child.pid!);
    expect(freed).to.deep.equal({ allocations: 5, bytes: 100 + 101 + 102 + 103 + 104 });
    const after = pool.stats();
    expect(after.liveAllocations).to.equal(before.liveAllocations - 5);
    expect(pool.keys()).to.deep.equal([`child-${y.child.pid}`]); // the dead one's name went with its block
    expect(pool.get(`child-${y.child.pid}`)!.every((b) => b === 7)).to.equal(true);
    expect(mine.every((b) => b === 1)).to.equal(true);
    expect(after.processes.map((p) => p.pid)).to.not.include(x.child.pid); // it exited
    expect(pool.reclaim(x.child.pid!)).to.deep.equal({ allocations: 0, bytes: 0 });
    pool.check();
    pool.free(mine);
    pool.close();
    // A pool dropped without close() leaves the table when its mapping is collected.
    (() => {
      for (let i = 0; i < 5; i++) SharedPool.open(name);
    })();
    const gc = (globalThis as { gc?: () => void }).gc!;
    let listed = Infinity;
    for (let i = 0; i < 50 && listed > 0; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 20));
      const probe = SharedPool.open(name);
      listed = probe.processes().filter((p) => p.pid === process.pid).length - 1; // minus the probe itself
      probe.close();
    }
    expect(listed).to.equal(0);
    const plain = SharedPool.create(`${name}-plain`, { size: MiB });
    expectCode(() => plain.reclaim(123456), 'ERR_POOL_NOT_DEBUG', PoolError);
    expect(plain.processes().map((p) => p.pid)).to.deep.equal([process.pid]);
    plain.close();
    SharedPool.unlink(`${name}-plain`);
  });
});
