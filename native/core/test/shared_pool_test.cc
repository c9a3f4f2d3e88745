// The facade's ownership rules (shared_pool.h, O1-O5) over real segments: every algorithm, a segment with
// slab caches (8 MiB) and one without (256 KiB: too small for slabs; and a debug segment), small requests
// (slots where there are slabs) and large ones (heap blocks). check() must be clean after every step.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../shared_pool.h"
#include "check.h"
#include "pool_support.h"

using namespace mempool;
using coretest::pool_stats;
using coretest::pool_usable;
using coretest::violations;

namespace {

struct Config {
  Algorithm algo;
  uint64_t size;
  bool debug;
  const char* what;
};

struct Env {
  std::string name;
  coretest::Unlinker unlink;
  std::unique_ptr<SharedPool> a, b;  // two attachments, as two processes
  Env(const Config& c, const char* tag) : name(coretest::unique_segment_name(std::string("pool-") + tag)), unlink(name) {
    SegmentOptions o;
    o.algorithm = c.algo;
    o.heap.debug = c.debug;
    if (c.size < (1 << 20)) o.directory_capacity = 16;
    a = coretest::create_pool(name, c.size, o);
    if (a) b = coretest::open_pool(name);
  }
  ~Env() {
    a.reset();
    b.reset();
  }
  bool ok() const { return a && b; }
};

struct H {
  uint64_t off = 0;
  uint32_t gen = 0;
};

Status alloc(SharedPool& p, uint64_t size, H* h) { return p.alloc(size, 16, kNoHint, 0, &h->off, &h->gen); }
uint64_t live(SharedPool& p) { return pool_stats(p).live_allocations; }
void fill(SharedPool& p, uint64_t off, uint64_t n, uint8_t v) { std::memset(p.base() + off, v, n); }
bool filled(SharedPool& p, uint64_t off, uint64_t n, uint8_t v) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p.base()[off + i] != v) return false;
  }
  return true;
}

#define CLEAN(p) EXPECT(violations(p, __func__) == 0)

// ABA: X freed and handed out again at the same offset; the first handle must not free the second owner's block.
void stale_after_reuse(Env& e, uint64_t size) {
  SharedPool &a = *e.a, &b = *e.b;
  uint64_t base_live = live(a);
  H x;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  REQUIRE(a.free(x.off, x.gen) == Status::ok);
  CLEAN(a);
  // Again at the same offset (the same attachment reuses it first: LIFO stacks and first fits).
  // A debug heap quarantines freed blocks (debug_heap.h): its blocks come back only after many frees.
  H y;
  std::vector<H> extra;
  for (int i = 0; i < 64 || (a.debug() && i < 4096); ++i) {
    REQUIRE(alloc(a, size, &y) == Status::ok);
    if (y.off == x.off) break;
    extra.push_back(y);
    if (a.debug()) {  // push x through the quarantine: free what we took, keep the count small
      REQUIRE(a.free(y.off, y.gen) == Status::ok);
      extra.pop_back();
    }
  }
  if (y.off != x.off) {  // a debug heap may never place a block there again: then X just stays free
    REQUIRE(a.debug());
    Status s = b.free(x.off, x.gen);
    EXPECT(s == Status::double_free || s == Status::foreign);
    for (const H& h : extra) EXPECT(a.free(h.off, h.gen) == Status::ok);  // y was freed in the loop
    EXPECT(live(a) == base_live);
    CLEAN(a);
    return;
  }
  EXPECT(y.gen != x.gen);
  fill(a, y.off, size, 0x5a);
  uint64_t before = live(a);
  // The old handle is stale for every transfer, from either attachment; nothing changes.
  EXPECT(a.free(x.off, x.gen) == Status::stale);
  EXPECT(b.free(x.off, x.gen) == Status::stale);
  uint64_t moved = 0;
  uint32_t ng = 0;
  EXPECT(a.realloc(x.off, x.gen, size * 2, 16, &moved, &ng) == Status::stale);
  EXPECT(b.set("aba", x.off, x.gen, 1) == Status::stale);
  NamedBlock old;
  bool had = true;
  EXPECT(b.replace("aba", x.off, x.gen, 1, &old, &had) == Status::stale);
  EXPECT(!had);
  EXPECT(live(a) == before);
  EXPECT(pool_usable(a, y.off) >= size);
  EXPECT(filled(a, y.off, size, 0x5a));
  NamedBlock nb;
  EXPECT(a.get("aba", &nb, &had) == Status::ok && !had);
  CLEAN(a);
  // The current handle works, from the other attachment too.
  EXPECT(b.free(y.off, y.gen) == Status::ok);
  EXPECT(b.free(y.off, y.gen) == Status::double_free || b.free(y.off, y.gen) == Status::foreign);
  for (const H& h : extra) EXPECT(a.free(h.off, h.gen) == Status::ok);
  EXPECT(live(a) == base_live);
  CLEAN(a);
}

