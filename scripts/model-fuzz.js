#!/usr/bin/env node
// A cross-process model-based fuzz of SharedPool's ownership API (README "Concurrency rules") with a
// scripted scheduler. The parent creates a segment, forks 2 or 3 children (test/fixtures/model-worker.js)
// that open it, and sends a seeded random sequence of operations, each to one chosen child, one at a time;
// it waits for each result and compares it with a model of the segment kept here. Operations never overlap,
// so every result is determined and the model predicts it exactly (a few documented ambiguities excepted,
// each explained where it is accepted). Every `--check-every` operations the parent runs check(), compares
// stats().liveAllocations and keys() with the model, and getCopy()s every key.
//
//   node scripts/model-fuzz.js [--seed N] [--ops 2000] [--children 2|3] [--runs 1]
//                              [--heaps tlsf,buddy,bitmap,small] [--check-every 20] [--max-keys 8]
//                              [--trace 30] [--verbose] [--coverage]
//                              [--subviews strict|offset] [--realloc in-place-keeps|strict]
//   heaps: tlsf, buddy, bitmap (4 MiB, with slabs); small, small-buddy, small-bitmap (128 KiB: no slabs);
//          debug-tlsf, debug-buddy, debug-bitmap (4 MiB, debug: true: no slabs, no kept Buffers).
//   Run r of a heap uses seed N + r. Exits 1 when any run disagreed with the model, printing for each the
//   seed, the operation, what the model expected and what happened, the tail of the trace, and the command
//   that replays it.
//
// The model, per live block (by segment offset): its length, bytes, epoch (a number that changes whenever
// the block changes owner: what the segment's generation word stands for) and its owner (a key, or the
// child handles whose epoch equals the block's). A handle is current when the live block at its offset has
// its epoch; a free, realloc, set or replace through any other handle must be refused.
//
// Also usable as a module: require('./model-fuzz').runOne({ heap, seed, ops, children }) -> Promise<result>.
'use strict';
const path = require('node:path');
const { fork } = require('node:child_process');

const root = path.join(__dirname, '..');
const modulePath = process.env.MEMPOOL_MODULE || root;
const WORKER = path.join(root, 'test', 'fixtures', 'model-worker.js');

const MiB = 1 << 20;
const HEAPS = {
  tlsf: { size: 4 * MiB, algorithm: 'tlsf' },
  buddy: { size: 4 * MiB, algorithm: 'buddy' },
  bitmap: { size: 4 * MiB, algorithm: 'bitmap' },
  small: { size: 128 * 1024, algorithm: 'tlsf', small: true },
  'small-buddy': { size: 128 * 1024, algorithm: 'buddy', small: true },
  'small-bitmap': { size: 128 * 1024, algorithm: 'bitmap', small: true },
  'debug-tlsf': { size: 4 * MiB, algorithm: 'tlsf', debug: true },
  'debug-buddy': { size: 4 * MiB, algorithm: 'buddy', debug: true },
  'debug-bitmap': { size: 4 * MiB, algorithm: 'bitmap', debug: true },
};
const DEFAULT_HEAPS = ['tlsf', 'buddy', 'bitmap', 'small'];

// Sizes chosen so that a freed block's offset is likely to be handed out again: few distinct sizes, and the
// last size is repeated often. Slab slots (<= 1024), heap blocks, and sizes either side of the boundary.
const SIZES = [16, 24, 48, 64, 100, 128, 256, 512, 1000, 1024, 1025, 1500, 2048, 4000, 4096, 8192, 16000, 40000];
const SMALL_SIZES = SIZES.filter((s) => s <= 4096);
/** Lengths up to this may come back as the same Buffer object from alloc() (lib/view-keeper.ts). */
const KEPT_MAX = 1024;

/** mulberry32: a small seeded PRNG. */
function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    chance: (p) => next() < p,
    weighted(table) {
      let total = 0;
      for (const [, w] of table) total += w;
      let r = next() * total;
      for (const [v, w] of table) if ((r -= w) < 0) return v;
      return table[table.length - 1][0];
    },
  };
}

/** Must equal model-worker.js's patternByte. */
function patternByte(seed, i) {
  return (seed * 131 + i * 7 + (i >> 8)) & 0xff;
}

function patterned(length, seed, from = 0, into) {
  const b = into ?? new Uint8Array(length);
  for (let i = from; i < length; i++) b[i] = patternByte(seed, i);
  return b;
}

function b64(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64');
}

function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `first difference at byte ${i}: expected ${a[i]}, got ${b[i]}`;
  return a.length === b.length ? 'equal' : `lengths differ: expected ${a.length}, got ${b.length}`;
}

