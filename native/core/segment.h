// A named POSIX shared-memory segment holding a heap, its lock and a directory of named allocations.
// docs/segment-format.md documents the layout for readers in other languages.
//
// Layout (offsets from the segment start; every field little-endian):
//   [0, 4096)                          SegmentHeader: magic, version, geometry, heap options, the
//                                      lock (a futex word), the attach table, bookkeeping
//   [4096, 8192)                       the pin table (PinEntry): blocks readers are reading now
//   [8192, 8192 + capacity * 256)      directory entries (DirEntry)
//   [.., + 2 * capacity * 4)           offset index: entry index + 1 by hash of the named offset
//   [gen_table_offset, + entries * 4)  generation words of heap blocks, one per 2^gen_shift bytes of heap
//   [heap_offset, size)                the heap's region (heap.h), heap_offset a multiple of 4096
//
// Ownership (shared_pool.h states the rules): every live allocation has exactly one owner, either a
// process holding its current generation or a directory name. A block's generation word (u32: a 31-bit
// counter, bit 31 = named) changes at every transfer (free, name, take), so a handle from before a
// transfer is stale and refused.
//
// Every offset the segment hands out (alloc, directory) is an offset from the segment start, so it is
// the same number in every process and in the file under /dev/shm.
//
// Trust: another process may write anything anywhere in the segment. open() validates every header
// field against a layout recomputed from the segment's real size; geometry is then kept in
// process-local members and never re-read. Directory entries are bounds-checked on every read.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "heap.h"
#include "process.h"
#include "sync.h"

