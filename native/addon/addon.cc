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
#include "../core/shared_pool.h"
#include "../core/sync.h"
#include "glue.h"

namespace mempool_addon {

using mempool::Algorithm;
using mempool::Heap;
using mempool::HeapOptions;
using mempool::HeapStats;
using mempool::Status;



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

std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsString()) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE", std::string("Expected a string for ") + name);
  return info[i].As<Napi::String>().Utf8Value();
}

uint64_t arg_deadline(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) return mempool::kNoDeadline;
  return mempool::deadline_after_ms(info[i].As<Napi::Number>().DoubleValue());
}

void check_region_size(Napi::Env env, const std::string& name, uint64_t size) {
  if (size > kMaxRegionBytes) {
    throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                "Shared memory '" + name + "' is " + std::to_string(size) + " bytes: more than one ArrayBuffer can map (" +
                    std::to_string(kMaxRegionBytes) + ")");
  }
}

Napi::ArrayBuffer external_array_buffer(Napi::Env env, const std::shared_ptr<ExternalMemory>& memory) {
  auto* owner = new std::shared_ptr<ExternalMemory>(memory);
  napi_value ab_value = nullptr;
  napi_status st = napi_create_external_arraybuffer(
      env, memory->data, memory->size,
      [](napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<ExternalMemory>*>(hint); }, owner, &ab_value);
  if (st != napi_ok) {
    // Node may already have run the finalizer (which deletes `owner`) before failing: never delete
    // it here. Sizes are checked before this point, so this is not expected to happen.
    memory->release();
    throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE", "The JavaScript engine cannot map " + std::to_string(memory->size) + " bytes as one ArrayBuffer");
  }
  return Napi::ArrayBuffer(env, ab_value);
}


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

