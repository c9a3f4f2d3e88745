#!/usr/bin/env node
// What cross-process coordination costs, against the peers a Node user has (docs/benchmarks.md):
//
//   node scripts/bench-sync.js [--json] [--messages N] [--bytes 256] [--rounds 3]
//
// Every figure comes from the same run, so the ratios hold on a noisy machine:
//   queue 1x1 sync        one producer process push(), one consumer process pop(), messages/s
//   queue 1x1 async       the consumer uses popAsync() (a waiter thread when the queue is empty)
//   queue 4x4 sync        four producers, four consumers (the issue asks: not below the 1x1 figure)
//   process.send          the same messages (Buffers) parent -> child over Node's IPC channel
//   worker postMessage    the same messages parent -> worker thread (structured clone)
//   mutex                 lock+unlock ns, one process alone, then two processes fighting for it
//   ping-pong             round trip ns: wait/notify on two words of the segment, against process.send
//   wake latency          one-way: the parent notifies a child blocked in waitAsync() (or wait()) and the
//                         child reads the clock when it wakes; p50/p90/p99/max of 2,000 wakes
//
// Children are this script run with a role (argv[2] === 'child'); a start word in the segment, woken
// by pool.notify, starts them together; each reports its monotonic end time (process.hrtime is
// CLOCK_MONOTONIC, the same clock in every process).
'use strict';
const path = require('node:path');
const { fork } = require('node:child_process');
const { Worker } = require('node:worker_threads');
const mempool = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));
const { SharedPool } = mempool;

