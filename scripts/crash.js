#!/usr/bin/env node
// kill -9 at random instants during shared alloc/free, for every algorithm.
//
//   npm run crash -- --kills 100                      tlsf, buddy and bitmap, 100 kills each
//   npm run crash -- --kills 300 --algorithm buddy
//
// The parent (the survivor) creates a SharedPool, fills 300 blocks of its own with patterns and names
// 20 of them. Then, --kills times: it starts a victim process that opens the pool and allocates, writes,
// reallocs, names and frees as fast as it can; the survivor keeps operating on the pool itself (so the
// two contend for the lock) and at a random instant 0-40 ms after the victim is ready sends SIGKILL. Right
// after each kill the survivor times its next operation (which takes the lock, and repairs the heap when
// the victim died holding it), runs check(), verifies every one of its blocks and names, and frees the
// blocks the dead victim left (found by walking the heap). Nothing of the survivor's may be lost, no
// operation may wait more than --max-wait-ms (default 1000), and check() must hold after every kill.
// Uses the public API from dist/ (npm run build first); MEMPOOL_MODULE points at another build.
'use strict';
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Pool, SharedPool } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));
void Pool;

const MiB = 1 << 20;

function parseArgs(argv) {
  const o = { kills: 100, algorithm: 'all', size: 32 * MiB, maxWaitMs: 1000, role: 'main' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--kills') o.kills = Number(argv[++i]);
    else if (a === '--algorithm') o.algorithm = argv[++i];
    else if (a === '--size') o.size = Number(argv[++i]);
    else if (a === '--max-wait-ms') o.maxWaitMs = Number(argv[++i]);
    else if (a === '--role') o.role = argv[++i];
    else if (a === '--name') o.name = argv[++i];
    else throw new Error(`crash.js: unknown argument ${a}`);
  }
  return o;
}

// ---- the victim: works until it is killed --------------------------------------------------------
function victim(name) {
  const pool = SharedPool.open(name);
  process.stdout.write('ready\n');
  const held = [];
  let n = 0;
  for (;;) {
    n++;
    const r = Math.random();
    try {
      if (held.length < 64 && r < 0.55) {
        const b = pool.alloc(1 + Math.floor(Math.random() * 3000), { align: Math.random() < 0.1 ? 256 : 16 });
        b.fill(0xee);
        held.push(b);
      } else if (held.length > 0 && r < 0.9) {
        pool.free(held.pop());
      } else if (held.length > 0 && r < 0.97) {
        const i = held.length - 1;
        held[i] = pool.realloc(held[i], 1 + Math.floor(Math.random() * 6000));
      } else if (held.length > 0) {
        // The name owns the block from now on (the block the key named before is freed by set()).
        pool.set(`victim-${n % 4}`, held.pop());
      }
    } catch (e) {
      if (e.code !== 'ERR_POOL_OUT_OF_MEMORY') throw e;
      while (held.length) pool.free(held.pop());
    }
  }
}

function startVictim(name) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [__filename, '--role', 'victim', '--name', name], { stdio: ['ignore', 'pipe', 'inherit'] });
    c.once('error', reject);
    c.stdout.once('data', () => resolve(c));
    c.once('exit', (code, sig) => reject(new Error(`victim exited early (${code ?? sig})`)));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function timed(fn) {
  const t = process.hrtime.bigint();
  const v = fn();
  return [v, Number(process.hrtime.bigint() - t) / 1e6];
}

