#!/usr/bin/env node
// The `mempool` command: list, inspect, map and remove the mempool segments under /dev/shm.
// Exit status: 0 success, 1 usage error, 2 runtime error (one line on stderr naming the error's code).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PoolError } from './errors';
import { formatBytes, renderHeapMapSvg, renderHeapMapText } from './heap-map';
import { SharedPool } from './shared-pool';
import type { SharedPoolStats } from './shared-pool';
import type { BlockInfo } from './types';

const USAGE = `Usage: mempool <command> [options]

Commands:
  list                    mempool segments on this machine: name, size, algorithm, used, live allocations
  inspect NAME            stats, fragmentation, largest free block, the directory's keys and a heap map
  map NAME                a picture of the heap (SVG; PNG with --png)
  rm NAME                 unlink the segment (processes attached keep their mapping until they close)
  help                    this text

Options:
  --json                  list, inspect: machine-readable output
  --blocks                inspect --json: include every block {offset, size, used}
  --ascii, --unicode      inspect: characters of the text heap map (default: unicode on a TTY)
  --width N, --rows N     inspect: cells per row and rows of the text heap map (default 64 x 8);
                          map: width of the picture in pixels (default 1024)
  --out FILE              map: where to write (default NAME.svg, or NAME.png with --png; '-' is stdout)
  --png                   map: convert to PNG with rsvg-convert or ImageMagick (must be on PATH)
  --lock-timeout MS       inspect, map: longest wait for the segment's lock (default 1000)
  --force                 rm: remove a file under /dev/shm even when it is not a mempool segment
  -h, --help              this text
  -v, --version           the package's version

NAME is the segment's name as given to SharedPool.create (what /dev/shm/NAME holds).
Exit status: 0 success, 1 usage error, 2 runtime error (e.g. ERR_SHM_NOT_FOUND, ERR_SHM_INCOMPATIBLE).`;

/** A mistake in the command line: exit 1. */
class UsageError extends Error {}

/** A failure with a code of the CLI's own (no converter, conversion failed): exit 2. */
class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface Parsed {
  command: string | undefined;
  positionals: string[];
  flags: Map<string, string | true>;
}

// Flags that take a value, and the commands each flag belongs to.
const VALUE_FLAGS = new Set(['--out', '--width', '--rows', '--lock-timeout']);
const COMMAND_FLAGS: Record<string, string[]> = {
  list: ['--json'],
  ls: ['--json'],
  inspect: ['--json', '--blocks', '--ascii', '--unicode', '--width', '--rows', '--lock-timeout'],
  map: ['--out', '--png', '--width', '--lock-timeout'],
  rm: ['--force'],
  help: [],
};
const POSITIONALS: Record<string, number> = { list: 0, ls: 0, inspect: 1, map: 1, rm: 1, help: 0 };

function parse(argv: string[]): Parsed {
  const parsed: Parsed = { command: undefined, positionals: [], flags: new Map() };
  let onlyPositionals = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!onlyPositionals && arg === '--') {
      onlyPositionals = true;
    } else if (!onlyPositionals && arg.startsWith('-') && arg !== '-') {
      let name = arg;
      let value: string | true = true;
      const eq = arg.indexOf('=');
      if (arg.startsWith('--') && eq > 0) {
        name = arg.slice(0, eq);
        value = arg.slice(eq + 1);
      }
      if (name === '-h') name = '--help';
      if (name === '-v') name = '--version';
      if (VALUE_FLAGS.has(name) && value === true) {
        if (i + 1 >= argv.length) throw new UsageError(`option '${name}' needs a value`);
        value = argv[++i];
      } else if (!VALUE_FLAGS.has(name) && value !== true) {
        throw new UsageError(`option '${name}' takes no value`);
      }
      parsed.flags.set(name, value);
    } else if (parsed.command === undefined) {
      parsed.command = arg;
    } else {
      parsed.positionals.push(arg);
    }
  }
  return parsed;
}

