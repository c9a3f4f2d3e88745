// Option names: every call that takes an options object refuses a name it does not know
// (ERR_INVALID_ARG_VALUE naming it and the accepted ones), so a typo is an error, not an option ignored.
import { expect } from 'chai';
import * as fs from 'node:fs';
import { MemoryManager, Pool, SharedPool } from '../lib';
import { checkKnownOptions } from '../lib/args';
import { expectCode } from './helpers';

const MiB = 1 << 20;
let counter = 0;

function uniqueName(tag: string): string {
  return `mempool-test-${process.pid}-options-${tag}-${counter++}`;
}

/** Calls fn as JavaScript would (no type checks), expecting ERR_INVALID_ARG_VALUE, a TypeError; returns the message. */
function expectUnknown(fn: () => unknown): string {
  return expectCode(fn, 'ERR_INVALID_ARG_VALUE', TypeError).message;
}

const js = <T>(value: T): any => value;

describe('Option names', () => {
  describe('checkKnownOptions', () => {
    it('names the unknown option, the call and every accepted name, and suggests the closest', () => {
      const message = expectUnknown(() => checkKnownOptions({ size: 1, debgu: true }, ['size', 'algorithm', 'debug'], 'Pool.create()'));
      expect(message).to.equal("Unknown option 'debgu' for Pool.create(): expected one of size, algorithm, debug (did you mean 'debug'?)");
    });

    it('suggests a name that differs only in case, and nothing when no name is close', () => {
      expect(expectUnknown(() => checkKnownOptions({ LockTimeoutMS: 1 }, ['lockTimeoutMs'], 'x()'))).to.match(/did you mean 'lockTimeoutMs'\?\)$/);
      expect(expectUnknown(() => checkKnownOptions({ colour: 'red' }, ['size', 'debug'], 'x()'))).to.equal(
        "Unknown option 'colour' for x(): expected one of size, debug",
      );
    });

    it('refuses an unknown name even when its value is undefined, and accepts every allowed name', () => {
      expectUnknown(() => checkKnownOptions({ debgu: undefined }, ['debug'], 'x()'));
      expect(() => checkKnownOptions({ size: 1, debug: undefined }, ['size', 'debug'], 'x()')).to.not.throw();
      expect(() => checkKnownOptions({}, [], 'x()')).to.not.throw();
    });

    it('leaves anything but an object to the caller (undefined, null, numbers)', () => {
      for (const v of [undefined, null, 3, 'size', true]) expect(() => checkKnownOptions(v, ['size'], 'x()')).to.not.throw();
    });
  });

  describe('new Pool()', () => {
    it('refuses a misspelt option before taking any memory', () => {
      const message = expectUnknown(() => new Pool(js({ size: MiB, debgu: true })));
      expect(message).to.include("Unknown option 'debgu' for new Pool()");
      expect(message).to.include('expected one of size, algorithm, grow, fallback, debug, cache, blockSize, minBlock, maxBlock');
      expect(message).to.include("did you mean 'debug'?");
    });

    it('refuses an unknown name inside options.grow', () => {
      const message = expectUnknown(() => new Pool(js({ size: MiB, grow: { chunksize: MiB } })));
      expect(message).to.equal("Unknown option 'chunksize' for options.grow of new Pool(): expected one of chunkSize, maxSize (did you mean 'chunkSize'?)");
    });

    it('still accepts every documented option', () => {
      const pool = new Pool({
        size: MiB, algorithm: 'buddy', grow: { chunkSize: MiB, maxSize: 4 * MiB }, fallback: true, debug: false, cache: false,
        blockSize: 16, minBlock: 16, maxBlock: MiB,
      });
      pool.free(pool.alloc(10));
      pool.close();
    });

    it('keeps the type errors it gave before', () => {
      expectCode(() => new Pool(js(undefined)), 'ERR_INVALID_ARG_TYPE', TypeError);
      expectCode(() => new Pool(js({ size: MiB, grow: 3 })), 'ERR_INVALID_ARG_TYPE', TypeError);
    });
  });

  describe('MemoryManager', () => {
    const mm = MemoryManager.getInstance();
    afterEach(() => mm.close());

    it('initNormal refuses an unknown option and initializes nothing', () => {
      const message = expectUnknown(() => mm.initNormal(js({ memorySizeBytes: MiB, algoritm: 'buddy' })));
      expect(message).to.equal(
        "Unknown option 'algoritm' for MemoryManager.initNormal(): expected one of memorySizeBytes, algorithm, grow, blockSize, minBlock, maxBlock (did you mean 'algorithm'?)",
      );
      expect(mm.memoryType(mm.allocate(8))).to.equal('other'); // still before initNormal
      mm.initNormal({ memorySizeBytes: MiB, algorithm: 'buddy', grow: { chunkSize: MiB }, blockSize: 16, minBlock: 16, maxBlock: MiB });
      expect(mm.memoryType(mm.allocate(8))).to.equal('normal');
    });

    it('initShared refuses an unknown option before creating a segment', () => {
      const name = uniqueName('mm');
      const message = expectUnknown(() => mm.initShared(js({ name, memorySizeBytes: MiB, maxkeys: 4 })));
      expect(message).to.match(/^Unknown option 'maxkeys' for MemoryManager\.initShared\(\): expected one of name, memorySizeBytes, .*maxKeys/);
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
      expectUnknown(() => mm.initShared(js({ name, create: false, lockTimeout: 5 })));
    });

    it('initShared still accepts every documented option', () => {
      const name = uniqueName('mm-ok');
      try {
        expect(
          mm.initShared({ name, memorySizeBytes: MiB, algorithm: 'bitmap', acceptExisting: false, create: true, lockTimeoutMs: 100, maxKeys: 4, debug: false, mode: 0o600, blockSize: 32, minBlock: 16, maxBlock: MiB }),
        ).to.equal(true);
        expect(mm.memoryType(mm.allocateShared(64))).to.equal('shared');
      } finally {
        mm.close();
        SharedPool.unlink(name);
      }
    });
  });

  describe('SharedPool', () => {
    it('create refuses an unknown option before creating the segment', () => {
      const name = uniqueName('create');
      const message = expectUnknown(() => SharedPool.create(name, js({ size: MiB, exclusve: false })));
      expect(message).to.equal(
        "Unknown option 'exclusve' for SharedPool.create(): expected one of size, algorithm, mode, exclusive, acceptExisting, maxKeys, lockTimeoutMs, debug, trackOwners, blockSize, minBlock, maxBlock (did you mean 'exclusive'?)",
      );
      expect(fs.existsSync(`/dev/shm/${name}`)).to.equal(false);
    });

    it('open refuses an unknown option (before looking the name up)', () => {
      const message = expectUnknown(() => SharedPool.open(uniqueName('open'), js({ lockTimeout: 10 })));
      expect(message).to.equal("Unknown option 'lockTimeout' for SharedPool.open(): expected one of lockTimeoutMs (did you mean 'lockTimeoutMs'?)");
    });

    it('create and open still accept every documented option', () => {
      const name = uniqueName('ok');
      const pool = SharedPool.create(name, {
        size: MiB, algorithm: 'tlsf', mode: 0o600, exclusive: true, maxKeys: 8, lockTimeoutMs: 100, debug: false, blockSize: 16, minBlock: 16, maxBlock: MiB,
      });
      try {
        const other = SharedPool.open(name, { lockTimeoutMs: 100 });
        other.close();
        SharedPool.create(name, { size: 2 * MiB, exclusive: false, acceptExisting: true }).close();
      } finally {
        pool.close();
        SharedPool.unlink(name);
      }
    });
  });
});
