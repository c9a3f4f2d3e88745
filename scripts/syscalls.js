#!/usr/bin/env node
// System calls made by N small allocations with and without a pool, counted with `strace -f -c`
// (docs/benchmarks.md). Needs strace (Debian: apt-get install -y strace) and g++.
//
//   node scripts/syscalls.js [--json] [--reps R]
//
// For N = 10, 1,000 and 100,000, each program is run under strace and the same program with N = 0 is
// subtracted (its start-up, and for the pools the region itself):
//   (a) C++ (scripts/syscalls-helper.cc): N x malloc(16..512) vs N x alloc from a mempool TLSF heap in one
//       malloc'd 64 MiB region; nothing freed (all N allocations live at once).
//   (b) Node: N x Buffer.alloc / new ArrayBuffer / an external ArrayBuffer (the addon's systemAlloc: malloc
//       + finalizer) vs N x pool.alloc (Buffer views) / pool.allocOffset in a Pool of 64 MiB, and
//       SharedPool.allocOffset in a 64 MiB segment; sizes 16..512; every allocation kept live in an array
//       made before the loop (also at N = 0).
// Memory system calls: mmap, munmap, brk, madvise, mprotect. Node runs are repeated (--reps, default 3)
// and the median taken: V8's own threads and GC make the counts vary by a few calls from run to run.
//
// Internal: `node scripts/syscalls.js --child KIND N` is the Node program that is traced.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const MEMORY_CALLS = ['mmap', 'munmap', 'brk', 'madvise', 'mprotect'];
const NS = [10, 1000, 100000];
const REGION = 64 * 1024 * 1024;

const NODE_KINDS = {
  'Buffer.alloc': { pool: null, body: (size) => Buffer.alloc(size) },
  'new ArrayBuffer': { pool: null, body: (size) => new ArrayBuffer(size) },
  'external (systemAlloc)': { pool: null, body: (size, ctx) => ctx.addon.systemAlloc(size) },
  'pool.alloc (view)': { pool: 'Pool', body: (size, ctx) => ctx.pool.alloc(size) },
  'pool.allocOffset': { pool: 'Pool', body: (size, ctx) => ctx.pool.allocOffset(size) },
  'SharedPool.allocOffset': { pool: 'SharedPool', body: (size, ctx) => ctx.pool.allocOffset(size) },
};

// ---------------------------------------------------------------------------------------------------------
// The traced Node program.

function runChild(kind, n) {
  const k = NODE_KINDS[kind];
  const addon = require('node-gyp-build')(root);
  const mempool = require(path.join(root, 'dist'));
  const ctx = { addon, pool: null };
  const segment = `mempool-syscalls-${process.pid}`;
  if (k.pool === 'Pool') ctx.pool = new mempool.Pool({ size: REGION });
  if (k.pool === 'SharedPool') ctx.pool = mempool.SharedPool.create(segment, { size: REGION });
  const keep = new Array(100000).fill(0);  // made in every run, N = 0 included
  let s = 88172645463325252n;
  const mask = (1n << 64n) - 1n;
  const sizes = new Uint16Array(100000);   // the trace, drawn before anything is measured
  for (let i = 0; i < sizes.length; i++) {
    s ^= (s << 13n) & mask;
    s ^= s >> 7n;
    s ^= (s << 17n) & mask;
    sizes[i] = 16 + Number(s % 497n);
  }
  for (let i = 0; i < n; i++) keep[i] = k.body(sizes[i], ctx);
  if (k.pool === 'SharedPool') mempool.SharedPool.unlink(segment);
  process.stdout.write(`${keep.length}\n`);
}

// ---------------------------------------------------------------------------------------------------------
// The driver.

function parseStrace(file) {
  const calls = {};
  let total = 0;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const t = line.trim().split(/\s+/);
    if (t.length < 5 || !/^[\d.]+$/.test(t[0])) continue;
    const name = t[t.length - 1];
    const count = Number(t[3]);
    if (!Number.isFinite(count)) continue;
    if (name === 'total') total = count;
    else calls[name] = count;
  }
  const memory = MEMORY_CALLS.reduce((a, c) => a + (calls[c] || 0), 0);
  return { calls, memory, total };
}

