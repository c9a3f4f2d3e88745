// Lifetimes: worker threads, garbage collection, and the package as users load it.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Pool } from '../lib';

const root = path.join(__dirname, '..');

function runWorker(code: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { root } });
    let result: unknown;
    w.on('message', (m) => (result = m));
    w.on('error', reject);
    w.on('exit', (exitCode) => (exitCode === 0 ? resolve(result) : reject(new Error(`worker exited with ${exitCode}`))));
  });
}

describe('Lifecycle', () => {
  it('loads and works in worker threads, several at once, and frees at worker exit', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { Pool } = require(workerData.root);
      const pool = new Pool({ size: 1 << 20 });
      const blocks = [];
      for (let i = 0; i < 1000; i++) { const b = pool.alloc(100); b.fill(i & 255); blocks.push(b); }
      let ok = blocks.every((b, i) => b.every((x) => x === (i & 255)));
      for (const b of blocks) pool.free(b);
      pool.check();
      parentPort.postMessage({ ok, used: pool.stats().used });
      // the pool is left open on purpose: the environment's teardown must release it
    `;
    const results = await Promise.all([runWorker(code), runWorker(code), runWorker(code)]);
    for (const r of results) expect(r).to.deep.equal({ ok: true, used: 0 });
  });

  it('views keep their memory valid after the pool object is collected without close()', () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) throw new Error('run mocha with --expose-gc (set in .mocharc.js)');
    const make = () => {
      const pool = new Pool({ size: 1 << 20 });
      const b = pool.alloc(1000);
      b.fill(42);
      return b;
    };
    const views = Array.from({ length: 20 }, make);
    for (let i = 0; i < 5; i++) gc();
    for (const v of views) expect(v.every((x) => x === 42)).to.equal(true);
  });

  it('a fast native function kept after its pool was collected finds no pool and touches nothing', async () => {
    const gc = (globalThis as { gc?: () => void }).gc!;
    let collected = false;
    const registry = new FinalizationRegistry(() => (collected = true));
    const kept = (() => {
      const pool = new Pool({ size: 1 << 20, cache: false });
      const native = (pool as unknown as { chunks: { native: { fastAlloc: () => void; fastFree: () => void; mailbox: Float64Array } }[] }).chunks[0].native;
      pool.free(pool.allocOffset(64)); // the fast functions work while the pool lives
      registry.register(native, 'native');
      return { fastAlloc: native.fastAlloc, fastFree: native.fastFree, mailbox: native.mailbox };
    })();
    for (let i = 0; i < 20 && !collected; i++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(collected, 'the native pool object was not collected').to.equal(true);
    for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve)); // deferred native finalizers
    kept.mailbox[0] = 64;
    kept.fastAlloc();
    expect(kept.mailbox[0]).to.equal(64); // no pool answered
    kept.mailbox[0] = 4096;
    kept.fastFree();
    expect(kept.mailbox[0]).to.equal(4096);
  });

  it('does not leak native memory when pools are created and closed in a loop', () => {
    const gc = (globalThis as { gc?: () => void }).gc!;
    const cycle = () => {
      for (let i = 0; i < 200; i++) {
        const pool = new Pool({ size: 4 << 20 });
        pool.alloc(1 << 20).fill(1); // touch the pages so they count in RSS
        pool.close();
      }
      gc();
    };
    cycle();
    const before = process.memoryUsage().rss;
    cycle();
    cycle();
    const grown = process.memoryUsage().rss - before;
    // 400 pools of 4 MiB went through; a leak would hold at least 400 MiB.
    expect(grown).to.be.lessThan(64 << 20);
  });

  it('the package root works from plain JavaScript, with types shipped', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(fs.existsSync(path.join(root, pkg.main))).to.equal(true);
    expect(fs.existsSync(path.join(root, pkg.types))).to.equal(true);
    const out = execFileSync(
      process.execPath,
      ['-e', `const m = require(${JSON.stringify(root)}); const p = new m.Pool({ size: 1 << 20 }); const b = p.alloc(5); console.log(JSON.stringify([m.memoryType(b), typeof m.PoolError, b.length])); p.close();`],
      { encoding: 'utf8' },
    );
    expect(JSON.parse(out)).to.deep.equal(['normal', 'function', 5]);
    const types = fs.readFileSync(path.join(root, pkg.types), 'utf8');
    expect(types).to.match(/Pool/);
  });

  it("works from an ES module: import { Pool } from 'mempool'", () => {
    // A package named mempool in node_modules of a temporary project, as a user would have it.
    const project = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'mempool-esm-'));
    try {
      fs.mkdirSync(path.join(project, 'node_modules'));
      fs.symlinkSync(root, path.join(project, 'node_modules', 'mempool'), 'dir');
      const main = path.join(project, 'main.mjs');
      fs.writeFileSync(
        main,
        `import { Pool, SharedPool, MemoryManager, memoryType, PoolError } from 'mempool';
         import mempool from 'mempool';
         const p = new Pool({ size: 1 << 20 });
         const b = p.alloc(8);
         console.log(JSON.stringify([memoryType(b), typeof SharedPool.open, typeof MemoryManager.getInstance, typeof PoolError, mempool.Pool === Pool]));
         p.close();`,
      );
      const out = execFileSync(process.execPath, [main], { encoding: 'utf8', cwd: project });
      expect(JSON.parse(out)).to.deep.equal(['normal', 'function', 'function', 'function', true]);
    } finally {
      fs.rmSync(project, { recursive: true, force: true });
    }
  });
});
