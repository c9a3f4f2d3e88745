#!/usr/bin/env node
// Draws docs/benchmarks.svg: ns per alloc+free pair by allocator and workload, from the JSON lines of
//   npm run bench -- --json > js.json
//   npm run bench:native -- --json > native.json
//   node scripts/bench-chart.js js.json native.json > docs/benchmarks.svg     (or --out FILE)
//   node scripts/bench-chart.js js.json native.json --markdown                 (the tables of docs/benchmarks.md)
// Left column: the JavaScript benchmark (one panel per size, then the shared pools); right column: the
// native workloads W1-W4 (F1 is a ratio, not a time: it stays in the tables). One logarithmic axis for
// every panel, so bars compare across panels too. No dependencies.
'use strict';

const fs = require('fs');

function usage() {
  process.stderr.write('usage: node scripts/bench-chart.js JSON_FILE... [--out FILE] [--markdown]\n');
  process.exit(1);
}

const files = [];
let out = null;
let markdown = false;
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--out') out = process.argv[++i];
  else if (process.argv[i] === '--markdown') markdown = true;
  else if (process.argv[i].startsWith('-')) usage();
  else files.push(process.argv[i]);
}
if (files.length === 0 || (out !== null && !out)) usage();

const records = [];
for (const f of files) {
  for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
    const t = line.trim();
    if (!t.startsWith('{')) continue;
    try {
      records.push(JSON.parse(t));
    } catch {
      process.stderr.write(`bench-chart: skipping a line of ${f} that is not JSON\n`);
    }
  }
}

