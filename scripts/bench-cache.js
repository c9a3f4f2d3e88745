#!/usr/bin/env node
// SharedCache against the caches a Node user would pick (issue 17; docs/benchmarks.md "Shared cache"):
//
//   node scripts/bench-cache.js [--procs 4] [--keys 100000] [--value 1024] [--ms 3000] [--zipf 0.99] [--sets 0.1] [--json]
//
// Every figure comes from the same run, so the ratios hold on a noisy machine:
//   shared-cache   one SharedCache in /dev/shm for all processes (prefilled with every key)
//   lru-cache      the npm lru-cache in each process, each prefilled with every key (one copy per process)
//   redis          redis-server (from apt) with ioredis, 32 requests in flight per process; skipped with a
//                  message when redis-server is not installed
// Each of `procs` processes runs the same loop for `ms`: a Zipf-distributed key; 90% get (a miss sets it),
// 10% set of a fresh 1 KiB value. get returns a copy for SharedCache (a Buffer of its own), the stored
// object itself for lru-cache (no copy: the most it can be).
//
// Hit rate: one trace of 2,000,000 Zipf requests over the keys, a cache of 10% of the key space, a miss
// sets the key; CLOCK (SharedCache itself, maxEntries = 10%) against an exact LRU simulated here.
'use strict';
const path = require('node:path');
const os = require('node:os');
const { fork, spawn, execFileSync } = require('node:child_process');
const { SharedCache } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
}
const PROCS = option('procs', 4);
const KEYS = option('keys', 100000);
const VALUE = option('value', 1024);
const MS = option('ms', 3000);
const ZIPF = option('zipf', 0.99);
const SETS = option('sets', 0.1); // the share of requests that are sets
const JSON_OUT = process.argv.includes('--json');

/** A sampler of Zipf(s) ranks 0..n-1 (rank 0 the most popular), seeded: inverse CDF by binary search. */
function zipfSampler(n, s, seed) {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) cdf[i] = sum += 1 / Math.pow(i + 1, s);
  for (let i = 0; i < n; i++) cdf[i] /= sum;
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    const u = x / 4294967296;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    // Ranks are scattered over the key names, so popular keys are not neighbours in any hash or slot order.
    return (lo * 2654435761) % n;
  };
}

// A trace per process, made before the clock starts: [key index, is-set] pairs.
function makeTrace(seed, length) {
  const next = zipfSampler(KEYS, ZIPF, seed);
  const keys = new Int32Array(length);
  const sets = new Uint8Array(length);
  const setFor = zipfSampler(1000, 0, seed + 99); // uniform 0..999
  for (let i = 0; i < length; i++) {
    keys[i] = next();
    sets[i] = setFor() < SETS * 1000 ? 1 : 0;
  }
  return { keys, sets };
}

const TRACE_LENGTH = 1 << 20;
const keyName = (i) => `key:${i}`;

async function child(kind, name, port, seed) {
  const value = Buffer.alloc(VALUE, seed);
  const { keys, sets } = makeTrace(seed, TRACE_LENGTH);
  const names = Array.from({ length: KEYS }, (_, i) => keyName(i));
  let get;
  let set;
  let done = () => {};
  if (kind === 'shared-cache') {
    const cache = SharedCache.open(name);
    get = (k) => cache.get(k);
    set = (k, v) => cache.set(k, v);
    done = () => cache.close();
  } else if (kind === 'lru-cache') {
    const { LRUCache } = require('lru-cache');
    const lru = new LRUCache({ max: KEYS });
    for (const k of names) lru.set(k, Buffer.from(value));
    get = (k) => lru.get(k);
    set = (k, v) => lru.set(k, Buffer.from(v)); // a copy, as a shared store keeps its own
  } else {
    const Redis = require('ioredis');
    const redis = new Redis({ port, enableAutoPipelining: false });
    await redis.ping();
    get = (k) => redis.getBuffer(k);
    set = (k, v) => redis.set(k, v);
    done = () => redis.disconnect();
  }
  process.send('ready');
  await new Promise((resolve) => process.once('message', resolve));
  const end = Date.now() + MS;
  let ops = 0;
  let gets = 0;
  let hits = 0;
  if (kind !== 'redis') {
    for (let i = 0; ; i++) {
      const at = i & (TRACE_LENGTH - 1);
      const k = names[keys[at]];
      if (sets[at]) set(k, value);
      else if ((gets++, get(k) !== undefined)) hits++;
      else set(k, value);
      ops++;
      if ((i & 1023) === 0 && Date.now() >= end) break;
    }
  } else {
    let i = 0;
    const loop = async () => {
      while (Date.now() < end) {
        const at = i++ & (TRACE_LENGTH - 1);
        const k = names[keys[at]];
        if (sets[at]) await set(k, value);
        else if ((gets++, (await get(k)) !== null)) hits++;
        else await set(k, value);
        ops++;
      }
    };
    await Promise.all(Array.from({ length: 32 }, loop));
  }
  done();
  process.send({ ops, gets, hits });
}