if (process.argv[2] === 'child') {
  child(process.argv.slice(3));
} else {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

// ---- children --------------------------------------------------------------------------------------------

function child([role, name, startOffset, n, bytes, extra]) {
  const pool = role.startsWith('send-') ? undefined : SharedPool.open(name);
  n = Number(n);
  bytes = Number(bytes);
  const start = Number(startOffset);
  const startWord = pool && pool.atomics(start, 1);
  const ready = () => process.send({ ready: true });
  const waitStart = () => {
    while (Atomics.load(startWord, 0) === 0) pool.wait(start, 0, 1000);
  };
  const finish = (extraFields) => {
    process.send({ end: process.hrtime.bigint().toString(), ...extraFields }, () => {
      pool.close();
      process.exit(0);
    });
  };
  if (role === 'produce') {
    const q = pool.queue('bench');
    const m = Buffer.alloc(bytes, 7);
    ready();
    waitStart();
    for (let i = 0; i < n; i++) {
      m.writeUInt32LE(i, 0);
      q.push(m);
    }
    finish({});
  } else if (role === 'consume') {
    const q = pool.queue('bench');
    ready();
    waitStart();
    let count = 0;
    let sum = 0;
    for (;;) {
      const m = q.pop();
      if (m === undefined) break;
      count++;
      sum += m.length;
    }
    finish({ count, sum });
  } else if (role === 'consume-async') {
    const q = pool.queue('bench');
    ready();
    waitStart();
    (async () => {
      let count = 0;
      let sum = 0;
      for await (const m of q) {
        count++;
        sum += m.length;
      }
      finish({ count, sum });
    })();
  } else if (role === 'mutex') {
    const mu = pool.mutex('bench');
    const counter = pool.atomics(Number(extra), 1);
    ready();
    waitStart();
    for (let i = 0; i < n; i++) {
      mu.lock();
      counter[0] = counter[0] + 1;  // not atomic: only the mutex keeps increments from being lost
      mu.unlock();
    }
    finish({});
  } else if (role === 'pong') {
    // Two words: ping at start+4, pong at start+8. Each round the parent bumps ping; we answer on pong.
    const words = pool.atomics(start + 4, 2);
    ready();
    for (let i = 1; i <= n; i++) {
      while (Atomics.load(words, 0) < i) pool.wait(start + 4, i - 1, 1000);
      Atomics.store(words, 1, i);
      pool.notify(start + 8, 1);
    }
    finish({});
  } else if (role === 'wake' || role === 'wake-async') {
    // Words: [armed, go] at start+4; the parent's notify time (BigInt ns) at start+16. Each round we arm,
    // block until go reaches i, and note how long after the parent's clock reading we woke.
    const words = pool.atomics(start + 4, 2);
    const sentAt = pool.atomics64(start + 16, 1);
    const latencies = [];
    ready();
    (async () => {
      for (let i = 1; i <= n; i++) {
        Atomics.store(words, 0, i);
        while (Atomics.load(words, 1) < i) {
          if (role === 'wake-async') await pool.waitAsync(start + 8, i - 1, 1000);
          else pool.wait(start + 8, i - 1, 1000);
        }
        latencies.push(Number(process.hrtime.bigint() - sentAt[0]));
      }
      finish({ latencies });
    })();
  } else if (role === 'send-sink') {
    let count = 0;
    let sum = 0;
    process.on('message', (m) => {
      if (m === 'end') {
        process.send({ end: process.hrtime.bigint().toString(), count, sum }, () => process.exit(0));
        return;
      }
      count++;
      sum += m.length;
    });
    ready();
  } else if (role === 'send-pong') {
    process.on('message', (m) => {
      if (m === 'end') process.exit(0);
      else process.send(m);
    });
    ready();
  } else {
    throw new Error(`unknown role ${role}`);
  }
}

// ---- parent ----------------------------------------------------------------------------------------------

function parseArgs() {
  const opts = { json: false, messages: 400000, bytes: 256, rounds: 3 };
  for (let i = 2; i < process.argv.length; i++) {
    const a = process.argv[i];
    if (a === '--json') opts.json = true;
    else if (a === '--messages') opts.messages = Number(process.argv[++i]);
    else if (a === '--bytes') opts.bytes = Number(process.argv[++i]);
    else if (a === '--rounds') opts.rounds = Number(process.argv[++i]);
    else {
      process.stderr.write('usage: node scripts/bench-sync.js [--json] [--messages N] [--bytes 256] [--rounds 3]\n');
      process.exit(1);
    }
  }
  return opts;
}

function spawnChild(args) {
  const c = fork(__filename, ['child', ...args.map(String)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = new Promise((resolve, reject) => {
    c.once('message', (m) => (m && m.ready ? resolve() : reject(new Error(`child said ${JSON.stringify(m)}`))));
    c.once('exit', (code) => reject(new Error(`child ${args[0]} exited ${code} before it was ready`)));
  });
  const done = new Promise((resolve, reject) => {
    c.on('message', (m) => { if (m && m.end) resolve(m); });
    c.once('exit', (code) => { if (code !== 0) reject(new Error(`child ${args[0]} exited ${code}`)); });
  });
  return { proc: c, ready, done };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function queueCase(opts, producers, consumers, consumerRole) {
  const name = `mempool-bench-sync-${process.pid}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: 64 << 20, algorithm: 'tlsf' });
  try {
    const q = pool.queue('bench', { maxBytes: 4 << 20, maxMessages: 65536 });
    const start = pool.allocOffset(64);
    pool.atomics(start, 16).fill(0);
    const per = Math.floor(opts.messages / producers);
    const kids = [];
    for (let p = 0; p < producers; p++) kids.push(spawnChild(['produce', name, start, per, opts.bytes]));
    const cons = [];
    for (let c = 0; c < consumers; c++) cons.push(spawnChild([consumerRole, name, start, 0, opts.bytes]));
    await Promise.all([...kids, ...cons].map((k) => k.ready));
    const t0 = process.hrtime.bigint();
    Atomics.store(pool.atomics(start, 1), 0, 1);
    pool.notify(start);
    await Promise.all(kids.map((k) => k.done));
    q.close();  // producers are done: consumers drain what is left, then see the end
    const ends = await Promise.all(cons.map((k) => k.done));
    const end = ends.reduce((m, e) => (BigInt(e.end) > m ? BigInt(e.end) : m), 0n);
    const count = ends.reduce((s, e) => s + e.count, 0);
    if (count !== per * producers) throw new Error(`consumers got ${count} messages of ${per * producers}`);
    return count / (Number(end - t0) / 1e9);
  } finally {
    pool.unlink();
    pool.close();
  }
}

async function processSendCase(opts) {
  const k = spawnChild(['send-sink', 'unused', 0, 0, opts.bytes]);
  await k.ready;
  const m = Buffer.alloc(opts.bytes, 7);
  const t0 = process.hrtime.bigint();
  // Send in slices so the channel's queue does not hold every message at once (as a real producer would).
  const n = opts.messages;
  await new Promise((resolve) => {
    let i = 0;
    const slice = () => {
      for (let j = 0; j < 1000 && i < n; j++, i++) k.proc.send(m);
      if (i < n) setImmediate(slice);
      else resolve();
    };
    slice();
  });
  k.proc.send('end');
  const r = await k.done;
  if (r.count !== n) throw new Error(`process.send: child got ${r.count} of ${n}`);
  return n / (Number(BigInt(r.end) - t0) / 1e9);
}

async function postMessageCase(opts) {
  const src = `
    const { parentPort } = require('node:worker_threads');
    let count = 0;
    parentPort.on('message', (m) => {
      if (m === 'end') { parentPort.postMessage({ count, end: process.hrtime.bigint().toString() }); return; }
      count++;
    });`;
  const w = new Worker(src, { eval: true });
  const m = new Uint8Array(opts.bytes).fill(7);
  await new Promise((r) => w.once('online', r));
  const n = opts.messages;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) w.postMessage(m);
  w.postMessage('end');
  const r = await new Promise((resolve) => w.once('message', resolve));
  await w.terminate();
  if (r.count !== n) throw new Error(`postMessage: worker got ${r.count} of ${n}`);
  return n / (Number(BigInt(r.end) - t0) / 1e9);
}

async function mutexCases(opts) {
  const name = `mempool-bench-mutex-${process.pid}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: 8 << 20, algorithm: 'tlsf' });
  try {
    const mu = pool.mutex('bench');
    const n = 2000000;
    let t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      mu.lock();
      mu.unlock();
    }
    const alone = Number(process.hrtime.bigint() - t) / n;
    const start = pool.allocOffset(64);
    pool.atomics(start, 16).fill(0);
    const counterOffset = start + 32;
    const per = 300000;
    const kids = [0, 1].map(() => spawnChild(['mutex', name, start, per, 0, counterOffset]));
    await Promise.all(kids.map((k) => k.ready));
    t = process.hrtime.bigint();
    Atomics.store(pool.atomics(start, 1), 0, 1);
    pool.notify(start);
    const ends = await Promise.all(kids.map((k) => k.done));
    const end = ends.reduce((m, e) => (BigInt(e.end) > m ? BigInt(e.end) : m), 0n);
    const counted = pool.atomics(counterOffset, 1)[0];
    if (counted !== 2 * per) throw new Error(`mutex lost increments: ${counted} of ${2 * per}`);
    return { alone, contended: Number(end - t) / (2 * per) };
  } finally {
    pool.unlink();
    pool.close();
  }
}

async function pingPongCases() {
  const rounds = 20000;
  const name = `mempool-bench-pong-${process.pid}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: 8 << 20, algorithm: 'tlsf' });
  let futex;
  try {
    const start = pool.allocOffset(64);
    pool.atomics(start, 16).fill(0);
    const words = pool.atomics(start + 4, 2);
    const k = spawnChild(['pong', name, start, rounds, 0]);
    await k.ready;
    const t = process.hrtime.bigint();
    for (let i = 1; i <= rounds; i++) {
      Atomics.store(words, 0, i);
      pool.notify(start + 4, 1);
      while (Atomics.load(words, 1) < i) pool.wait(start + 8, i - 1, 1000);
    }
    futex = Number(process.hrtime.bigint() - t) / rounds;
    await k.done;
  } finally {
    pool.unlink();
    pool.close();
  }
  const k = spawnChild(['send-pong', 'unused', 0, 0, 0]);
  await k.ready;
  const t = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) {
    k.proc.send(i);
    await new Promise((r) => k.proc.once('message', r));
  }
  const send = Number(process.hrtime.bigint() - t) / rounds;
  k.proc.send('end');
  return { futex, send };
}

// One-way wake-up latency of a child blocked on a word: the parent waits until the child armed round i
// and has had 2 ms to fall asleep (past the spin of any waiter), reads the clock, stores it, bumps the
// word and notifies. The child's clock reading on waking minus the parent's is the latency.
async function wakeCase(role, rounds) {
  const name = `mempool-bench-wake-${process.pid}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: 8 << 20, algorithm: 'tlsf' });
  try {
    const start = pool.allocOffset(64);
    pool.atomics(start, 16).fill(0);
    const words = pool.atomics(start + 4, 2);
    const sentAt = pool.atomics64(start + 16, 1);
    const k = spawnChild([role, name, start, rounds, 0]);
    await k.ready;
    for (let i = 1; i <= rounds; i++) {
      while (Atomics.load(words, 0) < i) await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 2));
      sentAt[0] = process.hrtime.bigint();
      Atomics.store(words, 1, i);
      pool.notify(start + 8, 1);
    }
    const { latencies } = await k.done;
    const sorted = latencies.sort((a, b) => a - b);
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1], histogram: histogram(sorted) };
  } finally {
    pool.unlink();
    pool.close();
  }
}

