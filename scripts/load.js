#!/usr/bin/env node
// Load test of one shared pool: two processes with two worker threads each, all allocating, writing,
// verifying and freeing in the same SharedPool for --seconds; then the parent checks the heap and every
// block the workers still hold, frees them, and reports operations per second.
//
//   npm run load -- --seconds 30                      tlsf, 64 MiB segment
//   npm run load -- --seconds 30 --algorithm all      tlsf, buddy and bitmap in turn
//   npm run load -- --limits                          size limits (16 GiB segment, a one-block pool,
//                                                     a million live allocations): see limits() below
// Exit status 0 when everything held. Uses the public API from dist/ (npm run build first).
'use strict';
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Worker, isMainThread, workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
// MEMPOOL_MODULE: run against another build of mempool (a copy, while the tree is being rebuilt).
const { Pool, SharedPool } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));

const MiB = 1 << 20;
const GiB = 1024 * MiB;

function parseArgs(argv) {
  const o = { seconds: 30, algorithm: 'tlsf', size: 64 * MiB, role: 'main', limits: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--algorithm') o.algorithm = argv[++i];
    else if (a === '--size') o.size = Number(argv[++i]);
    else if (a === '--limits') o.limits = true;
    else if (a === '--role') o.role = argv[++i];
    else if (a === '--name') o.name = argv[++i];
    else if (a === '--proc') o.proc = Number(argv[++i]);
    else if (a === '--deadline') o.deadline = Number(argv[++i]);
    else throw new Error(`load.js: unknown argument ${a}`);
  }
  return o;
}

// A 4-byte pattern per allocation: [worker, serial low, serial mid, serial high].
function patternOf(wid, serial) {
  return Buffer.from([wid & 0xff, serial & 0xff, (serial >>> 8) & 0xff, (serial >>> 16) & 0xff]);
}
function intact(view, pat, scratch) {
  const ref = scratch.subarray(0, view.length);
  ref.fill(pat);
  return view.equals(ref);
}

// ---- worker thread: the load itself --------------------------------------------------------------
function workerMain() {
  const { name, wid, deadline } = workerData;
  const pool = SharedPool.open(name);
  const scratch = Buffer.alloc(70000);
  const live = []; // { buf, pat, serial }
  const namedPattern = new Map(); // key -> the pattern of the block it names (this worker's keys only)
  const c = { ops: 0, allocs: 0, frees: 0, reallocs: 0, names: 0, oom: 0, verified: 0, checks: 0, bad: 0 };
  let serial = 0;
  let nextCheck = Date.now() + 1000;
  const rnd = (n) => Math.floor(Math.random() * n);
  const badBlock = (what, b) => {
    c.bad++;
    if (c.bad <= 3) console.error(`load: worker ${wid}: ${what} at offset ${pool.offsetOf(b.buf)} (${b.buf.length} bytes)`);
  };
  while (Date.now() < deadline) {
    for (let k = 0; k < 256; k++) {
      c.ops++;
      const r = rnd(100);
      if ((r < 50 && live.length < 3000) || live.length === 0) {
        const size = rnd(10) === 0 ? 1 + rnd(65536) : 1 + rnd(2048);
        let buf;
        try {
          buf = pool.alloc(size);
        } catch (e) {
          if (e.code !== 'ERR_POOL_OUT_OF_MEMORY') throw e;
          c.oom++;
          continue;
        }
        const pat = patternOf(wid, ++serial);
        buf.fill(pat);
        live.push({ buf, pat });
        c.allocs++;
      } else if (r < 92) {
        const i = rnd(live.length);
        const b = live[i];
        if (!intact(b.buf, b.pat, scratch)) badBlock('a block changed under its owner', b);
        c.verified++;
        pool.free(b.buf);
        live[i] = live[live.length - 1];
        live.pop();
        c.frees++;
      } else if (r < 97) {
        const i = rnd(live.length);
        const b = live[i];
        const size = 1 + rnd(4096);
        let moved;
        try {
          moved = pool.realloc(b.buf, size);
        } catch (e) {
          if (e.code !== 'ERR_POOL_OUT_OF_MEMORY') throw e;
          c.oom++;
          continue;
        }
        const kept = Math.min(size, b.buf.length);
        // The bytes kept must be the same pattern, phase included (patterns restart at offset 0).
        if (!intact(moved.subarray(0, kept - (kept % 4)), b.pat, scratch)) badBlock('realloc lost bytes', { buf: moved });
        const pat = patternOf(wid, ++serial);
        moved.fill(pat);
        live[i] = { buf: moved, pat };
        c.reallocs++;
      } else {
        // Naming hands the block to the name; replace hands back the block the key named before.
        const i = rnd(live.length);
        const b = live[i];
        const key = `w${wid}-${rnd(8)}`;
        const old = pool.replace(key, b.buf);
        live[i] = live[live.length - 1];
        live.pop();
        if (old) live.push({ buf: old, pat: namedPattern.get(key) });
        namedPattern.set(key, b.pat);
        const got = pool.get(key);
        if (!got || pool.offsetOf(got) !== pool.offsetOf(b.buf) || got.length !== b.buf.length) badBlock('get() disagrees with replace()', b);
        c.names++;
      }
    }
    if (Date.now() >= nextCheck) {
      pool.check(); // throws ERR_POOL_CORRUPTED on any violation
      c.checks++;
      nextCheck = Date.now() + 1000;
    }
  }
  for (const b of live) {
    if (!intact(b.buf, b.pat, scratch)) badBlock('a survivor changed', b);
  }
  // The survivors stay allocated: the parent verifies them after every worker and process is gone.
  const blocks = live.map((b) => [pool.offsetOf(b.buf), b.buf.length, Array.from(b.pat)]);
  pool.close();
  parentPort.postMessage({ counts: c, blocks });
}

