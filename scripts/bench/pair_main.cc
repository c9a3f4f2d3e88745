// One small-slot alloc + free pair at a time through the SharedPool facade (docs/benchmarks.md, "2b").
// Usage: pair N [1 = trackOwners]
#include "shared_pool.h"
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <unistd.h>
using namespace mempool;
int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  bool track = argc > 2 && argv[2][0] == '1';
  SegmentOptions o; o.track_owners = track;
  std::unique_ptr<SharedPool> p; int err = 0; bool created = false;
  std::string name = "ib-main-" + std::to_string(getpid());
  if (SharedPool::create(name, 64 << 20, o, &p, &err, &created) != Status::ok) return 1;
  uint64_t off; uint32_t gen; uint64_t sink = 0;
  for (int i = 0; i < 1000; ++i) { p->alloc(64, 16, kNoHint, 0, &off, &gen); p->free(off, gen); }
  auto t = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) { p->alloc(64, 16, kNoHint, 0, &off, &gen); sink ^= off; p->free(off, gen); }
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t).count() / n;
  printf("main%s: %.1f ns per alloc+free pair (sink %llu)\n", track ? " trackOwners" : "", ns, (unsigned long long)(sink & 1));
  p->close(); Segment::unlink(name, &err);
}
