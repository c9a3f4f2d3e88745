// Allocation events on node:diagnostics_channel. Publishing checks hasSubscribers first, so nothing is
// built or sent while no one listens.
// A namespace import, not a default one: the emitted .d.ts must compile without esModuleInterop (TS1192).
import * as diagnosticsChannel from 'node:diagnostics_channel';

/** `{ pool, offset, size }` after every allocation. */
export const allocChannel = diagnosticsChannel.channel('mempool:alloc');
/** `{ pool, offset }` after every free. */
export const freeChannel = diagnosticsChannel.channel('mempool:free');
/** `{ pool, size }` when a request cannot be served. */
export const outOfMemoryChannel = diagnosticsChannel.channel('mempool:out-of-memory');

/**
 * Names of the `node:diagnostics_channel` channels mempool publishes on. Messages are sent
 * synchronously, in the allocating thread, only while someone subscribes; offsets are pool offsets.
 */
export const CHANNELS = {
  /** 'mempool:alloc': `{ pool, offset, size }` after every allocation of the pool's memory (a realloc is published as a free and an allocation, even in place; fallback allocations are not the pool's memory and are not published). */
  alloc: 'mempool:alloc',
  /** 'mempool:free': `{ pool, offset }` after every free of the pool's memory (and of the old block of a realloc; fallback frees are not published). */
  free: 'mempool:free',
  /** 'mempool:out-of-memory': `{ pool, size }` when no region can serve a request of `size` bytes (before any fallback). */
  outOfMemory: 'mempool:out-of-memory',
} as const;
