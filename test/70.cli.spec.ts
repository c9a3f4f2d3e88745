// The `mempool` command (dist/cli.js) run as a child process against real segments under /dev/shm:
// output, exit codes and error lines; and the heap-map renderers it draws with.
import { expect } from 'chai';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ALGORITHMS, SharedPool } from '../lib';
import { formatBytes, renderHeapMapSvg, renderHeapMapText, sizeClassOf } from '../lib/heap-map';
import { skipBecause } from './helpers';

const root = path.join(__dirname, '..');
const cliJs = path.join(root, 'dist', 'cli.js');
const churnChild = path.join(__dirname, 'fixtures', 'shared-child.js');
const MiB = 1 << 20;
let counter = 0;
const created: string[] = [];
const junkFiles: string[] = [];
let tmp = '';

function uniqueName(tag: string): string {
  const name = `mempool-test-${process.pid}-cli-${tag}-${counter++}`;
  created.push(name);
  return name;
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env?: NodeJS.ProcessEnv): Run {
  const r = spawnSync(process.execPath, [cliJs, ...args], { encoding: 'utf8', cwd: tmp, env: env ?? process.env, timeout: 30000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Asserts a runtime failure: exit 2 and exactly one line on stderr, "mempool: CODE: message". */
function expectFailure(r: Run, code: string): void {
  expect(r.status, r.stderr).to.equal(2);
  expect(r.stderr).to.match(new RegExp(`^mempool: ${code}: \\S.*\\n$`));
}

/** Asserts a usage error: exit 1, a message and a pointer to --help on stderr, nothing on stdout. */
function expectUsageError(r: Run, pattern: RegExp): void {
  expect(r.status, r.stderr).to.equal(1);
  expect(r.stderr).to.match(pattern);
  expect(r.stdout).to.equal('');
}

/** A small well-formedness check: tags nest and close, one root, text has no stray '<' or '&'. */
function expectWellFormedXml(xml: string, rootTag: string): void {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  let roots = 0;
  let last = 0;
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/g;
  for (let m = tag.exec(body); m !== null; m = tag.exec(body)) {
    const text = body.slice(last, m.index);
    expect(text, 'text between tags').to.not.match(/<|&(?!(?:lt|gt|amp|apos|quot|#\d+|#x[0-9a-fA-F]+);)/);
    last = tag.lastIndex;
    const [, closing, name, , selfClosing] = m;
    if (closing) {
      expect(stack.pop(), `closing </${name}>`).to.equal(name);
    } else {
      if (stack.length === 0) roots++;
      if (!selfClosing) stack.push(name);
    }
  }
  expect(body.slice(last).trim(), 'after the root').to.equal('');
  expect(stack, 'unclosed tags').to.deep.equal([]);
  expect(roots).to.equal(1);
  expect(body.trimStart().startsWith(`<${rootTag}`)).to.equal(true);
}

function usedRects(svg: string): string[] {
  return svg.match(/<rect[^>]*class="used"[^>]*>/g) ?? [];
}

/** A fake converter: a node script (absolute shebang, so PATH may hold nothing else). */
function fakeConverter(dir: string, command: string, body: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, command);
  fs.writeFileSync(file, `#!${process.execPath}\n'use strict';\nconst fs = require('fs');\nconst args = process.argv.slice(2);\n${body}\n`, { mode: 0o755 });
}

function startChurn(name: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [churnChild, 'churn', name, '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    c.once('error', reject);
    c.once('exit', (code) => reject(new Error(`churn child exited early with ${code}`)));
    c.stdout!.once('data', () => resolve(c));
  });
}

function killed(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    c.removeAllListeners('exit');
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}

// dist/cli.js runs the compiled library: rebuild when any lib/ source is newer than what dist holds.
function distIsStale(): boolean {
  for (const file of fs.readdirSync(path.join(root, 'lib'))) {
    if (!file.endsWith('.ts') || file.endsWith('.d.ts')) continue;
    const out = path.join(root, 'dist', file.replace(/\.ts$/, '.js'));
    if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(path.join(root, 'lib', file)).mtimeMs) return true;
  }
  return false;
}

before(function () {
  this.timeout(180000);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mempool-cli-'));
  if (distIsStale()) {
    const tsc = require.resolve('typescript/bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: root, encoding: 'utf8' });
    // tsc emits even when it reports type errors (in files others are editing): what matters is dist/cli.js.
    if (!fs.existsSync(cliJs) || distIsStale()) throw new Error(`could not build dist/ with tsc:\n${r.stdout}${r.stderr}`);
  }
});

after(() => {
  for (const name of created) {
    try {
      SharedPool.unlink(name);
    } catch {
      // already gone
    }
  }
  for (const file of junkFiles) fs.rmSync(file, { force: true });
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('mempool CLI: usage', () => {
  it('--help and help print the usage and exit 0', () => {
    for (const args of [['--help'], ['-h'], ['help'], ['inspect', '--help']]) {
      const r = cli(args);
      expect(r.status, args.join(' ')).to.equal(0);
      expect(r.stdout).to.match(/^Usage: mempool <command>/);
      for (const word of ['list', 'inspect NAME', 'map NAME', 'rm NAME', '--json', '--out FILE', '--png']) expect(r.stdout).to.include(word);
      expect(r.stderr).to.equal('');
    }
  });

  it('--version prints the package version', () => {
    const r = cli(['--version']);
    expect(r.status).to.equal(0);
    expect(r.stdout.trim()).to.equal(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version);
  });

  it('bad usage exits 1 with a message on stderr', () => {
    const none = cli([]);
    expect(none.status).to.equal(1);
    expect(none.stderr).to.match(/^Usage: mempool/);
    expectUsageError(cli(['frobnicate']), /^mempool: unknown command 'frobnicate'\nRun 'mempool --help' for usage\.\n$/);
    expectUsageError(cli(['inspect']), /'inspect' needs a segment NAME/);
    expectUsageError(cli(['rm']), /'rm' needs a segment NAME/);
    expectUsageError(cli(['map']), /'map' needs a segment NAME/);
    expectUsageError(cli(['rm', 'a', 'b']), /unexpected argument 'b'/);
    expectUsageError(cli(['list', '--bogus']), /unknown option '--bogus' for 'list'/);
    expectUsageError(cli(['list', '--png']), /unknown option '--png' for 'list'/);
    expectUsageError(cli(['inspect', 'x', '--rows', 'abc']), /option '--rows' needs a whole number/);
    expectUsageError(cli(['inspect', 'x', '--width=0']), /option '--width' needs a whole number/);
    expectUsageError(cli(['map', 'x', '--out']), /option '--out' needs a value/);
    expectUsageError(cli(['list', '--json=yes']), /option '--json' takes no value/);
    expectUsageError(cli(['inspect', 'x', '--ascii', '--unicode']), /exclude each other/);
  });
});

describe('mempool CLI: list, inspect, map, rm against real segments', () => {
  let name: string;
  let pool: SharedPool;
  const keyed: Array<{ key: string; offset: number; length: number }> = [];

  before(() => {
    name = uniqueName('main');
    pool = SharedPool.create(name, { size: MiB });
    const blocks = [40, 300, 5000, 100, 70000, 2000].map((n) => pool.alloc(n));
    pool.free(blocks[3]); // a hole
    blocks[0].write('hello');
    pool.set('greeting', blocks[0], 5);
    pool.set('big', blocks[4]);
    pool.set('ключ', blocks[1]);
    for (const [key, b] of [['greeting', blocks[0].subarray(0, 5)], ['big', blocks[4]], ['ключ', blocks[1]]] as const) {
      keyed.push({ key, offset: pool.offsetOf(b), length: b.length });
    }
    keyed.sort((a, b) => a.offset - b.offset);
  });

  after(() => pool.close());

  it('list: a table row with the size, algorithm, used and live allocations', () => {
    const s = pool.stats();
    const r = cli(['list']);
    expect(r.status, r.stderr).to.equal(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).to.match(/^NAME\s+SIZE\s+ALGORITHM\s+USED\s+LIVE$/);
    const row = lines.find((l) => l.split(/\s+/)[0] === name);
    expect(row, r.stdout).to.be.a('string');
    expect(row!.trim().split(/\s{2,}/)).to.deep.equal([name, '1.0 MiB', 'tlsf', `${formatBytes(s.used)} (${((100 * s.used) / MiB).toFixed(1)}%)`, '5']);
    // columns line up: every row starts its SIZE column's last character at the header's
    const sizeEnd = lines[0].indexOf('SIZE') + 4;
    for (const l of lines.slice(1)) expect(l.slice(0, sizeEnd)).to.match(/B$/);
  });

  it('list --json: an array holding the segment with the right used and live counts', () => {
    const r = cli(['list', '--json']);
    expect(r.status, r.stderr).to.equal(0);
    const list = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
    expect(list).to.be.an('array');
    const mine = list.find((s) => s.name === name);
    expect(mine).to.deep.equal({ name, size: MiB, algorithm: 'tlsf', used: pool.stats().used, liveAllocations: 5 });
  });

  it('inspect: the stats table, the keys with offsets and lengths, and a text heap map', () => {
    const s = pool.stats();
    const r = cli(['inspect', name]);
    expect(r.status, r.stderr).to.equal(0);
    const out = r.stdout;
    expect(out).to.include(`Segment ${name}  (/dev/shm/${name})`);
    const field = (label: string) => out.match(new RegExp(`^  ${label}\\s{2,}(.+)$`, 'm'))?.[1];
    expect(field('size')).to.equal('1.0 MiB (1048576 bytes)');
    expect(field('algorithm')).to.equal('tlsf');
    expect(field('live allocations')).to.equal('5');
    expect(field('used')).to.match(/^\d+\.\d KiB \(\d+\.\d%\)$/);
    expect(field('fragmentation')).to.equal(`${(100 * s.fragmentation).toFixed(1)}%`);
    expect(field('largest free block')).to.include(`(${s.largestFreeBlock} bytes)`);
    expect(field('allocations / frees')).to.equal('6 / 1');
    expect(field('recoveries')).to.equal('0');
    expect(field('creator pid')).to.equal(`${process.pid} (running)`);
    expect(field('created at')).to.equal(s.createdAt.toISOString());
    expect(field('keys')).to.equal('3 of 256');
    for (const k of keyed) {
      expect(out).to.match(new RegExp(`^    ${k.key}\\s* -> offset ${k.offset} \\(0x${k.offset.toString(16)}\\), length ${k.length}$`, 'm'));
    }
    // the map: 8 rows of 64 cells, ASCII when stdout is not a TTY, then the legend
    expect(out).to.include('Heap map: 5 used blocks');
    const rows = out.match(/^0x[0-9a-f]+ \|[^|]{64}\|$/gm);
    expect(rows).to.have.length(8);
    expect(rows!.join('')).to.match(/#/);
    expect(rows![0]).to.match(/^0x0+ \|=/); // the segment header comes first
    expect(out).to.match(/cell = 2\.0 KiB .*header\/bookkeeping/);
    expect(out).to.not.match(/[░▒▓█]/);
    const unicode = cli(['inspect', name, '--unicode', '--width', '32', '--rows', '4']);
    expect(unicode.status).to.equal(0);
    expect(unicode.stdout.match(/^0x[0-9a-f]+ │.{32}│$/gm)).to.have.length(4);
    expect(unicode.stdout).to.match(/█/);
  });

  it('inspect --json: stats, keys and block counts for scripts (--blocks adds every block)', () => {
    const s = pool.stats();
    const r = cli(['inspect', name, '--json']);
    expect(r.status, r.stderr).to.equal(0);
    const j = JSON.parse(r.stdout);
    expect(j).to.include({ name, path: `/dev/shm/${name}`, size: MiB, algorithm: 'tlsf' });
    expect(j.keys).to.deep.equal(keyed);
    // The CLI itself is attached while it inspects: the processes differ by it.
    const { processes: cliProcesses, ...cliStats } = j.stats;
    const { processes: ourProcesses, ...ourStats } = JSON.parse(JSON.stringify(s));
    expect(cliStats).to.deep.equal({ ...ourStats, createdAt: s.createdAt.toISOString() });
    expect(cliProcesses.map((p: { pid: number }) => p.pid)).to.include(process.pid);
    expect(ourProcesses.map((p: { pid: number }) => p.pid)).to.include(process.pid);
    expect(j.heap).to.deep.equal({ usedBlocks: 5, freeBlocks: [...pool.blocks()].filter((b) => !b.used).length, largestFreeBlock: s.largestFreeBlock, fragmentation: s.fragmentation });
    expect(j).to.not.have.property('blocks');
    const withBlocks = JSON.parse(cli(['inspect', name, '--json', '--blocks']).stdout);
    expect(withBlocks.blocks).to.deep.equal([...pool.blocks()]);
  });

  it('inspect works for every algorithm', () => {
    for (const algorithm of ALGORITHMS) {
      const n = uniqueName(algorithm);
      const p = SharedPool.create(n, { size: MiB, algorithm });
      for (let i = 0; i < 7; i++) p.alloc(16 << i);
      const r = cli(['inspect', n, '--json']);
      expect(r.status, r.stderr).to.equal(0);
      const j = JSON.parse(r.stdout);
      expect(j.algorithm).to.equal(algorithm);
      expect(j.stats.liveAllocations).to.equal(7);
      expect(j.heap.usedBlocks).to.equal(7);
      const text = cli(['inspect', n]);
      expect(text.status).to.equal(0);
      expect(text.stdout).to.include(`algorithm            ${algorithm}`);
      p.close();
    }
  });

  it('map --out: a valid SVG with one used rect per live allocation, at their offsets', () => {
    const out = path.join(tmp, 'heap.svg');
    const r = cli(['map', name, '--out', out]);
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout).to.match(new RegExp(`^Wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 5 used blocks`));
    const svg = fs.readFileSync(out, 'utf8');
    expectWellFormedXml(svg, 'svg');
    const rects = usedRects(svg);
    expect(rects).to.have.length(pool.stats().liveAllocations);
    const offsets = rects.map((x) => Number(x.match(/data-offset="(\d+)"/)![1]));
    expect(offsets).to.deep.equal([...pool.blocks()].filter((b) => b.used).map((b) => b.offset));
    expect(svg).to.include(`<title>${name} (tlsf): 1.0 MiB`);
    // the same picture on stdout with --out -, and NAME.svg in the working directory by default
    const dash = cli(['map', name, '--out', '-']);
    expect(dash.status).to.equal(0);
    expect(dash.stdout).to.equal(svg);
    expect(cli(['map', name]).status).to.equal(0);
    expect(fs.readFileSync(path.join(tmp, `${name}.svg`), 'utf8')).to.equal(svg);
  });

  it('map --png without a converter on PATH exits 2 with ERR_NO_CONVERTER', () => {
    const empty = path.join(tmp, 'empty-bin');
    fs.mkdirSync(empty, { recursive: true });
    const target = path.join(tmp, 'none.png');
    const r = cli(['map', name, '--png', '--out', target], { ...process.env, PATH: empty });
    expectFailure(r, 'ERR_NO_CONVERTER');
    expect(r.stderr).to.include('rsvg-convert');
    expect(fs.existsSync(target)).to.equal(false);
    expectUsageError(cli(['map', name, '--png', '--out', '-']), /--png writes a file/);
  });

  it('map --png hands the SVG to the converter on PATH, and reports one that fails (stand-in converters)', () => {
    const good = path.join(tmp, 'good-bin');
    fakeConverter(
      good,
      'rsvg-convert',
      `const output = args[args.indexOf('--output') + 1];
       const svg = fs.readFileSync(args[args.length - 1], 'utf8');
       if (!svg.includes('<svg')) process.exit(3);
       fs.writeFileSync(output, Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.from(svg)]));`,
    );
    const target = path.join(tmp, 'fake.png');
    const r = cli(['map', name, '--png', '--out', target], { ...process.env, PATH: good });
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout).to.include('PNG via rsvg-convert');
    const png = fs.readFileSync(target);
    expect(png.subarray(0, 4).toString('latin1')).to.equal('\x89PNG');
    expect(usedRects(png.subarray(8).toString('utf8'))).to.have.length(5);

    const bad = path.join(tmp, 'bad-bin');
    fakeConverter(bad, 'convert', `process.stderr.write('convert: no decode delegate for this image format\\n'); process.exit(1);`);
    const failed = cli(['map', name, '--png', '--out', path.join(tmp, 'bad.png')], { ...process.env, PATH: bad });
    expectFailure(failed, 'ERR_CONVERT_FAILED');
    expect(failed.stderr).to.include('no decode delegate');
    expect(fs.existsSync(path.join(tmp, 'bad.png'))).to.equal(false);
  });

  it('map --png with a real converter, when one is installed', function () {
    const has = (cmd: string, args: string[], want: RegExp) => {
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      return !r.error && want.test(`${r.stdout}${r.stderr}`);
    };
    const real = has('rsvg-convert', ['--version'], /rsvg-convert version/) || has('magick', ['-version'], /^Version: ImageMagick/m) || has('convert', ['-version'], /^Version: ImageMagick/m);
    if (!real) {
      skipBecause(this, 'neither rsvg-convert nor ImageMagick is installed here');
    }
    const target = path.join(tmp, 'real.png');
    const r = cli(['map', name, '--png', '--out', target]);
    expect(r.status, r.stderr).to.equal(0);
    expect(fs.readFileSync(target).subarray(0, 4).toString('latin1')).to.equal('\x89PNG');
  });

  it('inspect succeeds while another process is busily allocating in the segment', async () => {
    const busy = uniqueName('busy');
    const p = SharedPool.create(busy, { size: 4 * MiB });
    const c = await startChurn(busy);
    try {
      for (let i = 0; i < 3; i++) {
        const r = cli(['inspect', busy, '--json']);
        expect(r.status, r.stderr).to.equal(0);
        const j = JSON.parse(r.stdout);
        expect(j.stats.liveAllocations).to.be.within(0, 100);
        expect(j.stats.allocations).to.be.greaterThan(0);
        const text = cli(['inspect', busy]);
        expect(text.status, text.stderr).to.equal(0);
        expect(text.stdout).to.include('Heap map:');
        const svg = cli(['map', busy, '--out', '-']);
        expect(svg.status, svg.stderr).to.equal(0);
        expectWellFormedXml(svg.stdout, 'svg');
      }
      expect(c.exitCode, 'the busy process is still running: it saw no damage').to.equal(null);
    } finally {
      await killed(c);
    }
    p.check();
    p.close();
  });

  it('inspect exits 2 with ERR_SHM_LOCK_TIMEOUT when the lock stays held', () => {
    const held = uniqueName('held');
    const p = SharedPool.create(held, { size: MiB });
    // The lock word now names a live owner (this process), as the shared-pool specs do.
    const lockWord = p.view(256, 4);
    const saved = Buffer.from(lockWord);
    lockWord.writeUInt32LE(process.pid);
    try {
      const started = Date.now();
      const r = cli(['inspect', held, '--lock-timeout', '200']);
      expectFailure(r, 'ERR_SHM_LOCK_TIMEOUT');
      expect(Date.now() - started).to.be.lessThan(10000);
    } finally {
      lockWord.set(saved);
    }
    expect(cli(['inspect', held]).status).to.equal(0);
    p.close();
  });

  it('rm unlinks; then rm, inspect and map of the missing name exit 2 with ERR_SHM_NOT_FOUND', () => {
    const gone = uniqueName('rm');
    SharedPool.create(gone, { size: MiB }).close();
    const r = cli(['rm', gone]);
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(`Removed ${gone}\n`);
    expect(fs.existsSync(`/dev/shm/${gone}`)).to.equal(false);
    for (const args of [['rm', gone], ['inspect', gone], ['inspect', gone, '--json'], ['map', gone, '--out', path.join(tmp, 'x.svg')]]) {
      const again = cli(args);
      expectFailure(again, 'ERR_SHM_NOT_FOUND');
      expect(again.stderr).to.equal(`mempool: ERR_SHM_NOT_FOUND: No shared memory named '${gone}'\n`);
      expect(again.stdout).to.equal('');
    }
    expect(fs.existsSync(path.join(tmp, 'x.svg'))).to.equal(false);
  });

  it('a foreign file under /dev/shm: inspect and map exit 2 with ERR_SHM_INCOMPATIBLE, list skips it, rm needs --force', () => {
    const junk = `mempool-test-${process.pid}-cli-junk-${counter++}`;
    junkFiles.push(`/dev/shm/${junk}`);
    const bytes = Buffer.alloc(MiB);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
    fs.writeFileSync(`/dev/shm/${junk}`, bytes, { mode: 0o600 });
    expectFailure(cli(['inspect', junk]), 'ERR_SHM_INCOMPATIBLE');
    expectFailure(cli(['inspect', junk, '--json']), 'ERR_SHM_INCOMPATIBLE');
    expectFailure(cli(['map', junk, '--out', path.join(tmp, 'junk.svg')]), 'ERR_SHM_INCOMPATIBLE');
    const list = JSON.parse(cli(['list', '--json']).stdout) as Array<{ name: string }>;
    expect(list.map((s) => s.name)).to.not.include(junk);
    const refused = cli(['rm', junk]);
    expectFailure(refused, 'ERR_SHM_INCOMPATIBLE');
    expect(refused.stderr).to.include('--force');
    expect(fs.existsSync(`/dev/shm/${junk}`)).to.equal(true);
    expect(cli(['rm', junk, '--force']).status).to.equal(0);
    expect(fs.existsSync(`/dev/shm/${junk}`)).to.equal(false);
    // an empty file (a creator killed before ftruncate) is refused too, with the hint in the CLI's words
    fs.writeFileSync(`/dev/shm/${junk}`, Buffer.alloc(0), { mode: 0o600 });
    const empty = cli(['rm', junk]);
    expectFailure(empty, 'ERR_SHM_INCOMPATIBLE');
    expect(empty.stderr).to.include('is empty (0 bytes)').and.to.include('use --force').and.not.include('{ force: true }');
    expect(cli(['rm', junk, '--force']).status).to.equal(0);
    expect(fs.existsSync(`/dev/shm/${junk}`)).to.equal(false);
  });

  it('hostile names exit 2 with ERR_SHM_INVALID_NAME', () => {
    for (const bad of ['../etc/passwd', 'a/b', '..']) {
      expectFailure(cli(['inspect', bad]), 'ERR_SHM_INVALID_NAME');
      expectFailure(cli(['rm', bad]), 'ERR_SHM_INVALID_NAME');
    }
    expect(fs.existsSync('/etc/passwd')).to.equal(true);
  });
});

describe('heap maps', () => {
  // A 1 KiB region: 128 bytes of header, a used block across 4 cells, a free run, a 32-byte block, free.
  const blocks = [
    { offset: 128, size: 256, used: true },
    { offset: 384, size: 128, used: false },
    { offset: 512, size: 32, used: true },
    { offset: 544, size: 480, used: false },
  ];

  it('renderHeapMapText: one character per cell by the share used, bookkeeping where no block lies', () => {
    const ascii = renderHeapMapText(blocks, 1024, { width: 8, rows: 2, ascii: true });
    expect(ascii.split('\n')).to.deep.equal([
      '0x0000 |==####..|',
      '0x0200 |+.......|',
      'cell = 64 B   . free  : <=25% used  + <=50%  * <=75%  # >75%  = header/bookkeeping',
    ]);
    const unicode = renderHeapMapText(blocks, 1024, { width: 8, rows: 2, ascii: false, legend: false });
    expect(unicode).to.equal('0x0000 │==████..│\n0x0200 │▒.......│');
    // the default grid: 8 rows of 64 cells
    const grid = renderHeapMapText(blocks, 1024, { ascii: true, legend: false }).split('\n');
    expect(grid).to.have.length(8);
    for (const line of grid) expect(line).to.match(/^0x[0-9a-f]{4} \|.{64}\|$/);
    expect(renderHeapMapText([], 0, { ascii: true, legend: false, width: 4, rows: 1 })).to.equal('0x0000 |====|');
    expect(() => renderHeapMapText(blocks, 1024, { width: 0 })).to.throw(RangeError);
  });

  it('renderHeapMapSvg: valid XML, one used rect per used block coloured by size class, wrapped blocks continue', () => {
    const size = 64 * 1024;
    const many = [
      { offset: 0, size: 16, used: true },
      { offset: 16, size: 48, used: false },
      { offset: 64, size: 200, used: true },
      { offset: 264, size: 30000, used: true }, // crosses several rows
      { offset: 30264, size: 100, used: false },
      { offset: 30364, size: 100, used: false }, // one free run with the one before
      { offset: 30464, size: size - 30464, used: false },
    ];
    const svg = renderHeapMapSvg(many, size, { title: 'a <pool> & "more"', maxRows: 16 });
    expectWellFormedXml(svg, 'svg');
    expect(svg).to.include('a &lt;pool&gt; &amp; &quot;more&quot;');
    const used = usedRects(svg);
    expect(used).to.have.length(3);
    expect(used[0]).to.include(`fill="${sizeClassOf(16).color}"`);
    expect(used[1]).to.include(`fill="${sizeClassOf(200).color}"`);
    expect(used[2]).to.include(`fill="${sizeClassOf(30000).color}"`);
    expect(svg.match(/class="cont"/g)?.length ?? 0).to.be.greaterThan(0);
    // free runs: [16, 64) and the three adjacent free blocks from 30264 drawn as one (a rect per row it crosses)
    const freeRuns = new Set((svg.match(/class="free"[^>]*><title>[^<]*</g) ?? []).map((t) => t.replace(/^.*<title>/, '')));
    expect([...freeRuns]).to.deep.equal(['free 0x10 48 B run<', `free 0x7638 ${formatBytes(size - 30264)} run<`]);
    expect(svg).to.match(/<svg [^>]*width="1024"/);
    const narrow = renderHeapMapSvg([], 4096, { width: 300 });
    expectWellFormedXml(narrow, 'svg');
    expect(usedRects(narrow)).to.have.length(0);
  });
});
