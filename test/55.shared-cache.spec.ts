// The per-attachment slab cache of shared pools (native/core/shared_cache.h) across real processes:
// small blocks allocated without the lock by one process are freed, named and used by others, and a
// process killed with SIGKILL loses nothing the others can reach.
import { expect } from 'chai';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as path from 'node:path';
import { PoolError, SharedPool } from '../lib';
import { expectCode, hasPattern, pattern, segmentNames } from './helpers';

const root = path.join(__dirname, '..');
const MiB = 1 << 20;
const names = segmentNames('cache');
const uniqueName = names.name;

// Runs `body` in a fresh node process with `pool` open on `name`; returns its stdout.
function inChild(name: string, body: string): string {
  const script = `const { SharedPool } = require(${JSON.stringify(root)});
    const pool = SharedPool.open(${JSON.stringify(name)});
    const out = (x) => process.stdout.write(JSON.stringify(x));
    const code = (f) => { try { f(); return 'ok'; } catch (e) { return e.code; } };
    ${body}
    pool.close();`;
  return execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
}

describe('SharedPool slab cache across processes', () => {
  after(() => {
    for (const n of names.made()) SharedPool.unlink(n);
  });

  it('a small block allocated here is freed by another process; a second free anywhere is refused', () => {
    const name = uniqueName('remote');
    const pool = SharedPool.create(name, { size: 8 * MiB });
    const offs = Array.from({ length: 200 }, (_, i) => pool.allocOffset(16 + (i % 40) * 16));
    expect(pool.stats().liveAllocations).to.equal(200);
    const first = JSON.parse(inChild(name, `out(${JSON.stringify(offs)}.map((o) => code(() => pool.free(o))));`));
    expect(first).to.deep.equal(offs.map(() => 'ok'));
    // Again from another process, and from the owner: double frees, nothing changes.
    const second = JSON.parse(inChild(name, `out(${JSON.stringify(offs)}.map((o) => code(() => pool.free(o))));`));
    expect(second).to.deep.equal(offs.map(() => 'ERR_POOL_DOUBLE_FREE'));
    for (const o of offs) expectCode(() => pool.free(o), 'ERR_POOL_DOUBLE_FREE', PoolError);
    expect(pool.stats().liveAllocations).to.equal(0);
    expect(pool.stats().used).to.equal(0);
    pool.check();
    // The owner takes the remotely freed slots back and goes on.
    const again = Array.from({ length: 200 }, () => pool.allocOffset(32));
    for (const o of again) pool.free(o);
    pool.check();
    pool.close();
  });

  it('interior offsets of a slot are refused in every process', () => {
    const name = uniqueName('interior');
    const pool = SharedPool.create(name, { size: 8 * MiB });
    const b = pool.alloc(100);
    const off = pool.offsetOf(b);
    const codes = JSON.parse(inChild(name, `out([${off + 16}, ${off + 8}, ${off + 1}].map((o) => code(() => pool.free(o))));`));
    expect(codes).to.deep.equal(['ERR_POOL_FOREIGN_BUFFER', 'ERR_POOL_FOREIGN_BUFFER', 'ERR_POOL_FOREIGN_BUFFER']);
    expectCode(() => pool.free(off + 16), 'ERR_POOL_FOREIGN_BUFFER', PoolError);
    expect(pool.usableSize(b)).to.equal(112);
    pool.free(b);
    pool.check();
    pool.close();
  });

  it('names on cached blocks: another process takes and frees them; the name owned the block meanwhile', () => {
    const name = uniqueName('names');
    const pool = SharedPool.create(name, { size: 8 * MiB });
    const b = pool.alloc(40);
    b.write('hello from the owner');
    pool.set('greeting', b, 20);
    const seen = inChild(
      name,
      `const g = pool.get('greeting'); const refused = code(() => pool.free(pool.offsetOf(g))); const t = pool.take('greeting'); out([t.toString(), pool.offsetOf(t), refused]); pool.free(t);`,
    );
    expect(JSON.parse(seen)).to.deep.equal(['hello from the owner', pool.offsetOf(b), 'ERR_POOL_BLOCK_NAMED']);
    expect(pool.get('greeting')).to.equal(undefined);
    expectCode(() => pool.free(b), 'ERR_POOL_DOUBLE_FREE', PoolError);
    // a named block is not freed through its old handle; delete frees it
    const c = pool.alloc(24);
    pool.set('mine', c);
    expectCode(() => pool.free(c), 'ERR_POOL_BLOCK_NAMED', PoolError);
    expect(pool.delete('mine')).to.equal(true);
    expect(pool.get('mine')).to.equal(undefined);
    pool.check();
    pool.close();
  });

  it('kill -9 of an owner: its blocks stay intact and usable; others free them; its slabs go back to the heap', async function () {
    this.timeout(20000);
    const name = uniqueName('kill');
    const pool = SharedPool.create(name, { size: 8 * MiB });
    const script = `const { SharedPool } = require(${JSON.stringify(root)});
      const pool = SharedPool.open(${JSON.stringify(name)});
      const offs = [];
      for (let i = 0; i < 300; i++) {
        const b = pool.alloc(8 + (i % 50) * 13);
        for (let k = 0; k < b.length; k++) b[k] = (i * 7 + k) & 0xff;
        if (i % 4 === 0) pool.free(b); else offs.push([pool.offsetOf(b), b.length, i]);
      }
      pool.set('last', offs[offs.length - 1][0], 8);
      process.stdout.write(JSON.stringify(offs) + '\\n');
      setInterval(() => {}, 1000);`;
    const c: ChildProcess = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    await new Promise<void>((resolve, reject) => {
      c.once('error', reject);
      c.stdout!.on('data', (d) => {
        text += d;
        if (text.endsWith('\n')) resolve();
      });
    });
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
    const held = JSON.parse(text) as Array<[number, number, number]>;
    pool.check();
    expect(pool.stats().liveAllocations).to.equal(held.length);
    for (const [off, len, i] of held) {
      const v = pool.view(off, len);
      for (let k = 0; k < len; k++) expect(v[k]).to.equal((i * 7 + k) & 0xff);
    }
    expect(pool.offsetOf(pool.get('last')!)).to.equal(held[held.length - 1][0]);
    // A second process frees half, this one the rest; double frees are refused everywhere.
    // The named block is owned by its name: taking it makes it this process's to free.
    expect(pool.offsetOf(pool.take('last')!)).to.equal(held[held.length - 1][0]);
    const half = held.filter((_, i) => i % 2 === 0).map(([o]) => o);
    const codes = JSON.parse(inChild(name, `out(${JSON.stringify(half)}.map((o) => code(() => pool.free(o))));`));
    expect(codes).to.deep.equal(half.map(() => 'ok'));
    for (const [o] of held.filter((_, i) => i % 2 === 1)) pool.free(o);
    for (const [o] of held) expect(() => pool.free(o)).to.throw(PoolError);
    expect(pool.get('last')).to.equal(undefined);
    const s = pool.stats();
    expect(s.liveAllocations).to.equal(0);
    expect(s.used).to.equal(0);
    pool.check();
    // Every slab went back: the heap holds nothing now.
    expect([...pool.blocks()].filter((b) => b.used)).to.deep.equal([]);
    pool.close();
  });

  it('worker threads each have their own cache and free each other\'s blocks', async () => {
    const { Worker } = await import('node:worker_threads');
    const name = uniqueName('workers');
    const pool = SharedPool.create(name, { size: 8 * MiB });
    const mine = Array.from({ length: 100 }, (_, i) => {
      const b = pool.alloc(20 + i);
      pattern(b, i);
      return b;
    });
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { SharedPool } = require(workerData.root);
      const pool = SharedPool.open(workerData.name);
      for (const o of workerData.offs) pool.free(o);
      const made = [];
      for (let i = 0; i < 100; i++) made.push(pool.allocOffset(20 + i));
      parentPort.postMessage(made);
      pool.close();
    `;
    const offs = mine.filter((_, i) => i % 2 === 0).map((b) => pool.offsetOf(b));
    const made = await new Promise<number[]>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { root, name, offs } });
      w.once('message', resolve);
      w.once('error', reject);
    });
    mine.forEach((b, i) => {
      if (i % 2 === 1) expect(hasPattern(b, i)).to.equal(true);
    });
    for (const o of made) pool.free(o);
    mine.forEach((b, i) => {
      if (i % 2 === 1) pool.free(b);
    });
    expect(pool.stats().liveAllocations).to.equal(0);
    pool.check();
    pool.close();
  });
});
