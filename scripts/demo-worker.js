// One worker of `npm start` (scripts/demo.js): opens the parent's shared pool by name, writes records into
// it, publishes a few by key and tells the parent where the records are (offsets: the same in every process).
//   node demo-worker.js NAME INDEX RECORDS      (forked by demo.js, with an IPC channel)
'use strict';
const { SharedPool } = require('..');

const [name, indexText, recordsText] = process.argv.slice(2);
const index = Number(indexText);
const count = Number(recordsText) || 50;

function fail(e) {
  process.exitCode = 1;
  const message = `${e.code ? e.code + ': ' : ''}${e.message}`;
  if (process.send) process.send({ type: 'error', worker: index, message }, () => process.disconnect());
  else process.stderr.write(`demo-worker ${index}: ${message}\n`);
}

try {
  if (process.env.MEMPOOL_DEMO_FAIL === String(index)) throw new Error(`worker ${index} was told to fail (MEMPOOL_DEMO_FAIL)`);
  const pool = SharedPool.open(name, { lockTimeoutMs: 5000 });
  const records = [];
  const scratch = [];
  for (let seq = 0; seq < count; seq++) {
    // A reading of a few samples; every 10th record is a larger batch, so the heap has several size classes.
    const samples = Array.from({ length: seq % 10 === 9 ? 300 + index * 50 : 2 + ((seq * 7 + index * 5) % 40) }, (_, k) =>
      Math.round(1000 * Math.sin(index + seq / 7 + k / 3)) / 1000,
    );
    const text = JSON.stringify({ worker: index, pid: process.pid, seq, at: Date.now(), samples });
    const record = pool.alloc(Buffer.byteLength(text));
    record.write(text);
    records.push([pool.offsetOf(record), record.length]);
    // Scratch space freed below: it leaves holes between the records.
    if (seq % 5 === 2) scratch.push(pool.alloc(128 + ((seq * 37) % 900)));
    if (seq === 0) pool.set(`worker-${index}-first`, record);
    if (seq === count - 1) pool.set(`worker-${index}-latest`, record);
  }
  for (const b of scratch) pool.free(b);
  const summary = Buffer.from(JSON.stringify({ worker: index, pid: process.pid, records: records.length }));
  const published = pool.alloc(summary.length);
  summary.copy(published);
  pool.set(`worker-${index}-summary`, published);
  const summaryAt = [pool.offsetOf(published), published.length];
  pool.close(); // the allocations stay in the segment: they belong to it, not to this process
  process.send({ type: 'done', worker: index, pid: process.pid, records, summary: summaryAt, freedScratch: scratch.length }, () => process.disconnect());
} catch (e) {
  fail(e);
}
