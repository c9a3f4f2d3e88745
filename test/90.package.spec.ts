// The package as a user gets it: `npm pack`, then install the tarball into a fresh project (which builds
// the addon from the shipped sources), load it from CommonJS and ESM, run the CLI, and compile a
// TypeScript consumer against the shipped types under three module settings. Slow (a full native build):
// about a minute.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');

/**
 * Largest packed tarball accepted. Measured: 217 KB (95 files) with the whitelist; 328 KB before it on a
 * clean tree and 22 MB after `npm run test:native` (native/core/out was shipped). 1 MiB leaves room for
 * the docs to grow and for a prebuilt linux-x64 addon (build/Release/mempool.node is 380 KB unstripped)
 * while still failing loudly if build outputs, test or fuzz corpora get shipped again.
 */
const MAX_PACKED_BYTES = 1 << 20;

/** Paths (inside the tarball) that a user never needs: tests, fuzzers, benchmarks, build outputs. */
const FORBIDDEN = [
  /^test\//,
  /^native\/core\/test\//,
  /^native\/core\/out\//,
  /^native\/core\/Makefile$/,
  /^native\/fuzz\//,
  /^scripts\//,
  /^build\//,
  /^node_modules\//,
  /^\.ci\//,
  /^docs\/api\//,
  /\.(o|a|so|node|log|tgz)$/,
];

