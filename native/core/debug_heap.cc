#include "debug_heap.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

namespace mempool {
namespace {

constexpr uint32_t kDebugVersion = 1;
constexpr uint32_t kQuarantineSlots = 1024;
constexpr uint64_t kBlockHeader = 32;
constexpr uint64_t kLead = 64;  // header, guard pad, back pointer, front guard: the least before the user bytes (16-aligned)
constexpr uint64_t kTailGuard = 16;
constexpr uint32_t kLiveMagic = 0xDEB0A11Cu;
constexpr uint32_t kFreedMagic = 0xDEB0F4EEu;

struct DebugHeader {
  RegionHeader region;  // algorithm = kDebugRegionAlgorithm; counters count the users' requested bytes
  uint32_t inner_algorithm;
  uint32_t quarantine_slots;
  uint64_t inner_offset;       // where the inner heap's region starts (a multiple of 4096)
  uint64_t quarantine_offset;  // ring of user offsets of freed blocks, oldest at q_head
  uint64_t q_head;
  uint64_t q_count;
  uint64_t q_bytes;      // inner bytes held by the quarantine
  uint64_t q_max_bytes;  // the quarantine gives blocks back past this
  uint64_t violations;   // misuses detected so far
  char last_violation[232];
};
static_assert(sizeof(DebugHeader) == 80 + 8 + 8 * 7 + 232, "DebugHeader is part of the shared layout");
static_assert(offsetof(DebugHeader, inner_offset) == 88, "DebugHeader is part of the shared layout");

struct DebugBlock {
  uint32_t magic;  // kLiveMagic, or kFreedMagic while the block is in the quarantine
  uint32_t owner_pid;
  uint64_t size;  // requested bytes
  uint64_t user;  // the offset handed out
  uint32_t site;
  uint32_t reserved;
};
static_assert(sizeof(DebugBlock) == kBlockHeader, "DebugBlock is part of the shared layout");

uint64_t inner_offset_for() {
  return round_up(sizeof(DebugHeader) + uint64_t(kQuarantineSlots) * 8, kMaxAlign);
}

// The first byte in [from, to) that is not `value`, or `to`.
uint64_t first_other(const uint8_t* base, uint64_t from, uint64_t to, uint8_t value) {
  for (uint64_t i = from; i < to; ++i) {
    if (base[i] != value) return i;
  }
  return to;
}

class DebugHeap final : public Heap, public DebugHeapApi {
 public:
  DebugHeap(uint8_t* base, uint64_t size, std::unique_ptr<Heap> inner)
      : Heap(base, size), inner_(std::move(inner)), inner_base_(inner_offset_for()),
        pid_(static_cast<uint32_t>(getpid())) {}

  Algorithm algorithm() const override { return inner_->algorithm(); }
  DebugHeapApi* debug() override { return this; }

  void format(Algorithm inner_algorithm) {
    std::memset(base_, 0, inner_base_);
    DebugHeader* h = header();
    h->region.magic = kRegionMagic;
    h->region.algorithm = kDebugRegionAlgorithm;
    h->region.version = kDebugVersion;
    h->region.size = size_;
    h->region.header_size = inner_base_;
    h->inner_algorithm = static_cast<uint32_t>(inner_algorithm);
    h->quarantine_slots = kQuarantineSlots;
    h->inner_offset = inner_base_;
    h->quarantine_offset = sizeof(DebugHeader);
    h->q_max_bytes = (size_ - inner_base_) / 8;
  }

  Status alloc(uint64_t size, uint64_t align, uint64_t hint, uint64_t* offset) override {
    if (size == 0 || size > kMaxRequest || !valid_align(align) || align < kDefaultAlign) return Status::invalid_argument;
    uint64_t need = size + kLead + kTailGuard + (align - kDefaultAlign);
    if (need > kMaxRequest) {  // a valid request no heap can hold
      count_failure();
      return Status::out_of_memory;
    }
    uint64_t inner_hint = hint != kNoHint && hint >= inner_base_ ? hint - inner_base_ : kNoHint;
    uint64_t io = 0;
    Status s = inner_->alloc(need, kDefaultAlign, inner_hint, &io);
    if (s == Status::out_of_memory && header()->q_count > 0) {
      while (header()->q_count > 0) evict();  // quarantined memory is better than none
      s = inner_->alloc(need, kDefaultAlign, inner_hint, &io);
    }
    if (s == Status::out_of_memory) count_failure();
    if (s != Status::ok) return s;
    uint64_t usable = 0;
    if (inner_->usable_size(io, &usable) != Status::ok) return Status::corrupted;
    uint64_t block = inner_base_ + io, end = block + usable;
    uint64_t user = round_up(block + kLead, align);
    DebugBlock b{kLiveMagic, pid_, size, user, site_, 0};
    std::memset(base_ + block + kBlockHeader, kGuardByte, user - 24 - block - kBlockHeader);
    std::memcpy(base_ + user - 24, &block, 8);
    std::memset(base_ + user - 16, kGuardByte, 16);
    std::memset(base_ + user + size, kGuardByte, end - user - size);
    std::memcpy(base_ + block, &b, sizeof b);
    count_alloc(size);
    *offset = user;
    return Status::ok;
  }

