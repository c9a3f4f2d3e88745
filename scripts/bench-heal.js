#!/usr/bin/env node
// The cost of healing (issue 15, item 6) on the locked heap path of a SharedPool: alloc+free pairs of 2..9 KiB
// (above the slab caches: every pair takes the lock and calls the heap twice), 200 blocks live, 5 rounds of
// 200,000 pairs, median and every round printed. docs/benchmarks.md, section 7.
//   node scripts/bench-heal.js [module path, default: this package]
'use strict';
const path = require('node:path');
const { SharedPool } = require(process.argv[2] || path.join(__dirname, '..'));

for (const algorithm of ['tlsf', 'buddy', 'bitmap']) {
  const name = `mempool-bench-heal-${process.pid}-${algorithm}`;
  const pool = SharedPool.create(name, { size: 64 << 20, algorithm });
  try {
    for (let i = 0; i < 200; i++) pool.allocOffset(4096 + (i % 7) * 512);
    const ns = [];
    for (let round = 0; round < 5; round++) {
      const n = 200000;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) pool.free(pool.allocOffset(2048 + (i & 7) * 1024));
      ns.push(Number(process.hrtime.bigint() - t0) / n);
    }
    ns.sort((a, b) => a - b);
    console.log(`${algorithm}: ${ns[2].toFixed(1)} ns per allocOffset(2..9 KiB)+free pair (rounds ${ns.map((x) => x.toFixed(0)).join(' ')}), heapRepairs ${pool.stats().heapRepairs}`);
  } finally {
    pool.close();
    SharedPool.unlink(name);
  }
}
