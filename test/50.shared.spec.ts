// SharedPool across processes, worker threads and Python: real segments under /dev/shm, real children.
import { expect } from 'chai';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ALGORITHMS, memoryType, PoolError, SharedPool } from '../lib';
import { expectCode, hasPattern, pattern, skipBecause } from './helpers';

const root = path.join(__dirname, '..');
const child = path.join(__dirname, 'fixtures', 'shared-child.js');
const MiB = 1 << 20;
let counter = 0;
const created: string[] = [];

function uniqueName(tag: string): string {
  const name = `mempool-test-${process.pid}-${tag}-${counter++}`;
  created.push(name);
  return name;
}

function runChild(args: string[]): string {
  return execFileSync(process.execPath, [child, ...args], { encoding: 'utf8' });
}

function startChild(args: string[]): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [child, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    c.once('error', reject);
    c.stdout!.once('data', () => resolve(c));
  });
}

function killed(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

after(() => {
  for (const name of created) {
    try {
      SharedPool.unlink(name, { force: true }); // force: some are junk files the tests wrote
    } catch {
      // already gone
    }
  }
});

describe('SharedPool basics', () => {
  it('creates a genuine POSIX segment under /dev/shm, mode 0600 by default, and lists it', () => {
    const name = uniqueName('basic');
    const pool = SharedPool.create(name, { size: 2 * MiB });
    const st = fs.statSync(`/dev/shm/${name}`);
    expect(st.size).to.equal(2 * MiB);
    expect(st.mode & 0o777).to.equal(0o600);
    expect(pool.name).to.equal(name);
    expect(pool.size).to.equal(2 * MiB);
    expect(pool.algorithm).to.equal('tlsf');
    expect(typeof pool.startAddress).to.equal('bigint');
    const b = pool.alloc(64);
    expect(memoryType(b)).to.equal('shared');
    const listed = SharedPool.list().find((s) => s.name === name);
    expect(listed).to.deep.equal({ name, size: 2 * MiB, algorithm: 'tlsf', used: pool.usableSize(b), liveAllocations: 1 });
    pool.close();
    expect(b.length).to.equal(0);
    // Segments persist until unlinked: closing does not remove the name.
    expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(true);
    expect(SharedPool.unlink(name)).to.equal(true);
    expect(SharedPool.unlink(name)).to.equal(false);
    expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
  });

  it('honours mode, and exclusive: false opens an existing segment', () => {
    const name = uniqueName('mode');
    const a = SharedPool.create(name, { size: MiB, mode: 0o640 });
    expect(fs.statSync(`/dev/shm/${name}`).mode & 0o777).to.equal(0o640);
    const x = a.alloc(32);
    pattern(x, 8);
    a.set('x', x);
    expectCode(() => SharedPool.create(name, { size: MiB }), 'ERR_SHM_EXISTS', PoolError);
    const b = SharedPool.create(name, { size: MiB, exclusive: false });
    expect(b.startAddress).to.not.equal(a.startAddress);
    expect(hasPattern(b.get('x')!, 8)).to.equal(true); // the existing segment, not a new one
    a.close();
    b.close();
  });

  describe('create with exclusive: false of an existing segment', () => {
    // Every setting the segment was made with, and a value of each that differs from it.
    const made = { size: 2 * MiB, algorithm: 'bitmap', debug: false, trackOwners: true, maxKeys: 64, blockSize: 32 } as const;
    const others: Array<[string, Record<string, unknown>, string]> = [
      ['size', { size: MiB }, 'size: asked 1048576, segment has 2097152'],
      ['algorithm', { algorithm: 'tlsf' }, 'algorithm: asked tlsf, segment has bitmap'],
      ['debug', { debug: true }, 'debug: asked true, segment has false'],
      ['trackOwners', { trackOwners: false }, 'trackOwners: asked false, segment has true'],
      ['maxKeys', { maxKeys: 65 }, 'maxKeys: asked 65, segment has 64'],
      ['blockSize', { blockSize: 64 }, 'blockSize: asked 64, segment has 32'],
      ['minBlock', { minBlock: 32 }, 'minBlock: asked 32, segment has 16'],
      ['maxBlock', { maxBlock: 4096 }, 'maxBlock: asked 4096, segment has 0'],
    ];
    let name: string;
    let pool: SharedPool;
    beforeEach(() => {
      name = uniqueName('mismatch');
      pool = SharedPool.create(name, made);
      const kept = pool.alloc(16);
      pattern(kept, 3);
      pool.set('kept', kept);
    });
    afterEach(() => {
      pool.close();
      SharedPool.unlink(name);
    });

    for (const [setting, asked, difference] of others) {
      it(`refuses another ${setting} with ERR_SHM_MISMATCH`, () => {
        const e = expectCode(() => SharedPool.create(name, { size: made.size, ...asked, exclusive: false }), 'ERR_SHM_MISMATCH', PoolError);
        expect(e.message).to.equal(
          `Shared memory '${name}' exists with other settings (${difference}): open it as it is with ` +
            `SharedPool.open('${name}'), pass acceptExisting: true, or unlink it first`,
        );
      });
    }

    it('names every difference in one message', () => {
      const e = expectCode(() => SharedPool.create(name, { size: MiB, algorithm: 'buddy', exclusive: false }), 'ERR_SHM_MISMATCH', PoolError);
      expect(e.message).to.include('(size: asked 1048576, segment has 2097152; algorithm: asked buddy, segment has bitmap)');
    });

    it('a refused create detaches again and leaves the segment as it was', () => {
      expectCode(() => SharedPool.create(name, { size: MiB, exclusive: false }), 'ERR_SHM_MISMATCH', PoolError);
      expect(pool.processes().map((p) => p.pid)).to.deep.equal([process.pid]); // no attachment left behind
      const other = SharedPool.open(name);
      expect(hasPattern(other.get('kept')!, 3)).to.equal(true);
      expect(other.size).to.equal(made.size);
      other.close();
      pool.check(); // throws on damaged bookkeeping
    });

    it('accepts the same settings, given or left out', () => {
      for (const options of [{ size: made.size }, made, { ...made, minBlock: 16 }]) {
        const same = SharedPool.create(name, { ...options, exclusive: false });
        expect(hasPattern(same.get('kept')!, 3)).to.equal(true);
        same.close();
      }
    });

    it('acceptExisting: true takes the segment as it is', () => {
      const taken = SharedPool.create(name, { size: MiB, algorithm: 'tlsf', debug: true, exclusive: false, acceptExisting: true });
      expect([taken.size, taken.algorithm, taken.debug]).to.deep.equal([made.size, 'bitmap', false]);
      expect(hasPattern(taken.get('kept')!, 3)).to.equal(true);
      taken.close();
    });

    it('acceptExisting without exclusive: false is refused', () => {
      for (const exclusive of [undefined, true]) {
        const e = expectCode(() => SharedPool.create(name, { size: made.size, exclusive, acceptExisting: true }), 'ERR_INVALID_ARG_VALUE', TypeError);
        expect(e.message).to.include('acceptExisting');
      }
      const fresh = uniqueName('accept');
      expectCode(() => SharedPool.create(fresh, { size: MiB, acceptExisting: true }), 'ERR_INVALID_ARG_VALUE', TypeError);
      expect(fs.existsSync(`/dev/shm/${fresh}`)).to.equal(false); // refused before anything was created
      expectCode(() => SharedPool.create(fresh, { size: MiB, exclusive: false, acceptExisting: 1 as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
    });
  });

  for (const algorithm of ALGORITHMS) {
    it(`works with ${algorithm}: offsets are segment offsets, the same in another mapping`, () => {
      const name = uniqueName(algorithm);
      const a = SharedPool.create(name, { size: 4 * MiB, algorithm });
      const b = SharedPool.open(name);
      expect(b.algorithm).to.equal(algorithm);
      expect(b.startAddress).to.not.equal(a.startAddress);
      const blocks = Array.from({ length: 50 }, (_, i) => {
        const buf = a.alloc(10 + i * 13);
        pattern(buf, i);
        return buf;
      });
      for (const [i, buf] of blocks.entries()) {
        const off = a.offsetOf(buf);
        expect(hasPattern(b.view(off, buf.length), i)).to.equal(true);
        // and in the file itself
        if (i === 7) {
          const fd = fs.openSync(`/dev/shm/${name}`, 'r');
          const bytes = Buffer.alloc(buf.length);
          fs.readSync(fd, bytes, 0, buf.length, off);
          fs.closeSync(fd);
          expect(bytes.equals(buf)).to.equal(true);
        }
      }
      // frees from either side
      for (const [i, buf] of blocks.entries()) (i % 2 ? a : b).free(a.offsetOf(buf));
      expect(a.stats().used).to.equal(0);
      a.check();
      b.check();
      a.close();
      b.close();
    });
  }

  it('set/get/delete/keys: a directory of named allocations, each owning its block', () => {
    const name = uniqueName('dir');
    const pool = SharedPool.create(name, { size: MiB, maxKeys: 8 });
    const a = pool.alloc(100);
    a.write('alpha');
    expectCode(() => pool.set('a', a.subarray(0, 5)), 'ERR_POOL_NO_HANDLE', PoolError); // a sub-view carries no generation
    pool.set('a', a, 5);
    expect(pool.get('a')!.toString()).to.equal('alpha');
    expect(pool.get('a')!.byteOffset).to.equal(a.byteOffset);
    // one name per block: the name owns it
    expectCode(() => pool.set('ä-unicode ключ', a), 'ERR_POOL_BLOCK_NAMED', PoolError);
    expectCode(() => pool.free(a), 'ERR_POOL_BLOCK_NAMED', PoolError);
    expectCode(() => pool.free(pool.get('a')!), 'ERR_POOL_BLOCK_NAMED', PoolError); // a borrowed view
    expect(pool.keys()).to.deep.equal(['a']);
    expect(pool.get('missing')).to.equal(undefined);
    const back = pool.take('a')!;
    expect(back.byteOffset).to.equal(a.byteOffset);
    expect(back.toString()).to.equal('alpha');
    expect(pool.take('a')).to.equal(undefined);
    expectCode(() => pool.free(a), 'ERR_POOL_STALE_HANDLE', PoolError); // handed to the name and back since
    pool.set('ä-unicode ключ', back);
    expect(pool.getCopy('ä-unicode ключ')!.subarray(0, 5).toString()).to.equal('alpha');
    expect(pool.delete('ä-unicode ключ')).to.equal(true); // frees the block
    expect(pool.delete('ä-unicode ключ')).to.equal(false);
    expectCode(() => pool.free(back), 'ERR_POOL_DOUBLE_FREE', PoolError);
    const b = pool.alloc(10);
    const c = pool.alloc(10);
    pool.set('k', b);
    pool.set('k', c); // set over a key frees the block it named
    expect(pool.get('k')!.byteOffset).to.equal(c.byteOffset);
    expectCode(() => pool.free(b), 'ERR_POOL_DOUBLE_FREE', PoolError);
    const d = pool.alloc(10);
    const old = pool.replace('k', d)!; // replace hands it back instead
    expect(old.byteOffset).to.equal(c.byteOffset);
    pool.free(old);
    expect(pool.delete('k')).to.equal(true);
    expect(pool.stats().liveAllocations).to.equal(0);
    expect(pool.check()).to.equal(undefined);
    pool.close();
    SharedPool.unlink(name);
  });

  it('a freed view comes back, the same object, when the next alloc of its length gets its block; frees stay exact', () => {
    const pool = SharedPool.create(uniqueName('views'), { size: 4 * MiB });
    try {
      const a = pool.alloc(64);
      const at = pool.offsetOf(a);
      a.fill(7);
      pool.free(a);
      expectCode(() => pool.free(a), 'ERR_POOL_DOUBLE_FREE'); // kept, but its block is free
      const b = pool.alloc(64);
      expect(pool.offsetOf(b)).to.equal(at); // the heap hands the block back first
      expect(b).to.equal(a); // and the kept view with it
      expect(b.length).to.equal(64);
      const c = pool.alloc(64); // another block: a new view
      expect(c).to.not.equal(a);
      expect(pool.offsetOf(c)).to.not.equal(at);
      pool.free(b);
      const d = pool.alloc(50); // the same block (same size class), another length: never the kept view
      expect(pool.offsetOf(d)).to.equal(at);
      expect(d).to.not.equal(a);
      expect(d.length).to.equal(50);
      // A view made some other way carries no generation: refused at a live block; its offset frees it.
      expectCode(() => pool.free(pool.view(pool.offsetOf(c), 64)), 'ERR_POOL_NO_HANDLE');
      pool.free(pool.offsetOf(c));
      expectCode(() => pool.free(c), 'ERR_POOL_DOUBLE_FREE');
      const e = pool.alloc(64);
      expect(e).to.not.equal(c);
      pool.free(d);
      pool.free(e);
      expect(pool.stats().liveAllocations).to.equal(0);
      pool.check(); // throws ERR_POOL_CORRUPTED on any violation
    } finally {
      pool.close();
    }
  });

  it('rejects hostile names with ERR_SHM_INVALID_NAME and missing ones with ERR_SHM_NOT_FOUND', () => {
    for (const bad of ['', 'a/b', '../etc/passwd', '/abs', 'nul\0byte', '.', '..', 'x'.repeat(251)]) {
      expectCode(() => SharedPool.create(bad, { size: MiB }), 'ERR_SHM_INVALID_NAME', PoolError);
      expectCode(() => SharedPool.open(bad), 'ERR_SHM_INVALID_NAME', PoolError);
      expectCode(() => SharedPool.unlink(bad), 'ERR_SHM_INVALID_NAME', PoolError);
    }
    expectCode(() => SharedPool.create(5 as never, { size: MiB }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => SharedPool.open(uniqueName('absent')), 'ERR_SHM_NOT_FOUND', PoolError);
    expectCode(() => SharedPool.create(uniqueName('tiny'), { size: 100 }), 'ERR_OUT_OF_RANGE', RangeError);
    const huge = uniqueName('huge');
    expectCode(() => SharedPool.create(huge, { size: 2 ** 32 + 4096 }), 'ERR_OUT_OF_RANGE', RangeError);
    expect(fs.existsSync(`/dev/shm/${huge}`)).to.equal(false); // refused before anything was created
    expectCode(() => SharedPool.create(uniqueName('mode'), { size: MiB, mode: 0o1777 }), 'ERR_OUT_OF_RANGE', RangeError);
    // a 250-byte name is fine
    const long = `mempool-test-${process.pid}-`.padEnd(250, 'x');
    created.push(long);
    SharedPool.create(long, { size: MiB }).close();
    expect(SharedPool.unlink(long)).to.equal(true);
  });

  it('unlink refuses a file that is not a mempool segment unless forced', () => {
    const junk = uniqueName('unlink-junk');
    fs.writeFileSync(`/dev/shm/${junk}`, Buffer.from('not a mempool segment, someone else\'s'), { mode: 0o600 });
    const e = expectCode(() => SharedPool.unlink(junk), 'ERR_SHM_INCOMPATIBLE', PoolError);
    expect(e.message).to.equal(`Shared memory '${junk}' is not a mempool segment; pass { force: true } to remove it anyway`);
    expect(fs.existsSync(`/dev/shm/${junk}`)).to.equal(true);
    expect(SharedPool.unlink(junk, { force: true })).to.equal(true);
    expect(fs.existsSync(`/dev/shm/${junk}`)).to.equal(false);
    expect(SharedPool.unlink(junk, { force: true })).to.equal(false);
    expect(SharedPool.unlink(junk)).to.equal(false);

    // An empty file (a creator killed before ftruncate) has no magic either: refused, and the message says so.
    const empty = uniqueName('unlink-empty');
    fs.writeFileSync(`/dev/shm/${empty}`, Buffer.alloc(0), { mode: 0o600 });
    expect(expectCode(() => SharedPool.unlink(empty), 'ERR_SHM_INCOMPATIBLE', PoolError).message).to.include('is empty (0 bytes)');
    expect(SharedPool.unlink(empty, { force: true })).to.equal(true);

    // A real segment unlinks as before, through either call.
    const real = uniqueName('unlink-real');
    const pool = SharedPool.create(real, { size: MiB });
    expect(pool.unlink()).to.equal(true);
    pool.close();
    SharedPool.create(real, { size: MiB }).close();
    expect(SharedPool.unlink(real)).to.equal(true);

    expectCode(() => SharedPool.unlink(real, { force: 1 as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
    expectCode(() => SharedPool.unlink(real, { froce: true } as never), 'ERR_INVALID_ARG_VALUE', TypeError);
    for (const bad of ['../etc/passwd', 'a/b', '..']) {
      expectCode(() => SharedPool.unlink(bad, { force: true }), 'ERR_SHM_INVALID_NAME', PoolError);
    }
  });

  it('refuses junk, empty, truncated and damaged segments without crashing', () => {
    const write = (bytes: Buffer) => {
      const name = uniqueName('junk');
      fs.writeFileSync(`/dev/shm/${name}`, bytes, { mode: 0o600 });
      return name;
    };
    expectCode(() => SharedPool.open(write(Buffer.alloc(0))), 'ERR_SHM_INCOMPATIBLE', PoolError);
    expectCode(() => SharedPool.open(write(Buffer.alloc(100, 7))), 'ERR_SHM_INCOMPATIBLE', PoolError);
    const junk = Buffer.alloc(MiB);
    for (let i = 0; i < junk.length; i++) junk[i] = (i * 2654435761) >>> 24;
    expectCode(() => SharedPool.open(write(junk)), 'ERR_SHM_INCOMPATIBLE', PoolError);
    // a real segment, then damaged field by field
    const name = uniqueName('damaged');
    SharedPool.create(name, { size: MiB }).close();
    const good = fs.readFileSync(`/dev/shm/${name}`);
    const cases: Array<[string, (b: Buffer) => void, string]> = [
      ['magic', (b) => b.writeUInt32LE(0xdeadbeef, 0), 'ERR_SHM_INCOMPATIBLE'],
      ['version', (b) => b.writeUInt32LE(99, 8), 'ERR_SHM_INCOMPATIBLE'],
      ['size', (b) => b.writeBigUInt64LE(BigInt(64 * MiB), 16), 'ERR_POOL_CORRUPTED'],
      ['algorithm', (b) => b.writeUInt32LE(9, 24), 'ERR_POOL_CORRUPTED'],
      ['heap offset', (b) => b.writeBigUInt64LE(BigInt(512), 72), 'ERR_POOL_CORRUPTED'],
      ['directory capacity', (b) => b.writeBigUInt64LE(BigInt(2 ** 40), 64), 'ERR_POOL_CORRUPTED'],
      // the segment header is fine but the heap inside it is not
      ['heap header', (b) => b.fill(0xff, b.readUInt32LE(72), b.readUInt32LE(72) + 64), 'ERR_POOL_CORRUPTED'],
    ];
    for (const [what, damage, code] of cases) {
      const copy = Buffer.from(good);
      damage(copy);
      const e = expectCode(() => SharedPool.open(write(copy)), code, PoolError);
      expect(e.message, what).to.be.a('string');
    }
    // truncated: a valid header whose file is shorter than it says
    expectCode(() => SharedPool.open(write(good.subarray(0, 64 * 1024))), 'ERR_POOL_CORRUPTED', PoolError);
  });

  it('ERR_SHM_PERMISSION for a segment of another user', function () {
    if (process.getuid?.() !== 0 || spawnSync('runuser', ['--help']).error) {
      skipBecause(this, 'needs root and runuser to act as another user');
    }
    const name = uniqueName('perm');
    SharedPool.create(name, { size: MiB }).close();
    // The checkout may not be readable by nobody (a private temporary directory in CI): give it a
    // world-readable copy of the built package.
    const copy = fs.mkdtempSync('/tmp/mempool-perm-');
    try {
      for (const part of ['package.json', 'dist', 'build/Release/mempool.node', 'node_modules/node-gyp-build']) {
        fs.cpSync(path.join(root, part), path.join(copy, part), { recursive: true });
      }
      execFileSync('chmod', ['-R', 'a+rX', copy]);
      const script = `const { SharedPool } = require(${JSON.stringify(copy)});
        try { SharedPool.open(${JSON.stringify(name)}); console.log('opened'); } catch (e) { console.log(e.code); }`;
      const out = execFileSync('runuser', ['-u', 'nobody', '--', process.execPath, '-e', script], { encoding: 'utf8', cwd: '/' });
      expect(out.trim()).to.equal('ERR_SHM_PERMISSION');
    } finally {
      fs.rmSync(copy, { recursive: true, force: true });
    }
  });
});

describe('SharedPool across processes and threads', () => {
  it('a child process opens by name, reads what the parent wrote, and replies under a key', () => {
    const name = uniqueName('child');
    const pool = SharedPool.create(name, { size: MiB });
    const q = pool.alloc(20);
    q.write('what is 6*7?');
    pool.set('question', q, 12);
    const out = JSON.parse(runChild(['reply', name]));
    expect(out.pid).to.not.equal(process.pid);
    const answer = pool.get('answer')!;
    expect(answer.toString()).to.equal('reply:what is 6*7?');
    expect(pool.offsetOf(answer)).to.equal(out.offset);
    pool.check();
    pool.close();
  });

  it('a worker thread opens by name and writes; the main thread sees it', async () => {
    const name = uniqueName('worker');
    const pool = SharedPool.create(name, { size: MiB });
    const code = `
      const { workerData } = require('node:worker_threads');
      const { SharedPool } = require(workerData.root);
      const pool = SharedPool.open(workerData.name);
      for (let i = 0; i < 10; i++) {
        const message = 'from worker ' + i;
        const b = pool.alloc(message.length);
        b.write(message);
        pool.set('w' + i, b);
      }
      pool.close();
    `;
    await new Promise<void>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { root, name } });
      w.on('error', reject);
      w.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`worker exit ${c}`))));
    });
    for (let i = 0; i < 10; i++) expect(pool.get('w' + i)!.toString()).to.equal('from worker ' + i);
    expect(pool.stats().liveAllocations).to.equal(10);
    pool.close();
  });

  for (const algorithm of ALGORITHMS) {
    it(`two processes allocate and free concurrently (${algorithm}); used is what the survivors hold`, async () => {
      const name = uniqueName('concurrent');
      const pool = SharedPool.create(name, { size: 8 * MiB, algorithm });
      const run = (seed: number) =>
        new Promise<{ held: number; bytes: number }>((resolve, reject) => {
          const c = spawn(process.execPath, [child, 'work', name, '20000', String(seed)], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          c.stdout.on('data', (d) => (out += d));
          c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child exited ${code}`))));
        });
      const [x, y] = await Promise.all([run(1), run(2)]);
      pool.check();
      const s = pool.stats();
      expect(s.liveAllocations).to.equal(x.held + y.held);
      expect(s.used).to.equal(x.bytes + y.bytes);
      pool.close();
    });
  }

  it('Python multiprocessing.shared_memory reads the bytes at offsetOf(buffer)', function () {
    const probe = spawnSync('python3', ['-c', 'from multiprocessing import shared_memory'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0) skipBecause(this, 'python3 with multiprocessing.shared_memory is not installed here');
    const name = uniqueName('python');
    const pool = SharedPool.create(name, { size: MiB });
    const b = pool.alloc(32);
    b.write('hello from node');
    const script = [
      'import sys',
      'from multiprocessing import shared_memory, resource_tracker',
      'shm = shared_memory.SharedMemory(name=sys.argv[1])',
      // Python would unlink the segment at exit when it thinks it owns it: tell its tracker it does not.
      'resource_tracker.unregister(shm._name, "shared_memory")',
      'off, n = int(sys.argv[2]), int(sys.argv[3])',
      'print(bytes(shm.buf[off:off + n]).decode())',
      'shm.buf[off:off + 5] = b"HELLO"',
      'shm.close()',
    ].join('\n');
    const out = execFileSync('python3', ['-c', script, name, String(pool.offsetOf(b)), '15'], { encoding: 'utf8' });
    expect(out.trim()).to.equal('hello from node');
    expect(b.toString('utf8', 0, 15)).to.equal('HELLO from node');
    expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(true);
    pool.close();
  });
});

describe('SharedPool locks and crashes', () => {
  it('a process in another PID namespace never takes over a lock it cannot judge: it times out', async function () {
    if (process.getuid?.() !== 0 || spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']).status !== 0) {
      skipBecause(this, 'needs root and unshare to make a PID namespace');
    }
    const name = uniqueName('pidns');
    const pool = SharedPool.create(name, { size: MiB, lockTimeoutMs: 200 });
    // The lock word names a live thread of this namespace (a sleeping child). From inside a new PID
    // namespace that thread id does not exist: the waiter must not call the holder dead.
    const sleeper = spawn('sleep', ['30']);
    const lockWord = pool.view(256, 4);
    lockWord.writeUInt32LE(sleeper.pid!);
    const script = `const { SharedPool } = require(${JSON.stringify(root)});
      const p = SharedPool.open(${JSON.stringify(name)}, { lockTimeoutMs: 300 });
      try { p.alloc(8); console.log('took over'); } catch (e) { console.log(e.code); }`;
    try {
      const out = execFileSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, '-e', script], { encoding: 'utf8' });
      expect(out.trim()).to.equal('ERR_SHM_LOCK_TIMEOUT');
      expect(pool.stats.bind(pool)).to.throw(PoolError); // still held by the sleeper, as far as we know
    } finally {
      await killed(sleeper);
      lockWord.writeUInt32LE(0);
    }
    expect(pool.stats().recoveries).to.equal(0);
    pool.close();
  });

  for (const algorithm of ALGORITHMS) {
    it(`kill -9 during alloc/free, many times (${algorithm}): the survivor never waits, check() holds, nothing lost`, async function () {
      this.timeout(120000);
      const name = uniqueName('kill');
      const pool = SharedPool.create(name, { size: 8 * MiB, algorithm, lockTimeoutMs: 2000 });
      const mine = Array.from({ length: 40 }, (_, i) => {
        const b = pool.alloc(50 + i * 10);
        pattern(b, i);
        return b;
      });
      // 30 kills, and more (up to 300) until one has landed while the child held the lock: on a loaded
      // machine the child may get little CPU, and a run without a recovery would not test one.
      const kills = 30;
      for (let k = 0; k < kills || (k < 300 && pool.stats().recoveries === 0); k++) {
        // Alternate a child that verifies its blocks with one that does little but hold the lock (blocks
        // too large for the slab cache, so every operation takes the lock), or one on the cache's fast path.
        const c = await startChild(k % 3 === 0 ? ['churn', name, String(k + 1)] : ['hammer', name, k % 3 === 1 ? '2048' : '64']);
        await sleep(5 + (k * 7) % 40);
        await killed(c);
        const started = Date.now();
        pool.check(); // takes the lock: repairs first if the child died holding it
        expect(Date.now() - started, 'the survivor waited on a dead lock holder').to.be.lessThan(1000);
        mine.forEach((b, i) => expect(hasPattern(b, i)).to.equal(true));
        const extra = pool.alloc(100);
        pool.free(extra);
      }
      const s = pool.stats();
      // Some kills land while the child holds the lock: those are the recoveries.
      expect(s.recoveries).to.be.greaterThan(0);
      pool.close();
    });
  }

  it('a lock held by a stopped process, or a lock word damaged by a stray write, times out with ERR_SHM_LOCK_TIMEOUT', async () => {
    const name = uniqueName('lock');
    const pool = SharedPool.create(name, { size: MiB, lockTimeoutMs: 100 });
    // Too large for the slab cache: every alloc and free takes the lock. (Small blocks served from this
    // process's cache need no lock, so a stuck lock is only met when the cache runs dry.)
    const BIG = 2048;
    // Damage: the lock word now names a live thread of another process as its holder.
    const sleeper = spawn('sleep', ['30']);
    const lockWord = pool.view(256, 4);
    const saved = Buffer.from(lockWord);
    lockWord.writeUInt32LE(sleeper.pid!);
    const started = Date.now();
    expectCode(() => pool.alloc(BIG), 'ERR_SHM_LOCK_TIMEOUT', PoolError);
    expect(Date.now() - started).to.be.within(90, 2000);
    await killed(sleeper);
    lockWord.set(saved);
    pool.free(pool.alloc(BIG)); // usable again once the word is restored
    // Damage naming a thread that does not exist: treated as a dead holder, repaired, not a hang.
    const recoveries = pool.stats().recoveries;
    lockWord.writeUInt32LE(0x3ffffff0);
    pool.free(pool.alloc(BIG));
    expect(pool.stats().recoveries).to.equal(recoveries + 1);
    // This process's own thread id in the word: it cannot hold the lock, so the word is damage.
    lockWord.writeUInt32LE(process.pid);
    expectCode(() => pool.alloc(BIG), 'ERR_POOL_CORRUPTED', PoolError);
    lockWord.set(saved);
    // A holder stopped with SIGSTOP: retry until a stop lands while it holds the lock.
    const c = await startChild(['churn', name, '5']);
    let timedOut = false;
    for (let i = 0; i < 200 && !timedOut; i++) {
      c.kill('SIGSTOP');
      await sleep(2);
      try {
        pool.free(pool.alloc(BIG));
      } catch (e) {
        expect((e as PoolError).code).to.equal('ERR_SHM_LOCK_TIMEOUT');
        timedOut = true;
      }
      c.kill('SIGCONT');
      await sleep(1);
    }
    await killed(c);
    expect(timedOut).to.equal(true);
    pool.check();
    pool.close();
  });
});