async function crashOne(o, algorithm) {
  const name = `mempool-crash-${process.pid}-${algorithm}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: o.size, algorithm, maxKeys: 64, lockTimeoutMs: 5000 });
  const mine = new Map(); // offset -> { length, byte }
  for (let i = 0; i < 300; i++) {
    const b = pool.alloc(16 + ((i * 97) % 2000));
    b.fill(i & 255);
    mine.set(pool.offsetOf(b), { length: b.length, byte: i & 255 });
    if (i % 15 === 0) pool.set(`mine-${i}`, b);
  }
  const myKeys = [...mine.keys()].filter((_, i) => i % 15 === 0);
  let maxWait = 0;
  let maxFirstWait = 0;
  let failures = 0;
  let reclaimed = 0;
  let scratch = [];
  const t0 = Date.now();
  for (let k = 0; k < o.kills; k++) {
    const c = await startVictim(name);
    const exited = new Promise((r) => c.once('exit', (code, sig) => r(sig)));
    const until = Date.now() + Math.random() * 40;
    // Contend with the victim until the kill instant.
    while (Date.now() < until) {
      const [b, ms] = timed(() => pool.alloc(1 + Math.floor(Math.random() * 500)));
      maxWait = Math.max(maxWait, ms);
      scratch.push(b);
      if (scratch.length > 8) pool.free(scratch.shift());
      await sleep(0);
    }
    c.kill('SIGKILL');
    const sig = await exited;
    if (sig !== 'SIGKILL') failures++;
    // The first operation after the kill: takes the lock, repairs if the victim held it.
    const [b, first] = timed(() => pool.alloc(64));
    maxFirstWait = Math.max(maxFirstWait, first);
    maxWait = Math.max(maxWait, first);
    pool.free(b);
    try {
      pool.check();
    } catch (e) {
      failures++;
      console.error(`crash ${algorithm}: kill ${k + 1}: check() failed: ${e.message}`);
      break;
    }
    for (const [off, m] of mine) {
      if (!pool.view(off, m.length).every((x) => x === m.byte)) {
        failures++;
        console.error(`crash ${algorithm}: kill ${k + 1}: the survivor's block at ${off} changed`);
      }
    }
    for (const off of myKeys) {
      const g = pool.get(`mine-${[...mine.keys()].indexOf(off)}`);
      if (!g || pool.offsetOf(g) !== off) {
        failures++;
        console.error(`crash ${algorithm}: kill ${k + 1}: a name of the survivor's was lost`);
      }
    }
    // What the dead victim held stays allocated until someone frees it: its names own their blocks
    // (delete frees them); the rest it owned unnamed, and only it knew: reclaim them by offset.
    for (const key of pool.keys()) if (key.startsWith('victim-')) pool.delete(key);
    const keep = new Set([...mine.keys(), ...scratch.map((x) => pool.offsetOf(x))]);
    const orphans = [];
    for (const blk of pool.blocks()) if (blk.used && !keep.has(blk.offset)) orphans.push(blk.offset);
    for (const off of orphans) pool.free(off);
    reclaimed += orphans.length;
  }
  for (const x of scratch) pool.free(x);
  scratch = [];
  pool.check();
  const st = pool.stats();
  const elapsed = (Date.now() - t0) / 1000;
  for (const off of myKeys) pool.delete(`mine-${[...mine.keys()].indexOf(off)}`); // the names own these
  for (const off of mine.keys()) if (!myKeys.includes(off)) pool.free(off);
  pool.check();
  const end = pool.stats();
  pool.close();
  SharedPool.unlink(name);
  const ok = failures === 0 && maxWait <= o.maxWaitMs && st.liveAllocations === mine.size && end.liveAllocations === 0;
  console.log(
    `crash ${algorithm}: ${o.kills} kill -9 in ${elapsed.toFixed(1)} s, ${st.recoveries} of them while holding the lock (repaired), ` +
      `check() ok after each: ${failures === 0 ? 'yes' : 'NO'}, survivor's ${mine.size} blocks and ${myKeys.length} names intact: ${failures === 0 ? 'yes' : 'NO'}, ` +
      `${reclaimed} blocks of dead victims reclaimed, longest wait ${maxWait.toFixed(1)} ms (first op after a kill: ${maxFirstWait.toFixed(1)} ms): ` +
      (ok ? 'OK' : 'FAILED'),
  );
  return ok;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.role === 'victim') return victim(o.name);
  const algorithms = o.algorithm === 'all' ? ['tlsf', 'buddy', 'bitmap'] : [o.algorithm];
  let ok = true;
  for (const a of algorithms) {
    try {
      ok = (await crashOne(o, a)) && ok;
    } catch (e) {
      ok = false;
      console.log(`crash ${a}: FAILED: ${e.code ?? ''} ${e.message}`);
      SharedPool.unlink(`mempool-crash-${process.pid}-${a}`);
    }
  }
  process.exitCode = ok ? 0 : 1;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
