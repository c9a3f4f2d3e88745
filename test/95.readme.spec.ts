// README.md's code, run as a reader would: every ```js / ```javascript block with node, every ```ts /
// ```typescript block transpiled by TypeScript then run with node, every ```python block with python3,
// in README order, each in a process of its own, in one scratch directory where require('mempool')
// finds this package (dist/, rebuilt first). Blocks may build on earlier ones (a segment made by one is
// opened by the next). Markers, on the line before a fence:
//   <!-- no-run: reason -->   not run (needs another machine, or is a fragment); use sparingly
//   <!-- file: NAME -->       written to NAME in the scratch directory, for a later block to run
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ts from 'typescript';
import { SharedPool } from '../lib';

const root = path.join(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');

interface Block {
  lang: 'js' | 'ts' | 'python';
  line: number;
  code: string;
  noRun?: string;
  file?: string;
}

const LANGS: Record<string, Block['lang']> = { js: 'js', javascript: 'js', ts: 'ts', typescript: 'ts', python: 'python', py: 'python' };

function extractBlocks(text: string): Block[] {
  const lines = text.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]);
    if (!open) continue;
    let end = i + 1;
    while (end < lines.length && !/^```\s*$/.test(lines[end])) end++;
    const lang = LANGS[open[1].toLowerCase()];
    if (lang) {
      const marker = i > 0 ? lines[i - 1].trim() : '';
      const noRun = /^<!--\s*no-run:\s*(.*?)\s*-->$/.exec(marker);
      const file = /^<!--\s*file:\s*(\S+)\s*-->$/.exec(marker);
      blocks.push({ lang, line: i + 1, code: lines.slice(i + 1, end).join('\n') + '\n', noRun: noRun?.[1], file: file?.[1] });
    }
    i = end;
  }
  return blocks;
}

/** Names of the shared segments the README's code uses: none may be left behind. */
function segmentNames(blocks: Block[]): string[] {
  const names = new Set<string>();
  for (const b of blocks) {
    for (const m of b.code.matchAll(/(?:SharedPool\.(?:create|open|unlink)\(|name(?::\s*|=))['"]([\w.-]+)['"]/g)) names.add(m[1]);
  }
  return [...names];
}

const blocks = extractBlocks(readme);

describe('README.md: every code block runs', function () {
  this.timeout(120000);
  let work = '';
  const names = segmentNames(blocks);

  function cleanUp(): void {
    for (const name of names) {
      // only mempool segments (a leftover of an earlier run), never another program's file
      if (SharedPool.list().some((s) => s.name === name)) SharedPool.unlink(name);
    }
  }

  before(function () {
    this.timeout(120000);
    // The snippets require('mempool'): its dist/, compiled from the current lib/.
    execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root });
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mempool-readme-'));
    fs.mkdirSync(path.join(work, 'node_modules'));
    fs.symlinkSync(root, path.join(work, 'node_modules', 'mempool'), 'dir');
    fs.writeFileSync(path.join(work, 'package.json'), JSON.stringify({ name: 'readme', private: true, type: 'commonjs' }));
    cleanUp();
  });

  after(function () {
    cleanUp();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('has the blocks this test expects to find (the extraction works)', function () {
    const counts = { js: 0, ts: 0, python: 0 };
    for (const b of blocks) counts[b.lang]++;
    expect(counts.js).to.be.at.least(8);
    expect(counts.ts).to.be.at.least(1);
    expect(counts.python).to.be.at.least(1);
    expect(names).to.include.members(['orders', 'jobs']);
    for (const b of blocks) if (b.noRun !== undefined) expect(b.noRun, `no-run reason at line ${b.line}`).to.not.equal('');
  });

  blocks.forEach((block, index) => {
    const first = block.code.split('\n').find((l) => l.trim() !== '') ?? '';
    const title = `${block.lang} at README.md:${block.line} (${first.trim().slice(0, 60)})`;
    if (block.noRun !== undefined) return; // marked in the README, with its reason
    it(block.file ? `${title}: written to ${block.file}` : title, function () {
      if (block.file) {
        fs.writeFileSync(path.join(work, block.file), block.code);
        return;
      }
      let cmd = process.execPath;
      let file = path.join(work, `block-${index}.js`);
      if (block.lang === 'js') {
        fs.writeFileSync(file, block.code);
      } else if (block.lang === 'ts') {
        const out = ts.transpileModule(block.code, {
          compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
          reportDiagnostics: true,
        });
        expect(out.diagnostics ?? [], 'TypeScript syntax errors').to.deep.equal([]);
        fs.writeFileSync(file, out.outputText);
      } else {
        cmd = 'python3';
        file = path.join(work, `block-${index}.py`);
        fs.writeFileSync(file, block.code);
      }
      try {
        execFileSync(cmd, [file], { cwd: work, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 });
      } catch (e) {
        const err = e as { status?: number; stdout?: string; stderr?: string };
        expect.fail(`README.md:${block.line} exited ${err.status}\n--- stdout\n${err.stdout}\n--- stderr\n${err.stderr}`);
      }
    });
  });

  it('leaves no shared segment of its code behind', function () {
    const left = SharedPool.list().map((s) => s.name).filter((n) => names.includes(n));
    expect(left).to.deep.equal([]);
  });
});