// O3, O4: a named block is freed through its name only; set bumps the word; take hands a fresh handle.
void named_rules(Env& e, uint64_t size) {
  SharedPool &a = *e.a, &b = *e.b;
  uint64_t base_live = live(a);
  H x;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  fill(a, x.off, size, 0x11);
  EXPECT(a.set("n", x.off, x.gen, size) == Status::ok);
  CLEAN(a);
  EXPECT(a.free(x.off, x.gen) == Status::named);
  EXPECT(b.free(x.off, kAnyGen) == Status::named);
  uint64_t moved = 0;
  uint32_t ng = 0;
  EXPECT(a.realloc(x.off, x.gen, size + 100, 16, &moved, &ng) == Status::named);
  EXPECT(a.set("n2", x.off, x.gen, size) == Status::named);  // O4: one name per block
  EXPECT(a.set("n2", x.off, kAnyGen, size) == Status::named);
  NamedBlock nb;
  bool had = false;
  EXPECT(b.get("n", &nb, &had) == Status::ok && had && nb.offset == x.off && nb.length == size);
  EXPECT((nb.gen & kGenNamed) != 0);
  EXPECT(b.free(nb.offset, nb.gen) == Status::named);  // a borrowed handle reads, never frees
  EXPECT(b.get("n2", &nb, &had) == Status::ok && !had);
  std::string bytes;
  EXPECT(b.copy("n", &bytes, &had) == Status::ok && had && bytes == std::string(size, '\x11'));
  EXPECT(live(a) == base_live + 1);
  CLEAN(a);
  // take: the name lets go; the taker's handle is fresh; the setter's is stale.
  NamedBlock t;
  EXPECT(b.take("n", &t, &had) == Status::ok && had && t.offset == x.off && t.length == size);
  EXPECT(t.gen != x.gen && (t.gen & kGenNamed) == 0);
  EXPECT(b.take("n", &nb, &had) == Status::ok && !had);
  EXPECT(a.get("n", &nb, &had) == Status::ok && !had);
  CLEAN(a);
  EXPECT(a.free(x.off, x.gen) == Status::stale);
  EXPECT(a.set("n", x.off, x.gen, size) == Status::stale);
  EXPECT(live(a) == base_live + 1);
  EXPECT(filled(a, x.off, size, 0x11));
  EXPECT(a.free(t.offset, t.gen) == Status::ok);  // anyone holding the current handle may free
  EXPECT(live(a) == base_live);
  CLEAN(a);
  // Lengths: a name covers at most the block.
  H y;
  REQUIRE(alloc(a, size, &y) == Status::ok);
  EXPECT(a.set("long", y.off, y.gen, pool_usable(a, y.off) + 1) != Status::ok);
  EXPECT(a.free(y.off, y.gen) == Status::ok);  // refused set changed nothing: the handle still owns it
  EXPECT(live(a) == base_live);
  CLEAN(a);
}

