#!/usr/bin/env node
// JavaScript-side benchmark of mempool (docs/benchmarks.md):
//
//   npm run bench -- [--json] [--quick] [--rounds N] [--sizes 16,64] [--only SUBSTR,...] [--no-shared]
//
// 1. alloc+free pairs at 16, 64, 1024 and 65536 bytes for every heap, as Buffer views
//    (pool.alloc + pool.free(view)) and as offsets (pool.allocOffset + pool.free(offset)), beside
//    Buffer.allocUnsafe, Buffer.alloc, new ArrayBuffer, an external ArrayBuffer per allocation (the
//    addon's systemAlloc + systemFree: malloc + finalizer, then free + detach), @thi.ng/malloc (a pure-JS
//    allocator over one ArrayBuffer: malloc + free, and mallocAs + free, which also makes the typed-array
//    view) and one native no-op call (addon.noop(), the floor of any addon call).
// 2. shared pools: alloc+free pairs of 64 bytes in one SharedPool from one process, then from two
//    processes at once (scripts/bench-child.js), pairs per second per process and in total.
// 3. the two targets, from the same run: pool.alloc(64)+free(view) vs Buffer.allocUnsafe(64) (<= 0.8x) and
//    allocOffset(64)+free(offset) vs one addon.noop() (<= 1.5x), with PASS or FAIL.
//
// Method: every case is warmed up (its loop is compiled on its own, so the JIT sees one call site), its
// batch size calibrated, then it is measured in R rounds (5; --quick 3). In each round every case's batch
// is preceded by a batch of addon.noop() and one of Buffer.allocUnsafe(size): each ratio is taken against
// the baselines measured just before it, and the reported figures are medians over the rounds. A full GC
// runs before each batch so that no case pays for garbage another one left. Garbage a case makes during
// its own batch (Buffer.alloc, ArrayBuffer, views) is collected inside it and counted.
//
// stdout: a table, or with --json one JSON object a line:
//   {"benchmark":"alloc+free","allocator":"tlsf view","size":64,"nsPerPair":..,"ratioToNoop":..,"ratioToAllocUnsafe":..}
//   {"benchmark":"shared","allocator":"shared-tlsf offset","size":64,"processes":2,"nsPerPair":..,
//    "pairsPerSecPerProcess":[..],"pairsPerSecTotal":..}
//   {"benchmark":"target","name":..,"ratio":..,"target":..,"pass":true|false}
// stderr: the machine, notes, and progress (a bar when stderr is a terminal, plain lines otherwise).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const v8 = require('v8');
const vm = require('vm');
const { fork, execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');

// ---------------------------------------------------------------------------------------------------------
// Options

function usage(code) {
  process.stderr.write('usage: npm run bench -- [--json] [--quick] [--rounds N] [--sizes 16,64,...] ' +
    '[--only SUBSTR,...] [--no-shared]\n');
  process.exit(code);
}

const opts = { json: false, quick: false, rounds: 0, sizes: [16, 64, 1024, 65536], only: [], shared: true };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const value = () => {
    if (a.includes('=')) return a.slice(a.indexOf('=') + 1);
    if (i + 1 >= process.argv.length) usage(1);
    return process.argv[++i];
  };
  if (a === '--json') opts.json = true;
  else if (a === '--quick') opts.quick = true;
  else if (a === '--no-shared') opts.shared = false;
  else if (a.startsWith('--rounds')) opts.rounds = Number(value());
  else if (a.startsWith('--sizes')) opts.sizes = value().split(',').map(Number);
  else if (a.startsWith('--only')) opts.only = value().split(',').filter(Boolean);
  else if (a === '-h' || a === '--help') usage(0);
  else {
    process.stderr.write(`bench: unknown argument ${a}\n`);
    usage(1);
  }
}
if (!(opts.rounds >= 0) || opts.sizes.some((s) => !(Number.isInteger(s) && s >= 1))) usage(1);
const ROUNDS = opts.rounds || (opts.quick ? 3 : 5);
const CASE_MS = opts.quick ? 20 : 90;      // one batch of a case
const BASE_MS = opts.quick ? 8 : 30;       // each of the two baseline batches before it
const WARM_MS = opts.quick ? 15 : 40;      // warm-up per case (after calibration)
const SHARED_SIZE = 64;
const SHARED_MS = opts.quick ? 150 : 350;  // one timed window of the shared benchmark
const SHARED_ROUNDS = opts.quick ? 2 : 3;

// ---------------------------------------------------------------------------------------------------------
// What is measured

function note(msg) {
  progress.clear();
  process.stderr.write(`bench: ${msg}\n`);
  progress.redraw();
}

