// Which kind of memory a Buffer views: every pool registers the ArrayBuffers of its regions here.
import { invalidArgType } from './errors';

/** Which memory a Buffer views: a Pool's ('normal'), a SharedPool's ('shared'), or any other ('other'). */
export type MemoryType = 'normal' | 'shared' | 'other';

const owners = new WeakMap<ArrayBuffer, { kind: 'normal' | 'shared' }>();

export function registerRegion(buffer: ArrayBuffer, kind: 'normal' | 'shared'): void {
  owners.set(buffer, { kind });
}

/**
 * 'normal' for a view into a Pool, 'shared' for a view into a SharedPool, 'other' for any other Buffer
 * (including the fallback allocations a pool served from the system allocator). A view of a closed
 * pool (length 0) still reports its pool's type. Throws ERR_INVALID_ARG_TYPE when `buffer` is not a
 * Buffer or TypedArray.
 */
export function memoryType(buffer: ArrayBufferView): MemoryType {
  if (!ArrayBuffer.isView(buffer)) {
    throw invalidArgType('buffer', 'a Buffer or TypedArray', buffer);
  }
  const owner = owners.get(buffer.buffer as ArrayBuffer);
  return owner ? owner.kind : 'other';
}