// Counts per power-of-two bucket of microseconds: { '<8': n, '8-16': n, ... }.
function histogram(sortedNs) {
  const out = {};
  for (const ns of sortedNs) {
    const us = ns / 1000;
    const lo = us < 8 ? 0 : 2 ** Math.floor(Math.log2(us));
    const key = lo === 0 ? '<8' : `${lo}-${lo * 2}`;
    out[key] = (out[key] || 0) + 1;
  }
  return out;
}

// One no-op native call from JS, the floor the mutex target is measured against.
function noopNs() {
  const addon = require('node-gyp-build')(path.join(__dirname, '..'));
  const n = 5000000;
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) addon.noop();
  return Number(process.hrtime.bigint() - t) / n;
}

async function main() {
  const opts = parseArgs();
  const runs = { q11: [], q11async: [], q44: [], send: [], post: [] };
  for (let r = 0; r < opts.rounds; r++) {
    runs.q11.push(await queueCase(opts, 1, 1, 'consume'));
    runs.q11async.push(await queueCase(opts, 1, 1, 'consume-async'));
    runs.q44.push(await queueCase(opts, 4, 4, 'consume'));
    runs.send.push(await processSendCase(opts));
    runs.post.push(await postMessageCase(opts));
  }
  const q11 = median(runs.q11);
  const q11async = median(runs.q11async);
  const q44 = median(runs.q44);
  const send = median(runs.send);
  const post = median(runs.post);
  const mutex = await mutexCases(opts);
  const pong = await pingPongCases();
  const wakeAsync = await wakeCase('wake-async', 2000);
  const wakeSync = await wakeCase('wake', 2000);
  const noop = noopNs();
  const result = {
    bytes: opts.bytes,
    messages: opts.messages,
    messagesPerSecond: { queue1x1: q11, queue1x1Async: q11async, queue4x4: q44, processSend: send, workerPostMessage: post },
    mutexNs: mutex,
    pingPongNs: pong,
    wakeNs: { waitAsync: wakeAsync, wait: wakeSync },
    noopNs: noop,
  };
  if (opts.json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  const M = (x) => `${(x / 1e6).toFixed(2)} M/s`;
  const met = (ok) => (ok ? 'met' : 'NOT met');
  console.log(`SharedQueue, ${opts.bytes}-byte messages, ${opts.messages} per case, median of ${opts.rounds} rounds (messages/s)`);
  console.log(`  queue 1 producer x 1 consumer, pop()      ${M(q11)}`);
  console.log(`  queue 1 producer x 1 consumer, popAsync() ${M(q11async)}`);
  console.log(`  queue 4 producers x 4 consumers, pop()    ${M(q44)}`);
  console.log(`  process.send (Buffer), parent -> child    ${M(send)}`);
  console.log(`  worker postMessage (Uint8Array)           ${M(post)}`);
  console.log('targets (issue 16):');
  console.log(`  1x1 >= 2 M/s                      ${M(q11)}  ${met(q11 >= 2e6)}`);
  console.log(`  1x1 >= 10x process.send           ${(q11 / send).toFixed(1)}x  ${met(q11 >= 10 * send)}`);
  console.log(`  1x1 >= 1.5x worker postMessage    ${(q11 / post).toFixed(2)}x  ${met(q11 >= 1.5 * post)}`);
  console.log(`  4x4 >= 1x1                        ${(q44 / q11).toFixed(2)}x  ${met(q44 >= q11)}`);
  console.log('SharedMutex lock+unlock (ns per pair)');
  console.log(`  one process alone                 ${mutex.alone.toFixed(1)} ns`);
  console.log(`  two processes fighting            ${mutex.contended.toFixed(1)} ns`);
  console.log('ping-pong round trip between two processes (ns)');
  console.log(`  pool.wait/notify                  ${pong.futex.toFixed(0)} ns`);
  console.log(`  process.send                      ${pong.send.toFixed(0)} ns  (${(pong.send / pong.futex).toFixed(1)}x slower)`);
  const us = (ns) => `${(ns / 1000).toFixed(1)} us`;
  for (const [label, w] of [['waitAsync()', wakeAsync], ['wait()     ', wakeSync]]) {
    console.log(`wake-up latency of a child blocked in ${label}: p50 ${us(w.p50)}  p90 ${us(w.p90)}  p99 ${us(w.p99)}  max ${us(w.max)}`);
    console.log(`  histogram (us): ${Object.entries(w.histogram).map(([k, v]) => `${k}: ${v}`).join('  ')}`);
  }
  console.log(`  waitAsync p50 <= 20 us             ${us(wakeAsync.p50)}  ${met(wakeAsync.p50 <= 20000)}`);
  console.log(`  waitAsync p99 <= 200 us            ${us(wakeAsync.p99)}  ${met(wakeAsync.p99 <= 200000)}`);
  console.log(`  mutex pair <= 2x a no-op call      ${mutex.alone.toFixed(1)} ns vs ${noop.toFixed(1)} ns: ${(mutex.alone / noop).toFixed(2)}x  ${met(mutex.alone <= 2 * noop)}`);
}