// set over a key frees the block it named; replace hands it back with a fresh handle; remove frees.
void replace_rules(Env& e, uint64_t size) {
  SharedPool &a = *e.a, &b = *e.b;
  uint64_t base_live = live(a);
  H x, y, z;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  REQUIRE(alloc(b, size, &y) == Status::ok);
  REQUIRE(alloc(a, size, &z) == Status::ok);
  fill(a, x.off, size, 1);
  fill(a, y.off, size, 2);
  fill(a, z.off, size, 3);
  NamedBlock old;
  bool had = true;
  EXPECT(a.replace("r", x.off, x.gen, size, &old, &had) == Status::ok && !had);  // nothing named before
  CLEAN(a);
  EXPECT(b.replace("r", y.off, y.gen, size / 2 + 1, &old, &had) == Status::ok && had);
  EXPECT(old.offset == x.off && old.length == size && (old.gen & kGenNamed) == 0 && old.gen != x.gen);
  CLEAN(a);
  EXPECT(a.free(x.off, x.gen) == Status::stale);  // the setter's handle: two transfers ago
  EXPECT(b.free(y.off, y.gen) == Status::named);
  std::string bytes;
  EXPECT(a.copy("r", &bytes, &had) == Status::ok && had && bytes == std::string(size / 2 + 1, '\x02'));
  EXPECT(live(a) == base_live + 3);
  EXPECT(filled(a, x.off, size, 1));
  EXPECT(a.free(old.offset, old.gen) == Status::ok);  // the handed-back block frees fine
  EXPECT(live(a) == base_live + 2);
  CLEAN(a);
  // set over the key: y is freed by the directory.
  EXPECT(a.set("r", z.off, z.gen, size) == Status::ok);
  EXPECT(live(a) == base_live + 1);
  Status sy = b.free(y.off, kAnyGen);
  EXPECT(sy == Status::double_free || sy == Status::foreign);
  EXPECT(a.copy("r", &bytes, &had) == Status::ok && had && bytes == std::string(size, '\x03'));
  CLEAN(a);
  // remove frees the named block.
  EXPECT(b.remove("r", &had) == Status::ok && had);
  EXPECT(b.remove("r", &had) == Status::ok && !had);
  EXPECT(live(a) == base_live);
  Status sz = a.free(z.off, kAnyGen);
  EXPECT(sz == Status::double_free || sz == Status::foreign);
  CLEAN(a);
  std::vector<std::string> keys;
  EXPECT(a.keys(&keys) == Status::ok && keys.empty());
}

// realloc: in place keeps the handle; a move makes the old one worthless.
void realloc_rules(Env& e, uint64_t size) {
  SharedPool &a = *e.a, &b = *e.b;
  uint64_t base_live = live(a);
  H x;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  fill(a, x.off, size, 7);
  uint64_t moved = 0;
  uint32_t ng = 0;
  REQUIRE(b.realloc(x.off, x.gen, size * 8 + 4096, 16, &moved, &ng) == Status::ok);
  EXPECT(filled(a, moved, size, 7));
  if (moved != x.off) {
    Status s = a.free(x.off, x.gen);
    EXPECT(s == Status::double_free || s == Status::foreign || s == Status::stale);
  } else {
    EXPECT(ng != x.gen);  // in place too, the handle moves on
    EXPECT(a.free(x.off, x.gen) == Status::stale);
  }
  EXPECT(live(a) == base_live + 1);
  CLEAN(a);
  EXPECT(a.free(moved, ng) == Status::ok);
  EXPECT(live(a) == base_live);
  CLEAN(a);
}

