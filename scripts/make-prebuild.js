#!/usr/bin/env node
// Puts the addon built from this tree into prebuilds/linux-x64/, where node-gyp-build finds it when
// build/Release is absent: the package then installs without a compiler on Linux x64 with glibc.
// Runs before `npm pack` (prepack). Rebuilds first when build/Release is missing or older than a native
// source, so a tarball never ships a binary of other sources. N-API 8 (binding.gyp): one binary serves
// every Node version from 20 on.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'mempool.node');
const target = path.join(root, 'prebuilds', 'linux-x64', 'mempool.napi.glibc.node');

function newestSource() {
  let newest = fs.statSync(path.join(root, 'binding.gyp')).mtimeMs;
  for (const dir of ['native/core', 'native/addon']) {
    for (const f of fs.readdirSync(path.join(root, dir))) {
      if (/\.(h|cc)$/.test(f)) newest = Math.max(newest, fs.statSync(path.join(root, dir, f)).mtimeMs);
    }
  }
  return newest;
}

function isGlibc() {
  const report = process.report && process.report.getReport();
  return Boolean(report && report.header && report.header.glibcVersionRuntime);
}

if (process.platform !== 'linux' || process.arch !== 'x64' || !isGlibc()) {
  console.log(`make-prebuild: ${process.platform}-${process.arch} is not linux-x64 with glibc; no prebuilt binary made`);
  process.exit(0);
}
if (!fs.existsSync(built) || fs.statSync(built).mtimeMs < newestSource()) {
  console.log('make-prebuild: build/Release is missing or older than the native sources: rebuilding');
  execFileSync('npm', ['run', '-s', 'build:native'], { cwd: root, stdio: 'inherit' });  // npm puts its node-gyp on PATH
}
fs.rmSync(path.dirname(target), { recursive: true, force: true });
fs.mkdirSync(path.dirname(target), { recursive: true });
try {
  // Symbols are not needed to run it, and they are most of its size.
  execFileSync('strip', ['--strip-unneeded', '-o', target, built], { stdio: 'inherit' });
} catch {
  fs.copyFileSync(built, target);
}
console.log(`make-prebuild: ${path.relative(root, target)} (${fs.statSync(target).size} bytes)`);
