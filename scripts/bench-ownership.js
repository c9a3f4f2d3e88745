#!/usr/bin/env node
// What the shared pool's ownership machinery costs, from JavaScript, one process (docs/benchmarks.md):
//
//   node scripts/bench-ownership.js [--json] [--rounds 5] [--heaps tlsf,buddy,bitmap]
//
// Per heap, nanoseconds per operation (median of the rounds), each case beside the same run's baselines:
//   alloc(64)+free(view)       the pair every user pays; with trackOwners: false and true (one more store)
//   replace(64)+free(old)      name a new value, free the old one: the ownership API's PUT
//   get(key) -> Buffer         a raw borrowed view (one locked lookup)
//   getCopy(key), 64 B / 4 KiB a copy made under the lock
//   read(key, fn), 64 B / 4 KiB pin, call, unpin (two locked calls)
'use strict';
const path = require('node:path');
const { SharedPool } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));

const opts = { json: false, rounds: 5, heaps: ['tlsf', 'buddy', 'bitmap'] };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--json') opts.json = true;
  else if (a === '--rounds') opts.rounds = Number(process.argv[++i]);
  else if (a === '--heaps') opts.heaps = process.argv[++i].split(',');
  else {
    process.stderr.write('usage: node scripts/bench-ownership.js [--json] [--rounds N] [--heaps tlsf,buddy,bitmap]\n');
    process.exit(1);
  }
}

let sink = 0;
// ns per call of fn over a batch calibrated to about 50 ms, median of the rounds.
function measure(fn) {
  let n = 1000;
  for (;;) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(i);
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (ms > 20) break;
    n *= 2;
  }
  const samples = [];
  for (let r = 0; r < opts.rounds; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(i);
    samples.push(Number(process.hrtime.bigint() - t) / n);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1];
}

const rows = [];
for (const algorithm of opts.heaps) {
  const results = {};
  for (const trackOwners of [false, true]) {
    const name = `mempool-bench-own-${process.pid}-${algorithm}-${trackOwners}`;
    const pool = SharedPool.create(name, { size: 64 << 20, algorithm, trackOwners });
    try {
      results[`alloc(64)+free(view)${trackOwners ? ' trackOwners' : ''}`] = measure(() => pool.free(pool.alloc(64)));
      if (trackOwners) continue;
      pool.set('k64', pool.alloc(64));
      const big = pool.alloc(4096);
      pool.set('k4k', big);
      results['replace(64)+free(old)'] = measure(() => pool.free(pool.replace('k64', pool.alloc(64))));
      results['get(key)'] = measure(() => {
        sink ^= pool.get('k64').length;
      });
      results['getCopy(key) 64 B'] = measure(() => {
        sink ^= pool.getCopy('k64').length;
      });
      results['getCopy(key) 4 KiB'] = measure(() => {
        sink ^= pool.getCopy('k4k').length;
      });
      results['read(key, fn) 64 B'] = measure(() => {
        sink ^= pool.read('k64', (v) => v[0]);
      });
      results['read(key, fn) 4 KiB'] = measure(() => {
        sink ^= pool.read('k4k', (v) => v[4095]);
      });
      results['Buffer.from(copy) 4 KiB (baseline: a JS copy)'] = measure(() => {
        sink ^= Buffer.from(big).length;
      });
    } finally {
      pool.close();
      SharedPool.unlink(name);
    }
  }
  for (const [op, ns] of Object.entries(results)) rows.push({ benchmark: 'ownership', heap: algorithm, op, ns: Number(ns.toFixed(1)) });
}

if (opts.json) {
  for (const r of rows) console.log(JSON.stringify(r));
} else {
  const ops = [...new Set(rows.map((r) => r.op))];
  console.log(['operation (ns)'.padEnd(48), ...opts.heaps.map((h) => h.padStart(8))].join(' '));
  for (const op of ops) {
    console.log([op.padEnd(48), ...opts.heaps.map((h) => String(rows.find((r) => r.heap === h && r.op === op)?.ns ?? '-').padStart(8))].join(' '));
  }
}
if (sink === 0.5) console.log(''); // keeps sink alive
