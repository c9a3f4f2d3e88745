// SharedCache (lib/shared-kv-cache.ts): eviction order and TTL with a fake clock, eviction by count and by
// bytes, pinned entries, limits and coded errors; then real processes: a storm of checksummed set/get/
// delete, and kill -9 of writers and readers mid-operation.
import { expect } from 'chai';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as path from 'node:path';
import { SharedCache, SharedPool } from '../lib';
import { expectCode, segmentNames } from './helpers';

const root = path.join(__dirname, '..');
const child = path.join(__dirname, 'fixtures', 'cache-child.js');
const KiB = 1024;
const MiB = 1 << 20;
const names = segmentNames('kvcache');
const uniqueName = names.name;

interface Counts {
  gets: number;
  hits: number;
  torn: number;
  sets: number;
  deletes: number;
  reads: number;
}

function runChild(options: object): Promise<Counts> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [child, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as Counts) : reject(new Error(`child exited with ${code}: ${err}`))));
  });
}

describe('SharedCache', function () {
  this.timeout(120000);

  before(function () {
    this.timeout(120000);
    // The child processes require the package: its dist/, compiled from the current lib/.
    execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root });
  });

  afterEach(function () {
    for (const name of names.made()) SharedCache.unlink(name);
  });

  describe('in one process, with a fake clock', function () {
    let now = 1000;
    const clock = (): number => now;

    it('stores, reads, deletes and clears; Buffer, Uint8Array and string values', function () {
      const cache = SharedCache.create(uniqueName('api'), { size: MiB, now: clock });
      try {
        cache.set('a', 'alpha');
        cache.set('b', Buffer.from('beta'));
        cache.set('c', new Uint8Array([1, 2, 3]));
        expect(cache.get('a')!.toString()).to.equal('alpha');
        expect(cache.get('b')!.toString()).to.equal('beta');
        expect([...cache.get('c')!]).to.deep.equal([1, 2, 3]);
        expect(cache.get('zz')).to.equal(undefined);
        expect(cache.read('a', (v) => v.toString())).to.equal('alpha');
        expect(cache.read('zz', () => 1)).to.equal(undefined);
        expect(cache.has('b')).to.equal(true);
        expect(cache.size).to.equal(3);
        expect(cache.keys().sort()).to.deep.equal(['a', 'b', 'c']);
        cache.set('a', 'again');
        expect(cache.get('a')!.toString()).to.equal('again');
        expect(cache.delete('a')).to.equal(true);
        expect(cache.delete('a')).to.equal(false);
        expect(cache.stats()).to.include({ hits: 5, misses: 2, entries: 2, bytes: 7, evictions: 0 });
        cache.clear();
        expect(cache.size).to.equal(0);
        expect(cache.stats().bytes).to.equal(0);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('a copy from get() is the process\'s own; another process\'s set is seen by open()', function () {
      const name = uniqueName('open');
      const cache = SharedCache.create(name, { size: MiB });
      const other = SharedCache.open(name);
      try {
        cache.set('k', 'one');
        const copy = other.get('k')!;
        cache.set('k', 'two');
        expect(copy.toString()).to.equal('one');
        expect(other.get('k')!.toString()).to.equal('two');
        expect(other.maxEntries).to.equal(cache.maxEntries);
      } finally {
        other.close();
        cache.close();
      }
    });

    it('evicts by count in CLOCK order: an entry read since the hand passed gets another round', function () {
      const cache = SharedCache.create(uniqueName('clock'), { size: MiB, maxEntries: 4, now: clock });
      try {
        for (const k of ['a', 'b', 'c', 'd']) cache.set(k, k);
        cache.get('a');
        cache.get('c');
        cache.set('e', 'e'); // the hand clears a, evicts b
        expect(cache.keys().sort()).to.deep.equal(['a', 'c', 'd', 'e']);
        cache.set('f', 'f'); // c visited: cleared; d evicted
        expect(cache.keys().sort()).to.deep.equal(['a', 'c', 'e', 'f']);
        cache.set('g', 'g'); // the hand wraps to a, whose visit it cleared on its first pass: a goes
        expect(cache.keys().sort()).to.deep.equal(['c', 'e', 'f', 'g']);
        expect(cache.stats().evictions).to.equal(3);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('expires by TTL: lazily on get, and first when the hand needs room; defaultTtlMs; ttlMs 0 never', function () {
      now = 1000;
      const cache = SharedCache.create(uniqueName('ttl'), { size: MiB, maxEntries: 3, defaultTtlMs: 100, now: clock });
      try {
        cache.set('short', 's', { ttlMs: 10 });
        cache.set('default', 'd');
        cache.set('forever', 'f', { ttlMs: 0 });
        now += 9;
        expect(cache.get('short')!.toString()).to.equal('s');
        now += 1;
        expect(cache.get('short')).to.equal(undefined);
        expect(cache.has('short')).to.equal(false);
        expect(cache.stats()).to.include({ expirations: 1, entries: 2 });
        now += 90;
        expect(cache.keys()).to.deep.equal(['forever']); // keys() leaves expired ones out
        cache.get('forever');
        cache.set('x', 'x'); // into short's slot, where the hand starts
        cache.get('x');
        cache.set('y', 'y'); // full: the hand passes x (visited) and removes the expired 'default'
        expect(cache.keys().sort()).to.deep.equal(['forever', 'x', 'y']);
        expect(cache.stats()).to.include({ expirations: 2, evictions: 0 });
        now += 1e9;
        expect(cache.get('forever')!.toString()).to.equal('f');
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('evicts by bytes: when the segment is full a set evicts until the value fits', function () {
      const cache = SharedCache.create(uniqueName('bytes'), { size: 2 * MiB, maxEntries: 5000 });
      try {
        const value = Buffer.alloc(4 * KiB, 7);
        for (let i = 0; i < 2000; i++) cache.set(`k${i}`, value);
        const s = cache.stats();
        expect(s.entries).to.be.below(512).and.above(100);
        expect(s.evictions).to.equal(2000 - s.entries);
        expect(cache.get('k1999')!.equals(value)).to.equal(true);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('does not evict an entry a read() is inside, and its view stays intact', function () {
      const cache = SharedCache.create(uniqueName('pinned'), { size: MiB, maxEntries: 8 });
      try {
        cache.set('pinned', Buffer.alloc(100, 9));
        cache.read('pinned', (view) => {
          for (let i = 0; i < 100; i++) cache.set(`other${i}`, Buffer.alloc(100, i));
          expect(view.equals(Buffer.alloc(100, 9))).to.equal(true);
        });
        expect(cache.has('pinned')).to.equal(true);
        expect(cache.stats().evictions).to.equal(100 - 7);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('values of 0 bytes and at maxValueBytes are stored; one byte more is ERR_CACHE_VALUE_TOO_LARGE', function () {
      const cache = SharedCache.create(uniqueName('limits'), { size: MiB, maxValueBytes: 64 * KiB });
      try {
        cache.set('empty', Buffer.alloc(0));
        expect(cache.get('empty')!.length).to.equal(0);
        cache.set('empty-string', '');
        expect(cache.get('empty-string')!.length).to.equal(0);
        const full = Buffer.alloc(64 * KiB, 3);
        cache.set('full', full);
        expect(cache.get('full')!.equals(full)).to.equal(true);
        expectCode(() => cache.set('over', Buffer.alloc(64 * KiB + 1)), 'ERR_CACHE_VALUE_TOO_LARGE');
        expectCode(() => cache.set('over', 'x'.repeat(64 * KiB + 1)), 'ERR_CACHE_VALUE_TOO_LARGE');
        expect(cache.has('over')).to.equal(false);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('keys of 1 byte and of 224 bytes are stored; longer, empty or not strings are coded errors', function () {
      const cache = SharedCache.create(uniqueName('keys'), { size: MiB });
      try {
        cache.set('k', '1');
        const longest = 'é'.repeat(112); // 224 UTF-8 bytes
        cache.set(longest, '224');
        expect(cache.get('k')!.toString()).to.equal('1');
        expect(cache.get(longest)!.toString()).to.equal('224');
        expect(cache.keys()).to.include(longest);
        expectCode(() => cache.set('x'.repeat(225), 'v'), 'ERR_OUT_OF_RANGE', RangeError);
        expectCode(() => cache.set('', 'v'), 'ERR_OUT_OF_RANGE', RangeError);
        expectCode(() => cache.get('x'.repeat(225)), 'ERR_OUT_OF_RANGE', RangeError);
        expectCode(() => cache.get(7 as unknown as string), 'ERR_INVALID_ARG_TYPE', TypeError);
        expectCode(() => cache.set('\0own', 'v'), 'ERR_INVALID_ARG_VALUE', TypeError);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('bad input and misuse are coded', function () {
      const name = uniqueName('bad');
      expectCode(() => SharedCache.create(name, { size: MiB, maxEntrys: 4 } as never), 'ERR_INVALID_ARG_VALUE', TypeError);
      expectCode(() => SharedCache.create(name, undefined as never), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedCache.create(name, { size: 0 }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => SharedCache.create(name, { size: MiB, maxEntries: 1 << 20 }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => SharedCache.create(name, { size: 64 * KiB, maxEntries: 60000 }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => SharedCache.create(name, { size: MiB, now: 5 as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedCache.open(name), 'ERR_SHM_NOT_FOUND');
      const cache = SharedCache.create(name, { size: MiB });
      expectCode(() => SharedCache.create(name, { size: MiB }), 'ERR_SHM_EXISTS');
      expectCode(() => cache.set('k', 5 as never), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => cache.set('k', 'v', { ttl: 5 } as never), 'ERR_INVALID_ARG_VALUE', TypeError);
      expectCode(() => cache.set('k', 'v', { ttlMs: -1 }), 'ERR_OUT_OF_RANGE', RangeError);
      expectCode(() => cache.set('k', 'v', { ttlMs: 'soon' as never }), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => cache.read('k', 'fn' as never), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => SharedCache.open(name, { clock: 1 } as never), 'ERR_INVALID_ARG_VALUE', TypeError);
      cache.close();
      expectCode(() => cache.get('k'), 'ERR_POOL_CLOSED');
      expectCode(() => cache.set('k', 'v'), 'ERR_POOL_CLOSED');
      const plain = uniqueName('plain');
      SharedPool.create(plain, { size: MiB }).close();
      expectCode(() => SharedCache.open(plain), 'ERR_CACHE_INCOMPATIBLE');
    });

    it('getOrSet computes a missing key once while others wait, then serves it', async function () {
      const name = uniqueName('gos');
      const a = SharedCache.create(name, { size: MiB });
      const b = SharedCache.open(name);
      try {
        let computed = 0;
        const slow = async (): Promise<string> => {
          computed++;
          await new Promise((r) => setTimeout(r, 50));
          return 'made';
        };
        const got = await Promise.all([a.getOrSet('k', slow), b.getOrSet('k', slow), a.getOrSet('k', slow)]);
        expect(got.map((v) => v.toString())).to.deep.equal(['made', 'made', 'made']);
        expect(computed).to.equal(1);
        let failed: unknown;
        await a.getOrSet('boom', () => {
          throw new Error('no');
        }).catch((e: unknown) => (failed = e));
        expect((failed as Error).message).to.equal('no');
        expect(a.has('boom')).to.equal(false);
      } finally {
        b.close();
        a.close();
      }
    });
  });

  describe('across processes', function () {
    it('getOrSet in 4 processes at once: one computes', async function () {
      const name = uniqueName('gos4');
      SharedCache.create(name, { size: MiB }).close();
      const script = `const { SharedCache } = require(${JSON.stringify(root)});
        const cache = SharedCache.open(${JSON.stringify(name)});
        let computed = false;
        cache.getOrSet('k', async () => { computed = true; await new Promise((r) => setTimeout(r, 300)); return 'v'; })
          .then((v) => { process.stdout.write(JSON.stringify({ computed, value: v.toString() })); cache.close(); });`;
      const results = await Promise.all([0, 1, 2, 3].map(() => new Promise<{ computed: boolean; value: string }>((resolve, reject) => {
        const c = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        c.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`exit ${code}`))));
      })));
      expect(results.map((r) => r.value)).to.deep.equal(['v', 'v', 'v', 'v']);
      expect(results.filter((r) => r.computed).length).to.equal(1);
    });

    for (const [tag, maxEntries] of [['roomy', 1000], ['evicting', 40]] as const) {
      it(`a 4-process storm of set/get/read/delete (${tag}): no torn value, counts add up, check() holds`, async function () {
        const name = uniqueName(`storm-${tag}`);
        const cache = SharedCache.create(name, { size: 4 * MiB, maxEntries });
        try {
          const counts = await Promise.all([1, 2, 3, 4].map((seed) => runChild({ name, ms: 2500, seed, keys: 200, maxValue: 3000 })));
          const total = (field: keyof Counts): number => counts.reduce((sum, c) => sum + c[field], 0);
          expect(total('torn')).to.equal(0);
          expect(total('sets')).to.be.above(1000);
          const s = cache.stats();
          expect(s.hits).to.equal(total('hits'));
          expect(s.hits + s.misses).to.equal(total('gets'));
          expect(s.expirations).to.equal(0);
          if (maxEntries === 1000) expect(s.evictions).to.equal(0); // room for every key: nothing is lost
          else expect(s.evictions).to.be.above(0);
          expect(s.entries).to.equal(cache.keys().length).and.to.be.at.most(maxEntries);
          cache.check();
        } finally {
          cache.close();
        }
      });
    }

    it('a process killed holding the mutex with the index half changed: the next one rebuilds it from the directory', async function () {
      const name = uniqueName('rebuild');
      const cache = SharedCache.create(name, { size: MiB, maxEntries: 16 });
      try {
        for (let i = 0; i < 10; i++) cache.set(`k${i}`, `value ${i}`);
        // The child takes the cache's mutex as a set would, scribbles over the index (the counts, the ring,
        // the free stack) and dies with -9 holding it.
        const script = `const { SharedPool } = require(${JSON.stringify(root)});
          const pool = SharedPool.open(${JSON.stringify(name)});
          pool.mutex('cache.index').lock();
          const index = pool.getReserved('cache:index');
          index.fill(0x5a, 12, 32); // hand, entries, free stack top, bytes
          index.fill(0x5a, 320);
          process.stdout.write('scribbled');
          setInterval(() => {}, 1000);`;
        const c = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
        await new Promise<void>((resolve) => c.stdout!.once('data', () => resolve()));
        await new Promise<void>((resolve) => {
          c.once('exit', () => resolve());
          c.kill('SIGKILL');
        });
        cache.set('k10', 'value 10'); // takes the mutex over, rebuilds, then sets
        cache.check();
        expect(cache.stats()).to.include({ recoveries: 1, entries: 11, bytes: 7 * 10 + 8 });
        for (let i = 0; i <= 10; i++) expect(cache.get(`k${i}`)!.toString()).to.equal(`value ${i}`);
        for (let i = 11; i < 30; i++) cache.set(`k${i}`, 'more'); // evicting works on the rebuilt ring
        expect(cache.size).to.equal(16);
        cache.check();
      } finally {
        cache.close();
      }
    });

    it('kill -9 of writers and readers mid-operation (30+ kills): check() holds, it still works, no memory lost', async function () {
      const name = uniqueName('kill');
      const cache = SharedCache.create(name, { size: 4 * MiB, maxEntries: 60 });
      const baseline = SharedPool.open(name);
      const usedBefore = baseline.stats().used;
      baseline.close();
      const live = new Set<ChildProcess>();
      let torn = '';
      const start = (seed: number): Promise<void> => new Promise((resolve, reject) => {
        const c = spawn(process.execPath, [child, JSON.stringify({ name, ms: 0, seed, keys: 100, maxValue: 3000 })], { stdio: ['ignore', 'pipe', 'pipe'] });
        c.stderr!.on('data', (d: Buffer) => (torn += d.toString()));
        c.once('error', reject);
        c.stdout!.once('data', () => {
          live.add(c);
          resolve();
        });
      });
      const killOne = (): Promise<void> => {
        const victim = [...live][Math.floor(Math.random() * live.size)];
        live.delete(victim);
        return new Promise((resolve) => {
          victim.once('exit', () => resolve());
          victim.kill('SIGKILL');
        });
      };
      try {
        let seed = 1;
        for (let i = 0; i < 4; i++) await start(seed++);
        for (let kills = 0; kills < 32; kills++) {
          await new Promise((r) => setTimeout(r, 40 + Math.random() * 80));
          await killOne();
          await start(seed++);
        }
        while (live.size > 0) await killOne();
        expect(torn).to.equal('');
        cache.check();
        cache.set('after', 'works');
        expect(cache.get('after')!.toString()).to.equal('works');
        cache.clear();
        cache.check();
        // What the dead held and never named is freed (trackOwners): an empty cache is back to where it began.
        const after = SharedPool.open(name);
        const usedAfter = after.stats().used;
        after.close();
        expect(usedAfter - usedBefore).to.be.below(64 * KiB);
      } finally {
        for (const c of live) c.kill('SIGKILL');
        cache.close();
      }
    });
  });
});
