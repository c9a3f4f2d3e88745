// docs/segment-format.md is a spec: a Python reader written only from it (test/fixtures/read_segment.py,
// the document's own code block) must find keys and read their bytes in segments mempool wrote.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { PoolError, SharedPool } from '../lib';
import { expectCode } from './helpers';

let serial = 0;
function uniqueName(tag: string): string {
  return `mempool-test-${process.pid}-${tag}-${++serial}`;
}

const root = join(__dirname, '..');
const reader = join(__dirname, 'fixtures', 'read_segment.py');

function pythonRead(name: string, keys: string[]): Record<string, string | null> {
  return JSON.parse(execFileSync('python3', [reader, name, ...keys], { encoding: 'utf8' })) as Record<string, string | null>;
}

describe('segment format: a reader written from docs/segment-format.md', () => {
  it('the fixture holds the document\'s code blocks, verbatim', () => {
    const doc = readFileSync(join(root, 'docs', 'segment-format.md'), 'utf8');
    const blocks = doc.split('```python\n').slice(1).map((rest) => rest.slice(0, rest.indexOf('```')));
    expect(blocks.length).to.equal(2);
    for (const block of blocks) expect(readFileSync(reader, 'utf8')).to.contain(block);
  });

  it('reads the messages of a queue, oldest first, across wrap-around, leased ones and block messages included', () => {
    const name = uniqueName('format-queue');
    const pool = SharedPool.create(name, { size: 1 << 20 });
    try {
      const q = pool.queue('jobs', { maxBytes: 512, maxMessages: 100 });
      const sent: string[] = [];
      for (let i = 0; i < 40; i++) {
        const m = randomBytes(1 + ((i * 53) % 90));
        while (!q.tryPush(m)) sent.shift(), q.pop(); // the ring wraps around many times
        sent.push(m.toString('hex'));
      }
      const leased = q.receive()!; // received and not acked: still in the queue
      const peek = () => JSON.parse(execFileSync('python3', [reader, name, '--queue', 'jobs'], { encoding: 'utf8' }));
      expect(peek()).to.deep.equal(sent);
      leased.ack();
      expect(peek()).to.deep.equal(sent.slice(1));
      // A block message (zero-copy): the record names a block of the heap, which the reader follows.
      while (q.tryPop() !== undefined);
      const block = pool.alloc(70);
      randomBytes(70).copy(block);
      const blockHex = block.toString('hex');
      q.push('after');
      q.pushBlock(block);
      expect(peek()).to.deep.equal([Buffer.from('after').toString('hex'), blockHex]);
      expect(JSON.parse(execFileSync('python3', [reader, name, '--queue', 'absent'], { encoding: 'utf8' }))).to.equal(null);
    } finally {
      pool.close();
      SharedPool.unlink(name);
    }
  });

  for (const algorithm of ['tlsf', 'buddy', 'bitmap'] as const) {
    for (const size of [128 * 1024, 4 << 20]) {
      it(`${algorithm}, ${size >> 10} KiB (${size < 1 << 20 ? 'no slabs' : 'slabs'}): finds every key, reads its bytes, misses absent ones`, () => {
        const name = uniqueName('format');
        // A small directory, so that probes collide and wrap around its end.
        const pool = SharedPool.create(name, { size, algorithm, maxKeys: 37 });
        try {
          const expected: Record<string, string> = {};
          for (let i = 0; i < 30; i++) {
            const key = i % 3 === 0 ? `ключ-${i}-é` : `key:${i}`;
            const len = 1 + ((i * 97) % (size < 1 << 20 ? 300 : 3000));
            const b = pool.alloc(len);
            randomBytes(len).copy(b);
            pool.set(key, b);
            expected[key] = b.toString('hex');
          }
          // Deleted entries are skipped by the probe; a replaced key shows its new bytes.
          for (const key of ['key:1', 'key:2']) {
            pool.delete(key);
            delete expected[key];
          }
          const fresh = pool.alloc(5);
          fresh.write('fresh');
          pool.free(pool.replace('key:4', fresh)!);
          expected['key:4'] = fresh.toString('hex');
          const keys = [...Object.keys(expected), 'key:1', 'absent', 'x'.repeat(224)];
          const got = pythonRead(name, keys);
          for (const key of Object.keys(expected)) expect(got[key], key).to.equal(expected[key]);
          expect(got['key:1']).to.equal(null);
          expect(got['absent']).to.equal(null);
          expect(got['x'.repeat(224)]).to.equal(null);
        } finally {
          pool.close();
          SharedPool.unlink(name);
        }
      });
    }
  }

  it('refuses a segment of layout version 2 with ERR_SHM_INCOMPATIBLE', () => {
    const name = uniqueName('format-v2');
    const pool = SharedPool.create(name, { size: 1 << 20 });
    pool.close();
    const path = `/dev/shm/${name}`;
    const bytes = readFileSync(path);
    bytes.writeUInt32LE(2, 8);
    writeFileSync(path, bytes);
    try {
      expectCode(() => SharedPool.open(name), 'ERR_SHM_INCOMPATIBLE', PoolError);
    } finally {
      SharedPool.unlink(name);
    }
  });
});
