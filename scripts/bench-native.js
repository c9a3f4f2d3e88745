#!/usr/bin/env node
// Builds and runs the native benchmark (scripts/bench/native.cc against native/core), see
// docs/benchmarks.md and /work/shared/workloads.md.
//
//   npm run bench:native -- [--json] [--scale F] [--repeat R] [--only NAME,...] [--workloads W1,F1,...]
//
// The shared-* allocators use the real segment code (segment.cc); the boost allocator is compiled in when
// the Boost.Interprocess headers are installed (Debian: libboost-dev), else skipped with a note.
// The binary goes to build/bench/native and is rebuilt only when a source or core header is newer.
// Arguments pass through unchanged; stdout and stderr are streamed (with --json stdout holds only the
// JSON lines).
'use strict';

const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const core = path.join(root, 'native', 'core');
const out = path.join(root, 'build', 'bench', 'native');
// Every core source: a hand-kept list went stale as the core was split (it stopped linking).
const sources = [
  path.join(__dirname, 'bench', 'native.cc'),
  ...fs.readdirSync(core).filter((f) => f.endsWith('.cc')).sort().map((f) => path.join(core, f)),
];
const headers = fs.readdirSync(core).filter((f) => f.endsWith('.h')).map((f) => path.join(core, f));

function mtime(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

function build() {
  const built = mtime(out);
  const stale = built < 0 || [...sources, ...headers].some((f) => mtime(f) > built);
  if (!stale) return;
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const cxx = process.env.CXX || 'g++';
  const args = ['-std=c++17', '-O2', '-DNDEBUG', '-Wall', '-Wextra', `-I${core}`, ...sources,
    '-o', `${out}.tmp`, '-ldl', '-lpthread', '-lrt'];
  const boost = fs.existsSync('/usr/include/boost/interprocess/managed_shared_memory.hpp');
  process.stderr.write(`bench-native: building ${path.relative(root, out)}` +
    `${boost ? ' (with Boost.Interprocess)' : ' (no Boost headers: the boost allocator is left out)'}\n`);
  const r = spawnSync(cxx, args, { stdio: ['ignore', process.stderr, 'inherit'] });
  if (r.error) {
    process.stderr.write(`bench-native: cannot run ${cxx}: ${r.error.message}\n`);
    process.exit(1);
  }
  if (r.status !== 0) {
    process.stderr.write('bench-native: build failed\n');
    process.exit(r.status || 1);
  }
  fs.renameSync(`${out}.tmp`, out);
}

build();
const r = spawnSync(out, process.argv.slice(2), { stdio: 'inherit' });
if (r.error) {
  process.stderr.write(`bench-native: cannot run ${out}: ${r.error.message}\n`);
  process.exit(1);
}
process.exit(r.status === null ? 1 : r.status);
