#include "segment.h"

#include "shared_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mempool {
namespace {

constexpr uint32_t kSlotEmpty = 0;
constexpr uint32_t kSlotDeleted = UINT32_MAX;

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 14695981039346656037ULL;  // the standard FNV-1a 64 offset basis (layout 2 had a digit less)
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser: spreads offsets (multiples of 16) over the slots
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t now_unix_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

Status errno_status(int e) {
  switch (e) {
    case EEXIST: return Status::exists;
    case ENOENT: return Status::not_found;
    case EACCES:
    case EPERM: return Status::permission;
    case ENAMETOOLONG:
    case EINVAL: return Status::invalid_name;
    default: return Status::system_error;
  }
}

}  // namespace

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

namespace {

// The inode of this process's PID namespace (0 when /proc cannot tell).
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

uint64_t directory_bytes(uint32_t capacity) {
  return uint64_t(capacity) * sizeof(DirEntry) + uint64_t(capacity) * 2 * sizeof(uint32_t);
}

bool header_consistent(const SegmentHeader& h, uint64_t real_size, uint64_t* heap_offset) {
  if (h.version != kSegmentVersion || h.header_size != kSegmentHeaderSize || h.size != real_size) return false;
  if (h.algorithm < 1 || h.algorithm > 3) return false;
  if (h.directory_offset != kDirectoryOffset) return false;
  if (h.directory_capacity < 1 || h.directory_capacity > kMaxDirectoryCapacity) return false;
  if (h.gen_shift != 4 && h.gen_shift != 8) return false;
  if (h.pin_slots != kPinSlots || h.track_owners > 1) return false;
  uint64_t gen_offset = 0;
  if (!Segment::layout(real_size, static_cast<uint32_t>(h.directory_capacity), h.gen_shift, &gen_offset, heap_offset)) return false;
  if (h.gen_table_offset != gen_offset || h.gen_entries != (real_size - *heap_offset) >> h.gen_shift) return false;
  if (h.slab_size != 0 && (!is_power_of_two(h.slab_size) || h.slab_size < kMinSlabSize || h.slab_size > kMaxSlabSize)) return false;
  if (h.slab_size != 0 && h.gen_shift != 8) return false;  // slab segments put heap blocks on 256-byte granules
  return h.heap_offset == *heap_offset && h.heap_size == real_size - *heap_offset;
}

}  // namespace

bool Segment::valid_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameBytes || name == "." || name == "..") return false;
  for (char c : name) {
    if (c == '/' || c == '\0') return false;
  }
  return true;
}

bool Segment::layout(uint64_t size, uint32_t capacity, uint32_t gen_shift, uint64_t* gen_table_offset, uint64_t* heap_offset) {
  if (capacity < 1 || capacity > kMaxDirectoryCapacity || (gen_shift != 4 && gen_shift != 8)) return false;
  if (size > (uint64_t(1) << 48)) return false;
  uint64_t gens = round_up(kDirectoryOffset + directory_bytes(capacity), 64);
  // One word per granule of the whole segment: a little more than the heap needs, and no circularity.
  uint64_t off = round_up(gens + (size >> gen_shift) * sizeof(uint32_t), kMaxAlign);
  if (size < off + kMaxAlign) return false;
  *gen_table_offset = gens;
  *heap_offset = off;
  return true;
}

uint32_t Segment::default_directory_capacity(uint64_t size) {
  uint64_t n = size / kBytesPerDefaultKey;
  if (n < kDefaultDirectoryCapacity) n = kDefaultDirectoryCapacity;
  if (n > kMaxDirectoryCapacity) n = kMaxDirectoryCapacity;
  return static_cast<uint32_t>(n);
}