// --markdown: the tables instead of the chart.
function tables() {
  const lines = [];
  const fmtNs = (x) => (x === undefined ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const pairs = records.filter((r) => r.benchmark === 'alloc+free');
  if (pairs.length) {
    const sizes = [...new Set(pairs.map((r) => r.size))].sort((a, b) => a - b);
    const names = [...new Set(pairs.map((r) => r.allocator))];
    lines.push('ns per alloc+free pair (median), and in brackets the ratio to Buffer.allocUnsafe(size) / to addon.noop() measured beside it', '');
    lines.push(`| allocator | ${sizes.map((s) => `${s.toLocaleString('en-US')} B`).join(' | ')} |`);
    lines.push(`|---|${sizes.map(() => '---:').join('|')}|`);
    for (const n of names) {
      const cells = sizes.map((s) => {
        const r = pairs.find((x) => x.allocator === n && x.size === s);
        return r ? `${fmtNs(r.nsPerPair)} (${r.ratioToAllocUnsafe.toFixed(2)} / ${r.ratioToNoop.toFixed(2)})` : '-';
      });
      lines.push(`| ${n} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  const sh = records.filter((r) => r.benchmark === 'shared');
  if (sh.length) {
    lines.push(`| SharedPool, ${sh[0].size} B | 1 process: pairs/s | 2 processes: pairs/s each | 2 processes: total | total vs 1 process |`);
    lines.push('|---|---:|---:|---:|---:|');
    for (const n of [...new Set(sh.map((r) => r.allocator))]) {
      const one = sh.find((r) => r.allocator === n && r.processes === 1);
      const two = sh.find((r) => r.allocator === n && r.processes === 2);
      const m = (x) => `${(x / 1e6).toFixed(2)} M`;
      lines.push(`| ${n} | ${one ? m(one.pairsPerSecTotal) : '-'} | ${two ? two.pairsPerSecPerProcess.map(m).join(' + ') : '-'} | ` +
        `${two ? m(two.pairsPerSecTotal) : '-'} | ${one && two ? `${(two.pairsPerSecTotal / one.pairsPerSecTotal).toFixed(2)}x` : '-'} |`);
    }
    lines.push('');
  }
  for (const t of records.filter((r) => r.benchmark === 'target')) {
    lines.push(`- ${t.name}: ${fmtNs(t.ns)} ns vs ${fmtNs(t.baselineNs)} ns = **${t.ratio.toFixed(2)}x** (target <= ${t.target}x): **${t.pass ? 'met' : 'not met'}**`);
  }
  const nat = records.filter((r) => r.workload && r.nsPerPair !== undefined);
  if (nat.length) {
    const wls = [...new Set(nat.map((r) => r.workload))].sort();
    const names = [...new Set(nat.map((r) => r.allocator))];
    const glibc = (wl) => nat.find((r) => r.allocator === 'glibc' && r.workload === wl);
    lines.push('', 'ns per pair (x glibc in the same run) / p99 ns / max ns', '');
    lines.push(`| allocator | ${wls.join(' | ')} |`);
    lines.push(`|---|${wls.map(() => '---:').join('|')}|`);
    for (const n of names) {
      const cells = wls.map((wl) => {
        const r = nat.find((x) => x.allocator === n && x.workload === wl);
        if (!r) return '-';
        const g = glibc(wl);
        return `${fmtNs(r.nsPerPair)} (${g ? (r.nsPerPair / g.nsPerPair).toFixed(2) : '-'}x) / ${r.p99Ns} / ${r.maxNs.toLocaleString('en-US')}`;
      });
      lines.push(`| ${n} | ${cells.join(' | ')} |`);
    }
  }
  const frag = records.filter((r) => r.workload === 'F1');
  if (frag.length) {
    lines.push('', '| heap | F1 = peak footprint / peak live |', '|---|---:|');
    for (const r of frag) lines.push(`| ${r.allocator} | ${r.fragmentation.toFixed(3)} |`);
  }
  return `${lines.join('\n')}\n`;
}

// Panels: { title, bars: [{ label, ns, kind }] }. kind: mempool | baseline | other.
function kindOf(name) {
  if (/^(tlsf|buddy|bitmap|shared-)/.test(name)) return 'mempool';
  if (name === 'noop' || name === 'Buffer.allocUnsafe') return 'baseline';
  return 'other';
}

const left = [];
const right = [];
const jsSizes = [...new Set(records.filter((r) => r.benchmark === 'alloc+free').map((r) => r.size))].sort((a, b) => a - b);
for (const size of jsSizes) {
  left.push({
    title: `JavaScript: alloc + free, ${size.toLocaleString('en-US')} B`,
    bars: records.filter((r) => r.benchmark === 'alloc+free' && r.size === size)
      .map((r) => ({ label: r.allocator, ns: r.nsPerPair, kind: kindOf(r.allocator) })),
  });
}
const shared = records.filter((r) => r.benchmark === 'shared');
if (shared.length) {
  left.push({
    title: `JavaScript: SharedPool, ${shared[0].size} B, ns per pair in each process`,
    bars: shared.map((r) => ({ label: `${r.allocator}, ${r.processes} proc`, ns: r.nsPerPair, kind: 'mempool' })),
  });
}
const workloads = [...new Set(records.filter((r) => r.workload && r.nsPerPair !== undefined).map((r) => r.workload))].sort();
const wlText = { W1: '10k live, 16-512 B', W2: '1k live, 16-64 B', W3: '10k live, 16 B-64 KiB', W4: '1M live, 16-256 B' };
for (const wl of workloads) {
  right.push({
    title: `C++: ${wl} (${wlText[wl] || ''})`,
    bars: records.filter((r) => r.workload === wl && r.nsPerPair !== undefined)
      .map((r) => ({ label: r.allocator, ns: r.nsPerPair, kind: kindOf(r.allocator) })),
  });
}
if (markdown) {
  process.stdout.write(tables());
  process.exit(0);
}
if (left.length + right.length === 0) {
  process.stderr.write('bench-chart: no results found in the input\n');
  process.exit(1);
}

// Geometry.
const ROW = 15;
const BAR = 11;
const TITLE = 22;
const GAP = 14;
const LABEL_W = 170;
const PLOT_W = 330;
const VALUE_W = 62;
const COL_W = LABEL_W + PLOT_W + VALUE_W + 20;
const TOP = 64;
const all = [...left, ...right].flatMap((p) => p.bars.map((b) => b.ns)).filter((x) => x > 0);
const lo = 10 ** Math.floor(Math.log10(Math.min(...all)));
const hi = 10 ** Math.ceil(Math.log10(Math.max(...all)));
const xOf = (ns) => (PLOT_W * (Math.log10(Math.max(ns, lo)) - Math.log10(lo))) / (Math.log10(hi) - Math.log10(lo));
const colours = { mempool: '#2f6db5', baseline: '#9a9a9a', other: '#e08a2c' };

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (ns) => (ns >= 1000 ? `${(ns / 1000).toFixed(ns >= 10000 ? 0 : 1)} µs` : `${ns >= 100 ? ns.toFixed(0) : ns.toFixed(1)} ns`);

function column(panels, x0) {
  const parts = [];
  let y = TOP;
  for (const p of panels) {
    parts.push(`<text x="${x0}" y="${y + 14}" class="t">${esc(p.title)}</text>`);
    y += TITLE;
    const px = x0 + LABEL_W;
    const h = p.bars.length * ROW;
    for (let d = lo; d <= hi; d *= 10) {
      const gx = px + xOf(d);
      parts.push(`<line x1="${gx.toFixed(1)}" y1="${y - 2}" x2="${gx.toFixed(1)}" y2="${y + h}" class="g"/>`);
    }
    p.bars.forEach((b, i) => {
      const by = y + i * ROW;
      const w = Math.max(1, xOf(b.ns));
      parts.push(`<text x="${px - 6}" y="${by + BAR - 1}" class="l">${esc(b.label)}</text>`);
      parts.push(`<rect x="${px}" y="${by}" width="${w.toFixed(1)}" height="${BAR}" fill="${colours[b.kind]}"/>`);
      parts.push(`<text x="${(px + w + 4).toFixed(1)}" y="${by + BAR - 1}" class="v">${fmt(b.ns)}</text>`);
    });
    // Axis labels under the panel.
    y += h;
    for (let d = lo; d <= hi; d *= 10) {
      const tick = d >= 1000 ? `${d / 1000} µs` : `${d} ns`;
      parts.push(`<text x="${(px + xOf(d)).toFixed(1)}" y="${y + 10}" class="a">${tick}</text>`);
    }
    y += GAP + 8;
  }
  return { svg: parts.join('\n'), height: y };
}

const a = column(left, 16);
const b = column(right, 16 + (left.length ? COL_W : 0));
const width = 16 + (left.length && right.length ? 2 * COL_W : COL_W);
const height = Math.max(a.height, b.height) + 10;
const legend = [['mempool', 'mempool (Pool / SharedPool / heaps)'], ['other', 'other allocators'], ['baseline', 'baselines: addon.noop(), Buffer.allocUnsafe']]
  .map(([k, text], i) => `<rect x="${16 + i * 250}" y="36" width="11" height="11" fill="${colours[k]}"/>` +
    `<text x="${31 + i * 250}" y="46" class="l2">${esc(text)}</text>`).join('\n');

const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif">
<style>
.t { font-size: 12.5px; font-weight: bold; fill: #222; }
.l { font-size: 10.5px; fill: #333; text-anchor: end; }
.l2 { font-size: 11px; fill: #333; }
.v { font-size: 10px; fill: #444; }
.a { font-size: 9px; fill: #888; text-anchor: middle; }
.g { stroke: #e2e2e2; stroke-width: 1; }
.h { font-size: 15px; font-weight: bold; fill: #111; }
</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="16" y="22" class="h">mempool: nanoseconds per alloc + free pair (log scale, shorter is faster)</text>
${legend}
${a.svg}
${b.svg}
</svg>
`;

if (out) fs.writeFileSync(out, svg);
else process.stdout.write(svg);
