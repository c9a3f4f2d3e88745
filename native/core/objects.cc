// Named objects: objects.h.
#include "objects.h"

#include <cstring>

namespace mempool {
namespace {

const char* kind_name(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::mutex: return "mutex";
    case ObjectKind::semaphore: return "semaphore";
    case ObjectKind::queue: return "queue";
  }
  return "?";
}

// Finds or makes the object; returns its header (validated) in *out.
Status open_object(SharedPool& pool, ObjectKind kind, const std::string& name, uint64_t bytes, uint32_t param,
                   const std::function<void(uint8_t*)>& format_body, ObjectHeader** out) {
  if (name.empty() || name.size() > kMaxObjectNameBytes) return Status::invalid_argument;
  uint64_t total = sizeof(ObjectHeader) + bytes;
  if (total < bytes) return Status::invalid_argument;
  auto init = [&](uint8_t* p) {
    ObjectHeader* h = reinterpret_cast<ObjectHeader*>(p);
    std::memset(h, 0, sizeof *h);
    h->kind = static_cast<uint32_t>(kind);
    h->version = kObjectVersion;
    h->param = param;
    h->bytes = total;
    format_body(p + sizeof(ObjectHeader));
    __atomic_store_n(&h->magic, kObjectMagic, __ATOMIC_RELEASE);
  };
  uint64_t off = 0, named_bytes = 0;
  bool created = false;
  Status s = pool.object(object_key(kind, name), total, init, &off, &named_bytes, &created);
  if (s != Status::ok) return s;
  if (off + named_bytes > pool.size() || named_bytes < sizeof(ObjectHeader)) return Status::corrupted;
  ObjectHeader* h = reinterpret_cast<ObjectHeader*>(pool.base() + off);
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != kObjectMagic || h->kind != static_cast<uint32_t>(kind) ||
      h->version != kObjectVersion || h->bytes > named_bytes || h->bytes < sizeof(ObjectHeader)) {
    return Status::corrupted;
  }
  *out = h;
  return Status::ok;
}


}  // namespace

std::string object_key(ObjectKind kind, const std::string& name) {
  return std::string(1, '\0') + "mempool:" + kind_name(kind) + ":" + name;
}

bool queued_blocks(Segment& seg, std::vector<uint64_t>* out) {
  std::vector<std::string> keys;
  seg.dir_keys(&keys);
  const std::string prefix = object_key(ObjectKind::queue, "");
  bool judge = seg.same_pid_namespace();
  for (const std::string& key : keys) {
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    uint64_t off = 0, len = 0;
    if (seg.dir_lookup(key, &off, &len) < 0) continue;
    if (off > seg.size() || len > seg.size() - off || len < sizeof(ObjectHeader)) return false;
    const ObjectHeader* h = reinterpret_cast<const ObjectHeader*>(seg.base() + off);
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != kObjectMagic) continue;  // made, never formatted: owns nothing
    if (h->kind != static_cast<uint32_t>(ObjectKind::queue) || h->bytes > len || h->bytes < sizeof(ObjectHeader)) return false;
    SharedQueue q;
    if (!q.attach(seg.base() + off + sizeof(ObjectHeader), h->bytes - sizeof(ObjectHeader), judge)) return false;
    // The queue's lock under the segment's: the order every block message keeps (shared_queue.h).
    Waiter w = sync_waiter(deadline_after_ms(2000), judge);
    if (q.lock(w) != QueueResult::ok) return false;
    bool ok = q.blocks_locked(out);
    q.unlock();
    if (!ok) return false;
  }
  return true;
}

Status open_mutex(SharedPool& pool, const std::string& name, RobustMutex** out) {
  ObjectHeader* h = nullptr;
  Status s = open_object(pool, ObjectKind::mutex, name, sizeof(RobustMutex), 0,
                         [](uint8_t* p) { std::memset(p, 0, sizeof(RobustMutex)); }, &h);
  if (s != Status::ok) return s;
  if (h->bytes < sizeof(ObjectHeader) + sizeof(RobustMutex)) return Status::corrupted;
  *out = reinterpret_cast<RobustMutex*>(h + 1);
  return Status::ok;
}

Status open_semaphore(SharedPool& pool, const std::string& name, uint32_t permits, RobustSemaphore** out,
                      uint32_t* permits_out) {
  if (permits > kMaxPermits) return Status::invalid_argument;
  uint32_t make = permits == 0 ? 1 : permits;
  ObjectHeader* h = nullptr;
  Status s = open_object(pool, ObjectKind::semaphore, name, semaphore_bytes(make), make,
                         [make](uint8_t* p) { semaphore_init(reinterpret_cast<RobustSemaphore*>(p), make); }, &h);
  if (s != Status::ok) return s;
  uint32_t have = h->param;
  if (have == 0 || have > kMaxPermits || h->bytes < sizeof(ObjectHeader) + semaphore_bytes(have)) return Status::corrupted;
  if (permits != 0 && permits != have) return Status::object_mismatch;
  *out = reinterpret_cast<RobustSemaphore*>(h + 1);
  *permits_out = have;
  return Status::ok;
}

Status open_queue(SharedPool& pool, const std::string& name, uint64_t max_bytes, uint64_t max_messages, SharedQueue* out) {
  uint64_t ring = max_bytes == 0 ? kDefaultQueueBytes : max_bytes;
  uint64_t messages = max_messages == 0 ? kDefaultQueueMessages : max_messages;
  if (ring < 2 * kRecordHeader || (ring & 15) != 0 || ring > (uint64_t(1) << 40)) return Status::invalid_argument;
  ObjectHeader* h = nullptr;
  Status s = open_object(pool, ObjectKind::queue, name, SharedQueue::bytes_for(ring), 0,
                         [&](uint8_t* p) { SharedQueue::format(p, ring, messages); }, &h);
  if (s != Status::ok) return s;
  uint8_t* state = reinterpret_cast<uint8_t*>(h + 1);
  if (!out->attach(state, h->bytes - sizeof(ObjectHeader), pool.segment().same_pid_namespace())) return Status::corrupted;
  if ((max_bytes != 0 && out->ring_bytes() != max_bytes) || (max_messages != 0 && out->max_messages() != max_messages)) {
    return Status::object_mismatch;
  }
  return Status::ok;
}

}  // namespace mempool
