// The N-API glue: argument guards, handles, statuses -> numbers. No memory logic lives here.
//
// Hot calls return a number: an offset or size (>= 0) or a negated core Status; lib/ turns a negative
// number into a coded error. Errors thrown from here (bad arguments that got past lib/, failed set-up)
// are made by the error factory lib/ hands over once, so they carry the same `code` property.
#include <napi.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include "../core/heap.h"

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
  void release() {
    if (!released) std::free(data);
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
    throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE",
                std::string("Expected an integer from 0 to ") + std::to_string(max) + " for " + name +
                    " but received " + std::to_string(d));
  }
  return static_cast<uint64_t>(d);
}

constexpr uint64_t kMaxSafe = (uint64_t(1) << 53) - 1;

Napi::Number status_number(Napi::Env env, Status s) { return Napi::Number::New(env, -static_cast<double>(s)); }

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
                           InstanceAccessor<&NativePool::GetBuffer>("buffer"),
                           InstanceAccessor<&NativePool::GetAddress>("address"),
                       });
  }

  // new NativePool(size, algorithm, blockSize, minBlock, maxBlock)
  explicit NativePool(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativePool>(info) {
    Napi::Env env = info.Env();
    uint64_t size = arg_uint(info, 0, "size", kMaxSafe);
    if (!info[1].IsString()) throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a string for algorithm");
    Algorithm algorithm;
    std::string name = info[1].As<Napi::String>().Utf8Value();
    if (!mempool::algorithm_from_name(name, &algorithm)) {
      throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE", "Expected 'tlsf', 'buddy' or 'bitmap' for algorithm but received '" + name + "'");
    }
    HeapOptions options;
    options.block_size = arg_uint(info, 2, "blockSize", kMaxSafe);
    options.min_block = arg_uint(info, 3, "minBlock", kMaxSafe);
    options.max_block = arg_uint(info, 4, "maxBlock", kMaxSafe);
    uint64_t min = mempool::heap_min_region_size(algorithm, options);
    if (min == 0) throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE", "Invalid heap options for " + name);
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
    auto* owner = new std::shared_ptr<ExternalMemory>(memory_);
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
        env, mem, size, [](Napi::Env, void*, std::shared_ptr<ExternalMemory>* hint) { delete hint; }, owner);
    buffer_ = Napi::Persistent(ab);
  }

 private:
  bool closed() const { return heap_ == nullptr; }

  // alloc(size, align, hint (-1 = none), zero) -> offset or -status
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return Napi::Number::New(env, -100);
    uint64_t size = arg_uint(info, 0, "size", kMaxSafe);
    uint64_t align = arg_uint(info, 1, "align", mempool::kMaxAlign);
    double hint_d = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
    uint64_t hint = hint_d >= 0 && hint_d <= static_cast<double>(kMaxSafe) ? static_cast<uint64_t>(hint_d) : mempool::kNoHint;
    // Larger than any heap can represent: for the user that is simply more memory than there is.
    if (size > mempool::kMaxRequest) return status_number(env, Status::out_of_memory);
    uint64_t offset = 0;
    Status s = heap_->alloc(size, align, hint, &offset);
    if (s != Status::ok) return status_number(env, s);
    if (info[3].ToBoolean()) std::memset(heap_->base() + offset, 0, size);
    return Napi::Number::New(env, static_cast<double>(offset));
  }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return Napi::Number::New(env, -100);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    return status_number(env, heap_->free(offset));
  }

  // realloc(offset, size, align) -> new offset or -status
  Napi::Value Realloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return Napi::Number::New(env, -100);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    uint64_t size = arg_uint(info, 1, "size", kMaxSafe);
    uint64_t align = arg_uint(info, 2, "align", mempool::kMaxAlign);
    if (size > mempool::kMaxRequest) return status_number(env, Status::out_of_memory);
    uint64_t moved = 0;
    Status s = mempool::heap_realloc(*heap_, offset, size, align, &moved);
    if (s != Status::ok) return status_number(env, s);
    return Napi::Number::New(env, static_cast<double>(moved));
  }

  Napi::Value UsableSize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return Napi::Number::New(env, -100);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    uint64_t n = 0;
    Status s = heap_->usable_size(offset, &n);
    if (s != Status::ok) return status_number(env, s);
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // stats() -> [capacity, used, free, overhead, peakUsed, live, allocations, frees, failed, largestFree]
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return env.Null();
    HeapStats s;
    heap_->stats(&s);
    const uint64_t fields[] = {s.capacity, s.used, s.free, s.overhead, s.peak_used, s.live_allocations,
                               s.allocations, s.frees, s.failed_allocations, s.largest_free_block};
    Napi::Float64Array out = Napi::Float64Array::New(env, std::size(fields));
    for (size_t i = 0; i < std::size(fields); ++i) out[i] = static_cast<double>(fields[i]);
    return out;
  }

  // check() -> [violations, first violation's description]
  Napi::Value Check(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return env.Null();
    mempool::CheckResult r;
    heap_->check(&r);
    Napi::Array out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, static_cast<double>(r.violations)));
    out.Set(1u, Napi::String::New(env, r.first));
    return out;
  }

  // blocks() -> Float64Array of (offset, size, used) triples in address order, or null when corrupted
  Napi::Value Blocks(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed()) return env.Null();
    std::vector<double> triples;
    Status s = heap_->walk([&](const mempool::BlockInfo& b) {
      triples.push_back(static_cast<double>(b.offset));
      triples.push_back(static_cast<double>(b.size));
      triples.push_back(b.used ? 1 : 0);
      return true;
    });
    if (s != Status::ok) return status_number(env, s);
    Napi::Float64Array out = Napi::Float64Array::New(env, triples.size());
    if (!triples.empty()) std::memcpy(out.Data(), triples.data(), triples.size() * sizeof(double));
    return out;
  }

  // Frees the region now and detaches the ArrayBuffer: every view becomes length 0. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed()) {
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

  std::shared_ptr<ExternalMemory> memory_;
  std::unique_ptr<Heap> heap_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// systemAlloc(size) -> ArrayBuffer over memory from malloc (the fallback path: memoryType 'other').
Napi::Value SystemAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t size = arg_uint(info, 0, "size", kMaxSafe);
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
  exports.Set("noop", Napi::Function::New<Noop>(env, "noop"));
  return exports;
}

}  // namespace mempool_addon

static Napi::Object InitMempool(Napi::Env env, Napi::Object exports) { return mempool_addon::Init(env, exports); }
NODE_API_MODULE(mempool, InitMempool)
