#!/usr/bin/env node
// Races of several processes on the keys of one shared segment, for every heap.
//
//   node scripts/race.js                      ownership and legacy modes, 4 procs x 10 s on tlsf, buddy, bitmap
//   node scripts/race.js --seconds 2 --procs 8 --heaps tlsf,buddy --mode ownership
//   node scripts/race.js --kill --kills 30    kill -9 a random worker at random times (30 kills per heap)
//   node scripts/race.js --bench              replace+free/s and getCopy/s with 1, 2 and 4 processes
//   node scripts/race.js --vandal --runs 10   3 workers + 1 vandal writing through freed Buffers (careful:
//                                             only while its block is still free), per heap and run
//   node scripts/race.js --vandal --raw       the vandal writes whatever happened to its freed memory
//   --json                                    print the results as JSON (one object) instead of tables
//
// Workers are test/fixtures/race-worker.js. After each run the parent checks the segment:
//   every run:       check() holds; every named entry's bytes match the header and checksum its writer wrote
//                    (getCopy of each key); no worker failed (an error of an owned block's free, an
//                    inconsistent copy, read or handed-back block, an unexpected error).
//   ownership mode:  live allocations == named keys (the workers free all they own before exiting).
//   legacy mode:     the heap is intact; refusals of free(old) and leaks are counted, not failures.
//   kill mode:       check() holds; pins were released (two nested read()s of every key at once, up to 128
//                    pins, succeed; then a read() and delete() of every key); stranded bytes (stats().used
//                    minus the usable bytes of the named blocks, i.e. blocks the killed workers held unnamed)
//                    at most 256 KiB + kills x the usable size of the largest value (a worker holds at most one unnamed
//                    value at a time: the new one before it is named, or the old one before it is freed).
// Exits 1 on any failure. Uses dist/ (npm run build:ts first); MEMPOOL_MODULE points at another build.
'use strict';
const path = require('node:path');
const { spawn } = require('node:child_process');
const { SharedPool } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));
const { verify } = require('../test/fixtures/race-worker.js');

const WORKER = path.join(__dirname, '..', 'test', 'fixtures', 'race-worker.js');
const MiB = 1 << 20;
const KiB = 1024;
const SEGMENT = 64 * MiB;
const KEYS = 64;
const MAX_VALUE = 65536;
let counter = 0;

function segmentName(tag) {
  return `mempool-race-${process.pid}-${tag}-${counter++}`;
}

