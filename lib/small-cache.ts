// A JavaScript-side cache for small allocations of a Pool, so that the common alloc/free pair does not
// cross into C++ at all: crossing the N-API boundary twice costs more than the heap's own work.
//
// The cache takes slabs (64 KiB blocks, smaller in small pools; 4096-aligned) from the pool's heap, one
// size class per slab (slots of 16 x k bytes, k = 1..64), and hands out slots from a LIFO stack per
// class, as tcache and mimalloc do. Every free is validated exactly, with no division: a page table maps
// each 4 KiB page of the pool's offset space to the page's first entry in `state`, which holds one byte
// per 16-byte granule of every slab: 0 where no slot starts, the class where a free slot starts, and
// LIVE | class where a live one starts. So a double free or an interior offset is refused and changes
// nothing.
//
// Views: the Buffers the pool makes for slots are stamped with their offset (see ViewStamp), so free(view)
// finds the slot without asking the Buffer. A stamped Buffer freed with free(view) is kept (a few per
// exact length) with its slot, and the next alloc() of that length hands the same Buffer out again, so
// that the common pair makes no new object. It views exactly the slot's first `length` bytes, as a fresh
// view would (any stale reference to it already showed that memory).
//
// Invariants (check() verifies them):
//   - every slab is a live allocation of the heap, and its pages map to its granules in the page table;
//   - a slot is free (state = class) exactly when it is on its class stack or kept with a view of a
//     length of its class, and in one of those places only;
//   - slabLive[s] is the number of live slots of slab s; their sum is liveSlots.
// Memory: one byte of `state` per 16 bytes of slab (6.25%), and up to 32 kept Buffers per length.
// Only offsets below 2^31 are cached (they stay small integers, which V8 computes with fastest); a slab
// the heap places higher is given back, and small requests there go to the heap.
// Shared pools do not use this cache (other processes could not see its state): theirs is in the segment,
// native/core/shared_cache.h.
import { PoolError, Status, statusError } from './errors';
import { Stamp } from './stamp';

export const SMALL_MAX = 1024;
const CLASSES = SMALL_MAX / 16;
const MAX_SLAB_BYTES = 65536;
const PAGE = 4096;
const PAGE_SHIFT = 12;
const LIVE = 0x80;
const CACHE_LIMIT = 2 ** 31;
/** Empty slabs a class keeps before giving one back to the heap. */
const KEEP_EMPTY = 2;
/** Freed Buffers kept per exact length for reuse. */
const VIEWS_PER_LENGTH = 32;

export interface SlabHost {
  /** A 4096-aligned heap block of `bytes` for a slab, its usable size, or undefined when the heap is full. */
  allocSlab(bytes: number): { offset: number; usable: number } | undefined;
  freeSlab(offset: number): void;
}

// Views the cache made carry their cache and offset in private fields, stamped on the Buffer with the
// constructor-return trick: reading them costs about nothing (a Buffer's own byteOffset and buffer
// getters cost 8-12 ns each on Node 20), and no code outside this class can forge or change them.
class ViewStamp extends Stamp {
  #cache: SmallCache;
  #offset: number;
  #granule: number;
  constructor(view: Buffer, cache: SmallCache, offset: number, granule: number) {
    super(view);
    this.#cache = cache;
    this.#offset = offset;
    this.#granule = granule;
  }
  /** The pool offset of a view `cache` made, or -1 for any other object. */
  static offsetOf(view: object, cache: SmallCache): number {
    return #cache in view && view.#cache === cache ? view.#offset : -1;
  }
  /** The granule index of a stamped view's slot when it was made: true only while its slab is held. */
  static granuleOf(view: Buffer): number {
    return (view as unknown as ViewStamp).#granule;
  }
}

function foreign(offset: number): Error {
  return statusError(Status.Foreign, `offset ${offset}`);
}

export class SmallCache {
  liveBytes = 0;
  slotAllocations = 0;
  slotFrees = 0;
  /** Slabs held now, their usable bytes, and slabs taken from and given back to the heap, ever. */
  slabs = 0;
  slabBytes = 0;
  slabAllocations = 0;
  slabFrees = 0;

  /** Per 4 KiB page of offsets: 1 + the index in `state` of the page's first granule; 0 = not a slab page. */
  private pageTable = new Int32Array(256);
  /** Per granule of every slab id: 0, class (a free slot starts here) or LIVE | class. */
  private state: Uint8Array;
  private readonly slabBase: number[] = [];
  private readonly slabClass: number[] = []; // 0 for a released id
  private readonly slabCount: number[] = []; // slots per slab
  private readonly slabUsable: number[] = [];
  private slabLive = new Int32Array(16);
  private readonly freeIds: number[] = [];
  private readonly stacks: number[][] = Array.from({ length: CLASSES + 1 }, () => []);
  /** Freed stamped Buffers kept for reuse: those of length n at [n * VIEWS_PER_LENGTH, + keptCount[n]). */
  private readonly kept: (Buffer | undefined)[] = new Array((SMALL_MAX + 1) * VIEWS_PER_LENGTH).fill(undefined);
  private readonly keptCount = new Int32Array(SMALL_MAX + 1);
  private readonly emptySlabs = new Int32Array(CLASSES + 1);