Segment::Segment(std::string name, uint8_t* base, uint64_t size, uint64_t heap_offset, uint32_t capacity,
                 Algorithm algorithm, uint32_t lock_timeout_ms, uint32_t gen_shift, uint64_t gen_table_offset)
    : name_(std::move(name)),
      base_(base),
      size_(size),
      heap_offset_(heap_offset),
      capacity_(capacity),
      algorithm_(algorithm),
      lock_timeout_ms_(lock_timeout_ms),
      gen_shift_(gen_shift),
      gen_table_(reinterpret_cast<uint32_t*>(base + gen_table_offset)),
      gen_entries_((size - heap_offset) >> gen_shift) {}

namespace {
Status (*g_repair_hook)(Segment&) = nullptr;
}
void Segment::set_repair_hook(Status (*hook)(Segment&)) { g_repair_hook = hook; }

Segment::~Segment() { unmap(); }

void Segment::unmap() {
  if (base_ == nullptr) return;
  if (attached_) {
    attached_ = false;
    // Brief: this may run in a garbage-collection finalizer; an entry left behind is pruned once the
    // process exits.
    uint32_t timeout = lock_timeout_ms_;
    lock_timeout_ms_ = timeout < 100 ? timeout : 100;
    bool recovered = false;
    if (lock(&recovered) == Status::ok) {
      unregister_attach();
      unlock();
    }
    lock_timeout_ms_ = timeout;
  }
  heap_.reset();
  munmap(base_, size_);
  base_ = nullptr;
}

void Segment::attach() {
  if (attached_ || base_ == nullptr) return;
  bool recovered = false;
  if (lock(&recovered) == Status::ok) {
    register_attach();
    unlock();
    attached_ = true;
  }
}

bool Segment::same_pid_namespace() const {
  uint64_t mine = current_pid_namespace();
  return mine != 0 && header()->pid_namespace == mine;
}

Status Segment::create(const std::string& name, uint64_t size, const SegmentOptions& options,
                       std::unique_ptr<Segment>* out, int* err, bool* created) {
  *err = 0;
  *created = false;
  if (!valid_name(name)) return Status::invalid_name;
  uint32_t capacity = options.directory_capacity != 0 ? options.directory_capacity : default_directory_capacity(size);
  // Generation words: one per 256 bytes of heap where small blocks live in slabs (heap blocks then start on
  // 256-byte granules), one per 16 bytes otherwise (debug and small segments, where every block is a heap block).
  uint32_t gen_shift = options.heap.debug ? 4 : 8;
  uint64_t heap_offset = 0, gen_offset = 0;
  if (!layout(size, capacity, gen_shift, &gen_offset, &heap_offset)) return Status::invalid_argument;
  if (gen_shift == 8 && choose_slab_size(size - heap_offset) == 0) {
    gen_shift = 4;
    if (!layout(size, capacity, gen_shift, &gen_offset, &heap_offset)) return Status::invalid_argument;
  }
  uint64_t min_heap = heap_min_region_size(options.algorithm, options.heap);
  if (min_heap == 0) return Status::invalid_argument;
  if (size - heap_offset < min_heap) return Status::invalid_argument;
  std::string path = "/" + name;
  int fd = shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, options.mode & 0777);
  if (fd < 0) {
    *err = errno;
    if (errno == EEXIST && !options.exclusive) return open(name, options.lock_timeout_ms, out, err);
    return errno_status(errno);
  }
  // From here the name is ours: any failure removes it again.
  auto fail = [&](int e) {
    *err = e;
    close(fd);
    shm_unlink(path.c_str());
    return errno_status(e);
  };
  if (fchmod(fd, options.mode & 0777) != 0) return fail(errno);  // the umask must not change the mode
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) return fail(errno);
  // tmpfs allocates pages lazily: reserve them now so a full /dev/shm fails here, not with SIGBUS later.
  int pe = posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (pe != 0 && pe != EOPNOTSUPP && pe != EINVAL) return fail(pe);
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) return fail(errno);
  close(fd);
  uint8_t* base = static_cast<uint8_t*>(mem);

  std::memset(base, 0, heap_offset);
  SegmentHeader* h = reinterpret_cast<SegmentHeader*>(base);
  h->magic = kSegmentMagic;
  h->version = kSegmentVersion;
  h->header_size = kSegmentHeaderSize;
  h->size = size;
  h->algorithm = static_cast<uint32_t>(options.algorithm);
  h->state = kStateFormatting;
  h->block_size = options.heap.block_size;
  h->min_block = options.heap.min_block;
  h->max_block = options.heap.max_block;
  h->directory_offset = kDirectoryOffset;
  h->directory_capacity = capacity;
  h->gen_shift = gen_shift;
  h->pin_slots = kPinSlots;
  h->gen_table_offset = gen_offset;
  h->gen_entries = (size - heap_offset) >> gen_shift;
  h->track_owners = options.track_owners ? 1 : 0;
  h->heap_offset = heap_offset;
  h->heap_size = size - heap_offset;
  h->creator_pid = static_cast<uint64_t>(getpid());
  h->pid_namespace = current_pid_namespace();
  h->created_unix_ms = now_unix_ms();
  h->lock = 0;
  h->slab_size = gen_shift == 8 ? choose_slab_size(size - heap_offset) : 0;
  std::unique_ptr<Segment> seg(new Segment(name, base, size, heap_offset, capacity, options.algorithm,
                                           options.lock_timeout_ms, gen_shift, gen_offset));
  seg->slab_size_ = h->slab_size;
  seg->track_owners_ = options.track_owners;
  Status s = heap_format(options.algorithm, base + heap_offset, size - heap_offset, options.heap, &seg->heap_);
  if (s != Status::ok) {
    seg->unmap();
    shm_unlink(path.c_str());
    return s;
  }
  // Readers wait for this: everything above is visible before the state says ready.
  __atomic_store_n(&h->state, static_cast<uint32_t>(kStateReady), __ATOMIC_RELEASE);
  *created = true;
  *out = std::move(seg);
  return Status::ok;
}

