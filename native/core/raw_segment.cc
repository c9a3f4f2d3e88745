// Raw segments: create, open, close (raw_segment.h states the invariants and crash rules).
#include "raw_segment.h"

#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <limits>

namespace mempool {
namespace {

// How long open() gives a live creator to get from shm_open to ftruncate before calling a 0-byte object
// empty: that gap is a few system calls, so 20 ms is generous, and short enough not to be felt.
constexpr int kEmptyGraceMs = 20;

}  // namespace

bool RawSegment::valid_size(uint64_t size) {
  return size > 0 && size <= static_cast<uint64_t>(std::numeric_limits<off_t>::max()) &&
         size <= static_cast<uint64_t>(std::numeric_limits<size_t>::max());
}

Status RawSegment::map_existing(int fd, bool read_only, std::unique_ptr<RawSegment>* out, int* err) {
  struct stat st;
  for (int waited = 0;; ++waited) {
    if (fstat(fd, &st) != 0) {
      *err = errno;
      return Status::system_error;
    }
    if (!S_ISREG(st.st_mode)) return Status::system_error;
    if (st.st_size != 0) break;
    if (waited >= kEmptyGraceMs) return Status::empty;
    usleep(1000);
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (!valid_size(size)) return Status::system_error;  // not on a 64-bit Linux
  int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* mem = mmap(nullptr, static_cast<size_t>(size), prot, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) {
    *err = errno;
    return errno_status(errno);
  }
  out->reset(new RawSegment(static_cast<uint8_t*>(mem), size, read_only));
  return Status::ok;
}

Status RawSegment::create(const std::string& name, uint64_t size, uint32_t mode, bool exclusive,
                          std::unique_ptr<RawSegment>* out, int* err, uint64_t* found_size) {
  *err = 0;
  *found_size = 0;
  if (!Segment::valid_name(name)) return Status::invalid_name;
  if (!valid_size(size)) return Status::invalid_argument;
  std::string path = "/" + name;
  int fd = shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, static_cast<mode_t>(mode & 0777));
  if (fd < 0 && errno == EEXIST && !exclusive) {
    // Someone else's object: take it as it is (never resize what another process may be using).
    fd = shm_open(path.c_str(), O_RDWR, 0);
    if (fd < 0) {
      *err = errno;
      return errno_status(errno);
    }
    Status s = map_existing(fd, false, out, err);
    ::close(fd);
    if (s == Status::ok && (*out)->size() != size) {
      *found_size = (*out)->size();
      out->reset();
      return Status::size_mismatch;
    }
    return s;
  }
  if (fd < 0) {
    *err = errno;
    return errno_status(errno);
  }
  // From here the name is ours: any failure removes it again.
  auto fail = [&](int e) {
    *err = e;
    ::close(fd);
    shm_unlink(path.c_str());
    return e == 0 ? Status::system_error : errno_status(e);
  };
  if (fchmod(fd, static_cast<mode_t>(mode & 0777)) != 0) return fail(errno);  // the umask must not change the mode
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) return fail(errno);
  // tmpfs allocates pages lazily: reserve them now so a full /dev/shm fails here, not with SIGBUS later.
  int pe = posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (pe != 0 && pe != EOPNOTSUPP && pe != EINVAL) return fail(pe);
  void* mem = mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) return fail(errno);
  ::close(fd);
  out->reset(new RawSegment(static_cast<uint8_t*>(mem), size, false));
  return Status::ok;
}

Status RawSegment::open(const std::string& name, bool read_only, std::unique_ptr<RawSegment>* out, int* err) {
  *err = 0;
  if (!Segment::valid_name(name)) return Status::invalid_name;
  std::string path = "/" + name;
  int fd = shm_open(path.c_str(), read_only ? O_RDONLY : O_RDWR, 0);
  if (fd < 0) {
    *err = errno;
    return errno_status(errno);
  }
  Status s = map_existing(fd, read_only, out, err);
  ::close(fd);  // the mapping keeps the object; the descriptor is not needed
  return s;
}

void RawSegment::close() {
  if (data_ != nullptr) munmap(data_, static_cast<size_t>(size_));
  data_ = nullptr;
}

}  // namespace mempool
