// Raw segments (raw_segment.h): plain named shm objects, the empty object a creator killed before ftruncate
// leaves, and the size checks.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "../raw_segment.h"
#include "check.h"
#include "pool_support.h"

using namespace mempool;

TEST("raw segment: create maps zero bytes, open sees them, exclusive and size mismatch are refused") {
  std::string name = coretest::unique_segment_name("raw");
  coretest::Unlinker unlink(name);
  std::unique_ptr<RawSegment> a, b, c;
  int err = 0;
  uint64_t found = 0;
  EXPECT(RawSegment::create(name, 5000, 0600, true, &a, &err, &found) == Status::ok);
  EXPECT(a->size() == 5000 && !a->read_only() && a->data()[4999] == 0);
  std::memcpy(a->data(), "raw", 3);
  EXPECT(RawSegment::open(name, true, &b, &err) == Status::ok);
  EXPECT(b->size() == 5000 && b->read_only() && std::memcmp(b->data(), "raw", 3) == 0);
  EXPECT(RawSegment::create(name, 5000, 0600, true, &c, &err, &found) == Status::exists);
  EXPECT(RawSegment::create(name, 4096, 0600, false, &c, &err, &found) == Status::size_mismatch && found == 5000 && !c);
  EXPECT(RawSegment::create(name, 5000, 0600, false, &c, &err, &found) == Status::ok && c->data()[0] == 'r');
  c->close();
  c->close();  // idempotent
  EXPECT(c->data() == nullptr);
}

TEST("raw segment: a 0-byte object (creator killed before ftruncate) is empty; bad names and sizes are refused") {
  std::string name = coretest::unique_segment_name("raw-empty");
  coretest::Unlinker unlink(name);
  int fd = shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  EXPECT(fd >= 0);
  close(fd);
  std::unique_ptr<RawSegment> s;
  int err = 0;
  uint64_t found = 0;
  EXPECT(RawSegment::open(name, false, &s, &err) == Status::empty);
  EXPECT(RawSegment::create(name, 64, 0600, false, &s, &err, &found) == Status::empty);
  EXPECT(RawSegment::open(name + "-absent", false, &s, &err) == Status::not_found);
  EXPECT(RawSegment::open("a/b", false, &s, &err) == Status::invalid_name);
  EXPECT(RawSegment::create("", 64, 0600, true, &s, &err, &found) == Status::invalid_name);
  EXPECT(RawSegment::create(name + "-zero", 0, 0600, true, &s, &err, &found) == Status::invalid_argument);
  EXPECT(RawSegment::create(name + "-huge", UINT64_MAX, 0600, true, &s, &err, &found) == Status::invalid_argument);
  EXPECT(!RawSegment::valid_size(0) && RawSegment::valid_size(1) && !RawSegment::valid_size(uint64_t(1) << 63));
}