Status Segment::open(const std::string& name, uint32_t lock_timeout_ms, std::unique_ptr<Segment>* out, int* err) {
  *err = 0;
  if (!valid_name(name)) return Status::invalid_name;
  std::string path = "/" + name;
  int fd = shm_open(path.c_str(), O_RDWR, 0);
  if (fd < 0) {
    *err = errno;
    return errno_status(errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *err = errno;
    close(fd);
    return Status::system_error;
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (!S_ISREG(st.st_mode) || size < kSegmentHeaderSize + kMaxAlign) {
    close(fd);
    return Status::incompatible;  // empty, truncated or not a file
  }
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int map_errno = errno;
  close(fd);
  if (mem == MAP_FAILED) {
    *err = map_errno;
    return errno_status(map_errno);
  }
  uint8_t* base = static_cast<uint8_t*>(mem);
  auto refuse = [&](Status s) {
    munmap(base, size);
    return s;
  };
  SegmentHeader* live = reinterpret_cast<SegmentHeader*>(base);
  if (__atomic_load_n(&live->magic, __ATOMIC_ACQUIRE) != kSegmentMagic) return refuse(Status::incompatible);
  // A creator may still be formatting: wait for it, within the lock timeout.
  for (uint32_t waited = 0; __atomic_load_n(&live->state, __ATOMIC_ACQUIRE) != kStateReady; ++waited) {
    if (waited >= lock_timeout_ms) return refuse(Status::incompatible);
    usleep(1000);
  }
  SegmentHeader h;
  std::memcpy(&h, base, sizeof h);  // validate one snapshot, then keep the validated values locally
  uint64_t heap_offset = 0;
  if (h.magic != kSegmentMagic) return refuse(Status::incompatible);
  if (h.version != kSegmentVersion) return refuse(Status::incompatible);
  if (!header_consistent(h, size, &heap_offset)) return refuse(Status::corrupted);
  std::unique_ptr<Segment> seg(new Segment(name, base, size, heap_offset, static_cast<uint32_t>(h.directory_capacity),
                                           static_cast<Algorithm>(h.algorithm), lock_timeout_ms, h.gen_shift,
                                           h.gen_table_offset));
  Status s = heap_attach(base + heap_offset, size - heap_offset, &seg->heap_);
  if (s != Status::ok) {
    seg->unmap();
    return s == Status::incompatible ? Status::corrupted : s;
  }
  seg->slab_size_ = h.slab_size;
  seg->track_owners_ = h.track_owners == 1;
  // Slabs only live in heaps that are not in debug mode (debug pools do not cache).
  if (seg->heap_->algorithm() != seg->algorithm_ || (seg->slab_size_ != 0 && seg->heap_->debug() != nullptr)) {
    seg->unmap();
    return Status::corrupted;
  }
  *out = std::move(seg);
  return Status::ok;
}

Status Segment::unlink(const std::string& name, int* err) {
  *err = 0;
  if (!valid_name(name)) return Status::invalid_name;
  std::string path = "/" + name;
  if (shm_unlink(path.c_str()) != 0) {
    *err = errno;
    return errno_status(errno);
  }
  return Status::ok;
}

void Segment::list(std::vector<SegmentInfo>* out) {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return;
  while (struct dirent* d = readdir(dir)) {
    std::string name = d->d_name;
    if (!valid_name(name)) continue;
    int fd = shm_open(("/" + name).c_str(), O_RDONLY, 0);
    if (fd < 0) continue;
    struct stat st;
    uint8_t page[kSegmentHeaderSize];
    SegmentHeader h;
    uint64_t heap_offset = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) >= kSegmentHeaderSize + kMaxAlign &&
        pread(fd, page, sizeof page, 0) == static_cast<ssize_t>(sizeof page) && (std::memcpy(&h, page, sizeof h), true) &&
        h.magic == kSegmentMagic &&
        h.state == kStateReady && header_consistent(h, static_cast<uint64_t>(st.st_size), &heap_offset)) {
      SegmentInfo info;
      info.name = name;
      info.size = h.size;
      info.algorithm = static_cast<Algorithm>(h.algorithm);
      RegionHeader rh;
      if (pread(fd, &rh, sizeof rh, static_cast<off_t>(heap_offset)) == static_cast<ssize_t>(sizeof rh) &&
          rh.magic == kRegionMagic) {
        info.used = rh.counters.used;
        info.live_allocations = rh.counters.live;
        // Slabs are heap allocations; the slots lent out of them are what users hold.
        shared_adjust_counters(page, &info.used, &info.live_allocations);
      }
      out->push_back(info);
    }
    close(fd);
  }
  closedir(dir);
}