function validate(p: Parsed): void {
  const command = p.command!;
  if (!(command in COMMAND_FLAGS)) throw new UsageError(`unknown command '${command}'`);
  for (const flag of p.flags.keys()) {
    if (flag === '--help' || flag === '--version') continue;
    if (!COMMAND_FLAGS[command].includes(flag)) throw new UsageError(`unknown option '${flag}' for '${command}'`);
  }
  const want = POSITIONALS[command];
  if (p.positionals.length < want) throw new UsageError(`'${command}' needs a segment NAME`);
  if (p.positionals.length > want) throw new UsageError(`unexpected argument '${p.positionals[want]}'`);
  if (p.flags.has('--ascii') && p.flags.has('--unicode')) throw new UsageError(`--ascii and --unicode exclude each other`);
}

function intFlag(p: Parsed, name: string, fallback: number, min: number, max: number): number {
  const v = p.flags.get(name);
  if (v === undefined) return fallback;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= min && n <= max)) throw new UsageError(`option '${name}' needs a whole number from ${min} to ${max}, not '${String(v)}'`);
  return n;
}

/** 'mempool-x' or '/dev/shm/mempool-x' -> 'mempool-x'. */
function segmentName(p: Parsed): string {
  const name = p.positionals[0];
  return name.startsWith('/dev/shm/') ? name.slice('/dev/shm/'.length) : name;
}

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

function percent(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

/** Rows of cells, left-aligned, except numbers-like columns given in `right`. */
function table(header: string[], rows: string[][], right: Set<number> = new Set()): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i]) : i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

// ---- list -------------------------------------------------------------------------------------------

function cmdList(p: Parsed): void {
  const segments = SharedPool.list().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  if (p.flags.has('--json')) {
    out(JSON.stringify(segments, null, 2));
    return;
  }
  if (segments.length === 0) {
    out('No mempool segments in /dev/shm.');
    return;
  }
  const rows = segments.map((s) => [
    s.name,
    formatBytes(s.size),
    s.algorithm,
    `${formatBytes(s.used)} (${s.size > 0 ? percent(s.used / s.size) : '0.0%'})`,
    String(s.liveAllocations),
  ]);
  out(table(['NAME', 'SIZE', 'ALGORITHM', 'USED', 'LIVE'], rows, new Set([1, 3, 4])));
}

// ---- inspect and map: one short visit to the segment -------------------------------------------------

interface Snapshot {
  name: string;
  size: number;
  algorithm: string;
  stats: SharedPoolStats;
  blocks: BlockInfo[];
  keys: Array<{ key: string; offset: number; length: number }>;
}

/** Opens the segment, copies out its stats, blocks and keys (each a short hold of the lock), closes it. */
function snapshot(name: string, lockTimeoutMs: number, withKeys: boolean): Snapshot {
  const pool = SharedPool.open(name, { lockTimeoutMs });
  try {
    const stats = pool.stats();
    const blocks = Array.from(pool.blocks());
    const keys: Snapshot['keys'] = [];
    if (withKeys) {
      for (const key of pool.keys()) {
        const view = pool.get(key); // undefined when another process deleted it meanwhile
        if (view !== undefined) keys.push({ key, offset: pool.offsetOf(view), length: view.length });
      }
      keys.sort((a, b) => a.offset - b.offset || (a.key < b.key ? -1 : 1));
    }
    return { name, size: pool.size, algorithm: pool.algorithm, stats, blocks, keys };
  } finally {
    pool.close();
  }
}

function processState(pid: number): string {
  if (!(pid > 0)) return 'unknown';
  try {
    process.kill(pid, 0);
    return 'running';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM' ? 'running' : 'exited';
  }
}

