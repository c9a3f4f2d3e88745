// Process and thread identity, judged from /proc: who holds a segment's lock, and which attachments, slab
// caches and pins belong to processes that are gone. Nothing here touches a segment.
//
// A pid means something only in its own PID namespace (current_pid_namespace): callers judge others' pids
// only when the segment's creator was in this one. A /proc entry that cannot be read tells nothing, and
// such a process is judged alive: calling a live process dead would hand its memory to others.
#pragma once

#include <cstdint>

namespace mempool {

// Whether process `pid` that started at `start_ticks` (/proc/<pid>/stat field 22; 0 = unknown) still runs.
bool process_alive(uint32_t pid, uint64_t start_ticks);
// The start ticks of a process (0 when unknown).
uint64_t process_start_ticks(uint32_t pid);
// The inode of this process's PID namespace (0 when /proc cannot tell).
uint64_t current_pid_namespace();
// When the machine booted, in Unix ms (0 when unknown): start ticks become wall-clock times with it.
uint64_t boot_unix_ms();
// This thread's id, cached (a system call otherwise); reset in a forked child.
uint32_t my_tid();
// Whether thread `tid` still runs (and is not a zombie); with start_lo != 0, also that it is the thread that
// started at those ticks (low 32 bits of /proc/<tid>/stat field 22), not a later one given the same id.
bool thread_alive(uint32_t tid, uint32_t start_lo = 0);
// The low 32 bits of this thread's start ticks, cached (0 when /proc cannot tell); reset in a forked child.
uint32_t my_thread_start_lo();

}  // namespace mempool