  Status free(uint64_t offset) override {
    uint64_t block = 0, end = 0;
    DebugBlock b;
    Status s = locate(offset, &block, &end, &b);
    if (s != Status::ok) return s;
    if (!guards_intact(block, end, b, true)) return Status::corrupted;
    // One store makes it freed, before the poison: a crash in between leaves a freed block whose
    // poison is incomplete (rebuild gives it back without checking), never a live block with
    // damaged guards. The quarantine entry comes last.
    set_magic(block, kFreedMagic);
    std::memset(base_ + offset, kPoisonByte, end - offset);
    count_free(b.size);
    DebugHeader* h = header();
    bool damage = false;
    if (h->q_count >= kQuarantineSlots) damage |= !evict();
    store_ring((h->q_head + h->q_count) % kQuarantineSlots, offset);
    h->q_count += 1;
    h->q_bytes += end - block;
    while (h->q_bytes > h->q_max_bytes && h->q_count > 1) damage |= !evict();
    return damage ? Status::corrupted : Status::ok;
  }

  Status resize_in_place(uint64_t offset, uint64_t size) override {
    if (size == 0 || size > kMaxRequest) return Status::invalid_argument;
    uint64_t block = 0, end = 0;
    DebugBlock b;
    Status s = locate(offset, &block, &end, &b);
    if (s != Status::ok) return s;
    if (!guards_intact(block, end, b, true)) return Status::corrupted;
    uint64_t lead = offset - block;
    if (offset + size + kTailGuard > end) {
      s = inner_->resize_in_place(block - inner_base_, lead + size + kTailGuard);
      if (s != Status::ok) return s;
      uint64_t usable = 0;
      if (inner_->usable_size(block - inner_base_, &usable) != Status::ok) return Status::corrupted;
      end = block + usable;
    }
    // Bytes past the new size are guard bytes again (a shrink hands them back to the guard).
    if (offset + size < end) std::memset(base_ + offset + size, kGuardByte, end - offset - size);
    count_resize(b.size, size);
    b.size = size;
    std::memcpy(base_ + block, &b, sizeof b);
    return Status::ok;
  }

  Status usable_size(uint64_t offset, uint64_t* size) const override {
    uint64_t block = 0, end = 0;
    DebugBlock b;
    Status s = locate(offset, &block, &end, &b);
    if (s != Status::ok) return s;
    *size = b.size;  // in debug mode the usable size is what was asked: a byte more is an overrun
    return Status::ok;
  }

  void stats(HeapStats* out) const override {
    HeapStats inner;
    inner_->stats(&inner);
    fill_counter_stats(out);
    out->free = inner.free;
    uint64_t accounted = out->used + out->free;
    out->overhead = accounted <= size_ ? size_ - accounted : 0;
    uint64_t extra = kLead + kTailGuard;
    out->largest_free_block = inner.largest_free_block > extra ? inner.largest_free_block - extra : 0;
  }