// O5: a pinned block is not reused; the free waits for the last unpin.
void pin_rules(Env& e, uint64_t size) {
  SharedPool &a = *e.a, &b = *e.b;
  uint64_t base_live = live(a);
  NamedBlock nb;
  bool had = true;
  uint32_t pin1 = 0, pin2 = 0;
  EXPECT(a.pin("nothing", &nb, &pin1, &had) == Status::ok && !had);
  // remove while pinned twice: the block stays until the second unpin.
  H x;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  fill(a, x.off, size, 0x44);
  REQUIRE(a.set("p", x.off, x.gen, size) == Status::ok);
  REQUIRE(b.pin("p", &nb, &pin1, &had) == Status::ok && had && nb.offset == x.off);
  REQUIRE(a.pin("p", &nb, &pin2, &had) == Status::ok && had);
  CLEAN(a);
  EXPECT(a.remove("p", &had) == Status::ok && had);
  EXPECT(a.get("p", &nb, &had) == Status::ok && !had);
  CLEAN(a);
  EXPECT(pool_usable(a, x.off) >= size);  // still allocated: its readers read it
  EXPECT(live(a) == base_live + 1);
  // Nobody else gets its memory meanwhile.
  std::vector<H> others;
  for (int i = 0; i < 8; ++i) {
    H o;
    if (alloc(a, size, &o) == Status::ok) others.push_back(o);
  }
  for (const H& o : others) EXPECT(o.off != x.off);
  for (const H& o : others) fill(a, o.off, size, 0x66);
  EXPECT(filled(a, x.off, size, 0x44));
  for (const H& o : others) EXPECT(a.free(o.off, o.gen) == Status::ok);
  EXPECT(b.unpin(pin1, x.off + 16) == Status::invalid_argument);  // not that pin's block
  EXPECT(b.unpin(pin1, x.off) == Status::ok);
  EXPECT(b.unpin(pin1, x.off) == Status::invalid_argument);  // once
  EXPECT(pool_usable(a, x.off) >= size);  // one reader left
  EXPECT(live(a) == base_live + 1);
  CLEAN(a);
  EXPECT(a.unpin(pin2, x.off) == Status::ok);  // the last: the free happens now
  EXPECT(pool_usable(a, x.off) == 0);
  EXPECT(live(a) == base_live);
  CLEAN(a);

  // set over a pinned key: the old block's free waits too.
  H y, z;
  REQUIRE(alloc(a, size, &y) == Status::ok);
  REQUIRE(alloc(b, size, &z) == Status::ok);
  fill(a, y.off, size, 0x21);
  REQUIRE(a.set("q", y.off, y.gen, size) == Status::ok);
  REQUIRE(b.pin("q", &nb, &pin1, &had) == Status::ok && had && nb.offset == y.off);
  REQUIRE(b.set("q", z.off, z.gen, size) == Status::ok);
  EXPECT(live(a) == base_live + 2);
  EXPECT(filled(a, y.off, size, 0x21));
  CLEAN(a);
  EXPECT(b.unpin(pin1, y.off) == Status::ok);
  EXPECT(live(a) == base_live + 1);
  CLEAN(a);

  // take while pinned: the taker owns it; its free waits for the reader.
  REQUIRE(a.pin("q", &nb, &pin1, &had) == Status::ok && had && nb.offset == z.off);
  NamedBlock t;
  REQUIRE(b.take("q", &t, &had) == Status::ok && had && t.offset == z.off);
  uint64_t moved = 0;
  uint32_t ng = 0;
  // A pinned block is not resized in place (a shrink would hand its tail to others under the reader).
  if (b.realloc(t.offset, t.gen, size / 2 + 1, 16, &moved, &ng) == Status::ok) {
    EXPECT(moved != t.offset);
    EXPECT(pool_usable(a, z.off) >= size);  // the old one waits for the reader
    EXPECT(live(a) == base_live + 2);
    CLEAN(a);
    EXPECT(b.free(moved, ng) == Status::ok);
  } else {
    EXPECT(b.free(t.offset, t.gen) == Status::ok);
  }
  EXPECT(pool_usable(a, z.off) >= size);
  EXPECT(live(a) == base_live + 1);
  CLEAN(a);
  EXPECT(a.unpin(pin1, z.off) == Status::ok);
  EXPECT(live(a) == base_live);
  CLEAN(a);
}

void run_rules(const Config& c) {
  // Small requests (slots when the segment has slabs) and large ones (heap blocks).
  for (uint64_t size : {uint64_t(48), uint64_t(3000)}) {
    Env e(c, "rules");
    REQUIRE(e.ok());
    EXPECT(c.size < (1 << 20) || c.debug ? e.a->segment().slab_size() == 0 : e.a->segment().slab_size() != 0);
    stale_after_reuse(e, size);
    named_rules(e, size);
    replace_rules(e, size);
    realloc_rules(e, size);
    pin_rules(e, size);
    // Everything again, with blocks of the other attachment around, and again after a close and reopen.
    stale_after_reuse(e, size);
    named_rules(e, size);
    e.b.reset();
    e.b = coretest::open_pool(e.name);
    REQUIRE(e.b);
    replace_rules(e, size);
    pin_rules(e, size);
    EXPECT(live(*e.a) == 0);
    CLEAN(*e.a);
  }
}