// A full GC between batches (--expose-gc set at run time).
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

const addonPath = path.join(root, 'build', 'Release', 'mempool.node');
if (!fs.existsSync(addonPath)) {
  process.stderr.write('bench: build/Release/mempool.node is missing: run `npm run build` first\n');
  process.exit(1);
}
const addon = require('node-gyp-build')(root);
const mempool = require(path.join(root, 'dist'));
for (const fn of ['noop', 'systemAlloc', 'systemFree']) {
  if (typeof addon[fn] !== 'function') {
    process.stderr.write(`bench: the addon has no ${fn}(): rebuild it (npm run build)\n`);
    process.exit(1);
  }
}

let thing = null;  // @thi.ng/malloc, an ES module (loaded in main())

const POOL_BYTES = 256 * 1024 * 1024;
const ALGORITHMS = ['tlsf', 'buddy', 'bitmap'];

// A case: the body of the timed loop (one pair), and what it needs. Each case's loop is compiled
// separately (new Function) so every call site in it stays monomorphic. `sink` keeps each result
// observable; cases that get an offset fold it in with ^=, not +=: a sum of offsets leaves the
// small-integer range within a batch, and V8 then allocates a number for `sink` on every pair (about
// 5 ns here), a cost of the harness that the baselines (lengths summed, or nothing) never pay.
function cases(size) {
  const list = [
    { name: 'Buffer.alloc', body: 'const b = Buffer.alloc(size); sink += b.length;' },
    { name: 'new ArrayBuffer', body: 'const b = new ArrayBuffer(size); sink += b.byteLength;' },
    { name: 'external (systemAlloc)', body: 'const ab = addon.systemAlloc(size); sink += ab.byteLength; addon.systemFree(ab);' },
  ];
  if (thing) {
    list.push({ name: 'thi.ng/malloc', body: 'const p = mp.malloc(size); sink ^= p; mp.free(p);' });
    list.push({ name: 'thi.ng/malloc view', body: "const a = mp.mallocAs('u8', size); sink += a.length; mp.free(a);" });
  }
  for (const algo of ALGORITHMS) {
    list.push({ name: `${algo} view`, algo, body: 'const b = pool.alloc(size); sink += b.length; pool.free(b);' });
    list.push({ name: `${algo} offset`, algo, body: 'const o = pool.allocOffset(size); sink ^= o; pool.free(o);' });
  }
  return list.map((c) => ({ ...c, size }));
}

const NOOP_BODY = 'addon.noop();';
const UNSAFE_BODY = 'const b = Buffer.allocUnsafe(size); sink += b.length;';

let blackhole = 0;

function compile(body, ctx) {
  // eslint-disable-next-line no-new-func
  return new Function('ctx', `'use strict';
    const { addon, pool, mp, size } = ctx;
    let sink = 0;
    return function run(n) {
      for (let i = 0; i < n; i++) { ${body} }
      return sink;
    };`)(ctx);
}

function timeBatch(run, n) {
  gc();
  const t0 = process.hrtime.bigint();
  blackhole ^= run(n);
  const t1 = process.hrtime.bigint();
  return Number(t1 - t0) / n;
}