function trace(cmd, args) {
  const out = path.join(os.tmpdir(), `mempool-strace-${process.pid}.txt`);
  const r = spawnSync('strace', ['-f', '-c', '-o', out, '--', cmd, ...args], { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run strace: ${r.error.message} (Debian: apt-get install -y strace)`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed under strace: ${r.stderr}`);
  const res = parseStrace(out);
  fs.unlinkSync(out);
  return res;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function buildHelper() {
  const core = path.join(root, 'native', 'core');
  const out = path.join(root, 'build', 'syscalls', 'helper');
  const sources = [path.join(__dirname, 'syscalls-helper.cc'),
    ...['heap', 'tlsf', 'buddy', 'bitmap', 'debug_heap'].map((n) => path.join(core, `${n}.cc`))];
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const r = spawnSync(process.env.CXX || 'g++', ['-std=c++17', '-O2', '-DNDEBUG', `-I${core}`, ...sources, '-o', out],
    { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error('building the helper failed');
  return out;
}

function measure(label, run, reps) {
  const row = { program: label, baseline: null, n: {} };
  const fields = ['memory', 'total', ...MEMORY_CALLS];
  const once = (n) => {
    const samples = Array.from({ length: reps }, () => run(n));
    const m = {};
    for (const f of fields) m[f] = median(samples.map((x) => (f in x ? x[f] : x.calls[f] || 0)));
    return m;
  };
  row.baseline = once(0);
  for (const n of NS) {
    const m = once(n);
    row.n[n] = {};
    for (const f of fields) row.n[n][f] = m[f] - row.baseline[f];
  }
  return row;
}

function main() {
  const json = process.argv.includes('--json');
  const repsArg = process.argv.indexOf('--reps');
  const reps = repsArg > 0 ? Number(process.argv[repsArg + 1]) : 3;
  const rows = [];
  const say = (m) => process.stderr.write(`syscalls: ${m}\n`);
  const helper = buildHelper();
  for (const mode of ['malloc', 'pool']) {
    const label = mode === 'malloc' ? 'C: malloc(16..512)' : 'C: mempool TLSF heap in one malloc region';
    say(label);
    rows.push(measure(label, (n) => trace(helper, [mode, String(n)]), 1));
  }
  for (const kind of Object.keys(NODE_KINDS)) {
    say(`Node: ${kind}`);
    rows.push(measure(`Node: ${kind}`, (n) => trace(process.execPath, [__filename, '--child', kind, String(n)]), reps));
  }
  if (json) {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const big = NS[NS.length - 1];
  const head = `| program | baseline (N = 0): memory / all | ${NS.map((n) => `N = ${n.toLocaleString('en-US')}: memory / all`).join(' | ')} | ` +
    `N = ${big.toLocaleString('en-US')}: ${MEMORY_CALLS.join(' / ')} |`;
  const lines = [head, `|---|---:|${NS.map(() => '---:').join('|')}|---:|`];
  for (const r of rows) {
    lines.push(`| ${r.program} | ${r.baseline.memory} / ${r.baseline.total} | ` +
      `${NS.map((n) => `${r.n[n].memory} / ${r.n[n].total}`).join(' | ')} | ${MEMORY_CALLS.map((c) => r.n[big][c]).join(' / ')} |`);
  }
  process.stdout.write(`${lines.join('\n')}\n\nN columns: calls beyond the same program with N = 0. memory = ${MEMORY_CALLS.join(' + ')}; ` +
    `all = every system call (strace -f -c). Node rows: median of ${reps} runs.\n`);
}

if (process.argv[2] === '--child') runChild(process.argv[3], Number(process.argv[4]));
else {
  try {
    main();
  } catch (e) {
    process.stderr.write(`syscalls: ${e.message}\n`);
    process.exit(1);
  }
}