async function run(kind, name, port) {
  const children = [];
  for (let p = 0; p < PROCS; p++) {
    const c = fork(__filename, ['child', kind, name, String(port), String(p + 1), ...process.argv.slice(2)]);
    children.push(c);
    await new Promise((resolve) => c.once('message', resolve));
  }
  const results = children.map((c) => new Promise((resolve) => c.once('message', resolve)));
  const start = process.hrtime.bigint();
  for (const c of children) c.send('go');
  const got = await Promise.all(results);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const ops = got.reduce((s, r) => s + r.ops, 0);
  const cpuSeconds = seconds * Math.min(PROCS, os.cpus().length);
  return { opsPerSecond: ops / seconds, cpuMicrosPerOp: (1e6 * cpuSeconds) / ops, hitRate: got.reduce((s, r) => s + r.hits, 0) / got.reduce((s, r) => s + r.gets, 0) };
}

function redisAvailable() {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function withRedis(fn) {
  const port = 20000 + (process.pid % 20000);
  const server = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--maxmemory', '0'], { stdio: 'ignore' });
  try {
    const Redis = require('ioredis');
    const client = new Redis({ port, lazyConnect: true, retryStrategy: (n) => (n > 50 ? null : 50) });
    await client.connect();
    const value = Buffer.alloc(VALUE, 1);
    for (let i = 0; i < KEYS; i += 1000) {
      const batch = client.pipeline();
      for (let k = i; k < Math.min(KEYS, i + 1000); k++) batch.set(keyName(k), value);
      await batch.exec();
    }
    client.disconnect();
    return await fn(port);
  } finally {
    server.kill('SIGKILL');
  }
}

// Hit rate of CLOCK (the real SharedCache) against an exact LRU, on one Zipf trace, at 10% of the key space.
function hitRates() {
  const capacity = Math.floor(KEYS / 10);
  const requests = 2000000;
  const next = zipfSampler(KEYS, ZIPF, 12345);
  const trace = new Int32Array(requests);
  for (let i = 0; i < requests; i++) trace[i] = next();
  const lru = new Map();
  let lruHits = 0;
  for (let i = 0; i < requests; i++) {
    const k = trace[i];
    if (lru.has(k)) {
      lruHits++;
      lru.delete(k);
    } else if (lru.size >= capacity) lru.delete(lru.keys().next().value);
    lru.set(k, true);
  }
  const name = `bench-cache-hits-${process.pid}`;
  const cache = SharedCache.create(name, { size: capacity * 1200 + (64 << 20), maxEntries: capacity });
  const value = Buffer.alloc(16);
  let clockHits = 0;
  try {
    for (let i = 0; i < requests; i++) {
      const k = keyName(trace[i]);
      if (cache.has(k)) {
        cache.get(k);
        clockHits++;
      } else cache.set(k, value);
    }
  } finally {
    cache.close();
    SharedCache.unlink(name);
  }
  return { capacity, requests, lru: lruHits / requests, clock: clockHits / requests };
}

async function main() {
  const results = {};
  const name = `bench-cache-${process.pid}`;
  const cache = SharedCache.create(name, { size: KEYS * (VALUE + 200) + (256 << 20), maxEntries: KEYS + 1024, maxValueBytes: VALUE });
  try {
    const value = Buffer.alloc(VALUE, 1);
    for (let i = 0; i < KEYS; i++) cache.set(keyName(i), value);
    results['shared-cache'] = await run('shared-cache', name, 0);
    const s = cache.stats();
    results['shared-cache'].evictions = s.evictions;
  } finally {
    cache.close();
    SharedCache.unlink(name);
  }
  results['lru-cache'] = await run('lru-cache', '', 0);
  if (redisAvailable()) results.redis = await withRedis((port) => run('redis', '', port));
  else console.log('redis: skipped (redis-server is not installed: apt-get install -y redis-server)');
  const rates = hitRates();
  if (JSON_OUT) {
    console.log(JSON.stringify({ results, rates }, null, 2));
    return;
  }
  console.log(`${os.cpus().length} CPUs (${os.cpus()[0].model}), node ${process.version}; ${PROCS} processes, ${KEYS} keys, ${VALUE}-byte values, Zipf ${ZIPF}, ${MS} ms each, ${100 - 100 * SETS}% get (a miss sets) / ${100 * SETS}% set`);
  const base = results['shared-cache'].opsPerSecond;
  for (const [kind, r] of Object.entries(results)) {
    console.log(`${kind.padEnd(13)} ${Math.round(r.opsPerSecond).toLocaleString('en-US').padStart(12)} ops/s   ${r.cpuMicrosPerOp.toFixed(1).padStart(6)} µs of CPU/op   get hit rate ${(100 * r.hitRate).toFixed(1)}%   shared-cache / this: ${(base / r.opsPerSecond).toFixed(2)}x`);
  }
  console.log(`hit rate at ${rates.capacity} entries (10% of the keys), ${rates.requests} Zipf requests: CLOCK (SharedCache) ${(100 * rates.clock).toFixed(2)}%, exact LRU ${(100 * rates.lru).toFixed(2)}%, difference ${(100 * (rates.clock - rates.lru)).toFixed(2)} points`);
}

if (process.argv[2] === 'child') {
  child(process.argv[3], process.argv[4], Number(process.argv[5]), Number(process.argv[6])).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