namespace mempool {

constexpr uint64_t kSegmentMagic = 0x3147455350504d4dULL;  // "MMPPSEG1" little-endian
constexpr uint32_t kSegmentVersion = 3;  // 2: slab caches (shared_cache.h); 3: generations, pins, standard FNV-1a
constexpr uint64_t kSegmentHeaderSize = 4096;
constexpr size_t kMaxNameBytes = 250;
constexpr size_t kMaxKeyBytes = 224;
constexpr uint32_t kDefaultDirectoryCapacity = 256;  // the least a default-sized directory gets
constexpr uint64_t kBytesPerDefaultKey = 8192;        // default capacity: one key per 8 KiB of segment
constexpr uint64_t kPinTableOffset = 4096;
constexpr uint32_t kPinSlots = 128;
constexpr uint64_t kDirectoryOffset = 8192;
// A generation word: bit 31 named; bits 26..30 the recorded owner (trackOwners: 1 + the cache table entry
// of the attachment that owns the block; 0 = none recorded; kOwnerFree = no block is handed out here);
// bits 0..25 the counter.
constexpr uint32_t kGenNamed = 0x80000000u;
constexpr uint32_t kGenOwnerShift = 26;
constexpr uint32_t kGenOwnerMask = 0x7c000000u;
constexpr uint32_t kGenCount = 0x03ffffffu;
// The owner field of a heap granule's word while no block handed out starts there: set at format and by
// every heap free, overwritten by the one store that hands a block out (SharedCache::alloc_locked). A used,
// unnamed, unlisted heap block whose word still says kOwnerFree is one whose allocator died between the
// heap's alloc and that store (or a slab half made or half given back): repair frees it.
constexpr uint32_t kOwnerFree = kGenOwnerMask;
constexpr uint32_t kSlotGenBase = 1u << 25;           // slot counters start in [2^25, 2^26): far from heap words
constexpr uint32_t kAnyGen = 0xffffffffu;             // a caller without a handle (the offset API)
constexpr uint32_t kNoHandle = 0xfffffffeu;           // a view that should carry a handle and does not: refused
// Neither is a word a block can have: owner fields stop at 1 + the last cache entry (shared_cache.h).
constexpr uint32_t kMaxDirectoryCapacity = 1u << 20;

enum SegmentState : uint32_t { kStateFormatting = 0, kStateReady = 1 };

struct SegmentHeader {
  uint64_t magic;               // 0   kSegmentMagic
  uint32_t version;             // 8   kSegmentVersion
  uint32_t header_size;         // 12  kSegmentHeaderSize
  uint64_t size;                // 16  bytes of the segment (the shm object's size)
  uint32_t algorithm;           // 24  Algorithm
  uint32_t state;               // 28  SegmentState: readers wait until kStateReady
  uint64_t block_size;          // 32  heap options as formatted
  uint64_t min_block;           // 40
  uint64_t max_block;           // 48
  uint64_t directory_offset;    // 56  kSegmentHeaderSize
  uint64_t directory_capacity;  // 64  entries
  uint64_t heap_offset;         // 72
  uint64_t heap_size;           // 80  size - heap_offset
  uint64_t creator_pid;         // 88
  uint64_t created_unix_ms;     // 96
  uint64_t directory_live;      // 104 live entries
  uint64_t recoveries;          // 112 times a dead lock holder's work was repaired
  uint64_t pid_namespace;       // 120 inode of the creator's /proc/self/ns/pid (0 = unknown): thread ids in
                                //     the lock word and pids in the attach table mean something only there
  // 128..255: the slab caches (shared_cache.h). Written under the lock only.
  uint32_t slab_size;           // 128 bytes per slab: 0 = no slab caches (debug or tiny segments), else a
                                //     power of two in [4096, 65536]
  uint32_t cache_serial;        // 132 last serial given to a cache entry (0 is never given)
  uint64_t slab_count;          // 136 live slabs (each one heap allocation)
  uint64_t slab_bytes;          // 144 usable bytes of those heap allocations
  uint64_t orphan_lent_count;   // 152 slots lent out of slabs that have no owner
  uint64_t orphan_lent_bytes;   // 160 their bytes
  uint64_t cached_allocations;  // 168 slot allocations of caches that have gone (statistics)
  uint64_t cached_frees;        // 176 slot frees of caches that have gone, and every slot free made under
                                //     the lock by a non-owner
  uint64_t slab_allocations;    // 184 heap allocations that became slabs, ever (statistics count slots,
  uint64_t slab_frees;          // 192 not slabs); slabs given back, ever
  // 200..255: generations and pins (layout 3). Geometry fields are validated like the others.
  uint32_t gen_shift;           // 200 log2 bytes of heap per generation word: 4 without slabs, 8 with
                                //     (heap blocks of such a segment start at multiples of 256)
  uint32_t pin_slots;           // 204 kPinSlots
  uint64_t gen_table_offset;    // 208 segment offset of the generation words
  uint64_t gen_entries;         // 216 words: heap_size >> gen_shift
  uint64_t pins_active;         // 224 live pin entries (under the lock; recomputed by repair)
  uint32_t orphan_epoch;        // 232 bumped whenever a slab becomes ownerless (caches look for one to adopt)
  uint32_t slot_gen_seed;       // 236 where a new slab's slot counters start (kept in [2^25, 2^26), apart
                                //     from the heap words' counters, which start at 0 and move one per transfer)
  uint32_t track_owners;        // 240 1: generation words record the owning attachment, and the unnamed blocks
                                //     of an attachment whose process died are freed when it is retired
  uint32_t reclaimed_blocks;    // 244 blocks freed that way, ever (saturating)
  uint64_t reclaimed_bytes;     // 248 their usable bytes
  // 256: the lock, a RobustMutex (sync.h): u32 word at 256, u64 holder stamp at 264. word 0 = free; otherwise
  // the holder's thread id, with kLockWaiters set when someone
  // sleeps on it (FUTEX_WAIT, shared). Not a pthread mutex: glibc's robust mutexes keep list pointers
  // inside the mutex and follow them on unlock, so a process scribbling on the segment could make
  // another write anywhere in its own memory. This word is only ever compared and swapped.
  RobustMutex lock;
  // 272: times a heap operation met derived metadata it could not trust (a free list a stray write
  // changed) and the heap was rebuilt under the lock (Segment::heal, segment_lock.cc). Saturating. Was
  // reserved (zero) before, so segments of layout 3 made earlier read 0: no version change.
  uint64_t heap_repairs;
  uint32_t lock_reserved[10];
};
constexpr uint32_t kLockWaiters = kSyncWaiters;

// The processes attached to a segment, kept in its header page so every process (and the CLI) sees
// them. start_ticks (from /proc/<pid>/stat) tells a live process from a later one with the same pid.
struct AttachEntry {
  uint32_t pid;  // 0 = empty
  uint32_t reserved;
  uint64_t start_ticks;
};
constexpr uint64_t kAttachTableOffset = 1024;
constexpr uint32_t kAttachSlots = 128;
static_assert(kAttachTableOffset + kAttachSlots * sizeof(AttachEntry) <= kSegmentHeaderSize, "attach table fits the header page");
static_assert(offsetof(SegmentHeader, size) == 16, "segment layout");
static_assert(offsetof(SegmentHeader, algorithm) == 24, "segment layout");
static_assert(offsetof(SegmentHeader, heap_offset) == 72, "segment layout");
static_assert(offsetof(SegmentHeader, pid_namespace) == 120, "segment layout");
static_assert(offsetof(SegmentHeader, slab_size) == 128, "segment layout");
static_assert(offsetof(SegmentHeader, slab_count) == 136, "segment layout");
static_assert(offsetof(SegmentHeader, cached_frees) == 176, "segment layout");
static_assert(offsetof(SegmentHeader, slab_frees) == 192, "segment layout");
static_assert(offsetof(SegmentHeader, gen_shift) == 200 && offsetof(SegmentHeader, gen_table_offset) == 208, "segment layout");
static_assert(offsetof(SegmentHeader, pins_active) == 224 && offsetof(SegmentHeader, orphan_epoch) == 232, "segment layout");
static_assert(offsetof(SegmentHeader, lock) == 256, "segment layout");
static_assert(offsetof(SegmentHeader, heap_repairs) == 272 && sizeof(SegmentHeader) == 320, "segment layout");
static_assert(sizeof(SegmentHeader) <= kSegmentHeaderSize, "segment header fits its page");

// A reader's pin on a block (pool.read()): while any pin names a block, its memory is not reused; a free
// of it only marks the pins (kPinFreePending) and the last unpin frees it. Written under the lock; pid
// last when filled and first when cleared, so a half-written entry is empty. Pins of processes that are
// gone (pid + start ticks) are released by the next process that looks (repair, attach, a free that
// meets them), which then does any free they held back.
enum PinState : uint32_t { kPinEmpty = 0, kPinHeld = 1, kPinFreePending = 2 };
struct PinEntry {
  uint32_t pid;          // 0 = empty
  uint32_t state;        // PinState
  uint64_t start_ticks;  // the holder's /proc/<pid>/stat field 22
  uint64_t offset;       // segment offset of the pinned block
  uint64_t reserved;
};
static_assert(sizeof(PinEntry) == 32, "pin entries are 32 bytes");
static_assert(kPinTableOffset + kPinSlots * sizeof(PinEntry) <= kDirectoryOffset, "the pin table fits its page");

enum DirState : uint32_t { kDirEmpty = 0, kDirLive = 1, kDirDeleted = 2 };

struct DirEntry {
  uint32_t state;    // DirState; written last when an entry is filled
  uint32_t key_len;  // 1..kMaxKeyBytes
  uint64_t offset;   // segment offset of the named allocation's start
  uint64_t length;   // bytes the name covers (<= the allocation's usable size)
  uint64_t hash;     // FNV-1a of the key
  char key[kMaxKeyBytes];
};
static_assert(sizeof(DirEntry) == 256, "directory entries are 256 bytes");
static_assert(offsetof(DirEntry, offset) == 8 && offsetof(DirEntry, key) == 32, "directory layout");


struct SegmentOptions {
  Algorithm algorithm = Algorithm::tlsf;
  HeapOptions heap;
  uint32_t mode = 0600;
  bool exclusive = true;
  uint32_t directory_capacity = 0;  // 0: default_directory_capacity(size)
  uint32_t lock_timeout_ms = 5000;
  bool track_owners = false;
};

struct AttachedProcess {
  uint32_t pid;
  uint64_t start_unix_ms;  // when the process started
};

struct SegmentInfo {
  std::string name;
  uint64_t size = 0;
  Algorithm algorithm = Algorithm::tlsf;
  uint64_t used = 0;
  uint64_t live_allocations = 0;
};

// The Status of an errno from shm_open, shm_unlink or mmap (EEXIST exists, ENOENT not_found, EACCES/EPERM
// permission, EINVAL/ENAMETOOLONG invalid_name, else system_error). Raw segments (raw_segment.h) use it too.
Status errno_status(int e);

class Segment {
 public:
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  // A plain name: 1..250 bytes, no '/', no NUL, not "." or "..".
  static bool valid_name(const std::string& name);
  // The geometry a segment of `size` bytes would have; false when the heap would not fit.
  static bool layout(uint64_t size, uint32_t directory_capacity, uint32_t gen_shift, uint64_t* gen_table_offset,
                     uint64_t* heap_offset);
  // The directory capacity a segment of `size` bytes gets when none is asked for.
  static uint32_t default_directory_capacity(uint64_t size);