  void check(CheckResult* r) const override {
    const DebugHeader* h = header();
    if (h->region.magic != kRegionMagic || h->region.algorithm != kDebugRegionAlgorithm ||
        h->inner_offset != inner_base_ || h->quarantine_slots != kQuarantineSlots) {
      r->report("debug: header overwritten");
    }
    if (h->violations > 0) {
      std::string last(h->last_violation, strnlen(h->last_violation, sizeof h->last_violation));
      r->report("debug: " + std::to_string(h->violations) + " misuse(s) detected; the last: " + last);
    }
    inner_->check(r);
    std::unordered_set<uint64_t> quarantined;
    for (uint64_t i = 0; i < h->q_count && i < kQuarantineSlots; ++i) {
      quarantined.insert(load_ring((h->q_head + i) % kQuarantineSlots));
    }
    uint64_t used = 0, live = 0;
    Status s = inner_->walk([&](const BlockInfo& info) {
      if (!info.used) return true;
      uint64_t block = inner_base_ + info.offset, end = block + info.size;
      DebugBlock b;
      std::memcpy(&b, base_ + block, sizeof b);
      if (b.magic == kLiveMagic && b.user >= block + kLead && b.user + b.size + kTailGuard <= end) {
        ++live;
        used += b.size;
        std::string what;
        if (!guard_report(block, end, b, &what)) r->report(what);
      } else if (b.magic == kFreedMagic && b.user >= block + kLead && b.user <= end) {
        if (!quarantined.count(b.user)) r->report("debug: freed block at offset " + std::to_string(b.user) + " is not in the quarantine");
        uint64_t bad = first_other(base_, b.user, end, kPoisonByte);
        if (bad != end) r->report(write_after_free(b, bad));
      } else {
        r->report("debug: block at offset " + std::to_string(block) + " has a damaged debug header");
      }
      return true;
    });
    if (s != Status::ok) r->report("debug: the inner heap cannot be walked");
    if (used != h->region.counters.used || live != h->region.counters.live) {
      r->report("debug: counters disagree with the live allocations");
    }
  }

  Status walk(const std::function<bool(const BlockInfo&)>& visit) const override {
    return inner_->walk([&](const BlockInfo& info) {
      uint64_t block = inner_base_ + info.offset;
      if (info.used) {
        DebugBlock b;
        std::memcpy(&b, base_ + block, sizeof b);
        if (b.magic == kLiveMagic) return visit(BlockInfo{b.user, b.size, true});
      }
      return visit(BlockInfo{block, info.size, false});
    });
  }

  Status rebuild() override {
    Status s = inner_->rebuild();
    if (s != Status::ok) return s;
    DebugHeader* h = header();
    // Keep only ring entries that still name freed blocks, oldest first.
    std::vector<uint64_t> ring;
    for (uint64_t i = 0; i < h->q_count && i < kQuarantineSlots; ++i) ring.push_back(load_ring((h->q_head + i) % kQuarantineSlots));
    std::unordered_set<uint64_t> kept;
    std::vector<uint64_t> orphans;  // freed blocks the quarantine lost (a crash between the two stores)
    std::vector<uint64_t> unmarked;
    uint64_t used = 0, live = 0;
    s = inner_->walk([&](const BlockInfo& info) {
      if (!info.used) return true;
      uint64_t block = inner_base_ + info.offset;
      DebugBlock b;
      std::memcpy(&b, base_ + block, sizeof b);
      if (b.magic == kLiveMagic) {
        ++live;
        used += b.size;
      } else if (b.magic == kFreedMagic) {
        kept.insert(b.user);
        orphans.push_back(block);
      } else {
        unmarked.push_back(block);  // an allocation that died before its header was written
      }
      return true;
    });
    if (s != Status::ok) return s;
    h->q_head = 0;
    h->q_count = 0;
    h->q_bytes = 0;
    for (uint64_t user : ring) {
      if (!kept.count(user) || h->q_count >= kQuarantineSlots) continue;
      kept.erase(user);
      store_ring(h->q_count++, user);
    }
    for (uint64_t block : orphans) {
      DebugBlock b;
      std::memcpy(&b, base_ + block, sizeof b);
      if (kept.count(b.user)) inner_->free(block - inner_base_);  // not in the ring: give it back
    }
    for (uint64_t block : unmarked) inner_->free(block - inner_base_);
    for (uint64_t i = 0; i < h->q_count; ++i) {
      uint64_t block = 0, usable = 0;
      std::memcpy(&block, base_ + load_ring(i) - 24, 8);
      if (inner_->usable_size(block - inner_base_, &usable) == Status::ok) h->q_bytes += usable;
    }
    h->region.counters.used = used;
    h->region.counters.live = live;
    return Status::ok;
  }

  // DebugHeapApi
  void set_site(uint32_t site) override { site_ = site; }

  std::string last_violation() const override {
    const DebugHeader* h = header();
    return std::string(h->last_violation, strnlen(h->last_violation, sizeof h->last_violation));
  }

  Status live_allocations(const std::function<void(const DebugAllocation&)>& visit) const override {
    return inner_->walk([&](const BlockInfo& info) {
      if (!info.used) return true;
      DebugBlock b;
      std::memcpy(&b, base_ + inner_base_ + info.offset, sizeof b);
      if (b.magic == kLiveMagic) visit(DebugAllocation{b.user, b.size, b.owner_pid, b.site});
      return true;
    });
  }

