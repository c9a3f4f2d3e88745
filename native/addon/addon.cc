// The N-API glue: argument guards, handles, statuses -> numbers. No memory logic lives here.
//
// Hot calls return a number: an offset or size (>= 0) or a negated core Status; lib/ turns a negative
// number into a coded error. Errors thrown from here (bad arguments that got past lib/, failed set-up)
// are made by the error factory lib/ hands over once, so they carry the same `code` property.
#include <napi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../core/debug_heap.h"
#include "../core/heap.h"
#include "../core/segment.h"
#include "../core/shared_cache.h"

namespace mempool_addon {

using mempool::Algorithm;
using mempool::Heap;
using mempool::HeapOptions;
using mempool::HeapStats;
using mempool::Status;

// Memory handed to JavaScript as an external ArrayBuffer. Owned jointly by the native handle and the
// ArrayBuffer's finalizer, so that neither can free it under the other; close() frees it early and
// detaches the ArrayBuffer so no view can reach it.
struct ExternalMemory {
  void* data = nullptr;
  uint64_t size = 0;
  bool released = false;
  std::unique_ptr<mempool::Segment> segment;  // set for a shared segment: released by unmapping
  // This attachment's slab cache (shared_cache.h): closed (its slabs returned) before the unmap.
  std::unique_ptr<mempool::SharedCache> cache;
  void release() {
    if (!released) {
      if (cache) cache->close(100);
      cache.reset();
      if (segment) segment->unmap();
      else std::free(data);
    }
    released = true;
  }
  ~ExternalMemory() { release(); }
};

struct AddonData {
  Napi::FunctionReference error_factory;  // (kind, code, message) => Error, from lib/errors.ts
  // Fallback allocations from the system allocator, by address. Weak: the ArrayBuffer's finalizer owns
  // the memory, so teardown may run the finalizers and delete this in either order.
  std::unordered_map<void*, std::weak_ptr<ExternalMemory>> system_blocks;
  size_t purge_at = 1024;
};

AddonData* data_of(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Throws an Error made by lib/'s factory, so it has a string `code`; kind is "TypeError", "RangeError"
// or "PoolError".
[[noreturn]] void throw_coded(Napi::Env env, const char* kind, const char* code, const std::string& message) {
  AddonData* d = data_of(env);
  if (d != nullptr && !d->error_factory.IsEmpty()) {
    Napi::Value e = d->error_factory.Call({Napi::String::New(env, kind), Napi::String::New(env, code),
                                           Napi::String::New(env, message)});
    throw Napi::Error(env, e);
  }
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

// Argument guards with one message template: "Expected <what> for <name> but received <value>".
uint64_t arg_uint(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t max) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE",
                                 std::string("Expected a number for ") + name);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > static_cast<double>(max) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    char received[64];
    std::snprintf(received, sizeof received, "%.17g", d);  // 5368709120, not 5368709120.000000
    throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE",
                std::string("Expected an integer from 0 to ") + std::to_string(max) + " for " + name +
                    " but received " + received);
  }
  return static_cast<uint64_t>(d);
}

constexpr uint64_t kMaxSafe = (uint64_t(1) << 53) - 1;
// The largest region one ArrayBuffer can view in Node 20 (buffer.constants.MAX_LENGTH): a region is
// always one ArrayBuffer, so this is the largest pool region or shared segment.
constexpr uint64_t kMaxRegionBytes = uint64_t(1) << 32;

Napi::Number status_number(Napi::Env env, Status s) { return Napi::Number::New(env, -static_cast<double>(s)); }

Napi::Float64Array float64_array(Napi::Env env, const std::vector<double>& values) {
  Napi::Float64Array out = Napi::Float64Array::New(env, values.size());
  if (!values.empty()) std::memcpy(out.Data(), values.data(), values.size() * sizeof(double));
  return out;
}

Napi::Array number_pair(Napi::Env env, uint64_t a, uint64_t b) {
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, static_cast<double>(a)));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(b)));
  return out;
}

