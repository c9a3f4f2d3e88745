// The directory of named allocations: an open-addressing table of DirEntry (key -> offset, length) and an
// offset index (offset -> entry) used to find a block's name. Under the segment's lock; docs/segment-format.md
// describes the layout and the probe for readers in other languages. Every entry is bounds-checked on read.
#include "segment.h"

#include "shared_cache.h"

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

}  // namespace

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
