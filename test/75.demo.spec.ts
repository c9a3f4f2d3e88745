// `npm start` (scripts/demo.js): runs as a child process, tells its story, and leaves no segment behind.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const demo = path.join(root, 'scripts', 'demo.js');

function demoSegments(): string[] {
  return fs.readdirSync('/dev/shm').filter((f) => f.startsWith('mempool-demo-'));
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', env, timeout: 60000 });
  if (r.error) throw r.error;
  return r;
}

describe('npm start: the demo', () => {
  let before: string[];
  beforeEach(() => {
    before = demoSegments();
  });

  it('is the package\'s start script', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(pkg.scripts.start).to.equal('node scripts/demo.js');
    expect(pkg.bin).to.deep.equal({ mempool: 'dist/cli.js' });
  });

  it('runs workers that write into a shared pool, reads their records in place, prints stats and a heap map, and unlinks', function () {
    this.timeout(60000);
    const started = Date.now();
    const r = run('npm', ['start', '--silent']);
    expect(r.status, r.stderr).to.equal(0);
    expect(Date.now() - started, 'a few seconds').to.be.lessThan(30000);
    const out = r.stdout;
    const name = out.match(/Created shared pool '(mempool-demo-\d+)': 256\.0 KiB, tlsf/)?.[1];
    expect(name, out).to.be.a('string');
    expect(out).to.include(`Starting 3 worker processes; each opens '${name}' by name and writes 50 records into it.`);
    for (const i of [1, 2, 3]) {
      expect(out).to.match(new RegExp(`^worker ${i} \\(pid \\d+\\) wrote 50 records at offsets 0x[0-9a-f]+, `, 'm'));
      for (const key of ['first', 'latest', 'summary']) expect(out).to.match(new RegExp(`get\\('worker-${i}-${key}'\\) -> offset 0x[0-9a-f]+: \\{"worker":${i},`));
    }
    expect(out).to.match(/read all 150 records in place: .* 0 bytes copied; every record checks out\./);
    expect(out).to.match(/^ {2}live allocations\s+153$/m);
    expect(out).to.match(/^ {2}keys\s+9 of 64$/m);
    expect(out.match(/^0x[0-9a-f]+ [|│].{64}[|│]$/gm), 'the heap map').to.have.length(8);
    expect(out).to.include('header/bookkeeping');
    expect(out).to.include('Freed 153 allocations: used 0 B, 0 live, 0 keys');
    expect(out).to.include(`Unlinked /dev/shm/${name}.`);
    expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
    expect(demoSegments().filter((s) => !before.includes(s))).to.deep.equal([]);
  });

  it('a failing worker: exits non-zero, says why, and still unlinks the segment', function () {
    this.timeout(60000);
    const r = run(process.execPath, [demo], { ...process.env, MEMPOOL_DEMO_FAIL: '2' });
    expect(r.status).to.equal(1);
    expect(r.stderr).to.include('demo failed: worker 2: worker 2 was told to fail');
    expect(r.stdout).to.include(`Unlinked /dev/shm/mempool-demo-${r.pid}.`);
    expect(fs.existsSync(`/dev/shm/mempool-demo-${r.pid}`)).to.equal(false);
    expect(demoSegments().filter((s) => !before.includes(s))).to.deep.equal([]);
  });
});