// Warm up and choose n so that a batch takes about `ms`.
function calibrate(run, ms) {
  let n = 256;
  for (;;) {
    const t0 = process.hrtime.bigint();
    blackhole ^= run(n);
    const dt = Number(process.hrtime.bigint() - t0);
    if (dt >= 5e6 || n >= 1 << 26) {
      const until = Date.now() + WARM_MS;
      while (Date.now() < until) blackhole ^= run(Math.max(1, n >> 2));
      // Measure again after the warm-up: the first batches ran partly unoptimized.
      const t2 = process.hrtime.bigint();
      blackhole ^= run(n);
      const per = Number(process.hrtime.bigint() - t2) / n;
      return Math.max(64, Math.round((ms * 1e6) / Math.max(per, 0.5)));
    }
    n *= 4;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Progress: a bar on a terminal (stderr), plain lines otherwise.

const progress = {
  tty: Boolean(process.stderr.isTTY),
  total: 1,
  done: 0,
  label: '',
  start: Date.now(),
  shown: false,
  set(total) { this.total = total; this.done = 0; this.start = Date.now(); },
  step(label, units = 1) {
    this.done += units;
    this.label = label;
    this.redraw();
  },
  redraw() {
    if (!this.tty || this.total <= 0) return;
    const width = 28;
    const f = Math.min(1, this.done / this.total);
    const filled = Math.round(f * width);
    const el = (Date.now() - this.start) / 1000;
    const eta = f > 0.02 ? Math.max(0, el / f - el) : NaN;
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.round(f * 100)).padStart(3)}% ` +
      `${Number.isFinite(eta) ? `~${Math.ceil(eta)} s left ` : ''}${this.label}`;
    const cols = process.stderr.columns || 100;
    process.stderr.write(`\r${line.slice(0, cols - 1).padEnd(Math.min(cols - 1, 100))}`);
    this.shown = true;
  },
  clear() {
    if (this.tty && this.shown) process.stderr.write(`\r${' '.repeat(Math.min((process.stderr.columns || 100) - 1, 100))}\r`);
  },
  plain(msg) {
    if (!this.tty) process.stderr.write(`bench: ${msg}\n`);
  },
};

// ---------------------------------------------------------------------------------------------------------
// Statistics

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const r1 = (x) => Math.round(x * 10) / 10;
const r2 = (x) => Math.round(x * 100) / 100;

// ---------------------------------------------------------------------------------------------------------
// 1. alloc+free pairs in this process

function runPairs() {
  const pools = {};
  for (const algo of ALGORITHMS) pools[algo] = new mempool.Pool({ size: POOL_BYTES, algorithm: algo });
  const mp = thing ? new thing.MemPool({ size: POOL_BYTES }) : null;
  const want = (name) => opts.only.length === 0 || opts.only.some((o) => name.includes(o));

  // Entries: per size, the baselines and the cases, each with its compiled loop and its batch size.
  const groups = [];
  for (const size of opts.sizes) {
    const ctx = (pool) => ({ addon, pool, mp, size });
    const list = cases(size).filter((c) => want(c.name));
    if (list.length === 0) continue;
    groups.push({
      size,
      noop: { name: 'noop', run: compile(NOOP_BODY, ctx()), samples: [] },
      unsafe: { name: 'Buffer.allocUnsafe', run: compile(UNSAFE_BODY, ctx()), samples: [], toNoop: [] },
      cases: list.map((c) => ({ ...c, run: compile(c.body, ctx(c.algo ? pools[c.algo] : undefined)), samples: [], toNoop: [], toUnsafe: [] })),
    });
  }
  const nCases = groups.reduce((a, g) => a + g.cases.length, 0);
  progress.set(nCases * (1 + ROUNDS * (CASE_MS + 2 * BASE_MS) / (WARM_MS + 10)));
  progress.plain(`warming up ${nCases} cases`);
  for (const g of groups) {
    g.noop.n = calibrate(g.noop.run, BASE_MS);
    g.unsafe.n = calibrate(g.unsafe.run, BASE_MS);
    for (const c of g.cases) {
      c.n = calibrate(c.run, CASE_MS);
      progress.step(`warm-up ${c.name} ${c.size} B`);
    }
  }
  const unitPerBatch = (CASE_MS + 2 * BASE_MS) / (WARM_MS + 10);
  for (let round = 1; round <= ROUNDS; round++) {
    progress.plain(`round ${round}/${ROUNDS}`);
    for (const g of groups) {
      for (const c of g.cases) {
        const noop = timeBatch(g.noop.run, g.noop.n);
        const unsafe = timeBatch(g.unsafe.run, g.unsafe.n);
        const ns = timeBatch(c.run, c.n);
        g.noop.samples.push(noop);
        g.unsafe.samples.push(unsafe);
        g.unsafe.toNoop.push(unsafe / noop);
        c.samples.push(ns);
        c.toNoop.push(ns / noop);
        c.toUnsafe.push(ns / unsafe);
        progress.step(`round ${round}/${ROUNDS} ${c.name} ${c.size} B`, unitPerBatch);
      }
    }
  }
  for (const p of Object.values(pools)) p.close();

  const results = [];
  for (const g of groups) {
    const noopNs = median(g.noop.samples);
    const unsafeNs = median(g.unsafe.samples);
    const row = (allocator, samples, toNoop, toUnsafe) => ({
      benchmark: 'alloc+free',
      allocator,
      size: g.size,
      nsPerPair: r1(median(samples)),
      ratioToNoop: r2(toNoop),
      ratioToAllocUnsafe: r2(toUnsafe),
      minNs: r1(Math.min(...samples)),
      maxNs: r1(Math.max(...samples)),
    });
    results.push(row('noop', g.noop.samples, 1, noopNs / unsafeNs));
    results.push(row('Buffer.allocUnsafe', g.unsafe.samples, median(g.unsafe.toNoop), 1));
    for (const c of g.cases) results.push(row(c.name, c.samples, median(c.toNoop), median(c.toUnsafe)));
  }
  return results;
}

// ---------------------------------------------------------------------------------------------------------
// 2. shared pools from one and two processes

function child() {
  const cp = fork(path.join(__dirname, 'bench-child.js'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const waiting = [];
  cp.on('message', (m) => waiting.shift()(m));
  cp.on('exit', (code) => {
    while (waiting.length) waiting.shift()({ error: `bench-child exited (${code})` });
  });
  return {
    cp,
    ask(msg) {
      return new Promise((resolve, reject) => {
        waiting.push((m) => (m.error ? reject(new Error(`bench-child: ${m.error}`)) : resolve(m)));
        cp.send(msg);
      });
    },
  };
}

const liveSegments = new Set();
function unlinkAll() {
  for (const name of liveSegments) {
    try { mempool.SharedPool.unlink(name); } catch { /* gone */ }
  }
  liveSegments.clear();
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    progress.clear();
    unlinkAll();
    process.exit(130);
  });
}

async function runShared() {
  const results = [];
  const kinds = ['offset', 'view'];
  const configs = [];
  for (const algo of ALGORITHMS) {
    for (const kind of kinds) {
      const name = `shared-${algo} ${kind}`;
      if (opts.only.length === 0 || opts.only.some((o) => name.includes(o))) configs.push({ algo, kind, name });
    }
  }
  if (configs.length === 0) return results;
  const workers = [child(), child()];
  progress.set(configs.length * SHARED_ROUNDS * 2);
  try {
    for (const { algo, kind, name } of configs) {
      progress.plain(`${name}: ${SHARED_ROUNDS} rounds of ${SHARED_MS} ms, 1 process then 2 at once`);
      const seg = `mempool-bench-js-${process.pid}-${algo}`;
      liveSegments.add(seg);
      const pool = mempool.SharedPool.create(seg, { size: POOL_BYTES, algorithm: algo });
      try {
        await Promise.all(workers.map((w) => w.ask({ cmd: 'open', name: seg, kind, size: SHARED_SIZE })));
        const one = [];
        const two = [];  // [{a, b}] pairs/s
        for (let round = 0; round < SHARED_ROUNDS; round++) {
          let startAt = Date.now() + 30;
          const s = await workers[0].ask({ cmd: 'run', startAt, ms: SHARED_MS });
          one.push(s.pairs / (s.ns / 1e9));
          progress.step(`${name} 1 process`);
          startAt = Date.now() + 30;
          const [a, b] = await Promise.all(workers.map((w) => w.ask({ cmd: 'run', startAt, ms: SHARED_MS })));
          two.push([a.pairs / (a.ns / 1e9), b.pairs / (b.ns / 1e9)]);
          progress.step(`${name} 2 processes`);
        }
        await Promise.all(workers.map((w) => w.ask({ cmd: 'close' })));
        const oneRate = median(one);
        results.push({
          benchmark: 'shared', allocator: name, size: SHARED_SIZE, processes: 1,
          nsPerPair: r1(1e9 / oneRate), pairsPerSecPerProcess: [Math.round(oneRate)], pairsPerSecTotal: Math.round(oneRate),
        });
        // The round with the median total, reported as is (per process figures from the same round).
        const totals = two.map(([a, b]) => a + b);
        const mid = totals.indexOf(median(totals.length % 2 ? totals : totals.slice(1)));
        const [a, b] = two[mid >= 0 ? mid : 0];
        results.push({
          benchmark: 'shared', allocator: name, size: SHARED_SIZE, processes: 2,
          nsPerPair: r1(1e9 / ((a + b) / 2)), pairsPerSecPerProcess: [Math.round(a), Math.round(b)], pairsPerSecTotal: Math.round(a + b),
        });
      } finally {
        pool.close();
        mempool.SharedPool.unlink(seg);
        liveSegments.delete(seg);
      }
    }
  } finally {
    for (const w of workers) w.cp.disconnect();
  }
  return results;
}

// ---------------------------------------------------------------------------------------------------------
// Output

function machine() {
  const cpus = os.cpus();
  let gxx = 'g++ not found';
  try {
    gxx = execFileSync(process.env.CXX || 'g++', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  } catch { /* none */ }
  return `${cpus[0] ? cpus[0].model.trim() : 'unknown CPU'}, ${cpus.length} cores, Node ${process.version}, ${gxx}, ` +
    `load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`;
}

function targets(results) {
  const find = (allocator, size) => results.find((r) => r.benchmark === 'alloc+free' && r.allocator === allocator && r.size === size);
  const out = [];
  const view = find('tlsf view', 64);
  const offset = find('tlsf offset', 64);
  const unsafe = find('Buffer.allocUnsafe', 64);
  const noop = find('noop', 64);
  if (view && unsafe) {
    out.push({
      benchmark: 'target', name: 'pool.alloc(64)+pool.free(view) vs Buffer.allocUnsafe(64)',
      ns: view.nsPerPair, baselineNs: unsafe.nsPerPair, ratio: view.ratioToAllocUnsafe, target: 0.8, pass: view.ratioToAllocUnsafe <= 0.8,
    });
  }
  if (offset && noop) {
    out.push({
      benchmark: 'target', name: 'pool.allocOffset(64)+pool.free(offset) vs addon.noop()',
      ns: offset.nsPerPair, baselineNs: noop.nsPerPair, ratio: offset.ratioToNoop, target: 1.5, pass: offset.ratioToNoop <= 1.5,
    });
  }
  return out;
}

function pad(s, n, right) {
  s = String(s);
  return right ? s.padStart(n) : s.padEnd(n);
}

function printTable(results, shared, tgts) {
  const out = [];
  out.push(`alloc+free pairs from JavaScript: median of ${ROUNDS} rounds; ratios against addon.noop() and ` +
    'Buffer.allocUnsafe(size) measured just before each batch (medians of the per-round ratios)');
  for (const size of [...new Set(results.map((r) => r.size))]) {
    out.push('');
    out.push(`${size} bytes`);
    out.push(`  ${pad('allocator', 24)}${pad('ns/pair', 10, true)}${pad('x noop', 9, true)}${pad('x allocUnsafe', 15, true)}${pad('range ns', 18, true)}`);
    for (const r of results.filter((x) => x.size === size)) {
      out.push(`  ${pad(r.allocator, 24)}${pad(r.nsPerPair.toFixed(1), 10, true)}${pad(r.ratioToNoop.toFixed(2), 9, true)}` +
        `${pad(r.ratioToAllocUnsafe.toFixed(2), 15, true)}${pad(`${r.minNs.toFixed(0)}-${r.maxNs.toFixed(0)}`, 18, true)}`);
    }
  }
  out.push('  (noop and Buffer.allocUnsafe are one call each, no free: the GC frees what allocUnsafe made)');
  if (shared.length) {
    out.push('');
    out.push(`shared pools: ${SHARED_SIZE}-byte alloc+free pairs in one SharedPool, ${SHARED_ROUNDS} windows of ${SHARED_MS} ms ` +
      '(median), 1 process alone then 2 processes at once');
    out.push(`  ${pad('allocator', 24)}${pad('procs', 6, true)}${pad('pairs/s per process', 28, true)}${pad('total pairs/s', 15, true)}${pad('ns/pair', 10, true)}`);
    for (const r of shared) {
      out.push(`  ${pad(r.allocator, 24)}${pad(r.processes, 6, true)}${pad(r.pairsPerSecPerProcess.map((x) => (x / 1e6).toFixed(2) + 'M').join(' + '), 28, true)}` +
        `${pad((r.pairsPerSecTotal / 1e6).toFixed(2) + 'M', 15, true)}${pad(r.nsPerPair.toFixed(1), 10, true)}`);
    }
    out.push('  (ns/pair = 1e9 / pairs per second of one process; with 2 processes each one\'s own rate)');
  }
  if (tgts.length) {
    out.push('');
    out.push('targets (measured side by side in this run):');
    for (const t of tgts) {
      out.push(`  ${t.name}: ${t.ns.toFixed(1)} ns vs ${t.baselineNs.toFixed(1)} ns = ${t.ratio.toFixed(2)}x ` +
        `(target <= ${t.target}x): ${t.pass ? 'PASS' : 'FAIL'}`);
    }
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

async function main() {
  process.stderr.write(`bench: ${machine()}\n`);
  try {
    thing = await import('@thi.ng/malloc');
  } catch (e) {
    process.stderr.write(`bench: @thi.ng/malloc not installed (npm install): skipped (${e.message})\n`);
  }
  const t0 = Date.now();
  const results = runPairs();
  progress.clear();
  progress.plain(`alloc+free pairs done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const shared = opts.shared ? await runShared() : [];
  progress.clear();
  const tgts = targets(results);
  if (opts.json) {
    for (const r of [...results, ...shared, ...tgts]) process.stdout.write(`${JSON.stringify(r)}\n`);
  } else {
    printTable(results, shared, tgts);
  }
  process.stderr.write(`bench: done in ${((Date.now() - t0) / 1000).toFixed(0)} s${blackhole === 0.5 ? ' ' : ''}\n`);
}

main().catch((e) => {
  progress.clear();
  unlinkAll();
  process.stderr.write(`bench: ${e.stack || e}\n`);
  process.exit(1);
});