  // `err` receives errno for system_error. create with exclusive=false opens the segment when it exists.
  static Status create(const std::string& name, uint64_t size, const SegmentOptions& options,
                       std::unique_ptr<Segment>* out, int* err, bool* created);
  static Status open(const std::string& name, uint32_t lock_timeout_ms, std::unique_ptr<Segment>* out, int* err);
  static Status unlink(const std::string& name, int* err);
  // mempool segments under /dev/shm that this process can read.
  static void list(std::vector<SegmentInfo>* out);

  const std::string& name() const { return name_; }
  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t heap_offset() const { return heap_offset_; }
  Algorithm algorithm() const { return algorithm_; }
  Heap& heap() { return *heap_; }
  const Heap& heap() const { return *heap_; }
  SegmentHeader* header() const { return reinterpret_cast<SegmentHeader*>(base_); }
  bool mapped() const { return base_ != nullptr; }

  // Takes the segment's lock within the timeout. When the holder has died (its thread no longer
  // exists), takes the lock over and repairs the heap and the directory first (Status::ok with
  // *recovered = true), or returns corrupted if the damage cannot be repaired (the lock is released).
  // A holder that is alive but stopped gives lock_timeout.
  Status lock(bool* recovered);
  void unlock();

  // Directory, under the lock. Offsets are segment offsets. Entry indexes are valid until the next change.
  Status dir_set(const std::string& key, uint64_t offset, uint64_t length);
  // The live entry of `key` (-1 when absent), with its offset and length validated.
  int64_t dir_lookup(const std::string& key, uint64_t* offset, uint64_t* length) const;
  void dir_point(uint32_t index, uint64_t offset, uint64_t length);  // an existing entry names another block
  void dir_remove(uint32_t index);
  // Whether a live entry names the allocation at `offset` (through the offset index).
  bool dir_names(uint64_t offset) const;
  // Whether a new key would find a free entry.
  bool dir_has_room() const { return header()->directory_live < capacity_; }
  void dir_keys(std::vector<std::string>* out) const;
  // Removes every name of the allocation at `offset` (called when it is freed).
  void dir_forget_offset(uint64_t offset);
  void dir_check(CheckResult* r) const;