namespace {

// This thread's id, cached (a system call otherwise: far more than the lock itself); reset in a
// forked child.
thread_local uint32_t cached_tid = 0;
void forget_ids() { cached_tid = 0; }
uint32_t my_tid() {
  if (cached_tid == 0) {
    static const int registered = pthread_atfork(nullptr, nullptr, forget_ids);
    (void)registered;
    cached_tid = static_cast<uint32_t>(syscall(SYS_gettid));
  }
  return cached_tid;
}


// Whether thread `tid` still runs: /proc/<tid>/stat exists (thread ids are visible there even when
// not listed) and the thread is not a zombie waiting to be reaped.
bool thread_alive(uint32_t tid) {
  if (tid == 0 || tid >= kLockWaiters) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", tid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno != ENOENT && errno != ESRCH;  // unsure (e.g. EMFILE): treat as alive
  char buf[512];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  return p != nullptr && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

long futex(uint32_t* word, int op, uint32_t value, const struct timespec* timeout) {
  return syscall(SYS_futex, word, op, value, timeout, nullptr, 0);
}

uint64_t monotonic_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

Status Segment::lock_within(uint32_t ms, bool* recovered) {
  uint32_t timeout = lock_timeout_ms_;
  lock_timeout_ms_ = timeout < ms ? timeout : ms;
  Status s = lock(recovered);
  lock_timeout_ms_ = timeout;
  return s;
}

Status Segment::lock(bool* recovered) {
  *recovered = false;
  uint32_t* word = &header()->lock;
  uint32_t tid = my_tid();
  uint32_t expected = 0;
  if (__atomic_compare_exchange_n(word, &expected, tid, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return Status::ok;
  // Contended: spin briefly (critical sections are short), then sleep in slices, checking between
  // them that the holder still exists.
  uint64_t deadline = monotonic_ns() + uint64_t(lock_timeout_ms_) * 1000000ULL;
  uint32_t seen_holder = 0;  // the holder the liveness clock below is running for
  uint64_t seen_since = 0;
  for (uint32_t spins = 0;; ++spins) {
    uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
    if (v == 0) {
      // Taken with the waiters bit: others may be asleep, and the unlock must wake them.
      expected = 0;
      if (__atomic_compare_exchange_n(word, &expected, tid | kLockWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) break;
      continue;
    }
    if (spins < 100) {
      cpu_relax();
      continue;
    }
    uint32_t holder = v & ~kLockWaiters;
    // Thread ids mean something only in the creator's PID namespace (containers sharing /dev/shm
    // have their own): elsewhere a holder is never judged, and waiting ends with the timeout.
    bool judge = same_pid_namespace();
    if (judge && holder == tid) return Status::corrupted;  // this thread cannot hold it: the word was written
    uint64_t now = monotonic_ns();
    if (holder != seen_holder) {
      seen_holder = holder;
      seen_since = now;
    }
    // Is the holder still there? Asked once it has held the lock for a millisecond (reading /proc
    // costs microseconds; live holders release far sooner), and again after every sleep.
    if (judge && now - seen_since >= 1000000ULL && !thread_alive(holder)) {
      // The holder died inside an operation: take the lock over, repair what it may have left
      // half-done, then go on.
      expected = v;
      if (!__atomic_compare_exchange_n(word, &expected, tid | kLockWaiters, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) continue;
      Status s = repair();
      header()->recoveries += 1;
      if (s != Status::ok) {
        unlock();
        return Status::corrupted;
      }
      *recovered = true;
      return Status::ok;
    }
    if (now >= deadline) return Status::lock_timeout;
    if (!(v & kLockWaiters)) {
      expected = v;
      if (!__atomic_compare_exchange_n(word, &expected, v | kLockWaiters, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) continue;
    }
    uint64_t slice = deadline - now < 1000000ULL ? deadline - now : 1000000ULL;  // at most 1 ms asleep
    struct timespec ts = {0, static_cast<long>(slice)};
    futex(word, FUTEX_WAIT, v | kLockWaiters, &ts);
  }
  return Status::ok;
}

void Segment::unlock() {
  uint32_t* word = &header()->lock;
  uint32_t tid = my_tid();
  uint32_t v = __atomic_load_n(word, __ATOMIC_RELAXED);
  // Release only a lock this thread holds: one taken over from us (judged dead by mistake) or a word
  // a scribbler changed stays as it is.
  while ((v & ~kLockWaiters) == tid) {
    if (__atomic_compare_exchange_n(word, &v, 0u, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
      if (v & kLockWaiters) futex(word, FUTEX_WAKE, 1, nullptr);
      return;
    }
  }
}

Status Segment::repair() {
  Status s = heap_->rebuild();
  if (s != Status::ok) return s;
  // The slab totals are derived from the slabs themselves (their headers and slot states).
  shared_recount(*this);
  // Directory entries become live with one store of their state, so a half-written entry is simply
  // not live; names of allocations that no longer exist are dropped, and the index is rebuilt.
  uint64_t live = 0;
  for (uint32_t i = 0; i < capacity_; ++i) {
    DirEntry* e = entry(i);
    if (e->state != kDirLive) {
      if (e->state != kDirEmpty) e->state = kDirDeleted;
      continue;
    }
    uint64_t usable = 0;
    if (!entry_valid(*e) || usable_any(e->offset - heap_offset_, &usable) != Status::ok || e->length > usable) {
      e->state = kDirDeleted;
      continue;
    }
    ++live;
  }
  header()->directory_live = live;
  index_rebuild();
  // Names, generation words and pins (shared_pool.cc): the directory is the truth for who is named.
  if (g_repair_hook != nullptr) {
    Status hs = g_repair_hook(*this);
    if (hs != Status::ok) return hs;
  }
  CheckResult r;
  heap_->check(&r);
  shared_check(*this, &r);
  dir_check(&r);
  return r.violations == 0 ? Status::ok : Status::corrupted;
}

static AttachEntry* attach_table(uint8_t* base) { return reinterpret_cast<AttachEntry*>(base + kAttachTableOffset); }

void Segment::register_attach() {
  uint32_t pid = static_cast<uint32_t>(getpid());
  uint64_t ticks = process_start_ticks(pid);
  AttachEntry* t = attach_table(base_);
  AttachEntry* slot = nullptr;
  bool judge = same_pid_namespace();  // pids of another namespace cannot be checked from here
  for (uint32_t i = 0; i < kAttachSlots; ++i) {
    if (t[i].pid == 0 || (judge && !process_alive(t[i].pid, t[i].start_ticks))) {
      t[i].pid = 0;  // an exited process: its slot is free
      if (slot == nullptr) slot = &t[i];
    }
  }
  if (slot == nullptr) return;  // full: this process is simply not listed
  slot->start_ticks = ticks;
  slot->pid = pid;
}

void Segment::unregister_attach() {
  uint32_t pid = static_cast<uint32_t>(getpid());
  AttachEntry* t = attach_table(base_);
  for (uint32_t i = 0; i < kAttachSlots; ++i) {
    if (t[i].pid == pid) {
      t[i].pid = 0;
      return;  // one entry per mapping
    }
  }
}

void Segment::attached(std::vector<AttachedProcess>* out) {
  AttachEntry* t = attach_table(base_);
  uint64_t boot = boot_unix_ms();
  long hz = sysconf(_SC_CLK_TCK);
  for (uint32_t i = 0; i < kAttachSlots; ++i) {
    if (t[i].pid == 0) continue;
    if (same_pid_namespace() && !process_alive(t[i].pid, t[i].start_ticks)) {
      t[i].pid = 0;
      continue;
    }
    uint64_t start = hz > 0 ? boot + t[i].start_ticks * 1000 / static_cast<uint64_t>(hz) : 0;
    out->push_back(AttachedProcess{t[i].pid, start});
  }
}

DirEntry* Segment::entry(uint32_t i) const {
  return reinterpret_cast<DirEntry*>(base_ + kDirectoryOffset + uint64_t(i) * sizeof(DirEntry));
}

uint32_t* Segment::offset_slots() const {
  return reinterpret_cast<uint32_t*>(base_ + kDirectoryOffset + uint64_t(capacity_) * sizeof(DirEntry));
}

bool Segment::entry_valid(const DirEntry& e) const {
  return e.key_len >= 1 && e.key_len <= kMaxKeyBytes && e.offset >= heap_offset_ && e.offset < size_ &&
         e.length <= size_ - e.offset;
}

int64_t Segment::dir_find(const std::string& key, uint64_t hash) const {
  for (uint32_t n = 0, i = static_cast<uint32_t>(hash % capacity_); n < capacity_; ++n, i = (i + 1) % capacity_) {
    const DirEntry* e = entry(i);
    uint32_t state = e->state;
    if (state == kDirEmpty) return -1;
    if (state == kDirLive && e->hash == hash && e->key_len == key.size() && e->key_len <= kMaxKeyBytes &&
        std::memcmp(e->key, key.data(), key.size()) == 0) {
      return i;
    }
  }
  return -1;
}

void Segment::index_add(uint32_t entry_index, uint64_t offset) {
  uint32_t slots = capacity_ * 2;
  uint32_t* s = offset_slots();
  for (uint32_t n = 0, i = static_cast<uint32_t>(mix(offset) % slots); n < slots; ++n, i = (i + 1) % slots) {
    if (s[i] == kSlotEmpty || s[i] == kSlotDeleted) {
      s[i] = entry_index + 1;
      return;
    }
  }
}

void Segment::index_remove(uint32_t entry_index, uint64_t offset) {
  uint32_t slots = capacity_ * 2;
  uint32_t* s = offset_slots();
  for (uint32_t n = 0, i = static_cast<uint32_t>(mix(offset) % slots); n < slots; ++n, i = (i + 1) % slots) {
    if (s[i] == kSlotEmpty) return;
    if (s[i] == entry_index + 1) {
      s[i] = kSlotDeleted;
      return;
    }
  }
}

void Segment::index_rebuild() {
  std::memset(offset_slots(), 0, uint64_t(capacity_) * 2 * sizeof(uint32_t));
  for (uint32_t i = 0; i < capacity_; ++i) {
    const DirEntry* e = entry(i);
    if (e->state == kDirLive && entry_valid(*e)) index_add(i, e->offset);
  }
}

Status Segment::dir_set(const std::string& key, uint64_t offset, uint64_t length) {
  if (key.empty() || key.size() > kMaxKeyBytes) return Status::too_large;
  uint64_t hash = fnv1a(key);
  int64_t found = dir_find(key, hash);
  if (found >= 0) {
    DirEntry* e = entry(static_cast<uint32_t>(found));
    index_remove(static_cast<uint32_t>(found), e->offset);
    e->offset = offset;
    e->length = length;
    index_add(static_cast<uint32_t>(found), offset);
    return Status::ok;
  }
  for (uint32_t n = 0, i = static_cast<uint32_t>(hash % capacity_); n < capacity_; ++n, i = (i + 1) % capacity_) {
    DirEntry* e = entry(i);
    if (e->state == kDirLive) continue;
    e->key_len = static_cast<uint32_t>(key.size());
    e->offset = offset;
    e->length = length;
    e->hash = hash;
    std::memcpy(e->key, key.data(), key.size());
    __atomic_store_n(&e->state, static_cast<uint32_t>(kDirLive), __ATOMIC_RELEASE);  // the entry is whole now
    index_add(i, offset);
    header()->directory_live += 1;
    return Status::ok;
  }
  return Status::directory_full;
}

Status Segment::dir_get(const std::string& key, uint64_t* offset, uint64_t* length) const {
  if (key.empty() || key.size() > kMaxKeyBytes) return Status::not_found;
  int64_t found = dir_find(key, fnv1a(key));
  if (found < 0) return Status::not_found;
  DirEntry e;
  std::memcpy(&e, entry(static_cast<uint32_t>(found)), sizeof e);
  if (!entry_valid(e)) return Status::corrupted;
  *offset = e.offset;
  *length = e.length;
  return Status::ok;
}

int64_t Segment::dir_lookup(const std::string& key, uint64_t* offset, uint64_t* length) const {
  if (key.empty() || key.size() > kMaxKeyBytes) return -1;
  int64_t found = dir_find(key, fnv1a(key));
  if (found < 0) return -1;
  DirEntry e;
  std::memcpy(&e, entry(static_cast<uint32_t>(found)), sizeof e);
  if (!entry_valid(e)) return -1;  // a scribbled entry names nothing (check() reports it)
  *offset = e.offset;
  *length = e.length;
  return found;
}

void Segment::dir_point(uint32_t index, uint64_t offset, uint64_t length) {
  DirEntry* e = entry(index);
  // Crash here: the index may still lead to the old offset (harmless: lookups compare the entry's offset)
  // and repair rebuilds it. The entry's offset and length are two stores: a reader without the lock may see
  // one of each (the documented lock-free read); repair validates the pair against the heap.
  index_remove(index, e->offset);
  // Length first as the smaller of the two: every state a crash can leave (old offset or new, with a length
  // that fits both) names a whole block, which repair keeps.
  uint64_t old_length = e->length;
  e->length = length < old_length ? length : old_length;
  e->offset = offset;
  e->length = length;
  index_add(index, offset);
}

void Segment::dir_remove(uint32_t index) {
  DirEntry* e = entry(index);
  index_remove(index, e->offset);
  e->state = kDirDeleted;  // one store: the name is gone
  if (header()->directory_live > 0) header()->directory_live -= 1;
}

bool Segment::dir_names(uint64_t offset) const {
  if (header()->directory_live == 0) return false;
  uint32_t slots = capacity_ * 2;
  const uint32_t* s = offset_slots();
  for (uint32_t n = 0, i = static_cast<uint32_t>(mix(offset) % slots); n < slots; ++n, i = (i + 1) % slots) {
    uint32_t v = s[i];
    if (v == kSlotEmpty) return false;
    if (v == kSlotDeleted || v > capacity_) continue;
    const DirEntry* e = entry(v - 1);
    if (e->state == kDirLive && e->offset == offset) return true;
  }
  return false;
}

bool Segment::dir_delete(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return false;
  int64_t found = dir_find(key, fnv1a(key));
  if (found < 0) return false;
  DirEntry* e = entry(static_cast<uint32_t>(found));
  index_remove(static_cast<uint32_t>(found), e->offset);
  e->state = kDirDeleted;
  if (header()->directory_live > 0) header()->directory_live -= 1;
  return true;
}

void Segment::dir_keys(std::vector<std::string>* out) const {
  for (uint32_t i = 0; i < capacity_; ++i) {
    const DirEntry* e = entry(i);
    if (e->state == kDirLive && e->key_len >= 1 && e->key_len <= kMaxKeyBytes) out->emplace_back(e->key, e->key_len);
  }
}

void Segment::dir_forget_offset(uint64_t offset) {
  if (header()->directory_live == 0) return;
  uint32_t slots = capacity_ * 2;
  uint32_t* s = offset_slots();
  for (uint32_t n = 0, i = static_cast<uint32_t>(mix(offset) % slots); n < slots; ++n, i = (i + 1) % slots) {
    uint32_t v = s[i];
    if (v == kSlotEmpty) return;
    if (v == kSlotDeleted || v > capacity_) continue;
    DirEntry* e = entry(v - 1);
    if (e->state == kDirLive && e->offset == offset) {
      e->state = kDirDeleted;
      s[i] = kSlotDeleted;
      if (header()->directory_live > 0) header()->directory_live -= 1;
    }
  }
}

void Segment::dir_check(CheckResult* r) const {
  uint64_t live = 0;
  for (uint32_t i = 0; i < capacity_; ++i) {
    DirEntry e;
    std::memcpy(&e, entry(i), sizeof e);
    if (e.state == kDirEmpty || e.state == kDirDeleted) continue;
    if (e.state != kDirLive) {
      r->report("directory: entry " + std::to_string(i) + " has an impossible state");
      continue;
    }
    ++live;
    if (!entry_valid(e)) {
      r->report("directory: entry " + std::to_string(i) + " points outside the heap");
      continue;
    }
    uint64_t usable = 0;
    if (usable_any(e.offset - heap_offset_, &usable) != Status::ok || e.length > usable) {
      r->report("directory: key '" + std::string(e.key, e.key_len) + "' names no live allocation");
    }
    if (fnv1a(std::string(e.key, e.key_len)) != e.hash) r->report("directory: entry " + std::to_string(i) + " has a wrong hash");
    // The offset index must lead to this entry.
    bool indexed = false;
    uint32_t slots = capacity_ * 2;
    const uint32_t* s = offset_slots();
    for (uint32_t n = 0, j = static_cast<uint32_t>(mix(e.offset) % slots); n < slots; ++n, j = (j + 1) % slots) {
      if (s[j] == kSlotEmpty) break;
      if (s[j] == i + 1) {
        indexed = true;
        break;
      }
    }
    if (!indexed) r->report("directory: entry " + std::to_string(i) + " is missing from the offset index");
  }
  if (live != header()->directory_live) r->report("directory: live count disagrees with the entries");
}

}  // namespace mempool