  /** Bytes per slab (a power of two): 64 KiB, less in small pools so that 64 classes never take more than a quarter. */
  private readonly slabSize: number;
  /** log2 of granules per slab: a granule index >>> granuleShift is its slab id. */
  private readonly granuleShift: number;

  constructor(private readonly host: SlabHost, poolSize: number) {
    let slab = MAX_SLAB_BYTES;
    while (slab > PAGE && slab * 256 > poolSize) slab /= 2;
    this.slabSize = slab;
    this.granuleShift = Math.log2(slab / 16);
    this.state = new Uint8Array(16 * (slab / 16));
  }

  get liveSlots(): number {
    return this.slotAllocations - this.slotFrees;
  }

  /** An offset for `size` (an integer 1..SMALL_MAX) bytes, or -1 when no slab can be had. */
  alloc(size: number): number {
    const cls = (size + 15) >>> 4;
    const stack = this.stacks[cls];
    if (stack.length === 0 && !this.refill(cls)) return -1;
    const offset = stack.pop()!;
    this.lend(offset, cls);
    return offset;
  }

  /** A Buffer freed earlier with exactly `size` (an integer 1..SMALL_MAX) bytes, now allocated again; or undefined. */
  allocView(size: number): Buffer | undefined {
    const n = this.keptCount[size];
    if (n === 0) return undefined;
    const at = size * VIEWS_PER_LENGTH + n - 1;
    const view = this.kept[at]!;
    this.kept[at] = undefined;
    this.keptCount[size] = n - 1;
    this.lendAt(ViewStamp.granuleOf(view), (size + 15) >>> 4); // a kept view's slab is held: its granule is right
    return view;
  }

  /** Marks `view`, just made over the live slot at `offset`, as the cache's (see ViewStamp). */
  stamp(view: Buffer, offset: number): Buffer {
    new ViewStamp(view, this, offset, this.granuleOf(offset));
    return view;
  }

  /** The offset of a view stamp() marked for this cache, or -1 (any other object, a Uint8Array included). */
  offsetOfView(view: object): number {
    return ViewStamp.offsetOf(view, this);
  }

  /**
   * Frees `what` when it is a slot of the cache: an integer offset, or a Buffer stamp() marked (which
   * may be kept for reuse). True when done; false when it is anything else (the heap's business, or an
   * argument error for the caller to report). Throws ERR_POOL_FOREIGN_BUFFER / ERR_POOL_DOUBLE_FREE and
   * changes nothing when it is in a slab but not a live slot's start.
   */
  free(what: unknown): boolean {
    let offset: number;
    if (typeof what === 'number') {
      if ((what | 0) !== what || what < 0) return false;
      offset = what;
    } else {
      if (typeof what !== 'object' || what === null) return false;
      offset = ViewStamp.offsetOf(what, this);
      if (offset < 0) return false;
    }
    const page = offset >>> PAGE_SHIFT;
    if (page >= this.pageTable.length) return false;
    const first = this.pageTable[page];
    if (first === 0) return false;
    const g = first - 1 + ((offset & (PAGE - 1)) >>> 4);
    const st = this.state[g];
    if (st < LIVE || (offset & 15) !== 0) throw this.refusal(offset);
    const cls = st ^ LIVE;
    this.state[g] = cls;
    const length = typeof what === 'number' ? 0 : (what as Buffer).length;
    const n = this.keptCount[length];
    if (length > (cls - 1) << 4 && n < VIEWS_PER_LENGTH) {
      this.kept[length * VIEWS_PER_LENGTH + n] = what as Buffer;
      this.keptCount[length] = n + 1;
    } else {
      this.stacks[cls].push(offset);
    }
    this.liveBytes -= cls << 4;
    this.slotFrees++;
    const slab = g >>> this.granuleShift;
    if (--this.slabLive[slab] === 0 && ++this.emptySlabs[cls] > KEEP_EMPTY) this.release(slab);
    return true;
  }