[[noreturn]] void throw_shm(Napi::Env env, Status s, const std::string& name, int err, uint64_t found, uint64_t asked) {
  AddonData* d = data_of(env);
  if (d != nullptr && !d->status_error_factory.IsEmpty()) {
    Napi::Value e = d->status_error_factory.Call(
        {status_number(env, s), Napi::String::New(env, name), Napi::Number::New(env, err),
         Napi::Number::New(env, static_cast<double>(found)), Napi::Number::New(env, static_cast<double>(asked))});
    throw Napi::Error(env, e);
  }
  // Only before lib/ has handed over its table (never, when loaded through lib/).
  throw_coded(env, "PoolError", "ERR_SHM_SYSTEM", "Shared memory '" + name + "': " + mempool::status_name(s));
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
                           InstanceMethod<&NativePool::ReplaceKey>("replaceKey"),
                           InstanceMethod<&NativePool::TakeKey>("takeKey"),
                           InstanceMethod<&NativePool::CopyKey>("copyKey"),
                           InstanceMethod<&NativePool::PinKey>("pinKey"),
                           InstanceMethod<&NativePool::UnpinKey>("unpinKey"),
                           InstanceMethod<&NativePool::Keys>("keys"),
                           InstanceMethod<&NativePool::SegmentInfo>("segmentInfo"),
                           InstanceMethod<&NativePool::DebugReport>("debugReport"),
                           InstanceMethod<&NativePool::LiveAllocations>("liveAllocations"),
                           InstanceMethod<&NativePool::Reclaim>("reclaim"),
                           InstanceMethod<&NativePool::Processes>("processes"),
                           InstanceMethod<&NativePool::Wait>("wait"),
                           InstanceMethod<&NativePool::WaitAsync>("waitAsync"),
                           InstanceMethod<&NativePool::Notify>("notify"),
                           InstanceMethod<&NativePool::OpenObject>("openObject"),
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
    buffer_ = Napi::Persistent(external_array_buffer(env, memory_));
    // The fast path: a mailbox of doubles that JavaScript and C++ both read and write, and two
    // functions bound to this pool (through link_) that take no arguments. A call then costs about one
    // native no-op: no argument conversion, no unwrap (napi_unwrap alone costs more than two no-op
    // calls), no result object. The mailbox lives in the link, not in V8's heap: the pool's JavaScript
    // object (and any array V8 owned) can be collected before ~NativePool runs, and a fast function kept
    // past it must still find valid memory. The ArrayBuffer over it holds a reference to the link too.
    link_ = new FastLink<NativePool>();
    link_->self = this;
    mailbox_ = link_->mailbox;
    Napi::Float64Array mailbox = link_->mailbox_array(env);
    Napi::Object self = info.This().As<Napi::Object>();
    self.DefineProperties({
        Napi::PropertyDescriptor::Value("mailbox", mailbox, napi_default),  // read-only: the C++ side keeps its address
        Napi::PropertyDescriptor::Value("fastAlloc", link_->function(env, "fastAlloc", FastAlloc), napi_default),
        Napi::PropertyDescriptor::Value("fastFree", link_->function(env, "fastFree", FastFree), napi_default),
    });
  }

  ~NativePool() override {
    if (link_ != nullptr) {
      link_->self = nullptr;  // a fast function kept after this pool finds no pool
      FastLink<NativePool>::release(link_);
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
    std::unique_ptr<mempool::SharedPool> pool;
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
      options.track_owners = info[12].ToBoolean();
      bool created = false;
      s = mempool::SharedPool::create(name, size, options, &pool, &err, &created);
      if (s == Status::invalid_argument) {
        throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                    "Expected a size that holds the segment header, the directory and a " +
                        std::string(mempool::algorithm_name(options.algorithm)) + " heap but received " + std::to_string(size));
      }
    } else {
      uint32_t timeout = static_cast<uint32_t>(arg_uint(info, 2, "lockTimeoutMs", 86400000));
      s = mempool::SharedPool::open(name, timeout, &pool, &err);
    }
    if (s != Status::ok) throw_shm(env, s, name, err);
    check_region_size(env, name, pool->size());
    memory_ = std::make_shared<ExternalMemory>();
    memory_->data = pool->base();
    memory_->size = pool->size();
    shared_ = pool.get();
    heap_ptr_ = &pool->segment().heap();
    bias_ = pool->heap_offset();
    algorithm_ = pool->segment().algorithm();
    memory_->shared = std::move(pool);
  }

 private:
  bool closed() const { return heap_ptr_ == nullptr; }

  // The pool a fast function is bound to (glue.h FastLink), or null once that pool was collected.
  static NativePool* FastSelf(napi_env env, napi_callback_info info) {
    FastLink<NativePool>* link = FastLink<NativePool>::of(env, info);
    return link == nullptr ? nullptr : link->self;
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
    uint32_t gen = 0;
    Status s = self->AllocAt(static_cast<uint64_t>(d), mempool::kDefaultAlign, mempool::kNoHint, 0, &offset, &gen);
    m[0] = s == Status::ok ? static_cast<double>(offset) : -static_cast<double>(s);
    m[1] = gen;
    return nullptr;
  }

  // mailbox[0] = offset, mailbox[1] = generation (-1: none) -> mailbox[0] = 0 or -status.
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
    m[0] = -static_cast<double>(valid ? self->FreeAt(static_cast<uint64_t>(d), gen_of(m[1])) : Status::foreign);
    return nullptr;
  }

  // A generation from JavaScript: an integer 0..2^32-1, anything else (-1) meaning "no handle".
  static uint32_t gen_of(double d) {
    return d >= 0 && d <= 4294967295.0 && d == static_cast<double>(static_cast<uint32_t>(d)) ? static_cast<uint32_t>(d) : mempool::kAnyGen;
  }
  static uint32_t arg_gen(const Napi::CallbackInfo& info, size_t i) {
    return info[i].IsNumber() ? gen_of(info[i].As<Napi::Number>().DoubleValue()) : mempool::kAnyGen;
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
    uint32_t gen = 0;
    Status s = AllocAt(size, align, hint, site, &offset, &gen);
    if (s != Status::ok) return status_number(env, s);
    mailbox_[1] = gen;  // the block's generation (shared pools): lib/ reads it beside the offset
    if (info[3].ToBoolean()) std::memset(heap_ptr_->base() + (offset - bias_), 0, size);
    return Napi::Number::New(env, static_cast<double>(offset));
  }

  // Allocates (both the fast and the slow path); *offset is a region offset, *gen the block's generation
  // (0 in a private pool). `hint` is a heap offset or kNoHint; `site` is recorded in debug mode.
  Status AllocAt(uint64_t size, uint64_t align, uint64_t hint, uint32_t site, uint64_t* offset, uint32_t* gen) {
    // Larger than any heap can represent: for the user that is simply more memory than there is.
    if (size > mempool::kMaxRequest) return Status::out_of_memory;
    if (shared_ != nullptr) return shared_->alloc(size, align, hint == mempool::kNoHint ? hint : hint + bias_, site, offset, gen);
    *gen = 0;
    if (mempool::DebugHeapApi* d = heap_ptr_->debug()) d->set_site(site);
    return heap_ptr_->alloc(size, align, hint, offset);
  }

  // Frees the allocation at region offset `offset` (both the fast and the slow path).
  Status FreeAt(uint64_t offset, uint32_t gen) {
    if (shared_ != nullptr) return shared_->free(offset, gen);
    return heap_ptr_->free(offset);
  }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    return status_number(env, FreeAt(arg_uint(info, 0, "offset", kMaxSafe), arg_gen(info, 1)));
  }

  // realloc(offset, size, align, gen) -> new offset or -status; the new generation in mailbox[1]
  Napi::Value Realloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    uint64_t size = arg_uint(info, 1, "size", kMaxSafe);
    uint64_t align = arg_uint(info, 2, "align", mempool::kMaxAlign);
    if (size > mempool::kMaxRequest) return status_number(env, Status::out_of_memory);
    uint64_t moved = 0;
    uint32_t gen = 0;
    Status s = shared_ != nullptr ? shared_->realloc(offset, arg_gen(info, 3), size, align, &moved, &gen)
                                  : mempool::heap_realloc(*heap_ptr_, offset, size, align, &moved);
    if (s != Status::ok) return status_number(env, s);
    mailbox_[1] = gen;
    return Napi::Number::New(env, static_cast<double>(moved));
  }

  Napi::Value UsableSize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    uint64_t n = 0;
    Status s = shared_ != nullptr ? shared_->usable_size(offset, &n) : heap_ptr_->usable_size(offset, &n);
    if (s != Status::ok) return status_number(env, s);
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // stats() -> [capacity, used, free, overhead, peakUsed, live, allocations, frees, failed, largestFree]
  // or -status. For a shared pool, capacity is the segment size and overhead includes its header.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    HeapStats s;
    if (shared_ != nullptr) {
      Status st = shared_->stats(&s);
      if (st != Status::ok) return status_number(env, st);
    } else {
      heap_ptr_->stats(&s);
    }
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
    if (shared_ != nullptr) {
      Status st = shared_->check(&r);
      if (st != Status::ok) return status_number(env, st);
    } else {
      heap_ptr_->check(&r);
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
    auto visit = [&](const mempool::BlockInfo& b) {
      triples.push_back(static_cast<double>(b.offset));
      triples.push_back(static_cast<double>(b.size));
      triples.push_back(b.used ? 1 : 0);
      return true;
    };
    // A shared pool shows each slab as its slots (lent = used).
    Status s = shared_ != nullptr ? shared_->walk(visit) : heap_ptr_->walk(visit);
    if (s != Status::ok) return status_number(env, s);
    return float64_array(env, triples);
  }

  static Napi::Value named_triple(Napi::Env env, const mempool::NamedBlock& b) {
    Napi::Array out = Napi::Array::New(env, 3);
    out.Set(0u, Napi::Number::New(env, static_cast<double>(b.offset)));
    out.Set(1u, Napi::Number::New(env, static_cast<double>(b.length)));
    out.Set(2u, Napi::Number::New(env, static_cast<double>(b.gen)));
    return out;
  }

  // setKey(key, offset, length, gen) -> 0 or -status: the name owns the block from now on.
  Napi::Value SetKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    uint64_t offset = arg_uint(info, 1, "offset", kMaxSafe);
    uint64_t length = arg_uint(info, 2, "length", kMaxSafe);
    return status_number(env, shared_->set(key, offset, arg_gen(info, 3), length));
  }

  // replaceKey(key, offset, length, gen) -> [offset, length, gen] of the block handed back, null, or -status
  Napi::Value ReplaceKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    uint64_t offset = arg_uint(info, 1, "offset", kMaxSafe);
    uint64_t length = arg_uint(info, 2, "length", kMaxSafe);
    mempool::NamedBlock old;
    bool had = false;
    Status s = shared_->replace(key, offset, arg_gen(info, 3), length, &old, &had);
    if (s != Status::ok) return status_number(env, s);
    return had ? named_triple(env, old) : env.Null();
  }

  // getKey / takeKey (key) -> [offset, length, gen], null when absent, or -status
  Napi::Value GetKey(const Napi::CallbackInfo& info) { return KeyOp(info, false); }
  Napi::Value TakeKey(const Napi::CallbackInfo& info) { return KeyOp(info, true); }
  Napi::Value KeyOp(const Napi::CallbackInfo& info, bool take) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    mempool::NamedBlock b;
    bool had = false;
    Status s = take ? shared_->take(key, &b, &had) : shared_->get(key, &b, &had);
    if (s != Status::ok) return status_number(env, s);
    return had ? named_triple(env, b) : env.Null();
  }

  // copyKey(key) -> a Buffer with a copy of the named bytes, null when absent, or -status
  Napi::Value CopyKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    std::string bytes;
    bool had = false;
    Status s = shared_->copy(key, &bytes, &had);  // copied under the lock, into process memory
    if (s != Status::ok) return status_number(env, s);
    if (!had) return env.Null();
    return Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size());  // made after the lock is released
  }

  // pinKey(key) -> [offset, length, gen, pin], null when absent, or -status; unpinKey(pin, offset) -> 0 or -status
  Napi::Value PinKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    mempool::NamedBlock b;
    bool had = false;
    uint32_t pin = 0;
    Status s = shared_->pin(key, &b, &pin, &had);
    if (s != Status::ok) return status_number(env, s);
    if (!had) return env.Null();
    Napi::Array out = named_triple(env, b).As<Napi::Array>();
    out.Set(3u, Napi::Number::New(env, pin));
    return out;
  }

  Napi::Value UnpinKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    uint32_t pin = static_cast<uint32_t>(arg_uint(info, 0, "pin", UINT32_MAX));
    uint64_t offset = arg_uint(info, 1, "offset", kMaxSafe);
    return status_number(env, shared_->unpin(pin, offset));
  }

  // deleteKey(key) -> true / false, or -status: the name and its block go (the block when no reader pins it)
  Napi::Value DeleteKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string key = arg_key(info, 0);
    bool had = false;
    Status s = shared_->remove(key, &had);
    if (s != Status::ok) return status_number(env, s);
    return Napi::Boolean::New(env, had);
  }

  // keys() -> string[] or -status
  Napi::Value Keys(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<std::string> keys;
    Status s = shared_->keys(&keys);
    if (s != Status::ok) return status_number(env, s);
    Napi::Array out = Napi::Array::New(env, keys.size());
    for (size_t i = 0; i < keys.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::String::New(env, keys[i]));
    return out;
  }

  // segmentInfo() -> [recoveries, creatorPid, createdUnixMs, keys, maxKeys, heapOffset, trackOwners,
  // reclaimedAllocations, reclaimedBytes, blockSize, minBlock, maxBlock, heapRepairs] (read without the lock:
  // diagnostics, and the heap options a non-exclusive create compares with the ones it was given)
  Napi::Value SegmentInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed() || shared_ == nullptr) return env.Null();
    const mempool::SegmentHeader* h = shared_->segment().header();
    const double fields[] = {static_cast<double>(h->recoveries), static_cast<double>(h->creator_pid),
                             static_cast<double>(h->created_unix_ms), static_cast<double>(h->directory_live),
                             static_cast<double>(h->directory_capacity), static_cast<double>(bias_),
                             static_cast<double>(h->track_owners), static_cast<double>(h->reclaimed_blocks),
                             static_cast<double>(h->reclaimed_bytes), static_cast<double>(h->block_size),
                             static_cast<double>(h->min_block), static_cast<double>(h->max_block),
                             static_cast<double>(h->heap_repairs)};
    Napi::Float64Array out = Napi::Float64Array::New(env, std::size(fields));
    for (size_t i = 0; i < std::size(fields); ++i) out[i] = fields[i];
    return out;
  }

  // debugReport() -> the last misuse debug mode detected ('' when none or not in debug mode)
  Napi::Value DebugReport(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed() || heap_ptr_->debug() == nullptr) return Napi::String::New(env, "");
    std::string report;
    auto read = [&] {
      report = heap_ptr_->debug()->last_violation();
      return Status::ok;
    };
    Status s = shared_ != nullptr ? shared_->locked(read) : read();
    if (s != Status::ok) return status_number(env, s);
    return Napi::String::New(env, report);
  }

  // liveAllocations() -> Float64Array of (offset, size, ownerPid, site) quads, debug mode only; or -status
  Napi::Value LiveAllocations(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (heap_ptr_->debug() == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<double> quads;
    auto list = [&] {
      return heap_ptr_->debug()->live_allocations([&](const mempool::DebugAllocation& a) {
        quads.push_back(static_cast<double>(a.offset + bias_));
        quads.push_back(static_cast<double>(a.size));
        quads.push_back(a.owner_pid);
        quads.push_back(a.site);
      });
    };
    Status s = shared_ != nullptr ? shared_->locked(list) : list();
    if (s != Status::ok) return status_number(env, s);
    return float64_array(env, quads);
  }

  // reclaim(pid) -> [count, bytes] or -status (debug mode only; lib/ refuses a live pid first)
  Napi::Value Reclaim(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (heap_ptr_->debug() == nullptr && shared_ == nullptr) return status_number(env, Status::invalid_argument);
    uint32_t pid = static_cast<uint32_t>(arg_uint(info, 0, "pid", UINT32_MAX));
    uint64_t count = 0, bytes = 0;
    Status s = shared_ != nullptr ? shared_->reclaim(pid, &count, &bytes)
                                  : heap_ptr_->debug()->reclaim(pid, &count, &bytes, [](uint64_t) {});
    if (s != Status::ok) return status_number(env, s);
    return number_pair(env, count, bytes);
  }

  // processes() -> Float64Array of (pid, startUnixMs) pairs: the processes attached now, or -status
  Napi::Value Processes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::vector<mempool::AttachedProcess> list;
    Status s = shared_->processes(&list);
    if (s != Status::ok) return status_number(env, s);
    Napi::Float64Array out = Napi::Float64Array::New(env, list.size() * 2);
    for (size_t i = 0; i < list.size(); ++i) {
      out[2 * i] = list[i].pid;
      out[2 * i + 1] = static_cast<double>(list[i].start_unix_ms);
    }
    return out;
  }

  // wait(offset, expected, timeoutMs) / waitAsync / notify(offset, count): futex calls on a word of the
  // segment (sync_glue.cc); openObject(kind, name, a, b) -> a NativeSync, or -status.
  Napi::Value Wait(const Napi::CallbackInfo& info) { return WaitOn(info, false); }
  Napi::Value WaitAsync(const Napi::CallbackInfo& info) { return WaitOn(info, true); }
  Napi::Value WaitOn(const Napi::CallbackInfo& info, bool async) {
    if (closed()) return status_number(info.Env(), kClosed);
    if (shared_ == nullptr) return status_number(info.Env(), Status::invalid_argument);
    return region_wait(info, memory_, async);
  }
  Napi::Value Notify(const Napi::CallbackInfo& info) {
    if (closed()) return status_number(info.Env(), kClosed);
    if (shared_ == nullptr) return status_number(info.Env(), Status::invalid_argument);
    return region_notify(info, memory_);
  }
  Napi::Value OpenObject(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return status_number(env, kClosed);
    if (shared_ == nullptr) return status_number(env, Status::invalid_argument);
    std::string kind = arg_string(info, 0, "kind");
    std::string name = arg_string(info, 1, "name");
    uint64_t a = arg_uint(info, 2, "a", kMaxSafe);
    uint64_t b = arg_uint(info, 3, "b", kMaxSafe);
    return make_native_sync(env, memory_, kind, name, a, b);
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
      shared_ = nullptr;
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
  mempool::SharedPool* shared_ = nullptr;  // owned by memory_; null for private pools
  uint64_t bias_ = 0;                // where the heap starts in the region
  Algorithm algorithm_ = Algorithm::tlsf;
  double* mailbox_ = nullptr;        // link_->mailbox
  FastLink<NativePool>* link_ = nullptr;  // shared with the fast functions (glue.h)
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
  if (s != Status::ok) throw_shm(env, s, name, err);
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

// setErrorFactory(make, fromStatus): lib/errors.ts's makeError and its table of statuses.
Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction() || !info[1].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected two functions");
  data_of(info.Env())->error_factory = Napi::Persistent(info[0].As<Napi::Function>());
  data_of(info.Env())->status_error_factory = Napi::Persistent(info[1].As<Napi::Function>());
  return info.Env().Undefined();
}

// The floor of any addon call, for benchmarks.
Napi::Value Noop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted at environment teardown (worker exit too)
  exports.Set("NativePool", NativePool::Define(env));
  define_native_sync(env);  // made by pool.openObject() only
  exports.Set("NativeSegment", define_native_segment(env));
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
