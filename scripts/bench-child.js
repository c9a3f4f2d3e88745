// A worker process of scripts/bench.js for the shared-pool benchmark: it opens a SharedPool by name and
// runs alloc+free pairs in it when told to, so that two of them can hammer one segment at once.
//
// Messages from the parent (over the fork IPC channel):
//   { cmd: 'open', name, kind: 'offset' | 'view', size }   -> { ok: true } once warmed up
//   { cmd: 'run', startAt, ms }   spin until Date.now() >= startAt, run pairs for `ms` milliseconds
//                                 -> { pairs, ns }
//   { cmd: 'close' }                                        -> { ok: true }
// The process exits when the parent disconnects.
'use strict';

const path = require('path');

const root = path.resolve(__dirname, '..');
const { SharedPool } = require(path.join(root, 'dist'));

let pool;
let run;

// One compiled loop per kind, so that the JIT sees one monomorphic call site (as in bench.js; offsets are
// folded into sink with ^= for the reason given there).
function compile(kind, size) {
  const body = kind === 'offset'
    ? 'const o = pool.allocOffset(size); sink ^= o; pool.free(o);'
    : 'const b = pool.alloc(size); sink += b.length; pool.free(b);';
  // eslint-disable-next-line no-new-func
  return new Function('pool', 'size', `'use strict'; let sink = 0;
    return function run(n) { for (let i = 0; i < n; i++) { ${body} } return sink; };`)(pool, size);
}

function reply(msg) {
  process.send(msg);
}

process.on('message', (m) => {
  try {
    if (m.cmd === 'open') {
      pool = SharedPool.open(m.name);
      run = compile(m.kind, m.size);
      const until = Date.now() + 100;
      while (Date.now() < until) run(1000);  // warm up: the loop gets optimized before it is timed
      reply({ ok: true });
    } else if (m.cmd === 'run') {
      while (Date.now() < m.startAt) { /* spin: both processes start together */ }
      const batch = 2000;
      let pairs = 0;
      const t0 = process.hrtime.bigint();
      const end = t0 + BigInt(Math.round(m.ms * 1e6));
      let t = t0;
      while (t < end) {
        run(batch);
        pairs += batch;
        t = process.hrtime.bigint();
      }
      reply({ pairs, ns: Number(t - t0) });
    } else if (m.cmd === 'close') {
      if (pool) pool.close();
      pool = undefined;
      reply({ ok: true });
    }
  } catch (e) {
    reply({ error: `${e.code || ''} ${e.message}` });
  }
});
process.on('disconnect', () => {
  if (pool) pool.close();
  process.exit(0);
});
