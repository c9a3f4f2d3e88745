// A raw segment: a named POSIX shared-memory object (/dev/shm/<name>) mapped as plain bytes, with no
// header and no heap, so that any program that can shm_open a name (Python's
// multiprocessing.shared_memory, C, Rust) sees exactly the bytes we see, at offset 0. Plain C++17, no
// Node headers.
//
// Invariants:
//   - the object's size is its whole content: create() sets it once (ftruncate), and nothing here ever
//     changes it afterwards; open() maps the size it finds (fstat);
//   - a RawSegment maps the whole object, MAP_SHARED, read-write or (open with read_only) PROT_READ only;
//   - names follow Segment::valid_name (1 to 250 bytes, no '/' or NUL, not '.' or '..'), so a raw
//     segment and a mempool segment can never be told apart by name, only by content.
//
// Crash rules: create() is shm_open(O_CREAT) then fchmod, ftruncate, mmap. A creator killed between
// shm_open and ftruncate leaves an object of 0 bytes under the name: open() (and create() without
// exclusive) reports it as Status::empty, after giving a live creator a few milliseconds to reach its
// ftruncate; the remedy is to unlink the name and create it again. A creator killed after ftruncate
// leaves an object of the full size, all zero bytes where it wrote nothing: that is a valid segment,
// since raw segments have no header to be half written. Killed at any point, a process leaves nothing
// else behind (the kernel drops its mapping).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "heap.h"

namespace mempool {

class RawSegment {
 public:
  // Creates /dev/shm/<name> of `size` bytes (mode: permission bits, the umask not applied) and maps it
  // read-write. exclusive: Status::exists when the name exists; otherwise an existing object is opened
  // as it is, and must be `size` bytes (Status::size_mismatch, its size in *found_size) and not empty.
  // size must be > 0 and fit off_t and size_t (Status::invalid_argument). *err: the errno behind a
  // permission or system_error status (0 when none).
  static Status create(const std::string& name, uint64_t size, uint32_t mode, bool exclusive,
                       std::unique_ptr<RawSegment>* out, int* err, uint64_t* found_size);
  // Maps an existing object at its current size: PROT_READ with read_only, else read-write.
  // Status::not_found, empty, permission, invalid_name, system_error.
  static Status open(const std::string& name, bool read_only, std::unique_ptr<RawSegment>* out, int* err);
  // Whether `size` can be a raw segment's size: > 0, and representable as off_t and size_t.
  static bool valid_size(uint64_t size);

  ~RawSegment() { close(); }
  RawSegment(const RawSegment&) = delete;
  RawSegment& operator=(const RawSegment&) = delete;

  // Unmaps (idempotent). The name stays until unlinked (Segment::unlink: the same shm_unlink).
  void close();
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  bool read_only() const { return read_only_; }

 private:
  RawSegment(uint8_t* data, uint64_t size, bool read_only) : data_(data), size_(size), read_only_(read_only) {}
  // Maps an open object of the size it has now (waiting briefly for a creator to size it).
  static Status map_existing(int fd, bool read_only, std::unique_ptr<RawSegment>* out, int* err);

  uint8_t* data_;
  uint64_t size_;
  bool read_only_;
};

}  // namespace mempool