// One pool region: the memory, the heap over it, the ArrayBuffer JavaScript sees.
class NativePool : public Napi::ObjectWrap<NativePool> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativePool",
                       {
                           InstanceMethod<&NativePool::Alloc>("alloc"),
                           InstanceMethod<&NativePool::Free>("free"),
                           InstanceMethod<&NativePool::Realloc>("realloc"),
                           InstanceMethod<&NativePool::UsableSize>("usableSize"),
                           InstanceMethod<&NativePool::Stats>("stats"),
                           InstanceMethod<&NativePool::Check>("check"),
                           InstanceMethod<&NativePool::Blocks>("blocks"),
                           InstanceMethod<&NativePool::Close>("close"),
                           InstanceMethod<&NativePool::SetKey>("setKey"),
                           InstanceMethod<&NativePool::GetKey>("getKey"),
                           InstanceMethod<&NativePool::DeleteKey>("deleteKey"),
                           InstanceMethod<&NativePool::Keys>("keys"),
                           InstanceMethod<&NativePool::SegmentInfo>("segmentInfo"),
                           InstanceMethod<&NativePool::DebugReport>("debugReport"),
                           InstanceMethod<&NativePool::LiveAllocations>("liveAllocations"),
                           InstanceMethod<&NativePool::Reclaim>("reclaim"),
                           InstanceMethod<&NativePool::Processes>("processes"),
                           InstanceAccessor<&NativePool::GetDebug>("debug"),
                           InstanceAccessor<&NativePool::GetBuffer>("buffer"),
                           InstanceAccessor<&NativePool::GetAddress>("address"),
                           InstanceAccessor<&NativePool::GetAlgorithm>("algorithm"),
                       });
  }

  // new NativePool('malloc', size, algorithm, blockSize, minBlock, maxBlock, debug)
  // new NativePool('create', name, size, algorithm, blockSize, minBlock, maxBlock, mode, exclusive,
  //                directoryCapacity, lockTimeoutMs, debug)
  // new NativePool('open', name, lockTimeoutMs)
  explicit NativePool(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativePool>(info) {
    Napi::Env env = info.Env();
    std::string kind = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (kind == "malloc") {
      InitMalloc(info);
    } else if (kind == "create" || kind == "open") {
      InitShared(info, kind == "create");
    } else {
      throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected 'malloc', 'create' or 'open' for kind");
    }
    auto* owner = new std::shared_ptr<ExternalMemory>(memory_);
    napi_value ab_value = nullptr;
    napi_status st = napi_create_external_arraybuffer(
        env, memory_->data, memory_->size,
        [](napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<ExternalMemory>*>(hint); }, owner, &ab_value);
    if (st != napi_ok) {
      // Node may already have run the finalizer (which deletes `owner`) before failing: never delete
      // it here. Sizes are checked before this point, so this is not expected to happen.
      memory_->release();
      throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE", "The JavaScript engine cannot map " + std::to_string(memory_->size) + " bytes as one ArrayBuffer");
    }
    Napi::ArrayBuffer ab(env, ab_value);
    buffer_ = Napi::Persistent(ab);
    // The fast path: a mailbox of doubles that JavaScript and C++ both read and write, and two
    // functions bound to this pool (through link_) that take no arguments. A call then costs about one
    // native no-op: no argument conversion, no unwrap (napi_unwrap alone costs more than two no-op
    // calls), no result object. The mailbox lives in the link, not in V8's heap: the pool's JavaScript
    // object (and any array V8 owned) can be collected before ~NativePool runs, and a fast function kept
    // past it must still find valid memory. The ArrayBuffer over it holds a reference to the link too.
    link_ = new FastLink{this, 2, {0, 0, 0, 0}};
    mailbox_ = link_->mailbox;
    Napi::ArrayBuffer mailbox_memory = Napi::ArrayBuffer::New(
        env, link_->mailbox, sizeof link_->mailbox, [](Napi::Env, void*, FastLink* link) { FastLink::release(link); }, link_);
    Napi::Float64Array mailbox = Napi::Float64Array::New(env, 4, mailbox_memory, 0);
    Napi::Object self = info.This().As<Napi::Object>();
    self.DefineProperties({
        Napi::PropertyDescriptor::Value("mailbox", mailbox, napi_default),  // read-only: the C++ side keeps its address
        Napi::PropertyDescriptor::Value("fastAlloc", MakeFast(env, "fastAlloc", FastAlloc), napi_default),
        Napi::PropertyDescriptor::Value("fastFree", MakeFast(env, "fastFree", FastFree), napi_default),
    });
  }

  ~NativePool() override {
    if (link_ != nullptr) {
      link_->pool = nullptr;  // a fast function kept after this pool finds no pool
      FastLink::release(link_);
    }
  }

 private:
  static Algorithm arg_algorithm(const Napi::CallbackInfo& info, size_t i) {
    if (!info[i].IsString()) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a string for algorithm");
    Algorithm algorithm;
    std::string name = info[i].As<Napi::String>().Utf8Value();
    if (!mempool::algorithm_from_name(name, &algorithm)) {
      throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE", "Expected 'tlsf', 'buddy' or 'bitmap' for algorithm but received '" + name + "'");
    }
    return algorithm;
  }

  static HeapOptions arg_heap_options(const Napi::CallbackInfo& info, size_t i, Algorithm algorithm) {
    HeapOptions options;
    options.block_size = arg_uint(info, i, "blockSize", kMaxSafe);
    options.min_block = arg_uint(info, i + 1, "minBlock", kMaxSafe);
    options.max_block = arg_uint(info, i + 2, "maxBlock", kMaxSafe);
    if (mempool::heap_min_region_size(algorithm, options) == 0) {
      throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE",
                  std::string("Invalid heap options for ") + mempool::algorithm_name(algorithm) +
                      " (blockSize and minBlock: powers of two >= 16; maxBlock: a power of two >= minBlock, or 0)");
    }
    return options;
  }

  void InitMalloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t size = arg_uint(info, 1, "size", kMaxRegionBytes);
    Algorithm algorithm = arg_algorithm(info, 2);
    HeapOptions options = arg_heap_options(info, 3, algorithm);
    options.debug = info[6].ToBoolean();
    const char* name = mempool::algorithm_name(algorithm);
    uint64_t min = mempool::heap_min_region_size(algorithm, options);
    if (size < min) {
      throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                  "Expected a size of at least " + std::to_string(min) + " bytes for a " + name + " pool but received " + std::to_string(size));
    }
    // One genuine malloc per region, page-aligned so that offset alignment is address alignment.
    uint64_t rounded = mempool::round_up(size, mempool::kMaxAlign);
    void* mem = nullptr;
    if (rounded < size || posix_memalign(&mem, mempool::kMaxAlign, rounded) != 0 || mem == nullptr) {
      throw_coded(env, "PoolError", "ERR_POOL_OUT_OF_MEMORY", "The system could not provide " + std::to_string(size) + " bytes");
    }
    memory_ = std::make_shared<ExternalMemory>();
    memory_->data = mem;
    memory_->size = size;
    Status s = mempool::heap_format(algorithm, static_cast<uint8_t*>(mem), size, options, &heap_);
    if (s != Status::ok) {
      memory_->release();
      throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                  std::string("Cannot format a ") + name + " heap of " + std::to_string(size) + " bytes with these options (" + mempool::status_name(s) + ")");
    }
    heap_ptr_ = heap_.get();
    algorithm_ = algorithm;
  }

  void InitShared(const Napi::CallbackInfo& info, bool create) {
    Napi::Env env = info.Env();
    if (!info[1].IsString()) throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a string for name");
    std::string name = info[1].As<Napi::String>().Utf8Value();
    std::unique_ptr<mempool::Segment> segment;
    Status s;
    int err = 0;
    if (create) {
      mempool::SegmentOptions options;
      uint64_t size = arg_uint(info, 2, "size", kMaxRegionBytes);
      options.algorithm = arg_algorithm(info, 3);
      options.heap = arg_heap_options(info, 4, options.algorithm);
      options.mode = static_cast<uint32_t>(arg_uint(info, 7, "mode", 0777));
      options.exclusive = info[8].ToBoolean();
      options.directory_capacity = static_cast<uint32_t>(arg_uint(info, 9, "maxKeys", mempool::kMaxDirectoryCapacity));
      options.lock_timeout_ms = static_cast<uint32_t>(arg_uint(info, 10, "lockTimeoutMs", 86400000));
      options.heap.debug = info[11].ToBoolean();
      bool created = false;
      s = mempool::Segment::create(name, size, options, &segment, &err, &created);
      if (s == Status::invalid_argument) {
        throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                    "Expected a size that holds the segment header, the directory and a " +
                        std::string(mempool::algorithm_name(options.algorithm)) + " heap but received " + std::to_string(size));
      }
    } else {
      uint32_t timeout = static_cast<uint32_t>(arg_uint(info, 2, "lockTimeoutMs", 86400000));
      s = mempool::Segment::open(name, timeout, &segment, &err);
    }
    if (s != Status::ok) throw_shm(env, s, name, err);
    if (segment->size() > kMaxRegionBytes) {
      throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                  "Shared memory '" + name + "' is " + std::to_string(segment->size()) + " bytes: more than one ArrayBuffer can map (" +
                      std::to_string(kMaxRegionBytes) + ")");
    }
    memory_ = std::make_shared<ExternalMemory>();
    memory_->data = segment->base();
    memory_->size = segment->size();
    segment->attach();  // listed until unmapped, by close() or when the last view is collected
    segment_ = segment.get();
    // Each NativePool (each 'open'/'create', so each worker thread) has its own cache; debug segments
    // have no slabs and use none.
    if (segment->slab_size() != 0) {
      memory_->cache = std::make_unique<mempool::SharedCache>(segment.get());
      cache_ = memory_->cache.get();
    }
    heap_ptr_ = &segment->heap();
    bias_ = segment->heap_offset();
    algorithm_ = segment->algorithm();
    memory_->segment = std::move(segment);
  }

 public:
  [[noreturn]] static void throw_shm(Napi::Env env, Status s, const std::string& name, int err) {
    std::string sys = err != 0 ? std::string(" (") + std::strerror(err) + ")" : std::string();
    switch (s) {
      case Status::invalid_name:
        throw_coded(env, "PoolError", "ERR_SHM_INVALID_NAME",
                    "Expected a plain name of 1 to 250 bytes without '/' or NUL for the shared memory name");
      case Status::exists: throw_coded(env, "PoolError", "ERR_SHM_EXISTS", "Shared memory '" + name + "' already exists");
      case Status::not_found: throw_coded(env, "PoolError", "ERR_SHM_NOT_FOUND", "No shared memory named '" + name + "'");
      case Status::permission:
        throw_coded(env, "PoolError", "ERR_SHM_PERMISSION", "Not permitted to use shared memory '" + name + "'" + sys);
      case Status::incompatible:
        throw_coded(env, "PoolError", "ERR_SHM_INCOMPATIBLE", "Shared memory '" + name + "' is not a mempool segment of a known version");
      case Status::corrupted:
        throw_coded(env, "PoolError", "ERR_POOL_CORRUPTED", "Shared memory '" + name + "' has a damaged header or heap");
      case Status::lock_timeout:
        throw_coded(env, "PoolError", "ERR_SHM_LOCK_TIMEOUT", "Timed out waiting for the lock of '" + name + "'");
      default:
        if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
          throw_coded(env, "PoolError", "ERR_POOL_OUT_OF_MEMORY", "The system could not provide shared memory '" + name + "'" + sys);
        }
        throw_coded(env, "PoolError", "ERR_SHM_SYSTEM", "Shared memory '" + name + "': " + mempool::status_name(s) + sys);
    }
  }

 private:
  // Holds a shared segment's lock for one operation; a no-op for malloc'd pools.
  struct Guard {
    mempool::Segment* segment;
    Status status = Status::ok;
    explicit Guard(mempool::Segment* s) : segment(s) {
      if (segment != nullptr) {
        bool recovered = false;
        status = segment->lock(&recovered);
      }
    }
    ~Guard() {
      if (segment != nullptr && status == Status::ok) segment->unlock();
    }
  };

  bool closed() const { return heap_ptr_ == nullptr; }

  // What a fast function reaches its pool and its mailbox through. The pool, its fast functions and the
  // mailbox's ArrayBuffer are collected in any order: each holds a reference, the last one out deletes the
  // link, and the pool clears `pool` when it goes, so a function kept after its pool finds no pool instead
  // of freed memory. Finalizers run on the thread of the pool's environment, so the count needs no atomics.
  struct FastLink {
    NativePool* pool;
    int refs;
    double mailbox[4];  // the fast path's arguments and results
    static void release(FastLink* link) {
      if (--link->refs == 0) delete link;
    }
  };

  Napi::Function MakeFast(Napi::Env env, const char* name, napi_callback cb) {
    napi_value fn;
    if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, link_, &fn) != napi_ok) {
      throw Napi::Error::New(env, "cannot create the fast path");
    }
    link_->refs += 1;
    if (napi_add_finalizer(env, fn, link_, [](napi_env, void* data, void*) { FastLink::release(static_cast<FastLink*>(data)); },
                           nullptr, nullptr) != napi_ok) {
      link_->refs -= 1;  // never released by the function: the link outlives it, a few bytes
      throw Napi::Error::New(env, "cannot create the fast path");
    }
    return Napi::Function(env, fn);
  }

  // The pool a fast function is bound to, or null once that pool was collected.
  static NativePool* FastSelf(napi_env env, napi_callback_info info) {
    void* data = nullptr;
    if (napi_get_cb_info(env, info, nullptr, nullptr, nullptr, &data) != napi_ok || data == nullptr) return nullptr;
    return static_cast<FastLink*>(data)->pool;
  }

  // mailbox[0] = size (an integer 1..2^53 checked by lib/) -> mailbox[0] = offset or -status.
  // Default alignment, no hint, no zeroing: the common case.
  static napi_value FastAlloc(napi_env env, napi_callback_info info) {
    NativePool* self = FastSelf(env, info);
    if (self == nullptr) return nullptr;
    double* m = self->mailbox_;
    if (self->closed()) {
      m[0] = -static_cast<double>(kClosed);
      return nullptr;
    }
    double d = m[0];
    if (!(d >= 1) || d > static_cast<double>(kMaxSafe)) {
      m[0] = -static_cast<double>(Status::invalid_argument);
      return nullptr;
    }
    uint64_t offset = 0;
    Status s = self->AllocAt(static_cast<uint64_t>(d), mempool::kDefaultAlign, mempool::kNoHint, 0, &offset);
    m[0] = s == Status::ok ? static_cast<double>(offset) : -static_cast<double>(s);
    return nullptr;
  }

  // mailbox[0] = offset -> mailbox[0] = 0 or -status.
  static napi_value FastFree(napi_env env, napi_callback_info info) {
    NativePool* self = FastSelf(env, info);
    if (self == nullptr) return nullptr;
    double* m = self->mailbox_;
    if (self->closed()) {
      m[0] = -static_cast<double>(kClosed);
      return nullptr;
    }
    double d = m[0];
    bool valid = d >= 0 && d <= static_cast<double>(kMaxSafe);
    m[0] = -static_cast<double>(valid ? self->FreeAt(static_cast<uint64_t>(d)) : Status::foreign);
    return nullptr;
  }

  // Offsets crossing the boundary are region offsets (segment offsets for shared pools); the heap
  // works on offsets from its own start, bias_ bytes into the region.
  bool in_heap(uint64_t offset) const { return offset >= bias_; }

  // alloc(size, align, hint (-1 = none), zero) -> offset or -status
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    uint64_t size = arg_uint(info, 0, "size", kMaxSafe);
    uint64_t align = arg_uint(info, 1, "align", mempool::kMaxAlign);
    double hint_d = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
    uint64_t hint = hint_d >= static_cast<double>(bias_) && hint_d <= static_cast<double>(kMaxSafe)
                        ? static_cast<uint64_t>(hint_d) - bias_
                        : mempool::kNoHint;
    uint32_t site = info[4].IsNumber() ? info[4].As<Napi::Number>().Uint32Value() : 0;
    uint64_t offset = 0;
    Status s = AllocAt(size, align, hint, site, &offset);
    if (s != Status::ok) return status_number(env, s);
    if (info[3].ToBoolean()) std::memset(heap_ptr_->base() + (offset - bias_), 0, size);
    return Napi::Number::New(env, static_cast<double>(offset));
  }

  // Allocates under the lock (both the fast and the slow path); *offset is a region offset. `hint` is
  // a heap offset or kNoHint; `site` is recorded in debug mode.
  Status AllocAt(uint64_t size, uint64_t align, uint64_t hint, uint32_t site, uint64_t* offset) {
    // Larger than any heap can represent: for the user that is simply more memory than there is.
    if (size > mempool::kMaxRequest) return Status::out_of_memory;
    if (cache_ != nullptr) {  // takes the lock only when it must
      Status s = cache_->alloc(size, align, hint, offset);
      if (s == Status::ok) *offset += bias_;
      return s;
    }
    Guard g(segment_);
    if (g.status != Status::ok) return g.status;
    if (mempool::DebugHeapApi* d = heap_ptr_->debug()) d->set_site(site);
    Status s = heap_ptr_->alloc(size, align, hint, offset);
    if (s == Status::ok) *offset += bias_;
    return s;
  }

  // Frees the allocation at region offset `offset` (both the fast and the slow path).
  Status FreeAt(uint64_t offset) {
    if (!in_heap(offset)) return Status::foreign;
    if (cache_ != nullptr) return cache_->free(offset - bias_);  // drops the names itself
    Guard g(segment_);
    if (g.status != Status::ok) return g.status;
    Status s = heap_ptr_->free(offset - bias_);
    if (s == Status::ok && segment_ != nullptr) segment_->dir_forget_offset(offset);
    return s;
  }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    return status_number(env, FreeAt(arg_uint(info, 0, "offset", kMaxSafe)));
  }

  // realloc(offset, size, align) -> new offset or -status
  Napi::Value Realloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    uint64_t size = arg_uint(info, 1, "size", kMaxSafe);
    uint64_t align = arg_uint(info, 2, "align", mempool::kMaxAlign);
    if (!in_heap(offset)) return status_number(env, Status::foreign);
    if (size > mempool::kMaxRequest) return status_number(env, Status::out_of_memory);
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    uint64_t moved = 0;
    Status s = cache_ != nullptr ? cache_->realloc_locked(offset - bias_, size, align, &moved)
                                 : mempool::heap_realloc(*heap_ptr_, offset - bias_, size, align, &moved);
    if (s != Status::ok) return status_number(env, s);
    // Names describe the allocation as set() saw it: a moved block's would point at freed memory and
    // a shrunk block's past its end, so a reallocated block loses its names.
    if (segment_ != nullptr) segment_->dir_forget_offset(offset);
    return Napi::Number::New(env, static_cast<double>(moved + bias_));
  }

  Napi::Value UsableSize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    if (!in_heap(offset)) return status_number(env, Status::foreign);
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    uint64_t n = 0;
    Status s = segment_ != nullptr ? segment_->usable_any(offset - bias_, &n) : heap_ptr_->usable_size(offset - bias_, &n);
    if (s != Status::ok) return status_number(env, s);
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // stats() -> [capacity, used, free, overhead, peakUsed, live, allocations, frees, failed, largestFree]
  // or -status. For a shared pool, capacity is the segment size and overhead includes its header.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    HeapStats s;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      if (cache_ != nullptr) mempool::shared_collect_dead(*segment_);  // exact figures for dead owners' slots
      heap_ptr_->stats(&s);
      // Slabs are allocations to the heap; the user's are the slots lent out of them.
      if (segment_ != nullptr) mempool::shared_adjust_stats(*segment_, &s);
    }
    s.capacity += bias_;
    s.overhead += bias_;
    const uint64_t fields[] = {s.capacity, s.used, s.free, s.overhead, s.peak_used, s.live_allocations,
                               s.allocations, s.frees, s.failed_allocations, s.largest_free_block};
    Napi::Float64Array out = Napi::Float64Array::New(env, std::size(fields));
    for (size_t i = 0; i < std::size(fields); ++i) out[i] = static_cast<double>(fields[i]);
    return out;
  }

  // check() -> [violations, first violation's description] or -status
  Napi::Value Check(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    mempool::CheckResult r;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      heap_ptr_->check(&r);
      if (segment_ != nullptr) mempool::shared_check(*segment_, &r);
      if (segment_ != nullptr) segment_->dir_check(&r);
    }
    Napi::Array out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, static_cast<double>(r.violations)));
    out.Set(1u, Napi::String::New(env, r.first));
    return out;
  }

  // blocks() -> Float64Array of (offset, size, used) triples in address order, or -status
  Napi::Value Blocks(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    std::vector<double> triples;
    Status s;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      auto visit = [&](const mempool::BlockInfo& b) {
        triples.push_back(static_cast<double>(b.offset + bias_));
        triples.push_back(static_cast<double>(b.size));
        triples.push_back(b.used ? 1 : 0);
        return true;
      };
      // A shared pool shows each slab as its slots (lent = used).
      if (segment_ != nullptr) {
        if (cache_ != nullptr) mempool::shared_collect_dead(*segment_);
        s = mempool::shared_walk(*segment_, visit);
      } else {
        s = heap_ptr_->walk(visit);
      }
    }
    if (s != Status::ok) return status_number(env, s);
    return float64_array(env, triples);
  }

  // setKey(key, offset, length) -> 0 or -status. The offset must start a live allocation holding length.
  Napi::Value SetKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (segment_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    uint64_t offset = arg_uint(info, 1, "offset", kMaxSafe);
    uint64_t length = arg_uint(info, 2, "length", kMaxSafe);
    if (!in_heap(offset)) return status_number(env, Status::foreign);
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    uint64_t usable = 0;
    Status s = segment_->usable_any(offset - bias_, &usable);
    if (s != Status::ok) return status_number(env, s);
    if (length > usable) return status_number(env, Status::foreign);
    // A named slot is freed through the lock, so that its names go with it.
    s = mempool::shared_mark_named(*segment_, offset - bias_);
    if (s != Status::ok) return status_number(env, s);
    return status_number(env, segment_->dir_set(key, offset, length));
  }

  // getKey(key) -> [offset, length], null when absent, or -status
  Napi::Value GetKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (segment_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    uint64_t offset = 0, length = 0;
    Status s = segment_->dir_get(key, &offset, &length);
    if (s == Status::not_found) return env.Null();
    if (s != Status::ok) return status_number(env, s);
    return number_pair(env, offset, length);
  }

  // deleteKey(key) -> true / false, or -status
  Napi::Value DeleteKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (segment_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    return Napi::Boolean::New(env, segment_->dir_delete(key));
  }

  // keys() -> string[] or -status
  Napi::Value Keys(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (segment_ == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<std::string> keys;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      segment_->dir_keys(&keys);
    }
    Napi::Array out = Napi::Array::New(env, keys.size());
    for (size_t i = 0; i < keys.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::String::New(env, keys[i]));
    return out;
  }

  // segmentInfo() -> [recoveries, creatorPid, createdUnixMs, keys, maxKeys, heapOffset] (read without
  // the lock: diagnostics only)
  Napi::Value SegmentInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed() || segment_ == nullptr) return env.Null();
    const mempool::SegmentHeader* h = segment_->header();
    const double fields[] = {static_cast<double>(h->recoveries), static_cast<double>(h->creator_pid),
                             static_cast<double>(h->created_unix_ms), static_cast<double>(h->directory_live),
                             static_cast<double>(h->directory_capacity), static_cast<double>(bias_)};
    Napi::Float64Array out = Napi::Float64Array::New(env, std::size(fields));
    for (size_t i = 0; i < std::size(fields); ++i) out[i] = fields[i];
    return out;
  }

  // debugReport() -> the last misuse debug mode detected ('' when none or not in debug mode)
  Napi::Value DebugReport(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed() || heap_ptr_->debug() == nullptr) return Napi::String::New(env, "");
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    return Napi::String::New(env, heap_ptr_->debug()->last_violation());
  }

  // liveAllocations() -> Float64Array of (offset, size, ownerPid, site) quads, debug mode only; or -status
  Napi::Value LiveAllocations(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (heap_ptr_->debug() == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<double> quads;
    Status s;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      s = heap_ptr_->debug()->live_allocations([&](const mempool::DebugAllocation& a) {
        quads.push_back(static_cast<double>(a.offset + bias_));
        quads.push_back(static_cast<double>(a.size));
        quads.push_back(a.owner_pid);
        quads.push_back(a.site);
      });
    }
    if (s != Status::ok) return status_number(env, s);
    return float64_array(env, quads);
  }

  // reclaim(pid) -> [count, bytes] or -status (debug mode only; lib/ refuses a live pid first)
  Napi::Value Reclaim(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (heap_ptr_->debug() == nullptr) return status_number(env, Status::invalid_argument);
    uint32_t pid = static_cast<uint32_t>(arg_uint(info, 0, "pid", UINT32_MAX));
    uint64_t count = 0, bytes = 0;
    Guard g(segment_);
    if (g.status != Status::ok) return status_number(env, g.status);
    // A reclaimed block's names go with it, as with any free.
    Status s = heap_ptr_->debug()->reclaim(pid, &count, &bytes, [&](uint64_t offset) {
      if (segment_ != nullptr) segment_->dir_forget_offset(offset + bias_);
    });
    if (s != Status::ok) return status_number(env, s);
    return number_pair(env, count, bytes);
  }

  // processes() -> Float64Array of (pid, startUnixMs) pairs: the processes attached now, or -status
  Napi::Value Processes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (segment_ == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<mempool::AttachedProcess> list;
    {
      Guard g(segment_);
      if (g.status != Status::ok) return status_number(env, g.status);
      segment_->attached(&list);
    }
    Napi::Float64Array out = Napi::Float64Array::New(env, list.size() * 2);
    for (size_t i = 0; i < list.size(); ++i) {
      out[2 * i] = list[i].pid;
      out[2 * i + 1] = static_cast<double>(list[i].start_unix_ms);
    }
    return out;
  }

  Napi::Value GetDebug(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !closed() && heap_ptr_->debug() != nullptr);
  }

  static std::string arg_key(const Napi::CallbackInfo& info, size_t i) {
    if (!info[i].IsString()) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a string for key");
    std::string key = info[i].As<Napi::String>().Utf8Value();
    if (key.empty() || key.size() > mempool::kMaxKeyBytes) {
      throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE",
                  "Expected a key of 1 to " + std::to_string(mempool::kMaxKeyBytes) + " UTF-8 bytes");
    }
    return key;
  }

  // Frees (or unmaps) the region now and detaches the ArrayBuffer: every view becomes length 0. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed()) {
      heap_ptr_ = nullptr;
      segment_ = nullptr;
      cache_ = nullptr;
      heap_.reset();
      Napi::ArrayBuffer ab = buffer_.Value();
      if (!ab.IsDetached()) ab.Detach();
      memory_->release();
    }
    return info.Env().Undefined();
  }

  Napi::Value GetBuffer(const Napi::CallbackInfo&) { return buffer_.Value(); }
  Napi::Value GetAddress(const Napi::CallbackInfo& info) {
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(memory_->data)));
  }

  Napi::Value GetAlgorithm(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), mempool::algorithm_name(algorithm_));
  }

  static constexpr Status kClosed = static_cast<Status>(100);

  std::shared_ptr<ExternalMemory> memory_;
  std::unique_ptr<Heap> heap_;       // malloc'd pools own their heap; a segment owns its own
  Heap* heap_ptr_ = nullptr;         // the heap either way; null once closed
  mempool::Segment* segment_ = nullptr;
  mempool::SharedCache* cache_ = nullptr;  // owned by memory_; null for private and debug pools
  uint64_t bias_ = 0;                // where the heap starts in the region
  Algorithm algorithm_ = Algorithm::tlsf;
  double* mailbox_ = nullptr;        // link_->mailbox
  FastLink* link_ = nullptr;         // shared with the fast functions (see FastLink)
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// systemAlloc(size) -> ArrayBuffer over memory from malloc (the fallback path: memoryType 'other').
Napi::Value SystemAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t size = arg_uint(info, 0, "size", kMaxSafe);
  // More than one ArrayBuffer can view: refused before malloc (Node would run the finalizer and fail).
  if (size > kMaxRegionBytes) return env.Null();
  void* mem = size > 0 ? std::malloc(size) : nullptr;
  if (mem == nullptr) return env.Null();
  auto memory = std::make_shared<ExternalMemory>();
  memory->data = mem;
  memory->size = size;
  AddonData* d = data_of(env);
  if (d->system_blocks.size() >= d->purge_at) {
    // Forget blocks that were collected without an explicit free.
    for (auto it = d->system_blocks.begin(); it != d->system_blocks.end();) {
      it = it->second.expired() ? d->system_blocks.erase(it) : std::next(it);
    }
    d->purge_at = 2 * d->system_blocks.size() + 1024;
  }
  d->system_blocks[mem] = memory;
  auto* owner = new std::shared_ptr<ExternalMemory>(memory);
  return Napi::ArrayBuffer::New(
      env, mem, size, [](Napi::Env, void*, std::shared_ptr<ExternalMemory>* hint) { delete hint; }, owner);
}

