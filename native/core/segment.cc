// The shared segment's lifecycle: layout, create (format), open (validate), unlink, list, and the attach
// table. The lock and its recovery are in segment_lock.cc, the directory in directory.cc, process identity
// in process.cc.
#include "segment.h"

#include "process.h"
#include "shared_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>

namespace mempool {
namespace {

uint64_t now_unix_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

}  // namespace

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


namespace {

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

  std::memset(base, 0, gen_offset);
  // Every granule starts with no block handed out (segment.h, kOwnerFree). The table ends by heap_offset
  // (layout()); what lies between its end and the heap is zero.
  uint64_t gen_words = (size - heap_offset) >> gen_shift;
  std::fill_n(reinterpret_cast<uint32_t*>(base + gen_offset), gen_words, kOwnerFree);
  std::memset(base + gen_offset + gen_words * 4, 0, heap_offset - gen_offset - gen_words * 4);
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
  h->lock = RobustMutex{0, 0, 0};
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

}  // namespace mempool