function roundPow2(n) {
  let p = 16;
  while (p < n) p *= 2;
  return p;
}

/** One child: a forked model-worker with a request/response channel. */
class Child {
  constructor(index, name) {
    this.index = index;
    this.proc = fork(WORKER, [name], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, MEMPOOL_MODULE: modulePath },
    });
    this.pending = new Map();
    this.nextId = 1;
    this.exited = null;
    this.ready = new Promise((resolve, reject) => {
      this.pending.set(0, { resolve, reject });
    });
    this.proc.on('message', (m) => {
      const p = this.pending.get(m.id);
      if (p) {
        this.pending.delete(m.id);
        p.resolve(m);
      }
    });
    this.proc.on('exit', (code, signal) => {
      this.exited = { code, signal };
    });
    // Pending requests fail on 'close', not 'exit': 'exit' can come before the last messages the child sent
    // (its reply to 'close', just before it exits) are delivered; 'close' comes after its IPC channel ends.
    this.proc.on('close', (code, signal) => {
      this.exited = { code, signal };
      for (const p of this.pending.values()) p.reject(new Error(`child ${index} exited (code ${code}, signal ${signal})`));
      this.pending.clear();
    });
  }

  request(msg, timeoutMs = 20000) {
    if (this.exited) return Promise.reject(new Error(`child ${this.index} has exited`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`child ${this.index} did not answer ${msg.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.proc.send({ ...msg, id });
    });
  }

  kill() {
    if (!this.exited) this.proc.kill('SIGKILL');
  }
}

class Mismatch extends Error {}

/**
 * One run: a fresh segment of `heap`, `children` children, `ops` operations from `seed`.
 * Resolves to { ok, heap, seed, ops, children, counts, ambiguous, failure? }.
 */
async function runOne(options) {
  const { SharedPool } = require(modulePath);
  const heapName = options.heap;
  const heap = HEAPS[heapName];
  if (!heap) throw new Error(`unknown heap ${heapName} (known: ${Object.keys(HEAPS).join(', ')})`);
  const seed = options.seed >>> 0;
  const nOps = options.ops ?? 2000;
  const checkEvery = options.checkEvery ?? 20;
  const traceTail = options.trace ?? 30;
  const rnd = prng(seed);
  const nChildren = options.children ?? 2 + rnd.int(2);
  const name = `mempool-model-${process.pid}-${heapName}-${seed}-${Math.floor(Math.random() * 1e9)}`;
  const createOptions = { size: heap.size, algorithm: heap.algorithm, maxKeys: options.maxKeys ?? 8 };
  if (heap.debug) createOptions.debug = true;
  const pool = SharedPool.create(name, createOptions);
  const maxKeys = pool.stats().maxKeys;
  const keySpace = Array.from({ length: maxKeys + 3 }, (_, i) => `k${i}`);
  const capacity = pool.stats().free; // the heap's free bytes before any allocation
  const budget = capacity * 0.3; // the generator keeps live (rounded) bytes under this
  const sizes = heap.small ? SMALL_SIZES : SIZES;
  const keepsViews = !heap.debug; // debug pools keep no freed Buffer (README)
  const subviews = options.subviews; // undefined (no subarray ops), 'strict' or 'offset': see subAccept()

  const children = [];
  const trace = [];
  const counts = {};
  const ambiguous = {}; // situation -> { code: times }
  let opIndex = 0;

  // ---- the model ----
  const blocks = new Map(); // offset -> { offset, length, bytes, epoch, key }
  const keys = new Map(); // key -> { offset, length }
  const handles = new Map(); // hid -> { hid, child, offset, length, epoch, borrowed, kept }
  const byChild = Array.from({ length: nChildren }, () => []); // hids in creation order
  let nextEpoch = 1;
  let nextHid = 1;
  let liveRounded = 0;

  const tally = (what) => {
    counts[what] = (counts[what] ?? 0) + 1;
  };
  const fail = (what) => {
    throw new Mismatch(what);
  };

  function addBlock(offset, length, bytes) {
    for (const b of blocks.values()) {
      if (offset < b.offset + b.length && b.offset < offset + length) {
        fail(`a new block [${offset}, +${length}) overlaps the live block [${b.offset}, +${b.length}) (owner ${b.key !== null ? `key ${b.key}` : `epoch ${b.epoch}`})`);
      }
    }
    const B = { offset, length, bytes, epoch: nextEpoch++, key: null };
    blocks.set(offset, B);
    liveRounded += roundPow2(length);
    return B;
  }

  function removeBlock(B) {
    blocks.delete(B.offset);
    liveRounded -= roundPow2(B.length);
    if (B.key !== null) keys.delete(B.key);
  }

  function newHandle(child, offset, length, epoch, borrowed) {
    const h = { hid: nextHid++, child, offset, length, epoch, borrowed, kept: false };
    handles.set(h.hid, h);
    byChild[child].push(h.hid);
    return h;
  }

  /** The live block strictly containing `offset` (not starting at it), if any. */
  function containing(offset) {
    for (const b of blocks.values()) if (b.offset < offset && offset < b.offset + b.length) return b;
    return undefined;
  }

  /**
   * What a free, realloc, set or replace through handle h must do: { state, B, accept }.
   * Not a live block at its offset: ERR_POOL_DOUBLE_FREE or ERR_POOL_FOREIGN_BUFFER. Which one is the
   * heap's business (shared_pool.cc owned(): "free (double_free) or not a block (foreign): the heap says
   * which"): the block may have been merged into a larger free run, or the offset may now lie in a slab
   * or be a free slot; the model does not track free memory. Inside a live block the model knows of, it
   * is not the start of any block: ERR_POOL_FOREIGN_BUFFER only.
   */
  function handleState(h) {
    const B = blocks.get(h.offset);
    if (B === undefined) {
      if (containing(h.offset)) return { state: 'interior', accept: ['ERR_POOL_FOREIGN_BUFFER'] };
      return { state: 'free', accept: ['ERR_POOL_DOUBLE_FREE', 'ERR_POOL_FOREIGN_BUFFER'] };
    }
    if (B.key !== null) return { state: 'named', B, accept: ['ERR_POOL_BLOCK_NAMED'] };
    if (B.epoch !== h.epoch) return { state: 'stale', B, accept: ['ERR_POOL_STALE_HANDLE'] };
    return { state: 'current', B, accept: ['ok'] };
  }

  const isCurrent = (h) => !h.borrowed && handleState(h).state === 'current';
  /** Current and no longer than its block (an in-place shrink leaves the old, longer Buffer current). */
  const isWritable = (h) => isCurrent(h) && h.length <= blocks.get(h.offset).length;

  function hname(h) {
    return `h${h.hid}${h.borrowed ? 'b' : ''}@${h.offset}/${h.length}`;
  }

  // ---- the scheduler ----
  async function send(child, msg) {
    const r = await children[child].request(msg);
    return r;
  }

  function result(r) {
    return r.ok ? 'ok' : r.code;
  }

  function record(child, desc, r, accept) {
    const line = `#${opIndex} c${child} ${desc} -> ${r ? (r.ok ? 'ok' + (r.offset !== undefined ? ` @${r.offset}` : '') + (r.reused ? ` (same Buffer as h${r.reused})` : '') + (r.none ? ' (none)' : '') + (r.result !== undefined ? ` ${r.result}` : '') : `${r.code}${r.code === 'NO_CODE' ? ` ${r.message}` : ''}`) : '?'}${accept ? `   [model: ${accept.join(' | ')}]` : ''}`;
    trace.push(line);
    if (trace.length > 2000) trace.splice(0, 1000);
    if (options.verbose) console.log(line);
  }

  function expectOne(r, accept, what, situation) {
    const got = result(r);
    if (!accept.includes(got)) {
      fail(`${what}: expected ${accept.join(' or ')}, got ${got}${r.ok ? '' : ` (${r.message})`}`);
    }
    if (situation) tally(`${situation} -> ${got}`);
    if (situation && accept.length > 1) {
      const s = (ambiguous[situation] ??= {});
      s[got] = (s[got] ?? 0) + 1;
    }
    return got;
  }

  function checkBytes(expected, gotB64, what) {
    const got = Buffer.from(gotB64, 'base64');
    if (got.length !== expected.length || !got.equals(Buffer.from(expected.buffer, expected.byteOffset, expected.length))) {
      fail(`${what}: bytes differ from the model (${firstDiff(expected, got)})`);
    }
  }

  function oomPlausible(size) {
    // The model does not place blocks, so an ERR_POOL_OUT_OF_MEMORY is accepted once the heap is somewhat
    // full (rounded to powers of two, as buddy does); below 10% of the heap's initial free bytes it is a mismatch.
    return liveRounded + roundPow2(size) > capacity * 0.1;
  }

  // ---- the operations ----
  async function opAlloc(c, size) {
    const seedByte = rnd.int(256);
    const hid = nextHid; // the id the child files it under, unless alloc() handed back a Buffer it holds
    const r = await send(c, { op: 'alloc', size, seed: seedByte, hid });
    const accept = oomPlausible(size) ? ['ok', 'ERR_POOL_OUT_OF_MEMORY'] : ['ok'];
    record(c, `alloc(${size})`, r, accept);
    if (expectOne(r, accept, `alloc(${size})`, 'alloc when fuller than 10%') !== 'ok') return;
    const B = addBlock(r.offset, size, patterned(size, seedByte));
    if (r.reused !== null) {
      // The same Buffer object again: allowed only for a Buffer this child freed (free(buffer)) over the
      // same offset and length (README "Concurrency rules": a freed Buffer of up to 1024 bytes may come
      // back from a later alloc(); debug pools keep none). It is current again: it is the new handle.
      const h = handles.get(r.reused);
      if (!h || h.child !== c || !h.kept || h.offset !== r.offset || h.length !== size || !keepsViews || size > KEPT_MAX) {
        fail(`alloc(${size}) returned the Buffer of ${h ? hname(h) : `h${r.reused}`} again, which was not a kept freed Buffer of this child at that offset and length`);
      }
      h.kept = false;
      h.epoch = B.epoch;
      tally('alloc returned a kept freed Buffer');
    } else {
      newHandle(c, r.offset, size, B.epoch, false);
    }
  }

  async function opFree(c, h, how, sub) {
    const st = handleState(h);
    const accept = how === 'freeOffset' ? freeOffsetAccept(st) : sub !== undefined ? subAccept(st) : st.accept;
    const r = await send(c, { op: how, hid: h.hid, sub });
    const label = `${how}(${hname(h)}${subLabel(sub)})`;
    record(c, `${label} [${st.state}]`, r, accept);
    const got = expectOne(r, accept, `${label} of a ${st.state} handle`, `${how}${sub !== undefined ? ' (subarray)' : ''} of a ${st.state} handle`);
    if (got !== 'ok') return;
    removeBlock(st.B);
    // A Buffer freed through itself is kept for reuse (lib/view-keeper.ts), if small and not debug.
    if (how === 'free' && sub === undefined && h.length <= KEPT_MAX) h.kept = true;
  }

  const subLabel = (sub) => (sub === undefined ? '' : `.subarray(0, ${sub})`);

  /**
   * The accepted results through `h.subarray(0, n)`. 'strict' (what lib/ does: a view the pool did not hand
   * out carries no generation, and the core refuses it at a live block's start with ERR_POOL_NO_HANDLE):
   * where h itself would succeed or be stale, NO_HANDLE; a stale handle whose offset now holds a named
   * block may meet the name check first (BLOCK_NAMED); free, foreign and named blocks as through h.
   * 'offset': as the offset API, generations unchecked (kept to model free(offset)-style callers).
   */
  function subAccept(st) {
    if (subviews === 'offset') return freeOffsetAccept(st);
    const out = new Set(st.accept.map((x) => (x === 'ok' || x === 'ERR_POOL_STALE_HANDLE' ? 'ERR_POOL_NO_HANDLE' : x)));
    if (st.state === 'stale') out.add('ERR_POOL_BLOCK_NAMED');
    return [...out];
  }

  /**
   * free(offset): not generation-checked (README: "Offsets carry no generation ... a late free by offset of
   * a block someone else now holds frees it"): a live unnamed block at the offset is freed whoever owns it;
   * names are still checked.
   */
  function freeOffsetAccept(st) {
    if (st.state === 'stale') return ['ok'];
    return st.accept;
  }

  async function opRealloc(c, h, size, sub) {
    const st = handleState(h);
    if (sub !== undefined) st.accept = subAccept(st);
    const keep = st.B ? Math.min(size, st.B.length) : 0;
    const seedByte = rnd.int(256);
    const newHid = nextHid;
    let accept = st.accept;
    if (accept.includes('ok') && oomPlausible(size)) accept = ['ok', 'ERR_POOL_OUT_OF_MEMORY'];
    const r = await send(c, { op: 'realloc', hid: h.hid, size, keep, seed: seedByte, newHid, sub });
    const label = `realloc(${hname(h)}${subLabel(sub)}, ${size})`;
    record(c, `${label} [${st.state}]`, r, accept);
    const got = expectOne(r, accept, `${label} of a ${st.state} handle`, `realloc${sub !== undefined ? ' (subarray)' : ''} of a ${st.state} handle`);
    if (got !== 'ok') return;
    const B = st.B;
    checkBytes(B.bytes.subarray(0, keep), r.prefix, `${label}: the first ${keep} bytes`);
    const bytes = new Uint8Array(size);
    bytes.set(B.bytes.subarray(0, keep));
    patterned(size, seedByte, keep, bytes);
    if (r.offset === B.offset) {
      // In place: the handle moves on as after any realloc (native/core/shared_pool.cc): the old Buffer is
      // stale, the new one current. --realloc in-place-keeps models the earlier rule (the old one stayed).
      liveRounded += roundPow2(size) - roundPow2(B.length);
      B.length = size;
      B.bytes = bytes;
      if (options.reallocStrict !== false) B.epoch = nextEpoch++;
      for (const o of blocks.values()) {
        if (o !== B && o.offset < B.offset + size && B.offset < o.offset + o.length) fail(`realloc in place to ${size} overlaps the live block at ${o.offset}`);
      }
      newHandle(c, B.offset, size, B.epoch, false);
      tally('realloc in place');
    } else {
      removeBlock(B);
      const N = addBlock(r.offset, size, bytes);
      newHandle(c, N.offset, size, N.epoch, false);
    }
  }

  function nameAccept(st, key, sub) {
    const accept = sub !== undefined ? subAccept(st) : st.accept;
    if (!accept.includes('ok')) return accept;
    if (!keys.has(key) && keys.size >= maxKeys) return ['ERR_SHM_DIRECTORY_FULL'];
    return ['ok'];
  }

  async function opSet(c, key, h, replace, sub) {
    const st = handleState(h);
    const accept = nameAccept(st, key, sub);
    const op = replace ? 'replace' : 'set';
    const r = await send(c, { op, key, hid: h.hid, newHid: nextHid, sub });
    const label = `${op}(${key}, ${hname(h)}${subLabel(sub)})`;
    record(c, `${label} [${st.state}]`, r, accept);
    const got = expectOne(r, accept, `${label} of a ${st.state} handle`, `${op}${sub !== undefined ? ' (subarray)' : ''} of a ${st.state} handle`);
    if (got !== 'ok') return;
    const B = st.B;
    const prev = keys.get(key);
    B.key = key;
    B.epoch = nextEpoch++;
    keys.set(key, { offset: B.offset, length: sub ?? h.length });
    if (prev === undefined) {
      if (replace && !r.none) fail(`replace(${key}) of a new key handed back a block at ${r.offset}`);
      return;
    }
    const P = blocks.get(prev.offset);
    if (!replace) {
      P.key = null;
      removeBlock(P); // set over a key frees the block it named
      return;
    }
    if (r.none) fail(`replace(${key}) handed back nothing; the key named the block at ${prev.offset}`);
    if (r.offset !== prev.offset || r.length !== prev.length) fail(`replace(${key}) handed back ${r.offset}/${r.length}; the key named ${prev.offset}/${prev.length}`);
    checkBytes(P.bytes.subarray(0, prev.length), r.bytes, `replace(${key}): the old block's bytes`);
    P.key = null;
    P.epoch = nextEpoch++;
    const n = newHandle(c, P.offset, prev.length, P.epoch, false);
    if (n.hid !== r.hid) fail(`internal: handle ids out of step (${n.hid} vs ${r.hid})`);
  }

  async function opTake(c, key) {
    const prev = keys.get(key);
    const r = await send(c, { op: 'take', key, newHid: nextHid });
    record(c, `take(${key})`, r, [prev ? 'ok' : 'ok (none)']);
    expectOne(r, ['ok'], `take(${key})`);
    if (prev === undefined) {
      if (!r.none) fail(`take(${key}) of a missing key returned a block at ${r.offset}`);
      return;
    }
    if (r.none) fail(`take(${key}) returned nothing; the key named ${prev.offset}/${prev.length}`);
    if (r.offset !== prev.offset || r.length !== prev.length) fail(`take(${key}) returned ${r.offset}/${r.length}; the key named ${prev.offset}/${prev.length}`);
    const B = blocks.get(prev.offset);
    checkBytes(B.bytes.subarray(0, prev.length), r.bytes, `take(${key})`);
    keys.delete(key);
    B.key = null;
    B.epoch = nextEpoch++;
    newHandle(c, B.offset, prev.length, B.epoch, false);
  }

  async function opGet(c, key) {
    const prev = keys.get(key);
    const r = await send(c, { op: 'get', key, newHid: nextHid });
    record(c, `get(${key})`, r, [prev ? 'ok' : 'ok (none)']);
    expectOne(r, ['ok'], `get(${key})`);
    if (prev === undefined) {
      if (!r.none) fail(`get(${key}) of a missing key returned a block at ${r.offset}`);
      return;
    }
    if (r.none || r.offset !== prev.offset || r.length !== prev.length) fail(`get(${key}) returned ${r.none ? 'nothing' : `${r.offset}/${r.length}`}; the key named ${prev.offset}/${prev.length}`);
    const B = blocks.get(prev.offset);
    checkBytes(B.bytes.subarray(0, prev.length), r.bytes, `get(${key})`);
    // Borrowed: it carries the named block's generation, so a free through it is refused (BLOCK_NAMED
    // while named, STALE_HANDLE after: the word moves when the name lets go).
    newHandle(c, B.offset, prev.length, B.epoch, true);
  }

  async function opRead(c, key, how) {
    const prev = keys.get(key);
    const r = await send(c, { op: how, key });
    record(c, `${how}(${key})`, r, [prev ? 'ok' : 'ok (none)']);
    expectOne(r, ['ok'], `${how}(${key})`);
    if (prev === undefined) {
      if (!r.none) fail(`${how}(${key}) of a missing key returned ${Buffer.from(r.bytes, 'base64').length} bytes`);
      return;
    }
    if (r.none) fail(`${how}(${key}) returned nothing; the key names ${prev.offset}/${prev.length}`);
    checkBytes(blocks.get(prev.offset).bytes.subarray(0, prev.length), r.bytes, `${how}(${key})`);
  }

  async function opDelete(c, key) {
    const prev = keys.get(key);
    const r = await send(c, { op: 'delete', key });
    record(c, `delete(${key})`, r, [`ok ${prev !== undefined}`]);
    expectOne(r, ['ok'], `delete(${key})`);
    if (r.result !== (prev !== undefined)) fail(`delete(${key}) returned ${r.result}; the key ${prev ? 'existed' : 'did not exist'}`);
    if (prev) removeBlock(blocks.get(prev.offset));
  }

  async function opWrite(c, h) {
    const seedByte = rnd.int(256);
    const r = await send(c, { op: 'write', hid: h.hid, seed: seedByte });
    record(c, `write(${hname(h)}, seed ${seedByte})`, r, ['ok']);
    expectOne(r, ['ok'], `write(${hname(h)})`);
    patterned(h.length, seedByte, 0, blocks.get(h.offset).bytes);
  }

  async function checkpoint(where) {
    try {
      pool.check();
    } catch (e) {
      fail(`check() ${where} threw ${e.code}: ${e.message}`);
    }
    const live = pool.stats().liveAllocations;
    if (live !== blocks.size) fail(`stats().liveAllocations ${where} is ${live}; the model has ${blocks.size} live blocks`);
    const got = pool.keys().sort();
    const want = [...keys.keys()].sort();
    if (got.join(',') !== want.join(',')) fail(`keys() ${where} is [${got.join(', ')}]; the model has [${want.join(', ')}]`);
    for (const [key, k] of keys) {
      const copy = pool.getCopy(key);
      if (!copy) fail(`the parent's getCopy(${key}) ${where} found nothing`);
      checkBytes(blocks.get(k.offset).bytes.subarray(0, k.length), copy.toString('base64'), `the parent's getCopy(${key}) ${where}`);
    }
  }

  // ---- choosing ----
  function handlesOf(c, filter) {
    const list = byChild[c];
    const out = [];
    for (let i = list.length - 1; i >= 0 && out.length < 40; i--) {
      const h = handles.get(list[i]);
      if (filter(h)) out.push(h);
    }
    return out;
  }

  /** A handle of child c: mostly a current one; with probability pStale any recent one (stale, borrowed...). */
  function chooseHandle(c, pStale, filter = isCurrent) {
    if (rnd.chance(pStale)) {
      const any = handlesOf(c, () => true);
      if (any.length > 0) return rnd.pick(any);
    }
    const current = handlesOf(c, filter);
    return current.length > 0 ? rnd.pick(current) : undefined;
  }

  let lastSize = rnd.pick(sizes);
  function chooseSize() {
    if (rnd.chance(0.5)) return lastSize;
    lastSize = rnd.pick(sizes);
    return lastSize;
  }

  const WEIGHTS = [
    ['alloc', 18],
    ['free', 12],
    ['freeOffset', 5],
    ['realloc', 7],
    ['set', 8],
    ['replace', 8],
    ['take', 6],
    ['get', 5],
    ['freeBorrowed', 3],
    ['getCopy', 5],
    ['read', 5],
    ['delete', 3],
    ['write', 6],
  ];

  if (subviews) WEIGHTS.push(['freeSub', 3], ['reallocSub', 2], ['setSub', 4], ['replaceSub', 3]);

  /** A length for h.subarray(0, n): within h and within the block at its offset, if any. */
  function subLength(h) {
    const B = blocks.get(h.offset);
    return 1 + rnd.int(Math.min(h.length, B ? B.length : h.length));
  }

  async function step() {
    const c = rnd.int(nChildren);
    let kind = rnd.weighted(WEIGHTS);
    const key = rnd.pick(keySpace);
    if ((kind === 'alloc' || kind === 'realloc' || kind === 'reallocSub') && liveRounded > budget) kind = rnd.chance(0.5) ? 'free' : 'delete';
    switch (kind) {
      case 'alloc':
        return opAlloc(c, chooseSize());
      case 'free':
      case 'freeOffset': {
        const h = chooseHandle(c, kind === 'free' ? 0.3 : 0.5);
        return h ? opFree(c, h, kind) : opAlloc(c, chooseSize());
      }
      case 'realloc': {
        const h = chooseHandle(c, 0.25);
        return h ? opRealloc(c, h, chooseSize()) : opAlloc(c, chooseSize());
      }
      case 'set':
      case 'replace': {
        const h = chooseHandle(c, 0.25, isWritable);
        if (h === undefined) return opAlloc(c, chooseSize());
        // Stale, borrowed and longer-than-their-block handles: only those whose length fits their offset's
        // block, so that a length refusal (FOREIGN: length > usable) cannot hide the ownership answer.
        const B = blocks.get(h.offset);
        if (B && h.length > B.length) return opFree(c, h, 'free');
        return opSet(c, key, h, kind === 'replace');
      }
      case 'take':
        return opTake(c, key);
      case 'get':
        return opGet(c, key);
      case 'freeBorrowed': {
        const borrowed = handlesOf(c, (h) => h.borrowed);
        if (borrowed.length === 0) return opGet(c, key);
        return opFree(c, rnd.pick(borrowed), 'free');
      }
      case 'getCopy':
      case 'read':
        return opRead(c, key, kind);
      case 'delete':
        return opDelete(c, key);
      case 'freeSub':
      case 'reallocSub':
      case 'setSub':
      case 'replaceSub': {
        const h = chooseHandle(c, 0.5);
        if (h === undefined) return opAlloc(c, chooseSize());
        const sub = subLength(h);
        if (kind === 'freeSub') return opFree(c, h, 'free', sub);
        if (kind === 'reallocSub') return opRealloc(c, h, chooseSize(), sub);
        return opSet(c, key, h, kind === 'replaceSub', sub);
      }
      case 'write': {
        const h = chooseHandle(c, 0, isWritable);
        return h ? opWrite(c, h) : opAlloc(c, chooseSize());
      }
    }
  }

  /** Frees every block the children own and deletes every key; then nothing may be live. */
  async function drain() {
    for (const B of [...blocks.values()]) {
      if (B.key !== null) continue;
      const h = [...handles.values()].find((x) => !x.borrowed && x.offset === B.offset && x.epoch === B.epoch);
      if (!h) fail(`drain: no current handle of the block at ${B.offset}`);
      opIndex++;
      await opFree(h.child, h, 'free');
    }
    for (const key of [...keys.keys()]) {
      opIndex++;
      await opDelete(rnd.int(nChildren), key);
    }
    await checkpoint('after freeing everything');
    const s = pool.stats();
    if (s.liveAllocations !== 0) fail(`after freeing everything liveAllocations is ${s.liveAllocations}`);
  }

  let failure;
  try {
    for (let i = 0; i < nChildren; i++) children.push(new Child(i, name));
    await Promise.all(children.map((ch) => ch.ready));
    for (opIndex = 1; opIndex <= nOps; opIndex++) {
      await step();
      if (opIndex % checkEvery === 0) await checkpoint(`after op #${opIndex}`);
    }
    await checkpoint('at the end');
    await drain();
    for (const ch of children) await ch.request({ op: 'close' });
    await checkpoint('after the children closed');
    const s = pool.stats();
    if (s.used !== 0) fail(`after the children closed, stats().used is ${s.used} (liveAllocations ${s.liveAllocations})`);
  } catch (e) {
    failure = {
      message: e instanceof Mismatch ? e.message : `error: ${e && e.stack ? e.stack : e}`,
      op: opIndex,
      trace: trace.slice(-traceTail),
    };
  } finally {
    for (const ch of children) ch.kill();
    try {
      pool.close();
    } catch {
      /* closing is best effort here */
    }
    SharedPool.unlink(name);
  }
  return { ok: !failure, heap: heapName, seed, ops: nOps, children: nChildren, counts, ambiguous, failure };
}

function parseArgs(argv) {
  const o = { subviews: undefined, seed: undefined, ops: 2000, children: undefined, runs: 1, heaps: DEFAULT_HEAPS, checkEvery: 20, maxKeys: 8, trace: 30, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const num = () => {
      const v = Number(val());
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === '--seed') o.seed = num();
    else if (a === '--ops') o.ops = num();
    else if (a === '--children') o.children = num();
    else if (a === '--runs') o.runs = num();
    else if (a === '--heaps') o.heaps = val().split(',').filter(Boolean);
    else if (a === '--check-every') o.checkEvery = Math.max(1, num());
    else if (a === '--max-keys') o.maxKeys = num();
    else if (a === '--trace') o.trace = num();
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--coverage') o.coverage = true;
    else if (a === '--realloc') {
      const v = val();
      if (v !== 'strict' && v !== 'in-place-keeps') throw new Error('--realloc is strict or in-place-keeps');
      o.reallocStrict = v === 'strict' ? undefined : false;
    }
    else if (a === '--subviews') {
      o.subviews = val();
      if (o.subviews !== 'strict' && o.subviews !== 'offset') throw new Error('--subviews is strict or offset');
    }
    else if (a === '--help' || a === '-h') {
      console.log('usage: node scripts/model-fuzz.js [--seed N] [--ops 2000] [--children 2|3] [--runs 1] [--heaps ' + Object.keys(HEAPS).join(',') + '] [--check-every 20] [--max-keys 8] [--trace 30] [--verbose] [--coverage] [--subviews strict|offset] [--realloc in-place-keeps|strict]');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  if (o.children !== undefined && (o.children < 1 || o.children > 8)) throw new Error('--children must be 1 to 8');
  for (const h of o.heaps) if (!HEAPS[h]) throw new Error(`unknown heap ${h} (known: ${Object.keys(HEAPS).join(', ')})`);
  if (o.seed === undefined) o.seed = (Date.now() ^ (process.pid << 16)) >>> 0;
  return o;
}

function describeFailure(r, o) {
  const lines = [
    `MISMATCH heap=${r.heap} seed=${r.seed} children=${r.children} at op #${r.failure.op}: ${r.failure.message}`,
    `  replay: node scripts/model-fuzz.js --heaps ${r.heap} --seed ${r.seed} --ops ${r.ops} --children ${r.children} --runs 1 --max-keys ${o.maxKeys ?? 8} --check-every ${o.checkEvery ?? 20}${o.subviews ? ` --subviews ${o.subviews}` : ''}${o.reallocStrict ? ' --realloc strict' : ''}`,
    '  trace tail:',
    ...r.failure.trace.map((l) => `    ${l}`),
  ];
  return lines.join('\n');
}

async function main() {
  let o;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(String(e.message));
    process.exit(2);
  }
  console.log(`model-fuzz: seed ${o.seed}, ${o.ops} ops, ${o.runs} run(s) per heap, heaps ${o.heaps.join(',')}, children ${o.children ?? '2-3 by seed'}`);
  const failures = [];
  const ambiguous = {};
  const totals = {};
  for (const heap of o.heaps) {
    let passed = 0;
    const t0 = Date.now();
    for (let run = 0; run < o.runs; run++) {
      const seed = (o.seed + run) >>> 0;
      const r = await runOne({ heap, seed, reallocStrict: o.reallocStrict, subviews: o.subviews, ops: o.ops, children: o.children, checkEvery: o.checkEvery, maxKeys: o.maxKeys, trace: o.trace, verbose: o.verbose });
      for (const [sit, codes] of Object.entries(r.ambiguous)) {
        const s = (ambiguous[sit] ??= {});
        for (const [c, n] of Object.entries(codes)) s[c] = (s[c] ?? 0) + n;
      }
      for (const [k, n] of Object.entries(r.counts)) totals[k] = (totals[k] ?? 0) + n;
      if (r.ok) passed++;
      else {
        failures.push(r);
        console.log(describeFailure(r, o));
      }
    }
    console.log(`  ${heap}: ${passed}/${o.runs} runs agreed with the model (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  if (o.verbose || o.coverage) {
    console.log('  coverage (operation of a handle state -> outcome: times):');
    for (const k of Object.keys(totals).sort()) console.log(`    ${k}: ${totals[k]}`);
  }
  if (Object.keys(ambiguous).length) {
    console.log('  accepted ambiguous outcomes (situation: code x times):');
    for (const [sit, codes] of Object.entries(ambiguous)) {
      console.log(`    ${sit}: ${Object.entries(codes).map(([c, n]) => `${c} x${n}`).join(', ')}`);
    }
  }
  if (failures.length) {
    console.log(`model-fuzz: ${failures.length} run(s) disagreed with the model; seeds: ${failures.map((f) => `${f.heap}:${f.seed}`).join(' ')}`);
    process.exit(1);
  }
  console.log('model-fuzz: every run agreed with the model');
}

module.exports = { runOne, HEAPS, DEFAULT_HEAPS, describeFailure };

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(2);
  });
}
