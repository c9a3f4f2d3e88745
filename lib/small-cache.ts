// A JavaScript-side cache for small allocations of a Pool, so that the common alloc/free pair does not
// cross into C++ at all: crossing the N-API boundary twice costs more than the heap's own work.
//
// The cache takes slabs (64 KiB blocks, smaller in small pools; 4096-aligned) from the pool's heap, one size class per slab
// (slots of 16 x k bytes, k = 1..64), and hands out slots from a LIFO stack per class, as tcache and
// mimalloc do. Every free is validated exactly: a page table maps each 4 KiB page of the pool's offset
// space to its slab, the offset must be a slot start, and a bit per slot says whether it is live, so a
// double free or an interior offset is refused and changes nothing.
//
// Invariants (check() verifies them):
//   - every slab is a live allocation of the heap, and its 16 pages map to it in the page table;
//   - a slot is on its class stack exactly when its live bit is clear;
//   - live[s] is the number of live bits of slab s; liveSlots and liveBytes sum them.
// Shared pools do not use the cache: other processes could not see its state.
import { PoolError } from './errors';

export const SMALL_MAX = 1024;
const MAX_SLAB_BYTES = 65536;
const PAGE = 4096;
const WORDS_PER_SLAB = MAX_SLAB_BYTES / 16 / 32; // one bit per possible slot
/** Empty slabs a class keeps before giving one back to the heap. */
const KEEP_EMPTY = 2;

export interface SlabHost {
  /** A 4096-aligned heap block of `bytes` for a slab, its usable size, or undefined when the heap is full. */
  allocSlab(bytes: number): { offset: number; usable: number } | undefined;
  freeSlab(offset: number): void;
}

export class SmallCache {
  liveSlots = 0;
  liveBytes = 0;
  slotAllocations = 0;
  slotFrees = 0;
  /** Slabs held now, their usable bytes, and slabs taken from and given back to the heap, ever. */
  slabs = 0;
  slabBytes = 0;
  slabAllocations = 0;
  slabFrees = 0;

  private pageTable = new Int32Array(256); // slab id + 1 per page; 0 = not a slab page
  private readonly slabBase: number[] = [];
  private readonly slabSlot: number[] = []; // slot size; 0 for a released id
  private readonly slabCount: number[] = []; // slots per slab
  private readonly slabUsable: number[] = [];
  private readonly slabLive: number[] = [];
  private bits = new Uint32Array(WORDS_PER_SLAB * 16);
  private readonly freeIds: number[] = [];
  private readonly stacks: number[][] = Array.from({ length: SMALL_MAX / 16 + 1 }, () => []);
  private readonly emptySlabs: number[] = new Array(SMALL_MAX / 16 + 1).fill(0);

  /** Bytes per slab: 64 KiB, less in small pools so that 64 classes never take more than a quarter. */
  private readonly slabBytes_: number;

  constructor(private readonly host: SlabHost, poolSize: number) {
    let slab = MAX_SLAB_BYTES;
    while (slab > PAGE && slab * 256 > poolSize) slab /= 2;
    this.slabBytes_ = slab;
  }

  /** An offset for `size` (1..SMALL_MAX) bytes, or -1 when no slab can be had. */
  alloc(size: number): number {
    const cls = (size + 15) >>> 4;
    const stack = this.stacks[cls];
    if (stack.length === 0 && !this.refill(cls)) return -1;
    const offset = stack.pop()!;
    const slab = this.pageTable[(offset / PAGE) | 0] - 1;
    const slot = (offset - this.slabBase[slab]) / this.slabSlot[slab];
    this.bits[slab * WORDS_PER_SLAB + (slot >>> 5)] |= 1 << (slot & 31);
    if (this.slabLive[slab]++ === 0) this.emptySlabs[cls]--;
    this.liveSlots++;
    this.liveBytes += cls << 4;
    this.slotAllocations++;
    return offset;
  }

