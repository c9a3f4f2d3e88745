// mempool: malloc-backed and named shared-memory pools for Node.js.
export { Pool } from './pool';
export type { GrowOptions, PoolOptions } from './pool';
export { SharedPool } from './shared-pool';
export type { AttachedProcess, SharedPoolCreateOptions, SharedPoolOpenOptions, SharedPoolStats, SharedPoolUnlinkOptions, SharedSegmentInfo } from './shared-pool';
export { SharedMutex, SharedSemaphore } from './sync';
export type { Acquired, WaitResult } from './sync';
export { SharedQueue } from './shared-queue';
export type { ReceivedMessage, SharedQueueStats } from './shared-queue';
export { MemoryManager } from './memory-manager';
export type { InitNormalOptions, InitSharedOptions } from './memory-manager';
export { ALGORITHMS } from './types';
export type { Algorithm, AllocOptions, BlockInfo, HeapOptions, HeapRun, LeakSite, PoolStats, SizeClassCount, StatsOptions } from './types';
export { CHANNELS } from './events';
export { memoryType } from './memory-type';
export type { MemoryType } from './memory-type';
export { PoolError } from './errors';
export type { ErrorCode, PoolErrorCode } from './errors';
export { formatBytes, renderHeapMapSvg, renderHeapMapText, SIZE_CLASSES, sizeClassOf, type HeapMapSvgOptions, type HeapMapTextOptions, type SizeClass } from './heap-map';
