// mempool: malloc-backed and named shared-memory pools for Node.js.
export { Pool, ALGORITHMS } from './pool';
export type { Algorithm, AllocOptions, BlockInfo, GrowOptions, HeapOptions, PoolOptions, PoolStats } from './pool';
export { memoryType } from './memory-type';
export type { MemoryType } from './memory-type';
export { PoolError } from './errors';
export type { ErrorCode, PoolErrorCode } from './errors';
