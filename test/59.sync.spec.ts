// Coordination between real processes and worker threads on one segment: atomics, wait/notify, the robust
// SharedMutex and SharedSemaphore, and SharedQueue, with kill -9 of holders, lessees, producers and consumers.
import { expect } from 'chai';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { PoolError, SharedPool } from '../lib';
import { expectCode, JsonChild, runJsonChild } from './helpers';

const child = path.join(__dirname, 'fixtures', 'sync-child.js');
const MiB = 1 << 20;
let counter = 0;
const created: string[] = [];

function newPool(tag: string, size = 8 * MiB): SharedPool {
  const name = `mempool-test-${process.pid}-sync-${tag}-${counter++}`;
  created.push(name);
  return SharedPool.create(name, { size });
}

type Child = JsonChild;

function run(...args: (string | number)[]): Child {
  return runJsonChild(child, args);
}

const ready = (l: unknown) => l === 'ready';

async function finished(c: Child): Promise<Record<string, unknown>> {
  expect(await c.exit).to.equal(0);
  return c.lines[c.lines.length - 1] as Record<string, unknown>;
}

describe('Coordination across processes (wait/notify, SharedMutex, SharedSemaphore, SharedQueue)', function () {
  this.timeout(60000);
  after(() => {
    for (const n of created) SharedPool.unlink(n);
  });

  describe('atomics and wait/notify', () => {
    it('Atomics.add from three processes on one word of the segment sums exactly', async () => {
      const pool = newPool('atomics');
      const off = pool.allocOffset(64);
      const w = pool.atomics(off, 1);
      w[0] = 0;
      const kids = [run('add', pool.name, off, 100000), run('add', pool.name, off, 100000)];
      for (let i = 0; i < 100000; i++) Atomics.add(w, 0, 1);
      for (const k of kids) await finished(k);
      expect(Atomics.load(w, 0)).to.equal(300000);
      const wide = pool.atomics64(off, 2);
      expect(Atomics.add(wide, 1, 5n)).to.equal(0n);
      expectCode(() => pool.atomics(off + 2, 1), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.atomics64(off + 4, 1), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.atomics(off, pool.size), 'ERR_OUT_OF_RANGE');
      pool.close();
      expect(w.length).to.equal(0); // closing detached it: no view reaches unmapped memory
    });

    it('wait returns not-equal and timed-out, and a notify from this process wakes a waiting process', async () => {
      const pool = newPool('wait');
      const off = pool.allocOffset(64);
      const w = pool.atomics(off, 1);
      w[0] = 7;
      expect(pool.wait(off, 8, 1000)).to.equal('not-equal');
      const t0 = Date.now();
      expect(pool.wait(off, 7, 30)).to.equal('timed-out');
      expect(Date.now() - t0).to.be.at.least(25);
      const k = run('wait', pool.name, off, 7, 20000);
      await k.until(ready);
      // The child prints "ready" just before it blocks: notify until someone was woken.
      let woken = 0;
      const deadline = Date.now() + 10000;
      while (woken === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 5));
        woken = pool.notify(off, 1);
      }
      expect(woken).to.equal(1);
      expect((await finished(k)).result).to.equal('ok');
      pool.close();
    });

    it('waitAsync does not block the event loop and is woken by a worker thread; wait is allowed in workers', async () => {
      const pool = newPool('wait-async');
      const off = pool.allocOffset(64);
      const w = pool.atomics(off, 1);
      w[0] = 1;
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      const waiting = pool.waitAsync(off, 1, 20000);
      const worker = new Worker(
        `const { workerData } = require('node:worker_threads');
         const { SharedPool } = require(workerData.module);
         const pool = SharedPool.open(workerData.name);
         const w = pool.atomics(workerData.off, 1);
         setTimeout(() => { Atomics.store(w, 0, 2); pool.notify(workerData.off); }, 100);
         setTimeout(() => pool.close(), 200);`,
        { eval: true, workerData: { module: path.join(__dirname, '..'), name: pool.name, off } },
      );
      expect(await waiting).to.equal('ok');
      clearInterval(timer);
      expect(ticks).to.be.at.least(5); // the loop ran while we waited
      await new Promise((r) => worker.on('exit', r));
      pool.close();
    });

    it('a pending waitAsync settles with ERR_POOL_CLOSED when the pool closes, and a worker can exit under one', async () => {
      const pool = newPool('wait-close');
      const off = pool.allocOffset(64);
      const pending = pool.waitAsync(off, 0);
      setTimeout(() => pool.close(), 20);
      let caught: unknown;
      try {
        await pending;
      } catch (e) {
        caught = e;
      }
      expect(caught).to.be.instanceOf(PoolError);
      expect((caught as PoolError).code).to.equal('ERR_POOL_CLOSED');
      const other = newPool('wait-worker');
      const worker = new Worker(
        `const { workerData } = require('node:worker_threads');
         const { SharedPool } = require(workerData.module);
         const pool = SharedPool.open(workerData.name);
         pool.waitAsync(pool.allocOffset(64), 0);  // never woken: the worker is terminated under it
         pool.mutex('m').lockAsync();
         pool.queue('q').popAsync();
         require('node:worker_threads').parentPort.postMessage('waiting');`,
        { eval: true, workerData: { module: path.join(__dirname, '..'), name: other.name } },
      );
      await new Promise((r) => worker.once('message', r));
      const t0 = Date.now();
      await worker.terminate();
      expect(Date.now() - t0).to.be.below(5000);
      other.close();
    });

    it('refuses bad input with coded errors', () => {
      const pool = newPool('wait-args');
      const off = pool.allocOffset(64);
      expectCode(() => pool.wait(off + 1, 0, 1), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.wait(8, 0, 1), 'ERR_OUT_OF_RANGE'); // the header is not the user's to wait on
      expectCode(() => pool.wait(off, 0, -1), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.wait(off, 'x' as unknown as number), 'ERR_INVALID_ARG_TYPE');
      expectCode(() => pool.notify(-1), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.mutex(''), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.mutex('x'.repeat(201)), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.semaphore('s', { permits: 0 }), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.semaphore('s', { permits: 5000 }), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.semaphore('s', { permit: 2 } as never), 'ERR_INVALID_ARG_VALUE');
      expectCode(() => pool.queue('q', { maxBytes: 100 }), 'ERR_OUT_OF_RANGE');
      expectCode(() => pool.set('\0mempool:mutex:x', pool.alloc(8)), 'ERR_INVALID_ARG_VALUE');
      pool.close();
      expectCode(() => pool.mutex('m'), 'ERR_POOL_CLOSED');
      expectCode(() => pool.wait(off, 0, 1), 'ERR_POOL_CLOSED');
    });
  });

  describe('SharedMutex', () => {
    it('keeps four processes from losing a non-atomic increment', async () => {
      const pool = newPool('mutex');
      const off = pool.allocOffset(64);
      const w = pool.atomics(off, 1);
      w[0] = 0;
      const kids = [0, 1, 2, 3].map(() => run('count', pool.name, off, 5000));
      for (const k of kids) await finished(k);
      expect(w[0]).to.equal(20000);
      expect(pool.keys()).to.deep.equal([]); // mempool's own objects are not keys
      pool.close();
    });

    it('passes to the next locker with owner-died when its holder is killed with -9, every time', async () => {
      const pool = newPool('mutex-kill');
      const m = pool.mutex('m');
      for (let round = 0; round < 5; round++) {
        const k = run('hold', pool.name, 'mutex');
        await k.until(ready);
        expect(m.holder().mine).to.equal(false);
        expect(m.tryLock()).to.equal(false);
        k.proc.kill('SIGKILL');
        await k.exit;
        expect(m.lock(5000)).to.equal('owner-died');
        expect(m.holder().mine).to.equal(true);
        m.unlock();
        expect(m.lock()).to.equal('ok');
        m.unlock();
      }
      pool.close();
    });

    it('lockAsync waits for another task of the same thread; lock by the holder is a deadlock; timeouts are coded', async () => {
      const pool = newPool('mutex-async');
      const m = pool.mutex('m');
      const same = pool.mutex('m');
      expect(await m.lockAsync()).to.equal('ok');
      expectCode(() => same.lock(), 'ERR_SYNC_DEADLOCK');
      const order: string[] = [];
      const second = same.lockAsync(5000).then((r) => order.push(`second ${r}`));
      await new Promise((r) => setTimeout(r, 30));
      order.push('first unlocks');
      m.unlock();
      await second;
      expect(order).to.deep.equal(['first unlocks', 'second ok']);
      const k = run('hold', pool.name, 'mutex');
      same.unlock();
      await k.until(ready);
      try {
        await m.lockAsync(30);
        expect.fail('lockAsync should time out');
      } catch (e) {
        expect((e as PoolError).code).to.equal('ERR_SYNC_TIMEOUT');
      }
      expectCode(() => m.lock(30), 'ERR_SYNC_TIMEOUT');
      expectCode(() => m.unlock(), 'ERR_SYNC_NOT_OWNER');
      k.proc.kill('SIGKILL');
      await k.exit;
      expect(await m.withLockAsync(async (died) => died)).to.equal(true);
      expect(m.withLock((died) => died)).to.equal(false);
      pool.close();
    });

    it('a worker thread that exits holding it is taken over', async () => {
      const pool = newPool('mutex-worker');
      const worker = new Worker(
        `const { workerData, parentPort } = require('node:worker_threads');
         const { SharedPool } = require(workerData.module);
         SharedPool.open(workerData.name).mutex('m').lock();
         parentPort.postMessage('locked');`,
        { eval: true, workerData: { module: path.join(__dirname, '..'), name: pool.name } },
      );
      await new Promise((r) => worker.once('message', r));
      await new Promise((r) => worker.on('exit', r));
      expect(pool.mutex('m').lock(5000)).to.equal('owner-died');
      pool.mutex('m').unlock();
      pool.close();
    });
  });

  describe('SharedSemaphore', () => {
    it('admits at most its permits, and a killed holder\'s permits come back as owner-died', async () => {
      const pool = newPool('sem');
      const s = pool.semaphore('s', { permits: 3 });
      expect(s.permits).to.equal(3);
      expect(pool.semaphore('s').permits).to.equal(3);
      expectCode(() => pool.semaphore('s', { permits: 2 }), 'ERR_SHM_OBJECT_MISMATCH');
      const k = run('hold', pool.name, 'semaphore');
      await k.until(ready);
      expect(s.available()).to.equal(0);
      expect(s.tryAcquire()).to.equal(false);
      expectCode(() => s.acquire(20), 'ERR_SYNC_TIMEOUT');
      k.proc.kill('SIGKILL');
      await k.exit;
      expect([s.acquire(5000), s.acquire(5000), await s.acquireAsync(5000)]).to.deep.equal(['owner-died', 'owner-died', 'owner-died']);
      expect(s.tryAcquire()).to.equal(false);
      s.release();
      expect(s.tryAcquire()).to.equal('ok');
      s.release();
      s.release();
      s.release();
      expect(s.available()).to.equal(3);
      expectCode(() => s.release(), 'ERR_SYNC_NOT_OWNER');
      pool.close();
    });
  });

  describe('SharedQueue', () => {
    it('delivers every message of three producer processes to three consumer processes exactly once, whole', async () => {
      const pool = newPool('queue', 16 * MiB);
      const q = pool.queue('q', { maxBytes: 16384, maxMessages: 64 }); // small: producers wait for room
      const N = 3000;
      const consumers = [0, 1, 2].map(() => run('consume', pool.name));
      const producers = [0, 1, 2].map((id) => run('produce', pool.name, id, N));
      for (const p of producers) await finished(p);
      q.close();
      let count = 0;
      let sum = 0;
      for (const c of consumers) {
        const r = await finished(c);
        expect(r.bad).to.equal(0);
        count += r.count as number;
        sum += r.sum as number;
      }
      expect(count).to.equal(3 * N);
      expect(sum).to.equal((3 * N * (N - 1)) / 2);
      const st = q.stats();
      expect(st).to.include({ messages: 0, leased: 0, usedBytes: 0, pushed: 3 * N, popped: 3 * N, closed: true });
      pool.close();
    });

    it('redelivers a message whose receiver was killed with -9 before ack, and never one that was acked', async () => {
      const pool = newPool('queue-lease');
      const q = pool.queue('q');
      q.push('first');
      q.push('second');
      const k = run('lease', pool.name);
      await k.until(ready);
      expect(k.lines[0]).to.deep.equal({ got: 'first' });
      expect(q.stats().leased).to.equal(1);
      const r = q.receive(1000)!;
      expect(r.data.toString()).to.equal('second');
      r.ack();
      expectCode(() => r.ack(), 'ERR_QUEUE_NOT_LEASED');
      expect(q.tryPop()).to.equal(undefined); // 'first' is still leased to a live process
      k.proc.kill('SIGKILL');
      await k.exit;
      const again = await q.popAsync(5000);
      expect(again?.toString()).to.equal('first');
      expect(q.stats()).to.include({ messages: 0, leased: 0, redelivered: 1 });
      pool.close();
    });

    it('backpressure, size limits, close and drain, async iteration, and bad input', async () => {
      const pool = newPool('queue-limits');
      const q = pool.queue('small', { maxBytes: 256, maxMessages: 3 });
      expect(q.maxMessageBytes).to.equal(240);
      expectCode(() => pool.queue('small', { maxMessages: 4 }), 'ERR_SHM_OBJECT_MISMATCH');
      expectCode(() => q.push(Buffer.alloc(241)), 'ERR_QUEUE_MESSAGE_TOO_LARGE');
      expect(q.tryPush(Buffer.alloc(240))).to.equal(true); // exactly the limit: it fills the ring
      expect(q.tryPush('')).to.equal(false); // no bytes left, even for an empty message (16 bytes of header)
      expectCode(() => q.push('x', 20), 'ERR_QUEUE_FULL');
      const later = q.pushAsync('later', 5000);
      setTimeout(() => q.pop(), 20);
      await later; // pushed once the pop made room
      expect(q.tryPush('')).to.equal(true); // empty messages are messages
      expect(q.tryPush('y')).to.equal(true);
      expect(q.tryPush('z')).to.equal(false); // three messages: the count limit
      expectCode(() => q.push(42 as unknown as string), 'ERR_INVALID_ARG_TYPE');
      expect(q.tryPop()?.toString()).to.equal('later');
      expect(q.tryPop()?.toString()).to.equal('');
      expect(q.tryPop()?.toString()).to.equal('y');
      expect(q.pop(10)).to.equal(undefined); // timed out
      for (const m of ['a', 'b', 'c']) q.push(m);
      q.close();
      expectCode(() => q.push('d'), 'ERR_QUEUE_CLOSED');
      const got: string[] = [];
      for await (const m of q) got.push(m.toString());
      expect(got).to.deep.equal(['a', 'b', 'c']);
      expect(q.pop()).to.equal(undefined); // closed and drained: returns at once
      pool.close();
      expectCode(() => q.tryPop(), 'ERR_POOL_CLOSED');
    });

    it('pop, receive and popAsync return messages of every size whole, each in a Buffer of its own', async () => {
      const pool = newPool('queue-sizes', 16 * MiB);
      const q = pool.queue('q', { maxBytes: 4 * MiB });
      const sizes = [0, 1, 255, 4095, 4096, 4097, 70000, 1 << 20, 3, 2 * MiB];
      const message = (n: number, seed: number) => {
        const b = Buffer.alloc(n);
        for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
        return b;
      };
      for (const [how, take] of [
        ['pop', () => q.pop(0)],
        ['receive', () => { const r = q.receive(0); r?.ack(); return r?.data; }],
        ['popAsync', () => q.popAsync(0)],
      ] as const) {
        const got: Buffer[] = [];
        for (const [i, n] of sizes.entries()) {
          q.push(message(n, i));
          const m = await take();
          expect(m, `${how} of ${n} bytes`).to.be.instanceOf(Buffer);
          expect(m!.equals(message(n, i)), `${how} of ${n} bytes`).to.equal(true);
          got.push(m!);
        }
        // Each result is its own copy: a later pop does not change an earlier message.
        for (const [i, n] of sizes.entries()) expect(got[i].equals(message(n, i)), `${how} kept ${n} bytes`).to.equal(true);
      }
      expect(q.stats()).to.include({ messages: 0, leased: 0 });
      pool.close();
    });

    it('pushBlock hands blocks to consumer processes without copying: each consumer owns and frees what it pops', async () => {
      const pool = newPool('queue-blocks', 16 * MiB);
      const q = pool.queue('q', { maxBytes: 4096, maxMessages: 16 }); // small: producers wait for room
      const consumers = [0, 1].map(() => run('consume-blocks', pool.name));
      const N = 2000;
      const sent = new Set<number>();
      try {
        for (let i = 0; i < N; i++) {
          const len = 16 + ((i * 37 + 11) % 200); // the children's checksummed message, id 1
          const m = i % 3 === 0 ? Buffer.alloc(len) : pool.alloc(len);
          m.writeUInt32LE(1, 0);
          m.writeUInt32LE(i, 4);
          m.writeUInt32LE(len, 8);
          for (let k = 12; k < len; k++) m[k] = (7 + i * 13 + k) & 0xff;
          if (i % 3 === 0) q.push(m); // bytes and blocks mixed in one queue, in one order
          else {
            q.pushBlock(m);
            // The producer's Buffer frees nothing: the block is queued (named), a consumer's, or freed by it.
            try {
              pool.free(m);
              expect.fail('a free through a pushed block succeeded');
            } catch (e) {
              expect((e as PoolError).code).to.be.oneOf(['ERR_POOL_BLOCK_NAMED', 'ERR_POOL_STALE_HANDLE', 'ERR_POOL_DOUBLE_FREE']);
            }
            sent.add(i);
          }
        }
      } finally {
        q.close(); // even when an assertion failed: the consumers drain and exit
      }
      let count = 0, sum = 0, freed = 0;
      for (const c of consumers) {
        const r = await finished(c);
        expect(r).to.include({ bad: 0, order: true });
        count += r.count as number;
        sum += r.sum as number;
        freed += r.freed as number;
      }
      expect(count).to.equal(N);
      expect(sum).to.equal((N * (N - 1)) / 2);
      expect(freed).to.equal(sent.size); // every block reached a consumer, which owned it
      expect(pool.stats().liveAllocations).to.equal(1); // the queue's ring: every block came back
      pool.check();
      pool.close();
    });

    it("block messages: a popped block is the consumer's, a received one is lent until ack, which frees it; a killed lessee's comes back", async () => {
      const pool = newPool('queue-block-lease');
      const q = pool.queue('q');
      const live = () => pool.stats().liveAllocations;
      const base = live();
      const a = pool.alloc(100).fill(1);
      q.pushBlock(a);
      const popped = q.pop()!;
      expect(popped.length).to.equal(100);
      expect(popped.every((x) => x === 1)).to.equal(true);
      expectCode(() => pool.free(a), 'ERR_POOL_STALE_HANDLE'); // the producer's Buffer no longer owns it
      pool.free(popped); // the consumer's does
      expect(live()).to.equal(base);

      const b = pool.alloc(50).fill(2);
      q.pushBlock(b);
      const r = q.receive()!;
      expect(r.data.equals(Buffer.alloc(50, 2))).to.equal(true);
      expectCode(() => pool.free(r.data), 'ERR_POOL_BLOCK_NAMED'); // lent, not given: the queue still owns it
      r.ack(); // frees the block
      expect(live()).to.equal(base);

      const c = pool.alloc(64);
      c.write('leased to a process that dies');
      q.pushBlock(c);
      const k = run('lease', pool.name);
      await k.until(ready);
      k.proc.kill('SIGKILL');
      await k.exit;
      const again = await q.popAsync(5000);
      expect(again!.toString('utf8', 0, 29)).to.equal('leased to a process that dies');
      pool.free(again!);
      expect(live()).to.equal(base);

      const full = pool.queue('tiny', { maxBytes: 32, maxMessages: 1 });
      const d = pool.alloc(10);
      expect(full.tryPushBlock(d)).to.equal(true);
      const e = pool.alloc(10);
      expect(full.tryPushBlock(e)).to.equal(false); // full: e stays the caller's
      pool.free(e);
      expectCode(() => full.pushBlock(pool.alloc(10), 10), 'ERR_QUEUE_FULL');
      expectCode(() => q.pushBlock(Buffer.alloc(10)), 'ERR_POOL_FOREIGN_BUFFER');
      const f = pool.alloc(10);
      expectCode(() => q.pushBlock(f.subarray(0, 5)), 'ERR_POOL_NO_HANDLE');
      pool.set('named', f);
      expectCode(() => q.pushBlock(f), 'ERR_POOL_BLOCK_NAMED');
      expectCode(() => q.pushBlock('x' as unknown as Buffer), 'ERR_INVALID_ARG_TYPE');
      pool.check();
      pool.close();
    });

    it('survives producers and consumers killed with -9 mid-stream: every message left is whole', async () => {
      const pool = newPool('queue-kill', 16 * MiB);
      const q = pool.queue('q', { maxBytes: 8192, maxMessages: 32 });
      for (let round = 0; round < 6; round++) {
        const kids = [run('produce', pool.name, round, 1e9), run('consume', pool.name), run('consume', pool.name)];
        await new Promise((r) => setTimeout(r, 150 + round * 40));
        for (const k of kids) k.proc.kill('SIGKILL');
        for (const k of kids) expect(await k.exit).to.equal('SIGKILL');
        for (let m = q.tryPop(); m !== undefined; m = q.tryPop()) {
          expect(m.readUInt32LE(8)).to.equal(m.length); // whole: the length it was written with
        }
        expect(q.stats()).to.include({ messages: 0, leased: 0, usedBytes: 0 });
      }
      expect(q.stats().pushed).to.be.above(100);
      pool.close();
    });
  });
});
