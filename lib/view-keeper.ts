// Views of pools that have no JavaScript-side slab cache (shared pools, and pools with `cache: false`).
// Each view the pool makes carries its pool offset in private fields, stamped with the constructor-return
// trick: free() reads it instead of the Buffer's own `buffer` and `byteOffset` getters (8-12 ns each on
// Node 20). And a freed view of a small length is kept for a while: the heaps hand a just-freed small
// block back first (their quick stacks and slab stacks are LIFO), so when the next allocation of the same
// length gets the same offset, the kept Buffer is returned again instead of a new one (Buffer.from costs
// about 27 ns). As with the slab cache, a freed Buffer may come back from alloc(): do not use it after
// free().
import { Stamp } from './stamp';

/** Lengths up to this keep their freed views. */
const MAX_KEPT_LENGTH = 1024;
/** Freed views kept per length (the most recent ones: older ones are dropped). */
const KEPT_PER_LENGTH = 4;

// A view holds its keeper's token, not the keeper: a view that outlives its pool must not keep the
// views the keeper holds (and their regions) alive.
// A shared pool's view also carries its block's generation (native/core/shared_pool.h): the handle a free,
// realloc or set through this view presents, so that one through a stale view is refused.
class OffsetStamp extends Stamp {
  #token: object;
  #offset: number;
  #gen: number;
  constructor(view: Buffer, token: object, offset: number, gen: number) {
    super(view);
    this.#token = token;
    this.#offset = offset;
    this.#gen = gen;
  }
  /** The pool offset of a view stamped with `token`, or -1 for any other object. */
  static offsetOf(view: object, token: object): number {
    return #token in view && view.#token === token ? view.#offset : -1;
  }
  /** The generation of a view stamped with `token`, or -1 (no handle) for any other object. */
  static genOf(view: object, token: object): number {
    return #token in view && view.#token === token ? view.#gen : -1;
  }
  static setGen(view: object, token: object, gen: number): void {
    if (#token in view && view.#token === token) view.#gen = gen;
  }
}

export class ViewKeeper {
  private readonly token = {};
  /** @param reuse keep freed views for reuse (not in debug mode) */
  constructor(private readonly reuse = true) {}
  /**
   * Kept views of length n at [n * KEPT_PER_LENGTH, + KEPT_PER_LENGTH), their offsets beside (-1: empty);
   * made when the first view is kept (about 64 KiB in all), so a pool that frees no small view pays nothing.
   */
  private kept: (Buffer | undefined)[] | undefined;
  private keptOffset = new Float64Array(0);
  /** Where the next kept view of each length goes (a ring: the oldest is overwritten). */
  private next = new Uint8Array(0);

  /** Marks `view`, just made over the allocation at pool offset `offset` (generation `gen`), as this keeper's. */
  stamp(view: Buffer, offset: number, gen = 0): Buffer {
    new OffsetStamp(view, this.token, offset, gen);
    return view;
  }

  /** The generation a view of this keeper carries, or -1 (no handle: a view made elsewhere). */
  genOf(view: object): number {
    return OffsetStamp.genOf(view, this.token);
  }

  /** The pool offset of a view this keeper stamped, or -1 (any other object, a Uint8Array included). */
  offsetOf(view: object): number {
    return OffsetStamp.offsetOf(view, this.token);
  }

  /** Keeps a stamped view whose allocation (at `offset`) was just freed. */
  keep(view: Buffer, offset: number): void {
    const length = view.length;
    if (length > MAX_KEPT_LENGTH || !this.reuse) return;
    if (this.kept === undefined) {
      this.kept = new Array((MAX_KEPT_LENGTH + 1) * KEPT_PER_LENGTH).fill(undefined);
      this.keptOffset = new Float64Array((MAX_KEPT_LENGTH + 1) * KEPT_PER_LENGTH).fill(-1);
      this.next = new Uint8Array(MAX_KEPT_LENGTH + 1);
    }
    const at = length * KEPT_PER_LENGTH + this.next[length];
    this.kept[at] = view;
    this.keptOffset[at] = offset;
    this.next[length] = (this.next[length] + 1) % KEPT_PER_LENGTH;
  }

  /** A kept view of exactly `length` bytes at `offset` (a new allocation there, generation `gen`), taken out; or undefined. */
  take(length: number, offset: number, gen = 0): Buffer | undefined {
    if (length > MAX_KEPT_LENGTH || this.kept === undefined) return undefined;
    const base = length * KEPT_PER_LENGTH;
    for (let i = 0; i < KEPT_PER_LENGTH; i++) {
      if (this.keptOffset[base + i] === offset) {
        const view = this.kept[base + i];
        this.kept[base + i] = undefined;
        this.keptOffset[base + i] = -1;
        if (view !== undefined) OffsetStamp.setGen(view, this.token, gen);
        return view;
      }
    }
    return undefined;
  }

  /** Drops every kept view (the pool is closing). */
  clear(): void {
    this.kept = undefined;
    this.keptOffset = new Float64Array(0);
    this.next = new Uint8Array(0);
  }
}
