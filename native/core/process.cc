#include "process.h"

#include "segment.h"  // kLockWaiters

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mempool {

// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot; 0 if unknown.
uint64_t process_start_ticks(uint32_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command name may contain spaces and parentheses
  if (p == nullptr) return 0;
  // After ") " come fields 3, 4, ...: skip to field 22.
  int field = 2;
  for (const char* c = p + 1; *c != '\0'; ++c) {
    if (*c == ' ' && ++field == 22) return std::strtoull(c + 1, nullptr, 10);
  }
  return 0;
}

bool process_alive(uint32_t pid, uint64_t start_ticks) {
  if (pid == 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  if (start_ticks == 0) return true;
  // A /proc entry that cannot be read (no file descriptors left, hidepid) tells nothing: judged alive,
  // because calling a live process dead hands its memory to others while it still uses it.
  uint64_t now = process_start_ticks(pid);
  return now == 0 || now == start_ticks;
}

uint64_t current_pid_namespace() {
  static const uint64_t ns = [] {
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : uint64_t(0);
  }();
  return ns;
}

uint64_t boot_unix_ms() {
  FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t btime = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "btime ", 6) == 0) btime = std::strtoull(line + 6, nullptr, 10);
  }
  std::fclose(f);
  return btime * 1000;
}

// This thread's id, cached (a system call otherwise: far more than the lock itself); reset in a
// forked child.
namespace {
thread_local uint32_t cached_tid = 0;
void forget_ids() { cached_tid = 0; }
}  // namespace
uint32_t my_tid() {
  if (cached_tid == 0) {
    static const int registered = pthread_atfork(nullptr, nullptr, forget_ids);
    (void)registered;
    cached_tid = static_cast<uint32_t>(syscall(SYS_gettid));
  }
  return cached_tid;
}


// Whether thread `tid` still runs: /proc/<tid>/stat exists (thread ids are visible there even when
// not listed), the thread is not a zombie waiting to be reaped, and, when start_lo is not 0, the low 32 bits
// of its start ticks (field 22) are start_lo, so a later thread that was given the same id is not taken for it.
bool thread_alive(uint32_t tid, uint32_t start_lo) {
  if (tid == 0 || tid >= kLockWaiters) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", tid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno != ENOENT && errno != ESRCH;  // unsure (e.g. EMFILE): treat as alive
  char buf[1024];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X') return false;
  if (start_lo == 0) return true;
  int field = 2;
  for (const char* c = p + 1; *c != '\0'; ++c) {
    if (*c == ' ' && ++field == 22) return static_cast<uint32_t>(std::strtoull(c + 1, nullptr, 10)) == start_lo;
  }
  return true;  // a line cut short tells nothing: alive
}

namespace {
thread_local uint32_t cached_start_lo = 0;
thread_local bool cached_start_known = false;
void forget_start() { cached_start_known = false; }
}  // namespace
uint32_t my_thread_start_lo() {
  if (!cached_start_known) {
    static const int registered = pthread_atfork(nullptr, nullptr, forget_start);
    (void)registered;
    cached_start_lo = static_cast<uint32_t>(process_start_ticks(my_tid()));  // /proc/<tid>/stat: this thread's
    cached_start_known = true;
  }
  return cached_start_lo;
}

}  // namespace mempool