function cmdInspect(p: Parsed): void {
  const name = segmentName(p);
  const lockTimeoutMs = intFlag(p, '--lock-timeout', 1000, 0, 600000);
  const width = intFlag(p, '--width', 64, 1, 1000);
  const rows = intFlag(p, '--rows', 8, 1, 1000);
  const snap = snapshot(name, lockTimeoutMs, true);
  const s = snap.stats;
  const usedBlocks = snap.blocks.filter((b) => b.used).length;
  if (p.flags.has('--json')) {
    const json: Record<string, unknown> = {
      name: snap.name,
      path: `/dev/shm/${snap.name}`,
      size: snap.size,
      algorithm: snap.algorithm,
      stats: { ...s, createdAt: s.createdAt.toISOString() },
      keys: snap.keys,
      heap: {
        usedBlocks,
        freeBlocks: snap.blocks.length - usedBlocks,
        largestFreeBlock: s.largestFreeBlock,
        fragmentation: s.fragmentation,
      },
    };
    if (p.flags.has('--blocks')) json.blocks = snap.blocks;
    out(JSON.stringify(json, null, 2));
    return;
  }
  const ascii = p.flags.has('--ascii') ? true : p.flags.has('--unicode') ? false : !process.stdout.isTTY;
  const lines: Array<[string, string]> = [
    ['size', `${formatBytes(snap.size)} (${snap.size} bytes)`],
    ['algorithm', snap.algorithm],
    ['used', `${formatBytes(s.used)} (${percent(s.used / snap.size)})`],
    ['free', formatBytes(s.free)],
    ['live allocations', String(s.liveAllocations)],
    ['peak used', formatBytes(s.peakUsed)],
    ['allocations / frees', `${s.allocations} / ${s.frees}`],
    ['failed allocations', String(s.failedAllocations)],
    ['fragmentation', percent(s.fragmentation)],
    ['largest free block', `${formatBytes(s.largestFreeBlock)} (${s.largestFreeBlock} bytes)`],
    ['overhead', formatBytes(s.overhead)],
    ['recoveries', String(s.recoveries)],
    ['creator pid', `${s.creatorPid} (${processState(s.creatorPid)})`],
    ['created at', s.createdAt.toISOString()],
    ['keys', `${s.keys} of ${s.maxKeys}`],
  ];
  const others = s.processes.filter((x) => x.pid !== process.pid);
  lines.splice(lines.length - 1, 0, [
    'attached',
    others.length === 0
      ? 'no other process'
      : others
          .map((x) => `pid ${x.pid} since ${x.startedAt.toISOString()}` + (x.allocations !== undefined ? ` holding ${x.allocations} (${formatBytes(x.bytes ?? 0)})` : ''))
          .join('; '),
  ]);
  const labelW = Math.max(...lines.map(([k]) => k.length));
  const text: string[] = [`Segment ${snap.name}  (/dev/shm/${snap.name})`];
  for (const [k, v] of lines) text.push(`  ${k.padEnd(labelW)}  ${v}`);
  if (snap.keys.length > 0) {
    const keyW = Math.max(...snap.keys.map((k) => k.key.length));
    for (const k of snap.keys) text.push(`    ${k.key.padEnd(keyW)} -> offset ${k.offset} (0x${k.offset.toString(16)}), length ${k.length}`);
  }
  text.push('');
  text.push(`Heap map: ${usedBlocks} used block${usedBlocks === 1 ? '' : 's'}, ${snap.blocks.length - usedBlocks} free`);
  text.push(renderHeapMapText(snap.blocks, snap.size, { width, rows, ascii }));
  out(text.join('\n'));
}

// ---- map ----------------------------------------------------------------------------------------------

function onPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.join(dir, command);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** SVG text -> a PNG file, with the first converter on PATH that succeeds. */
function convertToPng(svg: string, target: string): string {
  const converters: Array<[string, (input: string, output: string) => string[]]> = [
    ['rsvg-convert', (i, o) => ['--format', 'png', '--output', o, i]],
    ['magick', (i, o) => [i, o]],
    ['convert', (i, o) => [i, o]],
  ];
  const present = converters.map(([cmd, args]) => [onPath(cmd), cmd, args] as const).filter(([file]) => file !== undefined);
  if (present.length === 0) {
    throw new CliError('ERR_NO_CONVERTER', '--png needs rsvg-convert or ImageMagick (magick, convert) on PATH, and none is present; write an SVG instead (--out FILE.svg)');
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mempool-map-'));
  const failures: string[] = [];
  try {
    const input = path.join(dir, 'heap.svg');
    const output = path.join(dir, 'heap.png');
    fs.writeFileSync(input, svg);
    for (const [file, cmd, args] of present) {
      fs.rmSync(output, { force: true });
      const r = spawnSync(file!, args(input, output), { encoding: 'utf8', timeout: 60000 });
      let ok = r.status === 0 && fs.existsSync(output);
      if (ok) {
        const head = Buffer.alloc(8);
        const fd = fs.openSync(output, 'r');
        fs.readSync(fd, head, 0, 8, 0);
        fs.closeSync(fd);
        ok = head.equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
      }
      if (ok) {
        fs.copyFileSync(output, target);
        return cmd;
      }
      const why = (r.error?.message ?? r.stderr ?? '').trim().split('\n')[0] || `exit status ${String(r.status ?? r.signal)}`;
      failures.push(`${cmd}: ${why}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  throw new CliError('ERR_CONVERT_FAILED', `could not convert the SVG to PNG (${failures.join('; ')})`);
}

function cmdMap(p: Parsed): void {
  const name = segmentName(p);
  const lockTimeoutMs = intFlag(p, '--lock-timeout', 1000, 0, 600000);
  const width = intFlag(p, '--width', 1024, 200, 20000);
  const png = p.flags.has('--png');
  const target = (p.flags.get('--out') as string | undefined) ?? `${name}.${png ? 'png' : 'svg'}`;
  if (png && target === '-') throw new UsageError(`--png writes a file: give --out FILE.png`);
  const snap = snapshot(name, lockTimeoutMs, false);
  const svg = renderHeapMapSvg(snap.blocks, snap.size, { width, title: `${snap.name} (${snap.algorithm})` });
  const usedBlocks = snap.blocks.filter((b) => b.used).length;
  const summary = `${usedBlocks} used block${usedBlocks === 1 ? '' : 's'}, ${formatBytes(snap.stats.used)} of ${formatBytes(snap.size)} used`;
  if (target === '-') {
    process.stdout.write(svg);
  } else if (png) {
    const used = convertToPng(svg, target);
    out(`Wrote ${target} (PNG via ${used}): ${summary}`);
  } else {
    fs.writeFileSync(target, svg);
    out(`Wrote ${target}: ${summary}`);
  }
}

// ---- rm -----------------------------------------------------------------------------------------------

function cmdRm(p: Parsed): void {
  const name = segmentName(p);
  let removed: boolean;
  try {
    // SharedPool.unlink refuses what is not a mempool segment; --force is its force option.
    removed = SharedPool.unlink(name, { force: p.flags.has('--force') });
  } catch (e) {
    // Its hint names the option; on the command line that is the flag.
    if (e instanceof PoolError) throw new PoolError(e.code, e.message.replace('pass { force: true }', 'use --force'));
    throw e;
  }
  if (!removed) throw new PoolError('ERR_SHM_NOT_FOUND', `No shared memory named '${name}'`);
  out(`Removed ${name}`);
}

// ---- main ---------------------------------------------------------------------------------------------

function version(): string {
  try {
    return JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')).version as string;
  } catch {
    return 'unknown';
  }
}

/** Runs the command line; returns the exit status. */
export function main(argv: string[]): number {
  let p: Parsed;
  try {
    p = parse(argv);
    if (p.flags.has('--version') && p.command === undefined) {
      out(version());
      return 0;
    }
    if (p.flags.has('--help') || p.command === 'help') {
      out(USAGE);
      return 0;
    }
    if (p.command === undefined) {
      process.stderr.write(USAGE + '\n');
      return 1;
    }
    validate(p);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`mempool: ${e.message}\nRun 'mempool --help' for usage.\n`);
    return 1;
  }
  try {
    switch (p.command) {
      case 'list':
      case 'ls':
        cmdList(p);
        break;
      case 'inspect':
        cmdInspect(p);
        break;
      case 'map':
        cmdMap(p);
        break;
      case 'rm':
        cmdRm(p);
        break;
    }
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`mempool: ${e.message}\nRun 'mempool --help' for usage.\n`);
      return 1;
    }
    const err = e as Error & { code?: unknown };
    const code = typeof err.code === 'string' ? err.code : 'ERR_UNEXPECTED';
    const message = String(err?.message ?? err).split('\n')[0];
    process.stderr.write(`mempool: ${code}: ${message}\n`);
    return 2;
  }
}

if (require.main === module) {
  // exitCode, not exit(): let a large stdout drain into a pipe first.
  process.exitCode = main(process.argv.slice(2));
}
