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