/** The environment for child npm and node: without the npm_* variables of the `npm test` running us. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('npm_')) env[k] = v;
  return env;
}

/** Runs a command; on failure the assertion shows its output. */
function run(cmd: string, args: string[], cwd: string): string {
  try {
    return execFileSync(cmd, args, { cwd, env: childEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 240000 });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`);
  }
}

const CONSUMER_TS = `
import { CHANNELS, memoryType, MemoryManager, Pool, PoolError, SharedPool } from 'mempool';
import type { ErrorCode, PoolOptions, PoolStats, SharedPoolCreateOptions } from 'mempool';

const options: PoolOptions = { size: 1 << 20, algorithm: 'buddy' };
const pool = new Pool(options);
const buf: Buffer = pool.alloc(100);
const kind: 'normal' | 'shared' | 'other' = memoryType(buf);
pool.free(buf);
const stats: PoolStats = pool.stats();
pool.close();
const expected: ErrorCode = 'ERR_POOL_CLOSED';
let code = '';
try {
  pool.alloc(1);
} catch (e) {
  if (e instanceof PoolError) code = e.code;
}
const shared: SharedPoolCreateOptions = { size: 1 << 20, exclusive: true };
console.log(JSON.stringify({ kind, frees: stats.frees, closed: code === expected, channel: CHANNELS.alloc,
  create: typeof SharedPool.create, mm: typeof MemoryManager.getInstance, sharedSize: shared.size }));
`;

/** Compiler options, and the consumer files compiled (and, when emitted, run) with them. */
const TS_SETTINGS: Record<string, { options: Record<string, unknown>; files: string[] }> = {
  // The strictest for a CommonJS package's types: no synthetic default imports.
  commonjs: { options: { module: 'commonjs', esModuleInterop: false, outDir: 'out-commonjs' }, files: ['consumer.ts'] },
  // A CommonJS file and an ES module (.mts) importing the CommonJS package.
  node16: { options: { module: 'node16', moduleResolution: 'node16', outDir: 'out-node16' }, files: ['consumer.ts', 'consumer.mts'] },
  bundler: { options: { module: 'esnext', moduleResolution: 'bundler', noEmit: true }, files: ['consumer.ts'] },
};

describe('Packaging: the tarball a user installs', function () {
  this.timeout(600000);
  let work = '';
  let tarball = '';
  let files: string[] = [];
  let size = 0;
  let consumer = '';

  before(function () {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mempool-pack-'));
    // `npm pack` runs `prepare` (tsc), so dist/ is the current lib/.
    const out = run('npm', ['pack', '--json', '--pack-destination', work], root);
    const info = JSON.parse(out.slice(out.indexOf('[')))[0] as { filename: string; size: number; files: { path: string }[] };
    tarball = path.join(work, info.filename);
    size = fs.statSync(tarball).size;
    files = info.files.map((f) => f.path);

    consumer = path.join(work, 'consumer');
    fs.mkdirSync(consumer);
    fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
    // Its dependencies (node-addon-api, bindings) are in the npm cache after `npm ci`; the addon is built
    // from the shipped sources by the package's install script.
    run('npm', ['install', tarball, '--no-audit', '--no-fund', '--prefer-offline'], consumer);
  });

  it('without its install script (--ignore-scripts), loading fails with ERR_ADDON_LOAD and advice for a dependent project', function () {
    const unbuilt = path.join(work, 'unbuilt');
    fs.mkdirSync(unbuilt);
    fs.writeFileSync(path.join(unbuilt, 'package.json'), JSON.stringify({ name: 'unbuilt', version: '1.0.0', private: true }));
    run('npm', ['install', tarball, '--no-audit', '--no-fund', '--prefer-offline', '--ignore-scripts'], unbuilt);
    const script = `try { require('mempool'); console.log('{}'); } catch (e) {
  console.log(JSON.stringify({ code: e.code, isError: e instanceof Error, message: e.message, cause: String(e.cause) })); }`;
    const r = JSON.parse(run(process.execPath, ['-e', script], unbuilt));
    expect(r.code).to.equal('ERR_ADDON_LOAD');
    expect(r.isError).to.equal(true);
    expect(r.message).to.include('`npm rebuild mempool`');
    expect(r.message).to.include('apt-get install -y python3 make g++');
    expect(r.message).to.not.include('npm run build');
    expect(r.cause).to.match(/bindings/i);
  });

  after(function () {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it(`is under ${MAX_PACKED_BYTES} bytes packed`, function () {
    expect(size).to.be.greaterThan(0);
    expect(size).to.be.below(MAX_PACKED_BYTES);
  });

  it('ships no tests, fuzzers, benchmarks or build outputs', function () {
    const bad = files.filter((f) => FORBIDDEN.some((re) => re.test(f)));
    expect(bad).to.deep.equal([]);
  });

  it('ships what installing, building and using it needs', function () {
    const gyp = JSON.parse(fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8')) as { targets: { sources: string[] }[] };
    const headers = fs.readdirSync(path.join(root, 'native', 'core')).filter((f) => f.endsWith('.h')).map((f) => `native/core/${f}`);
    const needed = [
      'package.json', 'README.md', 'LICENSE', 'binding.gyp', 'dist/index.js', 'dist/index.d.ts', 'dist/cli.js',
      ...gyp.targets[0].sources, ...headers,
    ];
    expect(needed.filter((f) => !files.includes(f))).to.deep.equal([]);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(files).to.include(pkg.main);
    expect(files).to.include(pkg.types);
    expect(files).to.include(pkg.bin.mempool);
    expect(pkg.repository.url).to.match(/^git\+https:\/\//);
    expect(pkg.bugs.url).to.match(/^https:\/\//);
    expect(pkg.homepage).to.match(/^https:\/\//);
  });

  it("require('mempool') from CommonJS allocates and frees a block", function () {
    fs.writeFileSync(
      path.join(consumer, 'use.cjs'),
      `const { Pool, memoryType } = require('mempool');
const pool = new Pool({ size: 1 << 20 });
const buf = pool.alloc(100);
buf.write('hello');
const kind = memoryType(buf);
pool.free(buf);
const { liveAllocations, frees } = pool.stats();
pool.close();
console.log(JSON.stringify({ kind, liveAllocations, frees, resolved: require.resolve('mempool') }));
`,
    );
    const r = JSON.parse(run(process.execPath, ['use.cjs'], consumer));
    expect(r).to.deep.include({ kind: 'normal', liveAllocations: 0, frees: 1 });
    expect(r.resolved).to.equal(path.join(consumer, 'node_modules', 'mempool', 'dist', 'index.js'));
  });

  it("import('mempool') from ESM (named and default) allocates and frees a block", function () {
    fs.writeFileSync(
      path.join(consumer, 'use.mjs'),
      `import { Pool, PoolError } from 'mempool';
import mempool from 'mempool';
const dynamic = await import('mempool');
const pool = new Pool({ size: 1 << 20, algorithm: 'tlsf' });
const offset = pool.allocOffset(64);
pool.free(offset);
let code = '';
try { pool.free(offset); } catch (e) { code = e instanceof PoolError ? e.code : String(e); }
pool.close();
console.log(JSON.stringify({ code, same: mempool.Pool === Pool && dynamic.Pool === Pool }));
`,
    );
    const r = JSON.parse(run(process.execPath, ['use.mjs'], consumer));
    expect(r).to.deep.equal({ code: 'ERR_POOL_DOUBLE_FREE', same: true });
  });

  it('installs the mempool command', function () {
    const bin = path.join(consumer, 'node_modules', '.bin', 'mempool');
    expect(run(bin, ['--help'], consumer)).to.match(/^Usage: mempool <command>/);
    expect(JSON.parse(run(bin, ['list', '--json'], consumer))).to.be.an('array');
  });

  for (const [setting, { options, files: sources }] of Object.entries(TS_SETTINGS)) {
    it(`its types compile in a TypeScript project with ${setting} module settings`, function () {
      fs.writeFileSync(path.join(consumer, 'consumer.ts'), CONSUMER_TS);
      fs.writeFileSync(path.join(consumer, 'consumer.mts'), CONSUMER_TS);
      const tsconfig = `tsconfig.${setting}.json`;
      fs.writeFileSync(
        path.join(consumer, tsconfig),
        JSON.stringify({
          compilerOptions: {
            target: 'ES2022',
            lib: ['ES2022'],
            strict: true,
            skipLibCheck: false, // check the shipped .d.ts files too: that is where TS1192 came from
            types: ['node'],
            typeRoots: [path.join(root, 'node_modules', '@types')],
            ...options,
          },
          files: sources,
        }),
      );
      run(process.execPath, [tsc, '-p', tsconfig], consumer);
      if (options.noEmit) return;
      for (const source of sources) {
        const emitted = path.join(String(options.outDir), source.replace(/\.ts$/, '.js').replace(/\.mts$/, '.mjs'));
        const r = JSON.parse(run(process.execPath, [emitted], consumer));
        expect(r, emitted).to.deep.equal({ kind: 'normal', frees: 1, closed: true, channel: 'mempool:alloc', create: 'function', mm: 'function', sharedSize: 1 << 20 });
      }
    });
  }
});