  Status reclaim(uint32_t pid, uint64_t* count, uint64_t* bytes,
                 const std::function<void(uint64_t offset)>& freed) override {
    std::vector<DebugAllocation> owned;
    Status s = live_allocations([&](const DebugAllocation& a) {
      if (a.owner_pid == pid) owned.push_back(a);
    });
    if (s != Status::ok) return s;
    *count = 0;
    *bytes = 0;
    for (const DebugAllocation& a : owned) {
      Status f = free(a.offset);
      if (f != Status::ok && f != Status::corrupted) return f;
      *count += 1;
      *bytes += a.size;
      if (freed) freed(a.offset);
    }
    return Status::ok;
  }

 private:
  DebugHeader* header() const { return reinterpret_cast<DebugHeader*>(base_); }
  uint64_t load_ring(uint64_t i) const {
    uint64_t v;
    std::memcpy(&v, base_ + sizeof(DebugHeader) + i * 8, 8);
    return v;
  }
  void store_ring(uint64_t i, uint64_t v) { std::memcpy(base_ + sizeof(DebugHeader) + i * 8, &v, 8); }
  void set_magic(uint64_t block, uint32_t magic) { std::memcpy(base_ + block, &magic, 4); }

  // Finds the allocation whose user offset is `offset`: its inner block [block, end) and header.
  // Everything read is checked against the inner heap before it is believed.
  Status locate(uint64_t offset, uint64_t* block, uint64_t* end, DebugBlock* b) const {
    if (offset < inner_base_ + kLead || offset >= size_ || offset % kDefaultAlign != 0) return Status::foreign;
    uint64_t p = 0;
    std::memcpy(&p, base_ + offset - 24, 8);
    if (p < inner_base_ || p > offset - kLead) return Status::foreign;
    uint64_t usable = 0;
    Status s = inner_->usable_size(p - inner_base_, &usable);
    std::memcpy(b, base_ + p, sizeof *b);
    if (s != Status::ok) return b->magic == kFreedMagic && b->user == offset ? Status::double_free : Status::foreign;
    if (b->user != offset) return Status::foreign;
    if (b->magic == kFreedMagic) return Status::double_free;
    if (b->magic != kLiveMagic || b->size > usable || offset + b->size + kTailGuard > p + usable) {
      const_cast<DebugHeap*>(this)->record("underrun before the allocation at offset " + std::to_string(offset) +
                                           ": its debug header was overwritten");
      return Status::corrupted;
    }
    *block = p;
    *end = p + usable;
    return Status::ok;
  }

  // Describes the first damaged guard byte of a live block; true when all are intact.
  bool guard_report(uint64_t block, uint64_t end, const DebugBlock& b, std::string* what) const {
    uint64_t user = b.user;
    uint64_t bad = first_other(base_, block + kBlockHeader, user - 24, kGuardByte);
    if (bad == user - 24) bad = first_other(base_, user - 16, user, kGuardByte);
    if (bad != user) {
      *what = "underrun before the allocation at offset " + std::to_string(user) + " (" + std::to_string(b.size) +
              " bytes, site " + std::to_string(b.site) + ", pid " + std::to_string(b.owner_pid) + "): the guard " +
              std::to_string(user - bad) + " byte(s) before it was overwritten";
      return false;
    }
    bad = first_other(base_, user + b.size, end, kGuardByte);
    if (bad != end) {
      *what = "overrun after the allocation at offset " + std::to_string(user) + " (" + std::to_string(b.size) +
              " bytes, site " + std::to_string(b.site) + ", pid " + std::to_string(b.owner_pid) + "): byte " +
              std::to_string(bad - user) + " was written";
      return false;
    }
    return true;
  }

  bool guards_intact(uint64_t block, uint64_t end, const DebugBlock& b, bool record_it) {
    std::string what;
    if (guard_report(block, end, b, &what)) return true;
    if (record_it) record(what);
    return false;
  }

  std::string write_after_free(const DebugBlock& b, uint64_t bad) const {
    return "write after free to the allocation at offset " + std::to_string(b.user) + " (" + std::to_string(b.size) +
           " bytes, site " + std::to_string(b.site) + ", pid " + std::to_string(b.owner_pid) + "): byte " +
           std::to_string(bad - b.user) + " changed after it was freed";
  }

