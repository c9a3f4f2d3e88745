// SharedMemory: raw named segments under the real /dev/shm, with real processes (node children and python3),
// no mocks. Children load the package's dist/ (compiled from lib/), as the other cross-process specs do.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PoolError, SharedMemory, SharedPool } from '../lib';
import { expectCode, JsonChild, runJsonChild, segmentNames, skipBecause } from './helpers';

const child = path.join(__dirname, 'fixtures', 'raw-child.js');
const names = segmentNames('raw');
const newName = names.name;

function run(...args: (string | number)[]): JsonChild {
  return runJsonChild(child, args);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs a Python program (python3) and returns its stdout; the name is passed as argv[1]. */
function python(code: string, name: string): string {
  return execFileSync('python3', ['-c', code, name], { encoding: 'utf8', timeout: 60000 });
}

// Python 3.11's resource_tracker unlinks at exit every segment a process attached to, even one it did not
// create: each program unregisters right after attaching, so the segment outlives it.
const PY_ATTACH = `
import sys
from multiprocessing import shared_memory, resource_tracker
def attach(**kw):
    shm = shared_memory.SharedMemory(name=sys.argv[1], **kw)
    resource_tracker.unregister(shm._name, 'shared_memory')
    return shm
`;

describe('SharedMemory: raw named segments', function () {
  this.timeout(60000);

  afterEach(() => {
    for (const name of names.made()) {
      try {
        SharedMemory.unlink(name);
      } catch {
        // already gone, or a name the test made invalid on purpose
      }
    }
  });

  describe('create, open, unlink', () => {
    it('creates /dev/shm/<name> of size zero bytes, opened by name elsewhere with the same bytes', () => {
      const name = newName('basic');
      const a = SharedMemory.create(name, { size: 10000 });
      expect(a.name).to.equal(name);
      expect(a.size).to.equal(10000);
      expect(a.readOnly).to.equal(false);
      expect(a.buffer).to.be.instanceOf(Buffer);
      expect(a.buffer.length).to.equal(10000);
      expect(a.buffer.every((b) => b === 0)).to.equal(true);
      const st = fs.statSync(`/dev/shm/${name}`);
      expect(st.size).to.equal(10000);
      expect(st.mode & 0o777).to.equal(0o600);
      a.buffer.write('hello raw', 100);
      const b = SharedMemory.open(name);
      expect(b.size).to.equal(10000);
      expect(b.buffer.toString('utf8', 100, 109)).to.equal('hello raw');
      b.buffer[0] = 7;
      expect(a.buffer[0]).to.equal(7); // one memory, two mappings
      expect(fs.readFileSync(`/dev/shm/${name}`).subarray(100, 109).toString()).to.equal('hello raw');
      a.close();
      b.close();
      expect(SharedMemory.unlink(name)).to.equal(true);
      expect(SharedMemory.unlink(name)).to.equal(false);
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
      expectCode(() => SharedMemory.open(name), 'ERR_SHM_NOT_FOUND', PoolError);
    });

    it('takes the mode asked for, whatever the umask', () => {
      const name = newName('mode');
      SharedMemory.create(name, { size: 64, mode: 0o640 }).close();
      expect(fs.statSync(`/dev/shm/${name}`).mode & 0o777).to.equal(0o640);
    });

    it('is not a mempool segment: SharedPool.list() does not show it, SharedPool.open() refuses it', () => {
      const name = newName('notpool');
      const shm = SharedMemory.create(name, { size: 1 << 16 });
      expect(SharedPool.list().map((s) => s.name)).to.not.include(name);
      expectCode(() => SharedPool.open(name), 'ERR_SHM_INCOMPATIBLE', PoolError);
      shm.close();
    });

    it('exclusive (the default) refuses an existing name; exclusive: false opens it as it is', () => {
      const name = newName('excl');
      const a = SharedMemory.create(name, { size: 4096 });
      a.buffer.write('kept');
      const e = expectCode(() => SharedMemory.create(name, { size: 4096 }), 'ERR_SHM_EXISTS', PoolError);
      expect(e.message).to.include(name);
      const b = SharedMemory.create(name, { size: 4096, exclusive: false });
      expect(b.buffer.toString('utf8', 0, 4)).to.equal('kept'); // not cleared, not resized
      a.close();
      b.close();
    });

    it('exclusive: false at another size is ERR_SHM_MISMATCH, naming both sizes; nothing is resized', () => {
      const name = newName('mismatch');
      const a = SharedMemory.create(name, { size: 4096 });
      const e = expectCode(() => SharedMemory.create(name, { size: 8192, exclusive: false }), 'ERR_SHM_MISMATCH', PoolError);
      expect(e.message).to.include(name).and.include('4096').and.include('8192');
      expect(fs.statSync(`/dev/shm/${name}`).size).to.equal(4096);
      a.close();
    });

    it('a 0-byte object (a creator killed before ftruncate) is ERR_SHM_EMPTY for open and for create without exclusive', () => {
      const name = newName('empty');
      fs.writeFileSync(`/dev/shm/${name}`, '');
      const e = expectCode(() => SharedMemory.open(name), 'ERR_SHM_EMPTY', PoolError);
      expect(e.message).to.include(name).and.include('empty').and.include('unlink');
      expectCode(() => SharedMemory.open(name, { readOnly: true }), 'ERR_SHM_EMPTY', PoolError);
      expectCode(() => SharedMemory.create(name, { size: 64, exclusive: false }), 'ERR_SHM_EMPTY', PoolError);
      expectCode(() => SharedMemory.create(name, { size: 64 }), 'ERR_SHM_EXISTS', PoolError);
      // the remedy the message gives works
      expect(SharedMemory.unlink(name)).to.equal(true);
      SharedMemory.create(name, { size: 64 }).close();
    });

    it('refuses bad names and sizes with coded errors, and leaves nothing behind', () => {
      for (const bad of ['', 'a/b', '.', '..', 'x'.repeat(251), 'nul\0byte']) {
        expectCode(() => SharedMemory.create(bad, { size: 64 }), 'ERR_SHM_INVALID_NAME', PoolError);
        expectCode(() => SharedMemory.open(bad), 'ERR_SHM_INVALID_NAME', PoolError);
        expectCode(() => SharedMemory.unlink(bad), 'ERR_SHM_INVALID_NAME', PoolError);
      }
      expectCode(() => SharedMemory.create(42 as unknown as string, { size: 64 }), 'ERR_INVALID_ARG_TYPE', TypeError);
      const name = newName('bad');
      for (const size of [0, -1, 1.5, NaN, 2 ** 32 + 1]) {
        expectCode(() => SharedMemory.create(name, { size }), 'ERR_OUT_OF_RANGE', RangeError);
      }
      expectCode(() => SharedMemory.create(name, { size: '64' as unknown as number }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedMemory.create(name, undefined as unknown as { size: number }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedMemory.create(name, { size: 64, mode: 0o1000 }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => SharedMemory.create(name, { size: 64, exclusive: 1 as unknown as boolean }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedMemory.create(name, { size: 64, sise: 1 } as unknown as { size: number }), 'ERR_INVALID_ARG_VALUE', TypeError);
      expectCode(() => SharedMemory.open(name, { readonly: true } as unknown as { readOnly: boolean }), 'ERR_INVALID_ARG_VALUE', TypeError);
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
    });

    it('a 1-byte segment works (no header to fit)', () => {
      const name = newName('tiny');
      const shm = SharedMemory.create(name, { size: 1 });
      shm.buffer[0] = 0xab;
      expect(SharedMemory.open(name).buffer).to.deep.equal(Buffer.from([0xab]));
      shm.close();
    });
  });

  describe('close and read-only', () => {
    it('close() empties the buffer and every view of it; calls after it are ERR_POOL_CLOSED; idempotent', async () => {
      const name = newName('close');
      const shm = SharedMemory.create(name, { size: 4096 });
      const buf = shm.buffer;
      const sub = buf.subarray(10, 20);
      const words = shm.atomics(0, 4);
      shm.close();
      expect(buf.length).to.equal(0);
      expect(sub.length).to.equal(0);
      expect(words.length).to.equal(0);
      expect(shm.buffer.length).to.equal(0);
      expect(buf[0]).to.equal(undefined); // nothing reaches the unmapped memory
      for (const fn of [() => shm.atomics(0, 1), () => shm.atomics64(0, 1), () => shm.wait(0, 0, 1), () => shm.notify(0)]) {
        const e = expectCode(fn, 'ERR_POOL_CLOSED', PoolError);
        expect(e.message).to.include(name);
      }
      let rejected: unknown;
      await shm.waitAsync(0, 0, 1).catch((e) => (rejected = e));
      expect((rejected as PoolError).code).to.equal('ERR_POOL_CLOSED');
      shm.close();
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(true); // close keeps the name; unlink removes it
    });

    it('[Symbol.dispose] closes it (for `using`)', () => {
      const shm = SharedMemory.create(newName('dispose'), { size: 64 });
      const buf = shm.buffer;
      shm[Symbol.dispose]();
      expect(buf.length).to.equal(0);
    });

    it('close() under a pending waitAsync settles it with ERR_POOL_CLOSED', async () => {
      const shm = SharedMemory.create(newName('closewait'), { size: 4096 });
      const pending = shm.waitAsync(0, 0, 10000).then(() => 'settled', (e: PoolError) => e.code);
      await sleep(20);
      shm.close();
      expect(await pending).to.equal('ERR_POOL_CLOSED');
    });

    it('readOnly maps the segment read-only: reads, atomic loads and waits work', () => {
      const name = newName('ro');
      const rw = SharedMemory.create(name, { size: 4096 });
      rw.buffer.write('read me');
      const ro = SharedMemory.open(name, { readOnly: true });
      expect(ro.readOnly).to.equal(true);
      expect(ro.size).to.equal(4096);
      expect(ro.buffer.toString('utf8', 0, 7)).to.equal('read me');
      Atomics.store(rw.atomics(8, 1), 0, 5);
      expect(Atomics.load(ro.atomics(8, 1), 0)).to.equal(5);
      expect(ro.wait(8, 4, 10)).to.equal('not-equal');
      expect(ro.wait(8, 5, 10)).to.equal('timed-out');
      expect(ro.notify(8)).to.equal(0);
      ro.close();
      rw.close();
    });

    it('a write through a read-only mapping kills the writer with SIGSEGV (as documented), and changes nothing', async () => {
      const name = newName('rowrite');
      const rw = SharedMemory.create(name, { size: 4096 });
      rw.buffer[0] = 9;
      const c = run('write-read-only', name);
      expect(await c.until((l) => typeof l === 'object')).to.deep.equal({ read: 9 });
      expect(await c.exit).to.equal('SIGSEGV');
      expect(rw.buffer[0]).to.equal(9);
      rw.close();
    });
  });

  describe('atomics and wait/notify across processes', () => {
    it('atomics() and atomics64() check alignment and bounds as SharedPool does', () => {
      const shm = SharedMemory.create(newName('bounds'), { size: 64 });
      expect(shm.atomics(60, 1).length).to.equal(1);
      expect(shm.atomics64(56, 1).length).to.equal(1);
      expectCode(() => shm.atomics(2, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.atomics64(4, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.atomics(60, 2), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.atomics(0, 0), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.atomics(-4, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.wait(62, 0, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.wait(64, 0, 1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.wait(0, '0' as unknown as number, 1), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => shm.wait(0, 0, -1), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => shm.notify(0, -1), 'ERR_OUT_OF_RANGE', RangeError);
      expect(shm.wait(0, 0, 1)).to.equal('timed-out'); // offset 0 is a word too: no header
      expect(shm.notify(60, Infinity)).to.equal(0);
      shm.close();
    });

    it('Atomics.add from four processes at once loses no increment', async () => {
      const name = newName('add');
      const shm = SharedMemory.create(name, { size: 4096 });
      const children = [0, 1, 2, 3].map(() => run('add', name, 64, 20000));
      expect(await Promise.all(children.map((c) => c.exit))).to.deep.equal([0, 0, 0, 0]);
      expect(Atomics.load(shm.atomics(64, 1), 0)).to.equal(80000);
      shm.close();
    });

    it("a child's wait() is woken by this process's notify()", async () => {
      const name = newName('wake');
      const shm = SharedMemory.create(name, { size: 4096 });
      const c = run('wait', name, 128, 0, 30000);
      await c.until((l) => l === 'ready');
      // notify until it reports a waiter woken: proof the child slept on this very word
      let woken = 0;
      for (let i = 0; i < 500 && woken === 0; i++) {
        await sleep(10);
        woken = shm.notify(128);
      }
      expect(woken).to.equal(1);
      expect(await c.until((l) => typeof l === 'object')).to.deep.equal({ result: 'ok', word: 0 });
      expect(await c.exit).to.equal(0);
      shm.close();
    });

    it("this process's waitAsync() is woken by a child's store and notify()", async () => {
      const name = newName('wakeasync');
      const shm = SharedMemory.create(name, { size: 4096 });
      const waiting = shm.waitAsync(256, 0, 30000);
      await sleep(20);
      const c = run('store-notify', name, 256, 7);
      const result = await waiting;
      expect(result).to.be.oneOf(['ok', 'not-equal']); // not-equal only if the store beat the sleep
      expect(Atomics.load(shm.atomics(256, 1), 0)).to.equal(7);
      expect(await c.exit).to.equal(0);
      shm.close();
    });
  });

  describe('Python interop (multiprocessing.shared_memory)', () => {
    before(function () {
      try {
        execFileSync('python3', ['-c', 'from multiprocessing import shared_memory'], { stdio: 'ignore' });
      } catch {
        skipBecause(this, 'python3 with multiprocessing.shared_memory is missing');
      }
    });

    it('Python opens a segment Node created, reads its bytes and writes some back', () => {
      const name = newName('py-from-node');
      const shm = SharedMemory.create(name, { size: 4096 });
      shm.buffer.write('from node', 0);
      const out = python(
        `${PY_ATTACH}
shm = attach()
print(shm._name, shm.size, bytes(shm.buf[:9]).decode())
shm.buf[100:115] = b'written by py!!'
shm.close()
`,
        name,
      );
      // Python names the object '/<name>' for shm_open: the same file, /dev/shm/<name>
      expect(out.trim()).to.equal(`/${name} 4096 from node`);
      expect(shm.buffer.toString('utf8', 100, 115)).to.equal('written by py!!');
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(true); // the tracker did not unlink it
      shm.close();
    });

    it('Node opens a segment Python created and sees its bytes', () => {
      const name = newName('node-from-py');
      python(
        `${PY_ATTACH}
shm = attach(create=True, size=1000)
shm.buf[:11] = b'from python'
shm.close()
`,
        name,
      );
      expect(fs.statSync(`/dev/shm/${name}`).size).to.equal(1000);
      const shm = SharedMemory.open(name);
      expect(shm.size).to.equal(1000);
      expect(shm.buffer.toString('utf8', 0, 11)).to.equal('from python');
      expect(shm.buffer.subarray(11).every((b) => b === 0)).to.equal(true);
      shm.close();
      expect(SharedMemory.unlink(name)).to.equal(true);
    });

    it('numpy.frombuffer over the shared buffer sees and changes the words Node wrote', function () {
      try {
        execFileSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' });
      } catch {
        skipBecause(this, 'numpy is missing: python3 -m pip install numpy');
      }
      const name = newName('numpy');
      const shm = SharedMemory.create(name, { size: 4096 });
      const words = shm.atomics(0, 8);
      for (let i = 0; i < 8; i++) Atomics.store(words, i, i * 10);
      const out = python(
        `${PY_ATTACH}
import numpy as np
shm = attach()
a = np.frombuffer(shm.buf, dtype='<i4', count=8)
print(int(a.sum()))
a[3] = -42
del a  # no export may outlive close()
shm.close()
`,
        name,
      );
      expect(out.trim()).to.equal('280');
      expect(Atomics.load(words, 3)).to.equal(-42);
      shm.close();
    });
  });
});