const Config kConfigs[] = {
    {Algorithm::tlsf, 8 << 20, false, "tlsf, slabs"},      {Algorithm::buddy, 8 << 20, false, "buddy, slabs"},
    {Algorithm::bitmap, 8 << 20, false, "bitmap, slabs"},  {Algorithm::tlsf, 256 << 10, false, "tlsf, no slabs"},
    {Algorithm::buddy, 256 << 10, false, "buddy, no slabs"}, {Algorithm::bitmap, 256 << 10, false, "bitmap, no slabs"},
    {Algorithm::tlsf, 1 << 20, true, "tlsf, debug"},       {Algorithm::buddy, 1 << 20, true, "buddy, debug"},
    {Algorithm::bitmap, 1 << 20, true, "bitmap, debug"},
};

}  // namespace

TEST("pool: ownership rules (tlsf, slabs)") { run_rules(kConfigs[0]); }
TEST("pool: ownership rules (buddy, slabs)") { run_rules(kConfigs[1]); }
TEST("pool: ownership rules (bitmap, slabs)") { run_rules(kConfigs[2]); }
TEST("pool: ownership rules (tlsf, no slabs)") { run_rules(kConfigs[3]); }
TEST("pool: ownership rules (buddy, no slabs)") { run_rules(kConfigs[4]); }
TEST("pool: ownership rules (bitmap, no slabs)") { run_rules(kConfigs[5]); }
TEST("pool: ownership rules (tlsf, debug)") { run_rules(kConfigs[6]); }
TEST("pool: ownership rules (buddy, debug)") { run_rules(kConfigs[7]); }
TEST("pool: ownership rules (bitmap, debug)") { run_rules(kConfigs[8]); }

namespace {

// A block whose free waits for a reader's pin (removed, or set over, while pinned) is free to everyone but
// that reader: nobody holds its word any more. The offset API (kAnyGen: generations not checked, "names
// and liveness still are") must treat it as free: a second free is a double free, and it cannot be named
// or resized again. Otherwise the last unpin frees a block somebody else owns now.
void pending_free_is_free(const Config& c, uint64_t size) {
  Env e(c, "pending");
  REQUIRE(e.ok());
  SharedPool &a = *e.a, &b = *e.b;
  H x;
  REQUIRE(alloc(a, size, &x) == Status::ok);
  fill(a, x.off, size, 0x31);
  REQUIRE(a.set("p", x.off, x.gen, size) == Status::ok);
  NamedBlock nb;
  bool had = false;
  uint32_t pin = 0;
  REQUIRE(b.pin("p", &nb, &pin, &had) == Status::ok && had);
  REQUIRE(a.remove("p", &had) == Status::ok && had);  // the free waits for b's pin
  EXPECT(live(a) == 1);
  // Through the offset API: the block is gone for everyone but the reader.
  Status again = a.free(x.off, kAnyGen);
  EXPECT(again == Status::double_free || again == Status::stale);
  EXPECT(live(a) == 1);
  Status named = a.set("q", x.off, kAnyGen, size);
  EXPECT(named != Status::ok);
  CLEAN(a);
  EXPECT(b.unpin(pin, x.off) == Status::ok);
  // If the set above was accepted, "q" now names a block the unpin just freed, or "q" silently vanished.
  EXPECT(b.get("q", &nb, &had) == Status::ok);
  if (named == Status::ok) EXPECT(had);
  CLEAN(a);
  if (had) b.remove("q", &had);
  EXPECT(live(a) == 0);
  CLEAN(a);
}

}  // namespace

TEST("pool regression: a free waiting on a pin is done again / the block named again through kAnyGen (tlsf, slabs)") {
  pending_free_is_free(kConfigs[0], 48);
}
TEST("pool regression: a free waiting on a pin is done again / the block named again through kAnyGen (tlsf, no slabs)") {
  pending_free_is_free(kConfigs[3], 3000);
}