  // The attach table. attach() adds this process (once per mapping: a process that opens a segment
  // twice appears twice) and unmap() removes it again, each taking the lock briefly (skipped if it is
  // not free soon). attached(), under the lock, lists the processes alive now and drops entries of
  // processes that have exited (only those in this process's PID namespace can be judged).
  void attach();
  void attached(std::vector<AttachedProcess>* out);

  // The heap's mutating calls for the layers above, under the lock. A stray write (a process writing
  // through a view of a block it freed) can change the free lists kept inside free blocks, and a heap that
  // meets such a list either refuses (corrupted, changing nothing) or goes on without it (Heap::damage()).
  // Either way these rebuild the heap from its primary record (heal()) and retry a refused call once; only
  // when the primary record itself is damaged do they return corrupted. Debug heaps are not healed: their
  // poison reports such writes. The common case costs one test of a process-local byte.
  Status heap_alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* off) {
    Status s = heap_->alloc(size, align, hint, off);
    if (__builtin_expect((s == Status::ok || s == Status::out_of_memory) && heap_->damage() == 0, 1)) return s;
    return heap_alloc_healed(s, size, align, hint, off);
  }
  Status heap_free(uint64_t off) {
    Status s = heap_->free(off);
    if (__builtin_expect(s != Status::corrupted && heap_->damage() == 0, 1)) return s;
    return heap_free_healed(s, off);
  }
  Status heap_resize(uint64_t off, uint64_t size) {
    Status s = heap_->resize_in_place(off, size);
    if (__builtin_expect(s != Status::corrupted && heap_->damage() == 0, 1)) return s;
    return heap_resize_healed(s, off, size);
  }
  // Rebuilds the heap's derived structures (free lists, summaries, counters) from its primary record, under
  // the lock, and counts it in heap_repairs. ok when the primary record held (then nothing else needs
  // repair: a rebuild changes no used block, so slabs, names and generation words stay as they are).
  Status heal();

