#!/usr/bin/env node
// Long runs of SharedQueue between processes, in two modes:
//
//   node scripts/queue-soak.js [--mode kill] [--seconds 60] [--producers 2] [--consumers 2] [--kill-every-ms 150]
//   node scripts/queue-soak.js --mode exact [--seconds 10] [--producers 4] [--consumers 4]
//
// exact: nobody is killed; consumers use pop(). Checked: every message whole, each received exactly once
// (a duplicate fails at once), and, within each consumer's stream, each producer's messages in the order
// pushed; at the end every pushed message was received.
//
// kill: producers and at-least-once consumers (receive + ack), one of them killed at random about every
// 150 ms (a Node process takes some 50 ms to start: kills much more often than that mostly hit processes
// that have not begun) and replaced.
// What is checked, from what the processes left in the segment (nothing is trusted from a killed process):
//   - every message a consumer receives is whole (length and checksummed bytes as written);
//   - at least once: every message a producer's push() returned for (it stores its count after each push)
//     was received by some consumer (a bit per message, set before ack), after the queue is closed and drained;
//   - nothing invented: no bit beyond the producer's count + 1 (the push it was killed in may have landed);
//   - the queue ends empty (no message, no lease, no ring bytes) and the pool's check() holds.
// Exits 1 on any failure. Uses dist/ (npm run build:ts first); MEMPOOL_MODULE points at another build.
'use strict';
const path = require('node:path');
const { fork } = require('node:child_process');
const { SharedPool } = require(process.env.MEMPOOL_MODULE || path.join(__dirname, '..'));

const MAX_PRODUCERS = 1024;        // producer ids over the whole run (a replaced producer takes a new one)
const PER_PRODUCER = 32768;        // messages per producer id (then it exits and is replaced)
const BITMAP_WORDS = PER_PRODUCER / 32;
// Layout of the control block: [0] next producer id, [1] stop flag; then per producer id its pushed count;
// then the bitmaps.
const COUNTS_AT = 16;
const BITS_AT = COUNTS_AT + MAX_PRODUCERS * 4;
const CONTROL_BYTES = BITS_AT + MAX_PRODUCERS * BITMAP_WORDS * 4;

function message(id, i) {
  const len = 12 + ((i * 37 + id * 11) % 500);
  const m = Buffer.alloc(len);
  m.writeUInt32LE(id, 0);
  m.writeUInt32LE(i, 4);
  m.writeUInt32LE(len, 8);
  for (let k = 12; k < len; k++) m[k] = (id * 7 + i * 13 + k) & 0xff;
  return m;
}
function whole(m) {
  if (m.length < 12 || m.readUInt32LE(8) !== m.length) return false;
  const id = m.readUInt32LE(0);
  const i = m.readUInt32LE(4);
  if (id >= MAX_PRODUCERS || i >= PER_PRODUCER) return false;
  for (let k = 12; k < m.length; k++) if (m[k] !== ((id * 7 + i * 13 + k) & 0xff)) return false;
  return true;
}

if (process.argv[2] === 'child') {
  const [, , , role, name, controlOffset, mode] = process.argv;
  const pool = SharedPool.open(name);
  const control = pool.atomics(Number(controlOffset), CONTROL_BYTES / 4);
  const q = pool.queue('soak');
  if (role === 'produce') {
    const id = Atomics.add(control, 0, 1);
    if (id >= MAX_PRODUCERS) process.exit(0);
    for (let i = 0; i < PER_PRODUCER && Atomics.load(control, 1) === 0; i++) {
      q.push(message(id, i));
      Atomics.store(control, COUNTS_AT / 4 + id, i + 1);  // crash before: this push may or may not count
    }
    process.exit(0);
  } else if (mode === 'exact') {
    const last = new Int32Array(MAX_PRODUCERS).fill(-1);
    for (let m = q.pop(); m !== undefined; m = q.pop()) {
      if (!whole(m)) {
        console.error(`consumer ${process.pid}: a torn message of ${m.length} bytes`);
        process.exit(3);
      }
      const id = m.readUInt32LE(0);
      const i = m.readUInt32LE(4);
      if (i <= last[id]) {
        console.error(`consumer ${process.pid}: producer ${id}'s message ${i} after its message ${last[id]}`);
        process.exit(4);
      }
      last[id] = i;
      const bit = 1 << (i & 31);
      if (Atomics.or(control, BITS_AT / 4 + id * BITMAP_WORDS + (i >>> 5), bit) & bit) {
        console.error(`consumer ${process.pid}: message ${id}/${i} received twice`);
        process.exit(5);
      }
    }
    process.exit(0);  // closed and drained
  } else {
    for (;;) {
      const r = q.receive(200);
      if (r === undefined) {
        const st = q.stats();
        if (st.closed && st.messages === 0) break;  // messages leased to the dead come back: wait for them
        continue;
      }
      if (!whole(r.data)) {
        console.error(`consumer ${process.pid}: a torn message of ${r.data.length} bytes`);
        process.exit(3);
      }
      const id = r.data.readUInt32LE(0);
      const i = r.data.readUInt32LE(4);
      Atomics.or(control, BITS_AT / 4 + id * BITMAP_WORDS + (i >>> 5), 1 << (i & 31));
      r.ack();  // crash before: redelivered, and the bit is set again (at least once)
    }
    process.exit(0);
  }
}