  /**
   * Frees the slot at `offset`: true when done, false when the offset is not in a slab (the heap's
   * business). Throws ERR_POOL_FOREIGN_BUFFER / ERR_POOL_DOUBLE_FREE and changes nothing otherwise.
   * `size`, when given, must fit the slot.
   */
  free(offset: number, size?: number): boolean {
    const slab = this.slabOf(offset);
    if (slab < 0) return false;
    const slotSize = this.slabSlot[slab];
    const slot = (offset - this.slabBase[slab]) / slotSize;
    if (slot !== Math.floor(slot) || slot >= this.slabCount[slab]) {
      throw new PoolError('ERR_POOL_FOREIGN_BUFFER', `Not the start of a live allocation of this pool: offset ${offset}`);
    }
    const word = slab * WORDS_PER_SLAB + (slot >>> 5);
    const mask = 1 << (slot & 31);
    if ((this.bits[word] & mask) === 0) throw new PoolError('ERR_POOL_DOUBLE_FREE', `Already freed: offset ${offset}`);
    if (size !== undefined && size > slotSize) {
      throw new PoolError('ERR_POOL_SIZE_MISMATCH', `Size ${size} does not fit the allocation at offset ${offset} (${slotSize} usable bytes)`);
    }
    this.bits[word] &= ~mask;
    const cls = slotSize >>> 4;
    this.stacks[cls].push(offset);
    this.liveSlots--;
    this.liveBytes -= slotSize;
    this.slotFrees++;
    if (--this.slabLive[slab] === 0 && ++this.emptySlabs[cls] > KEEP_EMPTY) this.release(slab);
    return true;
  }

  /** The slot size of a live slot at `offset`; -1 when the offset is not in a slab. Throws like free. */
  usableSize(offset: number): number {
    const slab = this.slabOf(offset);
    if (slab < 0) return -1;
    const slotSize = this.slabSlot[slab];
    const slot = (offset - this.slabBase[slab]) / slotSize;
    if (slot !== Math.floor(slot) || slot >= this.slabCount[slab]) {
      throw new PoolError('ERR_POOL_FOREIGN_BUFFER', `Not the start of a live allocation of this pool: offset ${offset}`);
    }
    if ((this.bits[slab * WORDS_PER_SLAB + (slot >>> 5)] & (1 << (slot & 31))) === 0) {
      throw new PoolError('ERR_POOL_DOUBLE_FREE', `Already freed: offset ${offset}`);
    }
    return slotSize;
  }

  /** Whether a heap block at `offset` is one of the cache's slabs. */
  isSlab(offset: number): boolean {
    const slab = this.slabOf(offset);
    return slab >= 0 && this.slabBase[slab] === offset;
  }