  // Like lock(), but waits at most `ms` (for finalizers and close paths that must not hang).
  Status lock_within(uint32_t ms, bool* recovered);

  // Generation words (see Ownership above). gen_word() is null for an offset that has none (not in the heap
  // or not on the granule): such an offset is never a heap block of this segment.
  uint32_t gen_shift() const { return gen_shift_; }
  bool track_owners() const { return track_owners_; }
  uint32_t* gen_word(uint64_t heap_off) const {
    if ((heap_off & ((uint64_t(1) << gen_shift_) - 1)) != 0 || (heap_off >> gen_shift_) >= gen_entries_) return nullptr;
    return gen_table_ + (heap_off >> gen_shift_);
  }
  PinEntry* pins() const { return reinterpret_cast<PinEntry*>(base_ + kPinTableOffset); }

  // Slab caches (shared_cache.h). slab_size() is 0 when this segment has none.
  uint32_t slab_size() const { return slab_size_; }
  // Usable size of a live allocation at heap offset `off`: a heap block or a lent slab slot; a slab
  // itself is not an allocation (foreign). Under the lock.
  Status usable_any(uint64_t off, uint64_t* size) const;
  bool same_pid_namespace() const;

  // Unmaps now; the object stays (base() becomes null). Idempotent.
  void unmap();

 private:
  Segment(std::string name, uint8_t* base, uint64_t size, uint64_t heap_offset, uint32_t capacity,
          Algorithm algorithm, uint32_t lock_timeout_ms, uint32_t gen_shift, uint64_t gen_table_offset);
  Status repair();
  // After a heap call that returned *s: heals when the call met damage. True when the call changed nothing
  // and the heal worked, so the caller should retry it; *s becomes ok when the call's change was made and
  // only a list was damaged, corrupted when the heal failed.
  bool heal_after(Status* s);
  // The failure paths of heap_alloc, heap_free, heap_resize (out of line: the callers stay small): heal,
  // and retry once when heal_after says so.
  Status heap_alloc_healed(Status s, uint64_t size, uint64_t align, uint64_t hint, uint64_t* off);
  Status heap_free_healed(Status s, uint64_t off);
  Status heap_resize_healed(Status s, uint64_t off, uint64_t size);
  void register_attach();
  void unregister_attach();
  DirEntry* entry(uint32_t i) const;
  uint32_t* offset_slots() const;
  bool entry_valid(const DirEntry& e) const;
  int64_t dir_find(const std::string& key, uint64_t hash) const;
  void index_add(uint32_t entry_index, uint64_t offset);
  void index_remove(uint32_t entry_index, uint64_t offset);
  void index_rebuild();

  std::string name_;
  uint8_t* base_;
  uint64_t size_;
  uint64_t heap_offset_;
  uint32_t capacity_;
  Algorithm algorithm_;
  uint32_t lock_timeout_ms_;
  bool attached_ = false;
  uint32_t slab_size_ = 0;
  uint32_t gen_shift_;
  bool track_owners_ = false;
  uint32_t* gen_table_;
  uint64_t gen_entries_;
  std::unique_ptr<Heap> heap_;

 public:
  // Repair's hook for the layers above (shared_pool.cc): names, generations and pins made consistent
  // after a lock holder died. Set once per process.
  static void set_repair_hook(Status (*hook)(Segment&));
};

}  // namespace mempool