function parseArgs() {
  const o = { mode: 'kill', seconds: 60, producers: 2, consumers: 2, killEveryMs: 150 };
  if (process.argv.includes('exact')) Object.assign(o, { seconds: 10, producers: 4, consumers: 4 });
  for (let i = 2; i < process.argv.length; i++) {
    const a = process.argv[i];
    const raw = process.argv[++i];
    const v = Number(raw);
    if (a === '--mode' && (raw === 'kill' || raw === 'exact')) o.mode = raw;
    else if (a === '--seconds') o.seconds = v;
    else if (a === '--producers') o.producers = v;
    else if (a === '--consumers') o.consumers = v;
    else if (a === '--kill-every-ms') o.killEveryMs = v;
    else {
      process.stderr.write('usage: node scripts/queue-soak.js [--mode kill|exact] [--seconds N] [--producers N] [--consumers N] [--kill-every-ms N]\n');
      process.exit(1);
    }
  }
  return o;
}

async function main() {
  const o = parseArgs();
  const name = `mempool-queue-soak-${process.pid}`;
  SharedPool.unlink(name);
  const pool = SharedPool.create(name, { size: 64 << 20 });
  const failures = [];
  try {
    const q = pool.queue('soak', { maxBytes: 64 << 10, maxMessages: 256 });  // small: full and empty often
    const controlOffset = pool.allocOffset(CONTROL_BYTES);
    const control = pool.atomics(controlOffset, CONTROL_BYTES / 4);
    control.fill(0);
    const live = new Set();
    let kills = 0;
    let exits = 0;
    const spawnOne = (role) => {
      const c = fork(__filename, ['child', role, name, String(controlOffset), o.mode], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      c.role = role;
      live.add(c);
      c.on('exit', (code, signal) => {
        live.delete(c);
        if (signal !== 'SIGKILL' && code !== 0) failures.push(`${role} ${c.pid} exited ${code}`);
        if (signal !== 'SIGKILL') exits++;
        if (o.mode === 'exact' && signal === null && !stopping && role === 'produce' && Atomics.load(control, 0) < MAX_PRODUCERS) spawnOne(role);  // used up its ids
        else if (o.mode === 'kill' && !stopping && (role === 'consume' || Atomics.load(control, 0) < MAX_PRODUCERS)) spawnOne(role);
      });
    };
    let stopping = false;
    for (let i = 0; i < o.producers; i++) spawnOne('produce');
    for (let i = 0; i < o.consumers; i++) spawnOne('consume');
    const end = Date.now() + o.seconds * 1000;
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, o.killEveryMs * (0.5 + Math.random())));
      if (o.mode === 'exact') continue;
      const victims = [...live];
      if (victims.length === 0) continue;
      const v = victims[Math.floor(Math.random() * victims.length)];
      v.kill('SIGKILL');
      kills++;
    }
    // Stop producers, then close: consumers drain what is left (leases of killed ones come back) and exit.
    stopping = true;
    Atomics.store(control, 1, 1);
    while ([...live].some((c) => c.role === 'produce')) await new Promise((r) => setTimeout(r, 20));
    if ([...live].every((c) => c.role !== 'consume')) spawnOne('consume');
    q.close();
    const deadline = Date.now() + 30000;
    while (live.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (live.size > 0) failures.push(`${live.size} consumers did not finish draining in 30 s`);
    const producers = Math.min(Atomics.load(control, 0), MAX_PRODUCERS);
    let pushed = 0;
    let received = 0;
    for (let id = 0; id < producers; id++) {
      const count = Atomics.load(control, COUNTS_AT / 4 + id);
      pushed += count;
      for (let i = 0; i < PER_PRODUCER; i++) {
        const bit = (Atomics.load(control, BITS_AT / 4 + id * BITMAP_WORDS + (i >>> 5)) >>> (i & 31)) & 1;
        received += bit;
        if (i < count && !bit) failures.push(`message ${id}/${i} was pushed but never received`);
        if ((o.mode === 'exact' ? i >= count : i > count) && bit) failures.push(`message ${id}/${i} was received but never pushed (count ${count})`);
      }
    }
    const st = q.stats();
    if (st.messages !== 0 || st.leased !== 0 || st.usedBytes !== 0) failures.push(`the queue did not end empty: ${JSON.stringify(st)}`);
    try {
      pool.check();
    } catch (e) {
      failures.push(`check(): ${e.message}`);
    }
    console.log(
      `queue soak (${o.mode}): ${o.seconds} s, ${o.producers} x ${o.consumers}, ${kills} kills, ${exits} clean exits, ${producers} producers, ${pushed} messages pushed, ` +
        `${received} received, ${st.redelivered} redelivered, ${st.recoveries} lock recoveries`,
    );
  } finally {
    pool.unlink();
    pool.close();
  }
  if (failures.length > 0) {
    for (const f of failures.slice(0, 20)) console.error(`FAIL: ${f}`);
    process.exit(1);
  }
  console.log('ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