// ---- child process: two workers ------------------------------------------------------------------
async function procMain(o) {
  const run = (k) =>
    new Promise((resolve, reject) => {
      const w = new Worker(__filename, { workerData: { name: o.name, wid: o.proc * 2 + k, deadline: o.deadline } });
      let msg;
      w.on('message', (m) => (msg = m));
      w.on('error', reject);
      w.on('exit', (code) => (code === 0 && msg ? resolve(msg) : reject(new Error(`worker exited with ${code}`))));
    });
  const results = await Promise.all([run(0), run(1)]);
  process.stdout.write(JSON.stringify(results));
}

// ---- parent: create, run, verify -----------------------------------------------------------------
function runProc(o, name, proc, deadline) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [__filename, '--role', 'proc', '--name', name, '--proc', String(proc), '--deadline', String(deadline)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('error', reject);
    c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`process ${proc} exited with ${code}`))));
  });
}

async function loadOne(o, algorithm) {
  const name = `mempool-load-${process.pid}-${algorithm}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: o.size, algorithm, maxKeys: 64 });
  const t0 = Date.now();
  const deadline = t0 + o.seconds * 1000;
  let results;
  try {
    results = (await Promise.all([runProc(o, name, 0, deadline), runProc(o, name, 1, deadline)])).flat();
  } catch (e) {
    pool.close();
    SharedPool.unlink(name);
    throw e;
  }
  const elapsed = (Date.now() - t0) / 1000;
  const total = { ops: 0, allocs: 0, frees: 0, reallocs: 0, names: 0, oom: 0, verified: 0, checks: 0, bad: 0 };
  let survivors = 0;
  let damaged = 0;
  for (const r of results) for (const k of Object.keys(total)) total[k] += r.counts[k];
  pool.check();
  const before = pool.stats();
  // Named blocks belong to their names: delete frees them.
  const named = before.keys;
  for (const key of pool.keys()) pool.delete(key);
  for (const r of results) {
    for (const [offset, length, pat] of r.blocks) {
      survivors++;
      const view = pool.view(offset, length);
      if (!intact(view, Buffer.from(pat), Buffer.alloc(length + 4))) damaged++;
      pool.free(offset);
    }
  }
  pool.check();
  const after = pool.stats();
  pool.close();
  SharedPool.unlink(name);
  const ok = total.bad === 0 && damaged === 0 && before.liveAllocations === survivors + named && after.liveAllocations === 0 && after.used === 0;
  const opsPerSec = Math.round(total.ops / elapsed);
  console.log(
    `load ${algorithm}: 2 processes x 2 workers, ${elapsed.toFixed(1)} s, ${total.ops} operations (${opsPerSec} ops/s): ` +
      `${total.allocs} allocs, ${total.frees} frees (each verified), ${total.reallocs} reallocs, ${total.names} set/get, ` +
      `${total.oom} out-of-memory, ${total.checks} check() during the run; afterwards check() ok, ` +
      `${survivors} survivor blocks, ${damaged} damaged, live before free ${before.liveAllocations}, after ${after.liveAllocations}, used after ${after.used}: ` +
      (ok ? 'OK' : 'FAILED'),
  );
  return ok;
}

// ---- limits --------------------------------------------------------------------------------------
function expectError(fn, code) {
  try {
    fn();
  } catch (e) {
    return { ok: e.code === code, msg: `${e.code}: ${e.message}` };
  }
  return { ok: false, msg: 'no error' };
}

function shmAvailable() {
  const s = fs.statfsSync('/dev/shm');
  return s.bavail * s.bsize;
}

function limits() {
  let ok = true;
  const report = (label, pass, detail) => {
    ok = ok && pass;
    console.log(`limits: ${label}: ${pass ? 'ok' : 'FAILED'} (${detail})`);
  };
  const name = `mempool-limits-${process.pid}`;

  // 1. A 16 GiB shared segment on tmpfs: created (posix_fallocate reserves every page) when /dev/shm
  //    has room, else a clear ERR_POOL_OUT_OF_MEMORY at create. Either way nothing is left behind. It
  //    runs in a child process, so that a crash is reported as a failure instead of ending the run.
  for (const gib of [4, 5, 16]) {
    const avail = shmAvailable();
    const r = require('node:child_process').spawnSync(process.execPath, [__filename, '--role', 'big', '--name', name, '--size', String(gib * GiB)], {
      encoding: 'utf8',
      timeout: 300000,
    });
    let pass;
    let detail;
    if (r.signal || r.status !== 0) {
      pass = false;
      detail = `the process died (${r.signal ?? `exit ${r.status}`}): ${(r.stderr || '').trim().split('\n').slice(-1)[0]}; ` +
        `/dev/shm/${name} left behind: ${fs.existsSync(`/dev/shm/${name}`)}`;
    } else {
      const out = JSON.parse(r.stdout);
      // Over 4 GiB one ArrayBuffer cannot view the segment: a clear ERR_OUT_OF_RANGE before anything
      // is created is the promised behaviour.
      pass =
        (gib <= 4 && out.ok) ||
        (gib <= 4 && avail < gib * GiB && out.code === 'ERR_POOL_OUT_OF_MEMORY') ||
        (gib > 4 && out.code === 'ERR_OUT_OF_RANGE' && !fs.existsSync(`/dev/shm/${name}`));
      detail = `${out.detail} (/dev/shm had ${(avail / GiB).toFixed(1)} GiB free)`;
    }
    SharedPool.unlink(name);
    report(`${gib} GiB shared segment`, pass, detail);
  }
  // 1b. Larger than /dev/shm can hold: refused at create, name removed.
  {
    const huge = Math.ceil((shmAvailable() + 4 * GiB) / GiB) * GiB;
    // Past 4 GiB the size itself is refused first (ERR_OUT_OF_RANGE); /dev/shm running out is
    // ERR_POOL_OUT_OF_MEMORY only where /dev/shm is smaller than that.
    const r = expectError(() => SharedPool.create(name, { size: huge }), huge > 4 * GiB ? 'ERR_OUT_OF_RANGE' : 'ERR_POOL_OUT_OF_MEMORY');
    report(`${huge / GiB} GiB shared segment (more than /dev/shm has)`, r.ok && !fs.existsSync(`/dev/shm/${name}`), r.msg);
    SharedPool.unlink(name);
  }
  // 2. Too small for the heap's metadata: a range error, for every algorithm.
  for (const algorithm of ['tlsf', 'buddy', 'bitmap']) {
    const r = expectError(() => new Pool({ size: 64, algorithm }), 'ERR_OUT_OF_RANGE');
    report(`${algorithm} pool of 64 bytes`, r.ok, r.msg);
  }
  // 3. A pool of one block: the smallest size that formats, found by search; one allocation fits, the
  //    next is refused with ERR_POOL_OUT_OF_MEMORY, and after a free the block is served again.
  for (const [algorithm, opts] of [['tlsf', {}], ['buddy', {}], ['bitmap', { blockSize: 4096 }]]) {
    let size = 4096;
    let pool;
    for (; size <= 4 * MiB; size += 4096) {
      try {
        pool = new Pool({ size, algorithm, ...opts });
        break;
      } catch (e) {
        if (e.code !== 'ERR_OUT_OF_RANGE') throw e;
      }
    }
    const largest = pool.stats().largestFreeBlock;
    const a = pool.alloc(largest);
    a.fill(3);
    const second = expectError(() => pool.alloc(16), 'ERR_POOL_OUT_OF_MEMORY');
    pool.free(a);
    const again = pool.alloc(largest);
    pool.free(again);
    pool.check();
    pool.close();
    report(`${algorithm} one-block pool (${size} bytes, block of ${largest})`, second.ok, `second alloc: ${second.msg}`);
  }
  // 4. A million live allocations, in a malloc'd pool and in a shared one, for every algorithm.
  for (const shared of [false, true]) {
    for (const algorithm of ['tlsf', 'buddy', 'bitmap']) {
      const n = 1000000;
      const size = 128 * MiB;
      const pool = shared ? SharedPool.create(name, { size, algorithm }) : new Pool({ size, algorithm });
      const t0 = Date.now();
      const offs = new Float64Array(n);
      let made = 0;
      let err = '';
      try {
        for (; made < n; made++) {
          offs[made] = pool.allocOffset(16);
          if ((made & 1023) === 0) pool.view(offs[made], 16).fill(made & 255);
        }
      } catch (e) {
        err = `${e.code} after ${made}`;
      }
      const tAlloc = Date.now() - t0;
      const t1 = Date.now();
      pool.check();
      const tCheck = Date.now() - t1;
      const live = pool.stats().liveAllocations;
      let intactCount = 0;
      for (let i = 0; i < made; i += 1024) if (pool.view(offs[i], 16).every((b) => b === (i & 255))) intactCount++;
      const t2 = Date.now();
      for (let i = 0; i < made; i++) pool.free(offs[i]);
      const tFree = Date.now() - t2;
      pool.check();
      const st = pool.stats();
      pool.close();
      if (shared) SharedPool.unlink(name);
      report(
        `${shared ? 'shared' : 'malloc'} ${algorithm}: ${n} live allocations of 16 bytes`,
        made === n && live === n && st.liveAllocations === 0 && st.used === 0 && intactCount === Math.ceil(n / 1024),
        `${made} made in ${tAlloc} ms${err ? ` (${err})` : ''}, check() with all live ${tCheck} ms, freed in ${tFree} ms`,
      );
    }
  }
  return ok;
}

// A child of limits(): creates a segment of --size bytes, uses both ends of it, prints a JSON verdict.
function bigMain(o) {
  const t0 = Date.now();
  let pool;
  const out = { ok: false, code: '', detail: '' };
  try {
    pool = SharedPool.create(o.name, { size: o.size });
    const a = pool.alloc(1024);
    a.fill(7);
    const half = Math.floor(o.size / 2);
    const big = pool.allocOffset(half);
    pool.view(big + half - 4096, 4096).fill(1);
    pool.free(big);
    pool.free(a);
    pool.check();
    const st = pool.stats();
    out.ok = st.capacity === o.size && st.liveAllocations === 0;
    out.detail = `created in ${Date.now() - t0} ms; a block of half the segment allocated, written at its end, freed; check() ok`;
  } catch (e) {
    out.code = e.code;
    out.detail = `${e.code}: ${e.message}`;
  } finally {
    if (pool) pool.close();
    SharedPool.unlink(o.name);
  }
  process.stdout.write(JSON.stringify(out));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.role === 'proc') return procMain(o);
  if (o.role === 'big') return bigMain(o);
  if (o.limits) {
    process.exitCode = limits() ? 0 : 1;
    return;
  }
  const algorithms = o.algorithm === 'all' ? ['tlsf', 'buddy', 'bitmap'] : [o.algorithm];
  let ok = true;
  for (const a of algorithms) ok = (await loadOne(o, a)) && ok;
  process.exitCode = ok ? 0 : 1;
}

if (isMainThread) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
} else {
  workerMain();
}
