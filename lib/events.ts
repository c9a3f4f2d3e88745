// Allocation events on node:diagnostics_channel. Publishing checks hasSubscribers first, so nothing is
// built or sent while no one listens.
import diagnosticsChannel from 'node:diagnostics_channel';

/** `{ pool, offset, size }` after every allocation. */
export const allocChannel = diagnosticsChannel.channel('mempool:alloc');
/** `{ pool, offset }` after every free. */
export const freeChannel = diagnosticsChannel.channel('mempool:free');
/** `{ pool, size }` when a request cannot be served. */
export const outOfMemoryChannel = diagnosticsChannel.channel('mempool:out-of-memory');

export const CHANNELS = {
  alloc: 'mempool:alloc',
  free: 'mempool:free',
  outOfMemory: 'mempool:out-of-memory',
} as const;
