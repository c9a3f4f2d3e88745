// Every error code mempool can throw is in README.md's table of errors: the codes are gathered from the
// sources (lib/ and the addon's glue), so a new code without a row fails here.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.join(__dirname, '..');

function sources(dir: string, ext: RegExp): string[] {
  return fs
    .readdirSync(path.join(root, dir))
    .filter((f) => ext.test(f))
    .map((f) => fs.readFileSync(path.join(root, dir, f), 'utf8'));
}

describe("README.md's table of error codes", () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const errors = readme.slice(readme.indexOf('\n## Errors\n'), readme.indexOf('\n## Limits\n'));
  const rows = new Set([...errors.matchAll(/^\| `(ERR_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]));
  const thrown = new Set<string>();
  for (const text of [...sources('lib', /\.ts$/), ...sources('native/addon', /\.(cc|h)$/)]) {
    for (const m of text.matchAll(/['"](ERR_[A-Z0-9_]+)['"]/g)) thrown.add(m[1]);
  }

  it('is found, and the sources name codes (the extraction works)', () => {
    expect(rows.size).to.be.above(30);
    expect(thrown.has('ERR_POOL_DOUBLE_FREE')).to.equal(true);
    expect(thrown.has('ERR_QUEUE_FULL')).to.equal(true);
  });

  it('has a row for every code the sources throw', () => {
    expect([...thrown].filter((c) => !rows.has(c)).sort()).to.deep.equal([]);
  });

  it('has no row for a code nothing throws', () => {
    expect([...rows].filter((c) => !thrown.has(c)).sort()).to.deep.equal([]);
  });
});

// lib/errors.ts restates the core's Status enum (native/core/heap.h), negated, because statuses cross the
// boundary as numbers: a renumbered or renamed status in C++ must fail here, not turn into a wrong code.
describe("lib/errors.ts's Status agrees with the core's, and its table has a row for each", () => {
  const enumBody = (text: string, head: RegExp): string => {
    const m = head.exec(text);
    if (!m) throw new Error(`enum not found: ${head}`);
    return text.slice(m.index, text.indexOf('}', m.index));
  };
  const cpp = new Map<string, number>();
  const heapH = fs.readFileSync(path.join(root, 'native/core/heap.h'), 'utf8');
  for (const m of enumBody(heapH, /enum class Status : int32_t \{/).matchAll(/^\s*([a-z_]+) = (\d+),/gm)) cpp.set(m[1], Number(m[2]));
  const ts = new Map<string, number>();
  const errorsTs = fs.readFileSync(path.join(root, 'lib/errors.ts'), 'utf8');
  for (const m of enumBody(errorsTs, /export const enum Status \{/).matchAll(/^\s*([A-Za-z]+) = (-?\d+),/gm)) ts.set(m[1], Number(m[2]));
  const snake = (pascal: string): string => pascal.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? '_' : '') + c.toLowerCase());

  it('both enums are found (the extraction works)', () => {
    expect(cpp.get('double_free')).to.equal(4);
    expect(ts.get('DoubleFree')).to.equal(-4);
    expect(cpp.size).to.be.above(15);
  });

  it('every TypeScript status but Closed is the negated C++ status of the same name', () => {
    const wrong = [...ts].filter(([name]) => name !== 'Closed').filter(([name, v]) => cpp.get(snake(name)) !== -v);
    expect(wrong).to.deep.equal([]);
  });

  it("Closed is the addon's kClosed, which no core status uses", () => {
    const addon = fs.readFileSync(path.join(root, 'native/addon/addon.cc'), 'utf8');
    const closed = /kClosed = static_cast<Status>\((\d+)\)/.exec(addon);
    expect(closed, 'kClosed in addon.cc').to.not.equal(null);
    expect(ts.get('Closed')).to.equal(-Number(closed![1]));
    expect([...cpp.values()]).to.not.include(Number(closed![1]));
  });

  it('every C++ status but ok is in the TypeScript enum', () => {
    const byValue = new Set(ts.values());
    expect([...cpp].filter(([name, v]) => name !== 'ok' && !byValue.has(-v)).map(([name]) => name)).to.deep.equal([]);
  });

  it('every status has a row in the table (none falls through to "Unexpected status")', () => {
    const table = errorsTs.slice(errorsTs.indexOf('const STATUS_ERRORS'), errorsTs.indexOf('\n};', errorsTs.indexOf('const STATUS_ERRORS')));
    const rows = new Set([...table.matchAll(/^\s*\[Status\.([A-Za-z]+)\]:/gm)].map((m) => m[1]));
    expect([...ts.keys()].filter((name) => !rows.has(name))).to.deep.equal([]);
  });
});
