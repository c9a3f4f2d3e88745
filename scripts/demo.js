// `npm start`: what mempool's shared pools are for, in a few seconds. The parent creates a named shared
// pool, forks worker processes that open it by name, write records into it and publish some by key; the
// parent then reads every record in place (Buffer views over the shared memory: no copies, no messages
// carrying data), prints the pool's stats and a heap map, frees everything and unlinks the segment.
// Whatever happens, the segment is unlinked before the demo exits.
'use strict';
const { fork } = require('node:child_process');
const path = require('node:path');
const { SharedPool, memoryType, formatBytes, renderHeapMapText } = require('..');

const WORKERS = 3;
const RECORDS = 50;
const SIZE = 256 << 10;
const WORKER_TIMEOUT_MS = 20000;
const name = `mempool-demo-${process.pid}`;
const children = new Set();
let created = false;

const hex = (n) => '0x' + n.toString(16);
const log = (line = '') => process.stdout.write(line + '\n');

function cleanUp() {
  for (const c of children) c.kill('SIGKILL');
  if (created) {
    created = false;
    SharedPool.unlink(name);
    log(`Unlinked /dev/shm/${name}.`);
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    try {
      cleanUp();
    } finally {
      process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
    }
  });
}

/** Forks worker `index`; resolves with its report once it has exited cleanly. */
function runWorker(index) {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'demo-worker.js'), [name, String(index), String(RECORDS)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    children.add(child);
    let report;
    let problem;
    const timer = setTimeout(() => {
      problem = `did not finish within ${WORKER_TIMEOUT_MS} ms`;
      child.kill('SIGKILL');
    }, WORKER_TIMEOUT_MS);
    child.on('message', (m) => {
      if (m && m.type === 'done') report = m;
      else if (m && m.type === 'error') problem = m.message;
    });
    child.on('error', (e) => {
      problem = problem || e.message;
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0 && report && !problem) resolve(report);
      else reject(new Error(`worker ${index}: ${problem || `exited with ${signal || `status ${code}`} without a report`}`));
    });
  });
}

function statsTable(s) {
  const rows = [
    ['segment', `/dev/shm/${name}`],
    ['size', `${formatBytes(s.capacity)} (${s.algorithm})`],
    ['used', `${formatBytes(s.used)} (${((100 * s.used) / s.capacity).toFixed(1)}%)`],
    ['free', formatBytes(s.free)],
    ['live allocations', String(s.liveAllocations)],
    ['allocations / frees', `${s.allocations} / ${s.frees}`],
    ['peak used', formatBytes(s.peakUsed)],
    ['largest free block', formatBytes(s.largestFreeBlock)],
    ['fragmentation', `${(100 * s.fragmentation).toFixed(1)}%`],
    ['overhead', formatBytes(s.overhead)],
    ['keys', `${s.keys} of ${s.maxKeys}`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

async function main() {
  const started = Date.now();
  const pool = SharedPool.create(name, { size: SIZE, maxKeys: 64 });
  created = true;
  try {
    log(`Created shared pool '${name}': ${formatBytes(pool.size)}, ${pool.algorithm}, at /dev/shm/${name}.`);
    log(`Starting ${WORKERS} worker processes; each opens '${name}' by name and writes ${RECORDS} records into it.`);
    log();
    const reports = (await Promise.all(Array.from({ length: WORKERS }, (_, i) => runWorker(i + 1)))).sort((a, b) => a.worker - b.worker);

    for (const r of reports) {
      const offsets = r.records.map(([offset]) => offset);
      const shown = offsets.slice(0, 3).map(hex).join(', ');
      log(
        `worker ${r.worker} (pid ${r.pid}) wrote ${r.records.length} records at offsets ${shown}, ... ${hex(offsets[offsets.length - 1])}` +
          ` and published worker-${r.worker}-first, -latest, -summary (freed ${r.freedScratch} scratch buffers)`,
      );
    }
    log();

    // Read everything in place: each view is a window on the shared memory this process mapped.
    let records = 0;
    let bytes = 0;
    let arena;
    for (const r of reports) {
      for (const [[offset, length], seq] of r.records.map((x, i) => [x, i])) {
        const view = pool.view(offset, length);
        if (memoryType(view) !== 'shared') throw new Error(`record ${r.worker}/${seq} is not a view of shared memory`);
        arena = arena || view.buffer;
        if (view.buffer !== arena) throw new Error('records are not views of one mapping');
        const record = JSON.parse(view.toString('utf8'));
        if (record.worker !== r.worker || record.seq !== seq || record.pid !== r.pid || !Array.isArray(record.samples)) {
          throw new Error(`record ${r.worker}/${seq} at ${hex(offset)} is not what worker ${r.worker} wrote`);
        }
        records++;
        bytes += length;
      }
    }
    log(`parent (pid ${process.pid}) read all ${records} records in place: ${formatBytes(bytes)} as Buffer views over the segment, 0 bytes copied; every record checks out.`);
    for (const key of pool.keys().sort()) {
      const view = pool.get(key);
      const text = view.toString('utf8');
      log(`  get('${key}') -> offset ${hex(pool.offsetOf(view))}: ${text.length > 56 ? text.slice(0, 56) + '...' : text}`);
    }
    log();

    log('Pool stats:');
    log(statsTable(pool.stats()));
    log();
    log('Heap map (the header and directory, then the records; holes are the workers\' freed scratch buffers):');
    log(renderHeapMapText(pool.blocks(), pool.size, { width: 64, rows: 8 }));
    log();

    // A named block is owned by its name: delete() frees it; the rest are freed by offset.
    const named = new Set(pool.keys().map((key) => pool.offsetOf(pool.get(key))));
    let freed = 0;
    for (const key of pool.keys()) {
      pool.delete(key);
      freed++;
    }
    for (const r of reports) {
      for (const [offset] of [...r.records, r.summary]) {
        if (named.has(offset)) continue;
        pool.free(offset);
        freed++;
      }
    }
    pool.check();
    const after = pool.stats();
    if (after.liveAllocations !== 0 || after.used !== 0 || after.keys !== 0) throw new Error('allocations left after freeing everything');
    log(`Freed ${freed} allocations: used ${formatBytes(after.used)}, ${after.liveAllocations} live, ${after.keys} keys (freeing a block drops its names).`);
  } finally {
    pool.close();
  }
  cleanUp();
  log(`Done in ${Date.now() - started} ms. To look into a live segment: mempool list, mempool inspect NAME (node dist/cli.js --help).`);
}

main().catch((e) => {
  process.exitCode = 1;
  process.stderr.write(`demo failed: ${e.code ? e.code + ': ' : ''}${e.message}\n`);
  try {
    cleanUp();
  } catch (u) {
    process.stderr.write(`demo: could not unlink /dev/shm/${name}: ${u.message}\n`);
  }
});
