// mempool's own named objects in a segment: robust mutexes, robust semaphores and queues (sync.h,
// shared_queue.h). Each is one heap block that starts with an ObjectHeader, named in the directory under a
// reserved key, "\0mempool:<kind>:<name>". lib/ refuses user keys that start with NUL, so no user call can
// read, replace, take or delete these blocks, and a free of one through any handle is refused because it is
// named (shared_pool.h, O3). keys() leaves them out.
//
// Invariants: an object's block is made and formatted under the segment's lock before its name goes live,
// so whoever finds the name finds a whole object; an object lives as long as its segment. Its parameters
// (permits, ring bytes, message limit) are fixed when it is made; opening it with other ones is
// Status::object_mismatch. Crash rules: see SharedPool::object (a crash while making one strands at most that
// block) and each object's own file.
// Trust: the header is validated on every open (magic, kind, version, sizes against the bytes its name
// covers) and the parameters are then kept in the caller's handle, never re-read.
#pragma once

#include <cstdint>
#include <string>

#include "shared_pool.h"
#include "shared_queue.h"
#include "sync.h"

namespace mempool {

constexpr size_t kMaxObjectNameBytes = 200;
constexpr uint64_t kDefaultQueueBytes = 1 << 20;
constexpr uint64_t kDefaultQueueMessages = 65536;

std::string object_key(ObjectKind kind, const std::string& name);

// Each finds the object named `name`, or makes it. A name is 1..kMaxObjectNameBytes bytes (invalid_argument).
Status open_mutex(SharedPool& pool, const std::string& name, RobustMutex** out);
// permits: 0 = whatever exists (kDefault... 1 when made), else 1..kMaxPermits and it must match.
Status open_semaphore(SharedPool& pool, const std::string& name, uint32_t permits, RobustSemaphore** out,
                      uint32_t* permits_out);
// max_bytes (ring bytes, a multiple of 16 of at least 32) and max_messages: 0 = whatever exists (the
// defaults when made), else they must match.
Status open_queue(SharedPool& pool, const std::string& name, uint64_t max_bytes, uint64_t max_messages, SharedQueue* out);

}  // namespace mempool
