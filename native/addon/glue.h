// What the addon's files share: the memory a region's ArrayBuffer views, coded errors, argument guards.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../core/heap.h"
#include "../core/raw_segment.h"
#include "../core/shared_pool.h"

namespace mempool_addon {

// Memory handed to JavaScript as an external ArrayBuffer. Owned jointly by the native handle, the
// ArrayBuffer's finalizer and any async wait running on it, so that none can free it under another;
// close() frees it early and detaches the ArrayBuffer so no view can reach it.
//
// Async waits (waiters.h) touch the memory from other threads: between enter() and leave(). A release()
// meanwhile raises `closing` (their cancel flag: each ends within 100 ms) and the last leave() does it.
struct ExternalMemory {
  void* data = nullptr;
  uint64_t size = 0;
  bool released = false;
  // Set for a shared segment: released by closing it (its slab cache returned, then unmapped).
  std::unique_ptr<mempool::SharedPool> shared;
  // Set for a raw segment (raw_glue.cc): released by unmapping it.
  std::unique_ptr<mempool::RawSegment> raw;
  std::atomic<bool> closing{false};

  bool enter() {
    std::lock_guard<std::mutex> g(guard_);
    if (released || closing.load()) return false;
    ++busy_;
    return true;
  }
  void leave() {
    std::lock_guard<std::mutex> g(guard_);
    if (--busy_ == 0 && closing.load()) release_now();
  }
  void release() {
    std::lock_guard<std::mutex> g(guard_);
    closing.store(true);
    if (busy_ == 0) release_now();
  }
  bool usable() const { return !released && !closing.load(); }
  ~ExternalMemory() { release(); }

 private:
  void release_now() {
    if (!released) {
      if (shared) shared->close(100);
      else if (raw) raw->close();
      else std::free(data);
    }
    released = true;
  }
  std::mutex guard_;
  int busy_ = 0;
};

struct AddonData {
  Napi::FunctionReference error_factory;  // (kind, code, message) => Error, from lib/errors.ts
  // (negated status, name, errno, found, asked) => Error: lib/errors.ts's table of statuses
  Napi::FunctionReference status_error_factory;
  // Fallback allocations from the system allocator, by address. Weak: the ArrayBuffer's finalizer owns
  // the memory, so teardown may run the finalizers and delete this in either order.
  std::unordered_map<void*, std::weak_ptr<ExternalMemory>> system_blocks;
  size_t purge_at = 1024;
  Napi::FunctionReference native_sync;  // the constructor of named objects (sync_glue.cc)
};

inline AddonData* data_of(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Throws an Error made by lib/'s factory, so it has a string `code`; kind is "TypeError", "RangeError"
// or "PoolError".
[[noreturn]] void throw_coded(Napi::Env env, const char* kind, const char* code, const std::string& message);
// Argument guards with one message template: "Expected <what> for <name> but received <value>".
uint64_t arg_uint(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t max);
std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name);
// A timeout in ms from JavaScript: a number >= 0, or Infinity / undefined / negative for none.
uint64_t arg_deadline(const Napi::CallbackInfo& info, size_t i);

constexpr uint64_t kMaxSafe = (uint64_t(1) << 53) - 1;
// The largest region one ArrayBuffer can view in Node 20 (buffer.constants.MAX_LENGTH): a region is
// always one ArrayBuffer, so this is the largest pool region, shared segment or raw segment.
constexpr uint64_t kMaxRegionBytes = uint64_t(1) << 32;

// Throws ERR_OUT_OF_RANGE when shared memory `name` of `size` bytes is more than one ArrayBuffer can view.
void check_region_size(Napi::Env env, const std::string& name, uint64_t size);
// An ArrayBuffer over `memory` that holds a reference to it until collected (or until memory->release(),
// after which the caller detaches it). Throws ERR_OUT_OF_RANGE when the engine refuses it (releasing memory).
Napi::ArrayBuffer external_array_buffer(Napi::Env env, const std::shared_ptr<ExternalMemory>& memory);
// The coded error of a Status from creating, opening or unlinking shared memory `name` (err: its errno;
// found and asked: the sizes of a size_mismatch), made by lib/errors.ts's table of statuses, the one
// place where statuses get codes and messages.
[[noreturn]] void throw_shm(Napi::Env env, mempool::Status s, const std::string& name, int err, uint64_t found = 0,
                            uint64_t asked = 0);
inline Napi::Number status_number(Napi::Env env, mempool::Status s) {
  return Napi::Number::New(env, -static_cast<double>(s));
}

// A native object's fast path: functions bound to it that take their arguments from a mailbox of doubles
// (and at most a buffer), so a call costs about one native no-op: no unwrap (napi_unwrap alone costs more
// than two no-op calls), no argument conversion, no result object. The object, its fast functions and the
// mailbox's ArrayBuffer are collected in any order: each holds a reference, the last one out deletes the
// link, and the object clears `self` when it goes, so a function kept after its object finds no object
// instead of freed memory. Finalizers run on the thread of the object's environment: no atomics needed.
template <class T>
struct FastLink {
  T* self = nullptr;
  int refs = 1;        // the object's own
  double mailbox[4] = {0, 0, 0, 0};  // arguments and results

  static void release(FastLink* link) {
    if (--link->refs == 0) delete link;
  }

  // The mailbox as a Float64Array for JavaScript (it holds a reference to the link).
  Napi::Float64Array mailbox_array(Napi::Env env) {
    refs += 1;
    Napi::ArrayBuffer memory = Napi::ArrayBuffer::New(
        env, mailbox, sizeof mailbox, [](Napi::Env, void*, FastLink* link) { release(link); }, this);
    return Napi::Float64Array::New(env, 4, memory, 0);
  }

  // A function bound to this link (it holds a reference to the link).
  Napi::Function function(Napi::Env env, const char* name, napi_callback cb) {
    napi_value fn;
    if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, this, &fn) != napi_ok) {
      throw Napi::Error::New(env, "cannot create the fast path");
    }
    refs += 1;
    if (napi_add_finalizer(env, fn, this, [](napi_env, void* data, void*) { release(static_cast<FastLink*>(data)); },
                           nullptr, nullptr) != napi_ok) {
      refs -= 1;  // never released by the function: the link outlives it, a few bytes
      throw Napi::Error::New(env, "cannot create the fast path");
    }
    return Napi::Function(env, fn);
  }

  // The link a fast function was called through (argv: up to *argc arguments), or null.
  static FastLink* of(napi_env env, napi_callback_info info, size_t* argc = nullptr, napi_value* argv = nullptr) {
    void* data = nullptr;
    if (napi_get_cb_info(env, info, argc, argv, nullptr, &data) != napi_ok) return nullptr;
    return static_cast<FastLink*>(data);
  }
};

// The named objects (sync_glue.cc): NativeSync.define(env) once; make() for pool.openMutex and the like.
Napi::Function define_native_sync(Napi::Env env);
Napi::Value make_native_sync(Napi::Env env, const std::shared_ptr<ExternalMemory>& memory, const std::string& kind,
                             const std::string& name, uint64_t a, uint64_t b);
// pool.wait / waitAsync / notify on a word of a shared region (sync_glue.cc).
Napi::Value region_wait(const Napi::CallbackInfo& info, const std::shared_ptr<ExternalMemory>& memory, bool async);
Napi::Value region_notify(const Napi::CallbackInfo& info, const std::shared_ptr<ExternalMemory>& memory);
// The raw segments' class (raw_glue.cc).
Napi::Function define_native_segment(Napi::Env env);

}  // namespace mempool_addon