// systemFree(arrayBuffer) -> 0, or -foreign when it is not a live fallback block. Frees and detaches.
Napi::Value SystemFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return status_number(env, Status::double_free);
  AddonData* d = data_of(env);
  auto it = d->system_blocks.find(ab.Data());
  if (it == d->system_blocks.end()) return status_number(env, Status::foreign);
  std::shared_ptr<ExternalMemory> memory = it->second.lock();
  d->system_blocks.erase(it);
  if (!memory || memory->released) return status_number(env, Status::foreign);
  ab.Detach();
  memory->release();
  return Napi::Number::New(env, 0);
}

// shmUnlink(name) -> true when removed, false when there was no such name.
Napi::Value ShmUnlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a string for name");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  int err = 0;
  Status s = mempool::Segment::unlink(name, &err);
  if (s == Status::not_found) return Napi::Boolean::New(env, false);
  if (s != Status::ok) NativePool::throw_shm(env, s, name, err);
  return Napi::Boolean::New(env, true);
}

// shmList() -> [{ name, size, algorithm, used, liveAllocations }]
Napi::Value ShmList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<mempool::SegmentInfo> segments;
  mempool::Segment::list(&segments);
  Napi::Array out = Napi::Array::New(env, segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", segments[i].name);
    o.Set("size", static_cast<double>(segments[i].size));
    o.Set("algorithm", mempool::algorithm_name(segments[i].algorithm));
    o.Set("used", static_cast<double>(segments[i].used));
    o.Set("liveAllocations", static_cast<double>(segments[i].live_allocations));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected a function");
  data_of(info.Env())->error_factory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// The floor of any addon call, for benchmarks.
Napi::Value Noop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted at environment teardown (worker exit too)
  exports.Set("NativePool", NativePool::Define(env));
  exports.Set("systemAlloc", Napi::Function::New<SystemAlloc>(env, "systemAlloc"));
  exports.Set("systemFree", Napi::Function::New<SystemFree>(env, "systemFree"));
  exports.Set("setErrorFactory", Napi::Function::New<SetErrorFactory>(env, "setErrorFactory"));
  exports.Set("shmUnlink", Napi::Function::New<ShmUnlink>(env, "shmUnlink"));
  exports.Set("shmList", Napi::Function::New<ShmList>(env, "shmList"));
  exports.Set("noop", Napi::Function::New<Noop>(env, "noop"));
  return exports;
}

}  // namespace mempool_addon

static Napi::Object InitMempool(Napi::Env env, Napi::Object exports) { return mempool_addon::Init(env, exports); }
NODE_API_MODULE(mempool, InitMempool)