  /** The slots of the slab at `offset` as used slots and free runs, in address order. */
  *slabBlocks(offset: number): IterableIterator<{ offset: number; size: number; used: boolean }> {
    const slab = this.slabOf(offset);
    const slotSize = this.slabSlot[slab];
    const end = offset + this.slabUsable[slab];
    let freeStart = -1;
    for (let slot = 0; slot < this.slabCount[slab]; slot++) {
      const at = offset + slot * slotSize;
      if (this.bits[slab * WORDS_PER_SLAB + (slot >>> 5)] & (1 << (slot & 31))) {
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
    for (let slab = 0; slab < this.slabSlot.length; slab++) {
      if (this.slabSlot[slab] !== 0 && this.slabLive[slab] === 0) {
        this.release(slab);
        n++;
      }
    }
    return n;
  }

  /** Counts violations of the invariants; returns the first one's description, or ''. */
  check(heapHasBlock: (offset: number) => boolean): string {
    let live = 0;
    const onStack = new Set<number>();
    for (const stack of this.stacks) for (const o of stack) {
      if (onStack.has(o)) return `small-object cache: offset ${o} is on a free stack twice`;
      onStack.add(o);
    }
    for (let slab = 0; slab < this.slabSlot.length; slab++) {
      const slotSize = this.slabSlot[slab];
      if (slotSize === 0) continue;
      const base = this.slabBase[slab];
      if (!heapHasBlock(base)) return `small-object cache: slab at offset ${base} is not a live heap block`;
      for (let p = 0; p < this.slabBytes_ / PAGE; p++) {
        if (this.pageTable[base / PAGE + p] !== slab + 1) return `small-object cache: page table disagrees at slab ${base}`;
      }
      let n = 0;
      for (let slot = 0; slot < this.slabCount[slab]; slot++) {
        const isLive = (this.bits[slab * WORDS_PER_SLAB + (slot >>> 5)] & (1 << (slot & 31))) !== 0;
        const stacked = onStack.has(base + slot * slotSize);
        if (isLive === stacked) return `small-object cache: slot at offset ${base + slot * slotSize} is ${isLive ? 'live and free' : 'neither live nor free'}`;
        if (isLive) n++;
      }
      if (n !== this.slabLive[slab]) return `small-object cache: live count of slab ${base} disagrees`;
      live += n;
    }
    if (live !== this.liveSlots) return 'small-object cache: live slot count disagrees';
    return '';
  }

  private slabOf(offset: number): number {
    const page = (offset / PAGE) | 0;
    if (page >= this.pageTable.length || offset < 0) return -1;
    return this.pageTable[page] - 1;
  }

  private refill(cls: number): boolean {
    const got = this.host.allocSlab(this.slabBytes_);
    if (got === undefined) return false;
    const slotSize = cls << 4;
    const slab = this.freeIds.length > 0 ? this.freeIds.pop()! : this.slabBase.length;
    const firstPage = got.offset / PAGE;
    if (firstPage + this.slabBytes_ / PAGE > this.pageTable.length) {
      let n = this.pageTable.length;
      while (firstPage + this.slabBytes_ / PAGE > n) n *= 2;
      const grown = new Int32Array(n);
      grown.set(this.pageTable);
      this.pageTable = grown;
    }
    if ((slab + 1) * WORDS_PER_SLAB > this.bits.length) {
      const grown = new Uint32Array(this.bits.length * 2);
      grown.set(this.bits);
      this.bits = grown;
    }
    this.pageTable.fill(slab + 1, firstPage, firstPage + this.slabBytes_ / PAGE);
    this.bits.fill(0, slab * WORDS_PER_SLAB, (slab + 1) * WORDS_PER_SLAB);
    const count = Math.floor(this.slabBytes_ / slotSize);
    this.slabBase[slab] = got.offset;
    this.slabSlot[slab] = slotSize;
    this.slabCount[slab] = count;
    this.slabUsable[slab] = got.usable;
    this.slabLive[slab] = 0;
    const stack = this.stacks[cls];
    for (let i = count - 1; i >= 0; i--) stack.push(got.offset + i * slotSize); // lowest address on top
    this.emptySlabs[cls]++;
    this.slabs++;
    this.slabBytes += got.usable;
    this.slabAllocations++;
    return true;
  }

  private release(slab: number): void {
    const base = this.slabBase[slab];
    const cls = this.slabSlot[slab] >>> 4;
    const end = base + this.slabBytes_;
    const stack = this.stacks[cls];
    let kept = 0;
    for (let i = 0; i < stack.length; i++) if (stack[i] < base || stack[i] >= end) stack[kept++] = stack[i];
    stack.length = kept;
    this.pageTable.fill(0, base / PAGE, base / PAGE + this.slabBytes_ / PAGE);
    this.emptySlabs[cls]--;
    this.slabs--;
    this.slabBytes -= this.slabUsable[slab];
    this.slabFrees++;
    this.slabSlot[slab] = 0;
    this.freeIds.push(slab);
    this.host.freeSlab(base);
  }
}