  void record(const std::string& what) {
    DebugHeader* h = header();
    h->violations += 1;
    size_t n = what.size() < sizeof h->last_violation - 1 ? what.size() : sizeof h->last_violation - 1;
    std::memcpy(h->last_violation, what.data(), n);
    h->last_violation[n] = '\0';
  }

  // Gives the oldest quarantined block back to the inner heap after checking its poison. Returns false
  // when the poison was disturbed (a write after free, recorded) or the entry could not be trusted.
  bool evict() {
    DebugHeader* h = header();
    if (h->q_count == 0) return true;
    uint64_t user = load_ring(h->q_head % kQuarantineSlots);
    h->q_head = (h->q_head + 1) % kQuarantineSlots;
    h->q_count -= 1;
    uint64_t p = 0, usable = 0;
    DebugBlock b;
    if (user < inner_base_ + kLead || user >= size_) {
      record("quarantine entry out of range");
      return false;
    }
    std::memcpy(&p, base_ + user - 24, 8);
    if (p < inner_base_ || p > user - kLead || inner_->usable_size(p - inner_base_, &usable) != Status::ok) {
      record("quarantine entry for offset " + std::to_string(user) + " names no block");
      return false;
    }
    std::memcpy(&b, base_ + p, sizeof b);
    h->q_bytes = h->q_bytes >= usable ? h->q_bytes - usable : 0;
    bool ok = true;
    if (b.magic != kFreedMagic || b.user != user) {
      record("quarantined block at offset " + std::to_string(user) + " has a damaged debug header");
      ok = false;
    } else {
      uint64_t bad = first_other(base_, user, p + usable, kPoisonByte);
      if (bad != p + usable) {
        record(write_after_free(b, bad));
        ok = false;
      }
    }
    inner_->free(p - inner_base_);
    return ok;
  }

  std::unique_ptr<Heap> inner_;
  const uint64_t inner_base_;
  const uint32_t pid_;  // cached: Node processes do not fork under a live pool
  uint32_t site_ = 0;
};

}  // namespace

uint64_t debug_min_region_size(Algorithm inner, const HeapOptions& options) {
  HeapOptions plain = options;
  plain.debug = false;
  uint64_t min = heap_min_region_size(inner, plain);
  return min == 0 ? 0 : inner_offset_for() + min;
}

Status debug_format(Algorithm inner_algorithm, uint8_t* base, uint64_t size, const HeapOptions& options,
                    std::unique_ptr<Heap>* out) {
  uint64_t inner_base = inner_offset_for();
  if (size < inner_base + kMaxAlign) return Status::out_of_memory;
  HeapOptions plain = options;
  plain.debug = false;
  std::unique_ptr<Heap> inner;
  Status s = heap_format(inner_algorithm, base + inner_base, size - inner_base, plain, &inner);
  if (s != Status::ok) return s;
  auto heap = std::make_unique<DebugHeap>(base, size, std::move(inner));
  heap->format(inner_algorithm);
  *out = std::move(heap);
  return Status::ok;
}

Status debug_attach(uint8_t* base, uint64_t size, std::unique_ptr<Heap>* out) {
  uint64_t inner_base = inner_offset_for();
  if (size < inner_base + kMaxAlign) return Status::incompatible;
  DebugHeader h;
  std::memcpy(&h, base, sizeof h);
  if (h.region.magic != kRegionMagic || h.region.algorithm != kDebugRegionAlgorithm) return Status::incompatible;
  if (h.region.version != kDebugVersion || h.region.size != size) return Status::incompatible;
  if (h.inner_offset != inner_base || h.quarantine_slots != kQuarantineSlots || h.quarantine_offset != sizeof(DebugHeader) ||
      h.q_count > kQuarantineSlots || h.q_head >= kQuarantineSlots) {
    return Status::corrupted;
  }
  RegionHeader inner_header;
  std::memcpy(&inner_header, base + inner_base, sizeof inner_header);
  if (inner_header.algorithm == kDebugRegionAlgorithm) return Status::corrupted;  // no nesting
  std::unique_ptr<Heap> inner;
  Status s = heap_attach(base + inner_base, size - inner_base, &inner);
  if (s != Status::ok) return s == Status::incompatible ? Status::corrupted : s;
  if (static_cast<uint32_t>(inner->algorithm()) != h.inner_algorithm) return Status::corrupted;
  *out = std::make_unique<DebugHeap>(base, size, std::move(inner));
  return Status::ok;
}

}  // namespace mempool