function parseArgs(argv) {
  const o = { seconds: 10, procs: 4, heaps: ['tlsf', 'buddy', 'bitmap'], modes: ['ownership', 'legacy'], kill: false, kills: 30, json: false, bench: false, vandal: false, raw: false, runs: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`race.js: ${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seconds') o.seconds = Number(next());
    else if (a === '--procs') o.procs = Number(next());
    else if (a === '--heaps') o.heaps = next().split(',');
    else if (a === '--mode') {
      const m = next();
      if (m === 'kill') o.kill = true;
      else o.modes = m.split(',');
    } else if (a === '--kill') o.kill = true;
    else if (a === '--kills') o.kills = Number(next());
    else if (a === '--json') o.json = true;
    else if (a === '--bench') o.bench = true;
    else if (a === '--vandal') o.vandal = true;
    else if (a === '--raw') o.raw = true;
    else if (a === '--runs') o.runs = Number(next());
    else throw new Error(`race.js: unknown argument ${a}`);
  }
  for (const h of o.heaps) if (!['tlsf', 'buddy', 'bitmap'].includes(h)) throw new Error(`race.js: unknown heap ${h}`);
  for (const m of o.modes) if (!['ownership', 'legacy'].includes(m)) throw new Error(`race.js: unknown mode ${m}`);
  if (!(o.seconds > 0) || !(o.procs >= 1) || !(o.kills >= 0)) throw new Error('race.js: --seconds, --procs and --kills need positive numbers');
  return o;
}

// ---- workers -----------------------------------------------------------------------------------------

/** Starts a worker; `done` resolves with { code, signal, summary, fails } when it exits. */
function startWorker(options) {
  const child = spawn(process.execPath, [WORKER, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let readyResolve;
  const ready = new Promise((resolve) => (readyResolve = resolve));
  child.stdout.on('data', (d) => {
    out += d;
    if (out.startsWith('ready\n')) readyResolve();
  });
  child.stderr.on('data', (d) => (err += d));
  const done = new Promise((resolve) => {
    child.once('close', (code, signal) => {
      readyResolve();
      const fails = [];
      const other = [];
      for (const line of err.split('\n')) {
        if (line.startsWith('RACE-FAIL ')) fails.push(JSON.parse(line.slice(10)));
        else if (line.trim() !== '') other.push(line);
      }
      let summary;
      const last = out.split('\n').filter((l) => l.startsWith('{')).pop();
      if (last !== undefined) summary = JSON.parse(last);
      resolve({ pid: child.pid, code, signal, summary, fails, stderr: other.join('\n') });
    });
  });
  return { child, ready, done };
}

let seedCounter = 0;
function seed() {
  return ((Date.now() * 2654435761) ^ (process.pid << 8) ^ ++seedCounter) >>> 0 || 1;
}

// ---- checks ------------------------------------------------------------------------------------------

/** Verifies every named entry; returns { keys, namedBytes (usable), problems }. */
function checkNamed(pool) {
  const problems = [];
  let namedBytes = 0;
  const keys = pool.keys();
  for (const key of keys) {
    const m = /^k(\d+)$/.exec(key);
    if (!m) {
      problems.push(`unexpected key ${key}`);
      continue;
    }
    const copy = pool.getCopy(key);
    if (copy === undefined) {
      problems.push(`key ${key} listed but getCopy found nothing`);
      continue;
    }
    const why = verify(copy, Number(m[1]));
    if (why !== null) problems.push(`named entry ${key}: ${why}`);
    const view = pool.get(key);
    namedBytes += pool.usableSize(pool.offsetOf(view));
  }
  return { keys: keys.length, namedBytes, problems };
}

function tryCheck(pool, problems) {
  try {
    pool.check();
    return true;
  } catch (e) {
    problems.push(`check() failed: ${e.code}: ${e.message}`);
    return false;
  }
}

function workerProblems(results, expectClean) {
  const problems = [];
  for (const r of results) {
    for (const f of r.fails) problems.push(`worker ${r.pid}: ${f.what}: ${f.detail}`);
    if (expectClean) {
      if (r.code !== 0) problems.push(`worker ${r.pid} exited with ${r.code ?? r.signal}${r.stderr ? ': ' + r.stderr.slice(0, 2000) : ''}`);
      else if (r.summary === undefined) problems.push(`worker ${r.pid} printed no summary`);
    }
  }
  return problems.slice(0, 50);
}

function sumCounts(summaries) {
  const t = { ops: 0, get: 0, replace: 0, take: 0, getCopy: 0, read: 0, scratch: 0, set: 0, delete: 0, misses: 0, failures: 0, inconsistent: 0, tornRaw: 0, freedOld: 0, refusals: {}, errors: {} };
  for (const s of summaries) {
    for (const k of Object.keys(t)) {
      if (typeof t[k] === 'number') t[k] += s[k] || 0;
      else for (const [c, n] of Object.entries(s[k] || {})) t[k][c] = (t[k][c] || 0) + n;
    }
  }
  return t;
}

// ---- ownership and legacy runs ---------------------------------------------------------------------

/**
 * P workers for `seconds` on a fresh 64 MiB segment of `heap` in `mode` ('ownership' or 'legacy'); then the
 * checks. Returns { heap, mode, procs, seconds, opsPerSecond, totals, keys, live, used, leaked, problems }.
 */
async function runRace({ heap, mode, procs = 4, seconds = 10 }) {
  const name = segmentName(`${heap}-${mode}`);
  const pool = SharedPool.create(name, { size: SEGMENT, algorithm: heap });
  const problems = [];
  try {
    const t0 = Date.now();
    const workers = Array.from({ length: procs }, () => startWorker({ name, mode, ms: seconds * 1000, seed: seed(), keys: KEYS }));
    const results = await Promise.all(workers.map((w) => w.done));
    const wall = (Date.now() - t0) / 1000;
    problems.push(...workerProblems(results, true));
    const summaries = results.map((r) => r.summary).filter(Boolean);
    const totals = sumCounts(summaries);
    const workerSeconds = summaries.length ? summaries.reduce((a, s) => a + s.ms, 0) / summaries.length / 1000 : wall;
    const ok = tryCheck(pool, problems);
    const named = checkNamed(pool);
    problems.push(...named.problems);
    const st = pool.stats();
    const leaked = st.liveAllocations - named.keys;
    if (mode === 'ownership') {
      if (leaked !== 0) problems.push(`ownership: ${st.liveAllocations} live allocations but ${named.keys} named keys (${leaked} leaked)`);
      if (st.used !== named.namedBytes) problems.push(`ownership: stats().used ${st.used} != usable bytes of the named blocks ${named.namedBytes}`);
      if (totals.inconsistent !== 0) problems.push(`ownership: ${totals.inconsistent} inconsistent copies/reads`);
    }
    if (totals.ops === 0) problems.push('no operations were done');
    // Everything named can be removed, and then the heap is empty (ownership) or holds only the leaks.
    for (const k of pool.keys()) pool.delete(k);
    const after = pool.stats();
    if (mode === 'ownership' && (after.liveAllocations !== 0 || after.used !== 0)) problems.push(`after deleting every key: ${after.liveAllocations} live allocations, ${after.used} bytes used`);
    if (ok) tryCheck(pool, problems);
    return {
      heap, mode, procs, seconds: workerSeconds,
      opsPerSecond: Math.round(totals.ops / workerSeconds),
      totals, keys: named.keys, live: st.liveAllocations, used: st.used, namedBytes: named.namedBytes,
      leaked, leakedBytes: st.used - named.namedBytes, recoveries: st.recoveries, problems,
    };
  } finally {
    pool.close();
    SharedPool.unlink(name);
  }
}

// ---- vandal mode -------------------------------------------------------------------------------------

/**
 * P ownership workers plus one vandal (race-worker.js mode 'vandal': writes random bytes through Buffers of
 * blocks it freed) for `seconds` on a fresh segment of `heap`. What must hold (issue 15, item 6): no process
 * meets ERR_POOL_CORRUPTED or any other error of the pool, check() holds, and the heap was healed
 * (stats().heapRepairs) where the vandal damaged its lists. What the vandal may damage is data: values
 * in blocks that reused its freed memory (careful: only when its write overlapped such a reuse). Those are
 * counted (dataDamage: inconsistent values workers saw, named entries whose checksum fails), not failures.
 * Returns { heap, procs, seconds, ops, scribbles, late, heapRepairs, corrupted, dataDamage, problems }.
 */
async function runVandal({ heap, procs = 3, seconds = 3, careful = true }) {
  const name = segmentName(`${heap}-vandal`);
  const pool = SharedPool.create(name, { size: SEGMENT, algorithm: heap });
  const problems = [];
  try {
    const workers = Array.from({ length: procs }, () => startWorker({ name, mode: 'ownership', ms: seconds * 1000, seed: seed(), keys: KEYS }));
    const vandal = startWorker({ name, mode: 'vandal', ms: seconds * 1000, seed: seed(), keys: KEYS, careful, minSize: 256 });
    const results = await Promise.all([...workers, vandal].map((w) => w.done));
    let corrupted = 0;
    let dataDamage = 0;
    for (const r of results) {
      if (r.code !== 0 || r.summary === undefined) problems.push(`worker ${r.pid} exited with ${r.code ?? r.signal}${r.stderr ? ': ' + r.stderr.slice(0, 2000) : ''}`);
      for (const f of r.fails) {
        // A value that fails its checksum is data the vandal's write hit; anything else is the pool's failure.
        if (/^(replace: the old block handed back|take|getCopy|read|scratch)$/.test(f.what) && /checksum|header/.test(f.detail)) dataDamage++;
        else problems.push(`worker ${r.pid}: ${f.what}: ${f.detail}`);
      }
      if (r.summary) corrupted += r.summary.errors.ERR_POOL_CORRUPTED || 0;
    }
    const v = results[results.length - 1].summary || {};
    // check() heals damaged lists first; what it still reports is damage to the primary record.
    let checkError = null;
    try {
      pool.check();
    } catch (e) {
      checkError = `${e.code}: ${e.message}`;
      problems.push(`check() failed after the storm: ${checkError}`);
    }
    if (checkError === null) {
      const named = checkNamed(pool);
      for (const p of named.problems) {
        if (/checksum|header/.test(p)) dataDamage++;
        else problems.push(p);
      }
      for (const k of pool.keys()) pool.delete(k);
      tryCheck(pool, problems);
    }
    const st = pool.stats();
    const ops = results.slice(0, procs).reduce((a, r) => a + (r.summary ? r.summary.ops : 0), 0);
    if (ops === 0) problems.push('no operations were done');
    if (!(v.scribbles > 0)) problems.push('the vandal wrote nothing');
    return { heap, procs, seconds, careful, ops, scribbles: v.scribbles || 0, late: v.late || 0, heapRepairs: st.heapRepairs, corrupted, dataDamage, checkError, problems: problems.slice(0, 50) };
  } finally {
    pool.close();
    SharedPool.unlink(name);
  }
}

// ---- kill mode ---------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * P 'kill'-mode workers on a fresh segment of `heap`; `kills` times a random one gets SIGKILL at a random
 * instant (and a replacement is started); then the rest get SIGTERM and the checks run.
 */
async function runKill({ heap = 'tlsf', procs = 4, kills = 30, minGapMs = 10, maxGapMs = 150 }) {
  const name = segmentName(`${heap}-kill`);
  const pool = SharedPool.create(name, { size: SEGMENT, algorithm: heap });
  const problems = [];
  try {
    const probe = pool.alloc(MAX_VALUE);
    const largestUsable = pool.usableSize(probe);
    pool.free(probe);
    const start = () => startWorker({ name, mode: 'kill', seed: seed(), keys: KEYS });
    const live = Array.from({ length: procs }, start);
    await Promise.all(live.map((w) => w.ready));
    const ended = [];
    const t0 = Date.now();
    let done = 0;
    while (done < kills) {
      await sleep(minGapMs + Math.random() * (maxGapMs - minGapMs));
      const i = Math.floor(Math.random() * live.length);
      const w = live[i];
      w.child.kill('SIGKILL');
      const r = await w.done;
      ended.push(r);
      if (r.signal === 'SIGKILL') done++;
      else problems.push(`worker ${r.pid} ended by itself (${r.code ?? r.signal}) before its kill${r.stderr ? ': ' + r.stderr.slice(0, 2000) : ''}`);
      live[i] = start();
      // Mostly let the replacement attach first, sometimes not (a kill during open()).
      if (Math.random() < 0.8) await live[i].ready;
    }
    const killSeconds = (Date.now() - t0) / 1000;
    // A replacement that has not printed "ready" may not handle SIGTERM yet: wait for every one first.
    await Promise.all(live.map((w) => w.ready));
    for (const w of live) w.child.kill('SIGTERM');
    const graceful = await Promise.all(live.map((w) => w.done));
    problems.push(...workerProblems(ended, false));
    problems.push(...workerProblems(graceful, true));
    const totals = sumCounts(graceful.map((r) => r.summary).filter(Boolean));

    const ok = tryCheck(pool, problems);
    const named = checkNamed(pool);
    problems.push(...named.problems);
    const st = pool.stats();
    // Pins: two nested reads of every key hold up to 128 pins at once; a dead reader's pin left behind
    // would make one of them fail with ERR_SHM_PIN_TABLE_FULL.
    const keys = pool.keys().slice(0, 64);
    let pinsOk = true;
    const nest = (i) => {
      if (i === 2 * keys.length) return true;
      const key = keys[i % keys.length];
      return pool.read(key, () => nest(i + 1)) === true;
    };
    try {
      if (!nest(0)) throw new Error('a key vanished during the nested reads');
    } catch (e) {
      pinsOk = false;
      problems.push(`nested reads of ${2 * keys.length} pins: ${e.code || ''} ${e.message}`);
    }
    const stranded = st.used - named.namedBytes;
    const allowance = 256 * KiB + kills * largestUsable; // a worker holds at most one unnamed value at a time
    if (stranded > allowance) problems.push(`stranded bytes ${stranded} > allowed ${allowance} (256 KiB + ${kills} kills x ${largestUsable})`);
    if (stranded < 0) problems.push(`stats().used ${st.used} < usable bytes of the named blocks ${named.namedBytes}`);
    // A final read and delete of every key.
    for (const key of pool.keys()) {
      try {
        const seen = pool.read(key, (v) => v.length);
        if (seen === undefined) problems.push(`final read(${key}) found nothing`);
        if (!pool.delete(key)) problems.push(`final delete(${key}) found nothing`);
      } catch (e) {
        pinsOk = false;
        problems.push(`final read/delete of ${key}: ${e.code}: ${e.message}`);
      }
    }
    const after = pool.stats();
    if (after.used !== stranded) problems.push(`after deleting every key ${after.used} bytes used, expected the ${stranded} stranded`);
    if (after.keys !== 0) problems.push(`${after.keys} keys left after deleting them all`);
    if (ok) tryCheck(pool, problems);
    return {
      heap, procs, kills: done, killSeconds, graceful: graceful.length, totals,
      keys: named.keys, used: st.used, namedBytes: named.namedBytes, stranded, strandedAllocations: after.liveAllocations,
      allowance, largestUsable, recoveries: st.recoveries, pinsOk, problems,
    };
  } finally {
    pool.close();
    SharedPool.unlink(name);
  }
}

// ---- benchmark ---------------------------------------------------------------------------------------

/** replace+free/s and getCopy/s with each process count, on `heap`; values of minSize..maxSize bytes. */
async function runBench({ heap = 'tlsf', procsList = [1, 2, 4], seconds = 3, minSize = 16, maxSize = MAX_VALUE }) {
  const rows = [];
  for (const procs of procsList) {
    for (const mode of ['bench-replace', 'bench-getcopy']) {
      const name = segmentName(`${heap}-${mode}`);
      const pool = SharedPool.create(name, { size: SEGMENT, algorithm: heap });
      try {
        if (mode === 'bench-getcopy') {
          const { fill } = require('../test/fixtures/race-worker.js');
          let r = 1;
          for (let k = 0; k < KEYS; k++) {
            r = (r * 1103515245 + 12345) % 2147483648;
            const n = Math.min(maxSize, Math.floor(minSize * Math.pow(maxSize / minSize, r / 2147483648)));
            const b = pool.alloc(n);
            fill(b, k, process.pid, k, () => (r = (r * 1103515245 + 12345) % 2147483648));
            pool.set(`k${k}`, b);
          }
        }
        const ws = Array.from({ length: procs }, () => startWorker({ name, mode, ms: seconds * 1000, seed: seed(), keys: KEYS, minSize, maxSize }));
        const results = await Promise.all(ws.map((w) => w.done));
        const bad = workerProblems(results, true);
        if (bad.length) throw new Error(`bench ${mode} x${procs}: ${bad.join('; ')}`);
        const total = results.reduce((a, r) => a + r.summary.ops / (r.summary.ms / 1000), 0);
        pool.check();
        rows.push({ heap, mode: mode.slice(6), procs, minSize, maxSize, opsPerSecond: Math.round(total), perProcess: Math.round(total / procs) });
      } finally {
        pool.close();
        SharedPool.unlink(name);
      }
    }
  }
  return rows;
}

// ---- command line ------------------------------------------------------------------------------------

function table(rows, cols) {
  const w = cols.map(([h, f]) => Math.max(h.length, ...rows.map((r) => String(f(r)).length)));
  const line = (cells) => cells.map((c, i) => String(c).padStart(w[i])).join('  ');
  return [line(cols.map(([h]) => h)), ...rows.map((r) => line(cols.map(([, f]) => f(r))))].join('\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const out = { races: [], kills: [], bench: [] };
  const log = (s) => {
    if (!o.json) console.log(s);
  };
  if (o.bench) {
    for (const heap of o.heaps) {
      for (const [minSize, maxSize] of [[64, 64], [16, MAX_VALUE]]) out.bench.push(...(await runBench({ heap, seconds: Math.min(o.seconds, 3), minSize, maxSize })));
    }
    log(table(out.bench, [['heap', (r) => r.heap], ['op', (r) => r.mode], ['value bytes', (r) => (r.minSize === r.maxSize ? r.minSize : `${r.minSize}..${r.maxSize}`)], ['procs', (r) => r.procs], ['ops/s total', (r) => r.opsPerSecond], ['ops/s per proc', (r) => r.perProcess]]));
  } else if (o.vandal) {
    for (const heap of o.heaps) {
      for (let run = 0; run < o.runs; run++) {
        const r = await runVandal({ heap, procs: Math.max(1, o.procs - 1), seconds: o.seconds, careful: !o.raw });
        out.races.push(r);
        log(`vandal ${heap}${o.raw ? ' (raw)' : ''} run ${run + 1}: ${r.ops} ops, ${r.scribbles} scribbles (${r.late} late), heapRepairs ${r.heapRepairs}, ERR_POOL_CORRUPTED ${r.corrupted}, data damage ${r.dataDamage}${r.problems.length ? '' : ', ok'}`);
        if (r.checkError) log(`  check: ${r.checkError}`);
        for (const p of r.problems.slice(0, o.json ? 50 : 3)) log(`  FAIL ${p}`);
      }
    }
  } else if (o.kill) {
    for (const heap of o.heaps) {
      const r = await runKill({ heap, procs: o.procs, kills: o.kills });
      out.kills.push(r);
      log(`kill ${heap}: ${r.kills} kills in ${r.killSeconds.toFixed(1)} s, recoveries ${r.recoveries}, keys ${r.keys}, stranded ${r.stranded} bytes in ${r.strandedAllocations} allocations (allowed ${r.allowance}), pins ${r.pinsOk ? 'released' : 'NOT released'}, graceful-worker ops ${r.totals.ops}`);
      for (const p of r.problems) log(`  FAIL ${p}`);
    }
  } else {
    for (const mode of o.modes) {
      for (const heap of o.heaps) {
        const r = await runRace({ heap, mode, procs: o.procs, seconds: o.seconds });
        out.races.push(r);
        for (const p of r.problems) log(`  FAIL ${mode} ${heap}: ${p}`);
      }
    }
    log(table(out.races, [
      ['mode', (r) => r.mode], ['heap', (r) => r.heap], ['procs', (r) => r.procs], ['ops/s', (r) => r.opsPerSecond],
      ['replace', (r) => r.totals.replace], ['take', (r) => r.totals.take], ['get', (r) => r.totals.get], ['getCopy', (r) => r.totals.getCopy], ['read', (r) => r.totals.read], ['set', (r) => r.totals.set], ['delete', (r) => r.totals.delete],
      ['inconsistent', (r) => r.totals.inconsistent], ['torn raw', (r) => r.totals.tornRaw],
      ['refusals', (r) => Object.entries(r.totals.refusals).map(([c, n]) => `${c.replace('ERR_POOL_', '')}:${n}`).join(',') || 0],
      ['keys', (r) => r.keys], ['leaked', (r) => `${r.leaked} (${r.leakedBytes} B)`], ['result', (r) => (r.problems.length ? 'FAIL' : 'ok')],
    ]));
  }
  const failed = [...out.races, ...out.kills].some((r) => r.problems.length > 0);
  if (o.json) console.log(JSON.stringify(out, null, 2));
  log(failed ? 'race: FAILED' : 'race: ok');
  process.exitCode = failed ? 1 : 0;
}

module.exports = { runRace, runKill, runVandal, runBench, checkNamed, parseArgs, KEYS, MAX_VALUE, SEGMENT };

if (require.main === module) {
  main().catch((e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exitCode = 1;
  });
}
