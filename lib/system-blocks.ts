// Blocks from the system allocator (malloc), one external ArrayBuffer each: the fallback of a Pool and
// the MemoryManager's memory before initNormal. memoryType() of their views is 'other'.
import { Status, statusError } from './errors';
import { addon } from './native';

export class SystemBlocks {
  private readonly live = new Set<ArrayBuffer>();
  private readonly freed = new WeakSet<ArrayBuffer>();

  get count(): number {
    return this.live.size;
  }

  alloc(size: number, zero: boolean): Buffer {
    const ab = addon.systemAlloc(size);
    if (ab === null) throw statusError(Status.OutOfMemory, `the system allocator refused ${size} bytes`);
    this.live.add(ab);
    const buffer = Buffer.from(ab, 0, size);
    if (zero) buffer.fill(0);
    return buffer;
  }

  /** True when buffer views the start of one of these blocks. */
  owns(buffer: Uint8Array): boolean {
    return buffer.byteOffset === 0 && this.live.has(buffer.buffer as ArrayBuffer);
  }

  /** Frees the block (its views become length 0), or throws ERR_POOL_DOUBLE_FREE / ERR_POOL_FOREIGN_BUFFER. */
  free(buffer: Uint8Array): void {
    if (!this.owns(buffer)) throw this.refusal(buffer);
    const ab = buffer.buffer as ArrayBuffer;
    this.live.delete(ab);
    this.freed.add(ab);
    addon.systemFree(ab);
  }

  /** The error for a buffer that is not a live block here. */
  refusal(buffer: Uint8Array): Error {
    if (this.freed.has(buffer.buffer as ArrayBuffer)) return statusError(Status.DoubleFree, 'a system allocation');
    return statusError(Status.Foreign, 'a buffer that is no system allocation of this pool');
  }

  releaseAll(): void {
    for (const ab of this.live) addon.systemFree(ab);
    this.live.clear();
  }
}