  /** free() of an offset with the size the caller gave, which must fit the slot. */
  freeSized(offset: number, size: number): boolean {
    const slot = this.usableSize(offset);
    if (slot < 0) return false;
    if (size > slot) {
      throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} does not fit the allocation at offset ${offset} (${slot} usable bytes)`);
    }
    return this.free(offset);
  }

  /** Why the slab offset `offset` cannot be freed: not a slot's start, or a free slot. */
  private refusal(offset: number): Error {
    const g = this.granuleOf(offset);
    if (this.state[g] === 0 || offset % 16 !== 0) return foreign(offset);
    return statusError(Status.DoubleFree, `offset ${offset}`);
  }

  /** The slot size of a live slot at `offset`; -1 when the offset is not in a slab. Throws like free. */
  usableSize(offset: number): number {
    const g = this.granuleOf(offset);
    if (g < 0) return -1;
    const st = this.state[g];
    if (st < LIVE || offset % 16 !== 0) throw this.refusal(offset);
    return (st ^ LIVE) << 4;
  }

  /** Whether a heap block at `offset` is one of the cache's slabs. */
  isSlab(offset: number): boolean {
    const g = this.granuleOf(offset);
    return g >= 0 && this.slabBase[g >>> this.granuleShift] === offset;
  }

  /** The slots of the slab at `offset` as used slots and free runs, in address order. */
  *slabBlocks(offset: number): IterableIterator<{ offset: number; size: number; used: boolean }> {
    const g0 = this.granuleOf(offset);
    const slab = g0 >>> this.granuleShift;
    const slotSize = this.slabClass[slab] << 4;
    const end = offset + this.slabUsable[slab];
    let freeStart = -1;
    for (let slot = 0; slot < this.slabCount[slab]; slot++) {
      const at = offset + slot * slotSize;
      if (this.state[g0 + slot * (slotSize >>> 4)] & LIVE) {
        if (freeStart >= 0) yield { offset: freeStart, size: at - freeStart, used: false };
        freeStart = -1;
        yield { offset: at, size: slotSize, used: true };
      } else if (freeStart < 0) {
        freeStart = at;
      }
    }
    const tail = offset + this.slabCount[slab] * slotSize;
    if (freeStart >= 0 || tail < end) yield { offset: freeStart >= 0 ? freeStart : tail, size: end - (freeStart >= 0 ? freeStart : tail), used: false };
  }

  /** Gives every empty slab back to the heap; returns how many. */
  releaseEmpty(): number {
    let n = 0;
    for (let slab = 0; slab < this.slabClass.length; slab++) {
      if (this.slabClass[slab] !== 0 && this.slabLive[slab] === 0) {
        this.release(slab);
        n++;
      }
    }
    return n;
  }

  /** Checks the invariants; returns the first violation's description, or ''. */
  check(heapHasBlock: (offset: number) => boolean): string {
    const onStack = new Set<number>();
    const stacked = (o: number, cls: number): string => {
      if (onStack.has(o)) return `small-object cache: offset ${o} is on a free stack twice`;
      onStack.add(o);
      const g = this.granuleOf(o);
      if (g < 0 || this.state[g] !== cls) return `small-object cache: offset ${o} is on a free stack of class ${cls} but is not such a free slot`;
      return '';
    };
    for (let cls = 1; cls <= CLASSES; cls++) {
      for (const o of this.stacks[cls]) {
        const problem = stacked(o, cls);
        if (problem) return problem;
      }
    }
    for (let length = 1; length <= SMALL_MAX; length++) {
      for (const view of this.keptViews(length)) {
        if (view.length !== length) return `small-object cache: a kept view of length ${length} has length ${view.length}`;
        const problem = stacked(this.offsetOfView(view), (length + 15) >>> 4);
        if (problem) return problem;
      }
    }
    let live = 0;
    for (let slab = 0; slab < this.slabClass.length; slab++) {
      const cls = this.slabClass[slab];
      if (cls === 0) continue;
      const base = this.slabBase[slab];
      if (!heapHasBlock(base)) return `small-object cache: slab at offset ${base} is not a live heap block`;
      const g0 = slab << this.granuleShift;
      for (let p = 0; p < this.slabSize / PAGE; p++) {
        if (this.pageTable[base / PAGE + p] !== g0 + p * (PAGE / 16) + 1) return `small-object cache: page table disagrees at slab ${base}`;
      }
      let n = 0;
      for (let i = 0; i < this.slabSize / 16; i++) {
        const st = this.state[g0 + i];
        const slotStart = i % cls === 0 && i / cls < this.slabCount[slab];
        if (!slotStart ? st !== 0 : (st & ~LIVE) !== cls) return `small-object cache: state of granule ${i} of slab ${base} is ${st}`;
        const at = base + i * 16;
        if (st === cls && !onStack.has(at)) return `small-object cache: free slot at offset ${at} is on no free stack`;
        if (st & LIVE) n++;
      }
      if (n !== this.slabLive[slab]) return `small-object cache: live count of slab ${base} disagrees`;
      live += n;
    }
    if (live !== this.liveSlots) return 'small-object cache: live slot count disagrees';
    return '';
  }

  /** The Buffers kept for reuse with length `length`. */
  private keptViews(length: number): Buffer[] {
    return this.kept.slice(length * VIEWS_PER_LENGTH, length * VIEWS_PER_LENGTH + this.keptCount[length]) as Buffer[];
  }

  private lend(offset: number, cls: number): void {
    this.lendAt(this.pageTable[offset >>> PAGE_SHIFT] - 1 + ((offset & (PAGE - 1)) >>> 4), cls);
  }

  /** Marks the free slot at granule `g` (of class `cls`) live. */
  private lendAt(g: number, cls: number): void {
    this.state[g] = cls | LIVE;
    if (this.slabLive[g >>> this.granuleShift]++ === 0) this.emptySlabs[cls]--;
    this.liveBytes += cls << 4;
    this.slotAllocations++;
  }

  /** The index in `state` of the granule at `offset`, or -1 when the offset is not in a slab. */
  private granuleOf(offset: number): number {
    if (!(offset >= 0 && offset < CACHE_LIMIT)) return -1;
    const page = offset >>> PAGE_SHIFT;
    if (page >= this.pageTable.length || this.pageTable[page] === 0) return -1;
    return this.pageTable[page] - 1 + ((offset & (PAGE - 1)) >>> 4);
  }

  /** Free slots for class `cls`: those kept with views of its lengths first (dropping the views), else a new slab. */
  private refill(cls: number): boolean {
    const stack = this.stacks[cls];
    for (let length = (cls - 1) * 16 + 1; length <= cls * 16; length++) {
      for (const view of this.keptViews(length)) stack.push(this.offsetOfView(view));
      this.kept.fill(undefined, length * VIEWS_PER_LENGTH, (length + 1) * VIEWS_PER_LENGTH);
      this.keptCount[length] = 0;
    }
    if (stack.length > 0) return true;
    const got = this.host.allocSlab(this.slabSize);
    if (got === undefined) return false;
    if (got.offset + this.slabSize > CACHE_LIMIT) {
      this.host.freeSlab(got.offset);
      return false;
    }
    const slab = this.freeIds.length > 0 ? this.freeIds.pop()! : this.slabBase.length;
    const firstPage = got.offset / PAGE;
    const pages = this.slabSize / PAGE;
    if (firstPage + pages > this.pageTable.length) {
      let n = this.pageTable.length;
      while (firstPage + pages > n) n *= 2;
      const grown = new Int32Array(n);
      grown.set(this.pageTable);
      this.pageTable = grown;
    }
    const g0 = slab << this.granuleShift;
    if (g0 + this.slabSize / 16 > this.state.length) {
      const grown = new Uint8Array(this.state.length * 2);
      grown.set(this.state);
      this.state = grown;
    }
    for (let p = 0; p < pages; p++) this.pageTable[firstPage + p] = g0 + p * (PAGE / 16) + 1;
    const count = Math.floor(this.slabSize / (cls << 4));
    this.state.fill(0, g0, g0 + this.slabSize / 16);
    for (let i = 0; i < count; i++) this.state[g0 + i * cls] = cls;
    if (slab >= this.slabLive.length) {
      const grown = new Int32Array(this.slabLive.length * 2);
      grown.set(this.slabLive);
      this.slabLive = grown;
    }
    this.slabBase[slab] = got.offset;
    this.slabClass[slab] = cls;
    this.slabCount[slab] = count;
    this.slabUsable[slab] = got.usable;
    this.slabLive[slab] = 0;
    for (let i = count - 1; i >= 0; i--) stack.push(got.offset + i * (cls << 4)); // lowest address on top
    this.emptySlabs[cls]++;
    this.slabs++;
    this.slabBytes += got.usable;
    this.slabAllocations++;
    return true;
  }

  private release(slab: number): void {
    const base = this.slabBase[slab];
    const cls = this.slabClass[slab];
    const end = base + this.slabSize;
    const outside = (o: number) => o < base || o >= end;
    const stack = this.stacks[cls];
    let kept = 0;
    for (let i = 0; i < stack.length; i++) if (outside(stack[i])) stack[kept++] = stack[i];
    stack.length = kept;
    for (let length = (cls - 1) * 16 + 1; length <= cls * 16; length++) {
      const views = this.keptViews(length).filter((view) => outside(this.offsetOfView(view)));
      this.kept.fill(undefined, length * VIEWS_PER_LENGTH, (length + 1) * VIEWS_PER_LENGTH);
      views.forEach((view, i) => (this.kept[length * VIEWS_PER_LENGTH + i] = view));
      this.keptCount[length] = views.length;
    }
    this.pageTable.fill(0, base / PAGE, base / PAGE + this.slabSize / PAGE);
    this.emptySlabs[cls]--;
    this.slabs--;
    this.slabBytes -= this.slabUsable[slab];
    this.slabFrees++;
    this.slabClass[slab] = 0;
    this.freeIds.push(slab);
    this.host.freeSlab(base);
  }
}
