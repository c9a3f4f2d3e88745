// The N-API glue for cross-process coordination: pool.wait/waitAsync/notify on words of a segment, and the
// named objects (mutex, semaphore, queue) as one NativeSync class. Checks and conversions only: the rules
// live in native/core/sync.h, shared_queue.h and objects.h.
//
// Results cross as numbers: a SyncResult or QueueResult (>= 0), or -100 when the pool is closed; lib/ maps
// them to values and coded errors. A pop returns its Buffer.
#include <cstring>
#include <string>

#include "../core/objects.h"
#include "../core/process.h"
#include "glue.h"
#include "waiters.h"

namespace mempool_addon {
namespace {

using mempool::QueueResult;
using mempool::SyncResult;

constexpr double kClosedResult = -100;
constexpr double kBadArgument = -101;  // a fast call given something other than a Uint8Array (lib/ never does)

Napi::Number result_number(Napi::Env env, int32_t r) { return Napi::Number::New(env, r); }

// The waiter for a call made by the JavaScript thread now (async calls hand it to a waiter thread).
mempool::Waiter js_waiter(const ExternalMemory& memory, uint64_t deadline) {
  mempool::Waiter w = mempool::sync_waiter(deadline, memory.shared->segment().same_pid_namespace());
  w.cancel = &memory.closing;
  return w;
}

// A word of the region for wait/notify: 4-aligned, inside a mempool segment's heap or anywhere in a raw
// segment (which has no header to protect).
uint32_t* region_word(const Napi::CallbackInfo& info, const ExternalMemory& memory) {
  uint64_t off = arg_uint(info, 0, "offset", kMaxSafe);
  uint64_t first = memory.shared ? memory.shared->heap_offset() : 0;
  if ((off & 3) != 0 || off < first || memory.size < 4 || off > memory.size - 4) {
    throw_coded(info.Env(), "RangeError", "ERR_OUT_OF_RANGE",
                std::string("Expected a 4-aligned offset of the ") + (memory.shared ? "heap" : "segment") + " (" +
                    std::to_string(first) + " to " + std::to_string(memory.size < 4 ? 0 : memory.size - 4) +
                    ") for offset but received " + std::to_string(off));
  }
  return reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(memory.data) + off);
}

struct WaitJob : AsyncJob {
  uint32_t* word = nullptr;
  uint32_t expected = 0;
  uint64_t deadline = 0;
  SyncResult result = SyncResult::timed_out;
  void run() override { result = mempool::futex_wait(word, expected, deadline, &memory->closing); }
  Napi::Value settle(Napi::Env env, bool cancelled) override {
    return cancelled || result == SyncResult::cancelled ? Napi::Number::New(env, kClosedResult)
                                                         : result_number(env, static_cast<int32_t>(result));
  }
};

enum class Kind { mutex, semaphore, queue };

class NativeSync : public Napi::ObjectWrap<NativeSync> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeSync",
                       {
                           InstanceMethod<&NativeSync::LockAsync>("lockAsync"),
                           InstanceMethod<&NativeSync::Holder>("holder"),
                           InstanceMethod<&NativeSync::Available>("available"),
                           InstanceMethod<&NativeSync::PushAsync>("pushAsync"),
                           InstanceMethod<&NativeSync::PopAsync>("popAsync"),
                           InstanceMethod<&NativeSync::Ack>("ack"),
                           InstanceMethod<&NativeSync::PushBlock>("pushBlock"),
                           InstanceMethod<&NativeSync::PopShared>("popShared"),
                           InstanceMethod<&NativeSync::AckShared>("ackShared"),
                           InstanceMethod<&NativeSync::CloseQueue>("closeQueue"),
                           InstanceMethod<&NativeSync::QueueStats>("queueStats"),
                           InstanceAccessor<&NativeSync::Geometry>("geometry"),
                       });
  }
  explicit NativeSync(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSync>(info) {}
  ~NativeSync() override {
    if (link_ != nullptr) {
      link_->self = nullptr;  // a fast function kept after this object finds no object
      FastLink<NativeSync>::release(link_);
    }
  }

  // The hot calls as fast functions (glue.h FastLink): mailbox in, mailbox out.
  void DefineFast(Napi::Env env, Napi::Object self) {
    link_ = new FastLink<NativeSync>();
    link_->self = this;
    Napi::Float64Array mailbox = link_->mailbox_array(env);
    if (kind_ == Kind::queue) {
      self.DefineProperties({
          Napi::PropertyDescriptor::Value("mailbox", mailbox, napi_default),
          Napi::PropertyDescriptor::Value("fastPush", link_->function(env, "fastPush", FastPush), napi_default),
          Napi::PropertyDescriptor::Value("fastPop", link_->function(env, "fastPop", FastPop), napi_default),
      });
    } else {
      self.DefineProperties({
          Napi::PropertyDescriptor::Value("mailbox", mailbox, napi_default),
          Napi::PropertyDescriptor::Value("fastLock", link_->function(env, "fastLock", FastLock), napi_default),
          Napi::PropertyDescriptor::Value("fastTryLock", link_->function(env, "fastTryLock", FastTryLock), napi_default),
          Napi::PropertyDescriptor::Value("fastUnlock", link_->function(env, "fastUnlock", FastUnlock), napi_default),
      });
    }
  }

  // Opens (or makes) the object; a Status as a negative number when it cannot.
  mempool::Status Open(const std::shared_ptr<ExternalMemory>& memory, const std::string& kind, const std::string& name,
                       uint64_t a, uint64_t b) {
    memory_ = memory;
    mempool::SharedPool& pool = *memory->shared;
    if (kind == "mutex") {
      kind_ = Kind::mutex;
      return mempool::open_mutex(pool, name, &mutex_);
    }
    if (kind == "semaphore") {
      kind_ = Kind::semaphore;
      return mempool::open_semaphore(pool, name, static_cast<uint32_t>(a), &semaphore_, &permits_);
    }
    kind_ = Kind::queue;
    return mempool::open_queue(pool, name, a, b, &queue_);
  }

 private:
  bool usable() const { return memory_ && memory_->usable(); }
  void require(const Napi::CallbackInfo& info, Kind k) const {
    if (kind_ != k) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE", "This call does not apply to this object");
  }

  // ---- mutex and semaphore ----

  // The object a fast function is bound to, if it is still there and usable; else mailbox[0] = closed.
  static NativeSync* FastSelf(napi_env env, napi_callback_info info, size_t* argc = nullptr, napi_value* argv = nullptr) {
    FastLink<NativeSync>* link = FastLink<NativeSync>::of(env, info, argc, argv);
    if (link == nullptr) return nullptr;
    if (link->self == nullptr || !link->self->usable()) {
      link->mailbox[0] = kClosedResult;
      return nullptr;
    }
    return link->self;
  }

  // mailbox[0] = timeoutMs (negative: none) -> mailbox[0] = SyncResult. Mutex: lock; semaphore: acquire.
  static napi_value FastLock(napi_env env, napi_callback_info info) {
    NativeSync* self = FastSelf(env, info);
    if (self == nullptr) return nullptr;
    double* m = self->link_->mailbox;
    mempool::Waiter w = js_waiter(*self->memory_, mempool::deadline_after_ms(m[0]));
    SyncResult r = self->kind_ == Kind::mutex ? mempool::mutex_lock(self->mutex_, w) : self->Acquire(w, true);
    m[0] = static_cast<double>(r);
    return nullptr;
  }

  // -> mailbox[0] = SyncResult (busy when taken)
  static napi_value FastTryLock(napi_env env, napi_callback_info info) {
    NativeSync* self = FastSelf(env, info);
    if (self == nullptr) return nullptr;
    mempool::Waiter w = js_waiter(*self->memory_, mempool::kNoDeadline);
    SyncResult r = self->kind_ == Kind::mutex ? mempool::mutex_try_lock(self->mutex_, w) : self->Acquire(w, false);
    self->link_->mailbox[0] = static_cast<double>(r);
    return nullptr;
  }

  // -> mailbox[0] = SyncResult (not_owner when this thread holds nothing)
  static napi_value FastUnlock(napi_env env, napi_callback_info info) {
    NativeSync* self = FastSelf(env, info);
    if (self == nullptr) return nullptr;
    uint32_t tid = mempool::my_tid();
    SyncResult r = self->kind_ == Kind::mutex ? mempool::mutex_unlock(self->mutex_, tid)
                                              : mempool::semaphore_release(self->semaphore_, self->permits_, tid);
    self->link_->mailbox[0] = static_cast<double>(r);
    return nullptr;
  }

  SyncResult Acquire(const mempool::Waiter& w, bool wait) {
    return wait ? mempool::semaphore_acquire(semaphore_, permits_, w) : mempool::semaphore_try_acquire(semaphore_, permits_, w);
  }

  struct LockJob : AsyncJob {
    Kind kind = Kind::mutex;
    mempool::RobustMutex* mutex = nullptr;
    mempool::RobustSemaphore* semaphore = nullptr;
    uint32_t permits = 0;
    mempool::Waiter w;
    SyncResult result = SyncResult::timed_out;
    void run() override {
      // Acquired for the JavaScript thread (w.tid), which will release it; other tasks of that thread are
      // waited for, not a deadlock.
      w.wait_for_self = true;
      result = kind == Kind::mutex ? mempool::mutex_lock(mutex, w) : mempool::semaphore_acquire(semaphore, permits, w);
      bool acquired = result == SyncResult::ok || result == SyncResult::owner_died;
      if (acquired && memory->closing.load()) {
        // The pool closed while we waited: nobody is left to release it.
        if (kind == Kind::mutex) mempool::mutex_unlock(mutex, w.tid);
        else mempool::semaphore_release(semaphore, permits, w.tid);
        result = SyncResult::cancelled;
      }
    }
    Napi::Value settle(Napi::Env env, bool cancelled) override {
      return cancelled || result == SyncResult::cancelled ? Napi::Number::New(env, kClosedResult)
                                                           : result_number(env, static_cast<int32_t>(result));
    }
  };

  // lockAsync(timeoutMs) -> Promise<SyncResult>
  Napi::Value LockAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto job = std::make_unique<LockJob>();
    if (!usable()) {
      Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
      d.Resolve(Napi::Number::New(env, kClosedResult));
      return d.Promise();
    }
    job->memory = memory_;
    job->kind = kind_;
    job->mutex = mutex_;
    job->semaphore = semaphore_;
    job->permits = permits_;
    job->w = js_waiter(*memory_, arg_deadline(info, 0));
    return start_async(env, std::move(job));
  }

  // holder() -> the tid holding the mutex (0 = free); whether it is this thread is holder() === threadId
  Napi::Value Holder(const Napi::CallbackInfo& info) {
    require(info, Kind::mutex);
    if (!usable()) return Napi::Number::New(info.Env(), kClosedResult);
    uint32_t h = mempool::mutex_holder(mutex_);
    Napi::Array out = Napi::Array::New(info.Env(), 2);
    out.Set(0u, Napi::Number::New(info.Env(), h));
    out.Set(1u, Napi::Boolean::New(info.Env(), h != 0 && h == mempool::my_tid()));
    return out;
  }

  Napi::Value Available(const Napi::CallbackInfo& info) {
    require(info, Kind::semaphore);
    if (!usable()) return Napi::Number::New(info.Env(), kClosedResult);
    return Napi::Number::New(info.Env(), mempool::semaphore_available(semaphore_, permits_));
  }

  // ---- queue ----

  static const uint8_t* bytes_of(const Napi::CallbackInfo& info, size_t i, size_t* len) {
    if (!info[i].IsTypedArray()) throw_coded(info.Env(), "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a Uint8Array for message");
    Napi::TypedArray t = info[i].As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = t.ArrayBuffer();
    *len = t.ByteLength();
    return static_cast<const uint8_t*>(ab.Data()) + t.ByteOffset();
  }

  // The bytes of a Uint8Array argument, or false.
  static bool fast_bytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
    bool is_typed = false;
    if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed) return false;
    napi_typedarray_type type;
    void* p = nullptr;
    if (napi_get_typedarray_info(env, v, &type, len, &p, nullptr, nullptr) != napi_ok) return false;
    if (type != napi_uint8_array && type != napi_uint8_clamped_array) return false;
    *data = static_cast<uint8_t*>(p);
    if (*data == nullptr) *len = 0;  // a detached or empty buffer
    return true;
  }

  // fastPush(bytes): mailbox[0] = timeoutMs (negative: none), mailbox[1] = wait (0/1) -> mailbox[0] = QueueResult
  static napi_value FastPush(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1] = {nullptr};
    NativeSync* self = FastSelf(env, info, &argc, argv);
    if (self == nullptr) return nullptr;
    double* m = self->link_->mailbox;
    uint8_t* data = nullptr;
    size_t len = 0;
    if (argc < 1 || !fast_bytes(env, argv[0], &data, &len)) {
      m[0] = kBadArgument;
      return nullptr;
    }
    mempool::Waiter w = js_waiter(*self->memory_, mempool::deadline_after_ms(m[0]));
    m[0] = static_cast<double>(self->queue_.push(data, len, w, m[1] != 0));
    return nullptr;
  }

  struct QueueJob : AsyncJob {
    mempool::SharedQueue* queue = nullptr;
    bool pushing = false;
    std::string bytes;       // the message pushed, or the one popped
    uint64_t lease = 0;      // pop: the stamp to lease to (0: plain pop)
    uint64_t position = 0;
    mempool::Waiter w;
    QueueResult result = QueueResult::timed_out;
    void run() override {
      result = pushing ? queue->push(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), w, true)
                       : queue->pop(&bytes, lease, &position, w, true);
    }
    Napi::Value settle(Napi::Env env, bool cancelled) override {
      if (cancelled || result == QueueResult::cancelled) {
        // A message popped as the pool closed is lost with it (at-most-once); a leased one is redelivered.
        return Napi::Number::New(env, kClosedResult);
      }
      if (pushing || result != QueueResult::ok) return result_number(env, static_cast<int32_t>(result));
      return popped(env, bytes, lease, position);
    }
  };

  static Napi::Value popped(Napi::Env env, const std::string& bytes, uint64_t lease, uint64_t position) {
    Napi::Buffer<char> buf = Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size());
    if (lease == 0) return buf;
    Napi::Array out = Napi::Array::New(env, 2);
    out.Set(0u, buf);
    out.Set(1u, Napi::Number::New(env, static_cast<double>(position)));
    return out;
  }

  // pushAsync(bytes, timeoutMs) -> Promise<QueueResult>: the bytes are copied now
  Napi::Value PushAsync(const Napi::CallbackInfo& info) {
    require(info, Kind::queue);
    size_t len = 0;
    const uint8_t* data = bytes_of(info, 0, &len);
    return StartQueueJob(info, true, std::string(reinterpret_cast<const char*>(data), len), 0, 1);
  }

  Napi::Value StartQueueJob(const Napi::CallbackInfo& info, bool pushing, std::string bytes, uint64_t lease, size_t timeout_arg) {
    Napi::Env env = info.Env();
    if (!usable()) {
      Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
      d.Resolve(Napi::Number::New(env, kClosedResult));
      return d.Promise();
    }
    auto job = std::make_unique<QueueJob>();
    job->memory = memory_;
    job->queue = &queue_;
    job->pushing = pushing;
    job->bytes = std::move(bytes);
    job->lease = lease;
    job->w = js_waiter(*memory_, arg_deadline(info, timeout_arg));
    return start_async(env, std::move(job));
  }

  // fastPop(scratch): mailbox[0] = timeoutMs (negative: none), [1] = wait (0/1), [2] = lease (0/1)
  //   -> mailbox[0] = QueueResult; ok: [1] = length (the bytes are in scratch), [2] = position (lease);
  //      too_small: [1] = the length scratch needs (the message stays queued).
  // Copying into the caller's scratch, not a new Buffer: a Buffer made here costs a malloc, and its free on
  // V8's sweeper thread fights this thread for malloc's lock (measured: most of a pop's time).
  static napi_value FastPop(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1] = {nullptr};
    NativeSync* self = FastSelf(env, info, &argc, argv);
    if (self == nullptr) return nullptr;
    double* m = self->link_->mailbox;
    mempool::PopBuffer out;
    size_t capacity = 0;
    if (argc < 1 || !fast_bytes(env, argv[0], &out.data, &capacity)) {
      m[0] = kBadArgument;
      return nullptr;
    }
    out.capacity = capacity;
    uint64_t lease = m[2] != 0 ? mempool::sync_stamp() : 0;
    mempool::Waiter w = js_waiter(*self->memory_, mempool::deadline_after_ms(m[0]));
    uint64_t position = 0;
    QueueResult r = self->queue_.pop(&out, lease, &position, w, m[1] != 0);
    m[0] = static_cast<double>(r);
    m[1] = static_cast<double>(out.length);
    m[2] = static_cast<double>(position);
    return nullptr;
  }

  // popAsync(lease, timeoutMs) -> Promise<as pop>
  Napi::Value PopAsync(const Napi::CallbackInfo& info) {
    require(info, Kind::queue);
    return StartQueueJob(info, false, std::string(), info[0].ToBoolean() ? mempool::sync_stamp() : 0, 1);
  }

  // ack(position) -> QueueResult: the leased message is done (only by the thread it was leased to)
  Napi::Value Ack(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    uint64_t position = arg_uint(info, 0, "position", kMaxSafe);
    mempool::Waiter w = js_waiter(*memory_, mempool::kNoDeadline);
    return result_number(env, static_cast<int32_t>(queue_.ack(position, mempool::sync_stamp(), w)));
  }

  // ---- block messages (zero-copy): through the pool, which takes the segment's lock, then the queue's ----

  // A pool verdict as lib/ reads it: -status (a Status), or the QueueResult (>= 0).
  static Napi::Number verdict(Napi::Env env, mempool::Status s, QueueResult r) {
    return s != mempool::Status::ok ? status_number(env, s) : result_number(env, static_cast<int32_t>(r));
  }

  // pushBlock(offset, gen (-1: none), length, timeoutMs, wait) -> -status or QueueResult
  Napi::Value PushBlock(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    uint64_t offset = arg_uint(info, 0, "offset", kMaxSafe);
    double g = info[1].As<Napi::Number>().DoubleValue();
    uint32_t gen = g < 0 ? mempool::kAnyGen : static_cast<uint32_t>(g);
    uint64_t length = arg_uint(info, 2, "length", kMaxSafe);
    mempool::Waiter w = js_waiter(*memory_, arg_deadline(info, 3));
    QueueResult r = QueueResult::ok;
    mempool::Status s = memory_->shared->queue_push_block(queue_, offset, gen, length, w, info[4].ToBoolean(), &r);
    return verdict(env, s, r);
  }

  // popShared(scratch, lease, timeoutMs, wait) -> [length, position, isBlock, offset, gen, blockLength] or
  // -status or QueueResult: a byte message's bytes are in scratch; a block message is the block.
  Napi::Value PopShared(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    mempool::PopBuffer out;
    size_t capacity = 0;
    if (!fast_bytes(env, info[0], &out.data, &capacity)) {
      throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected a Uint8Array for scratch");
    }
    out.capacity = capacity;
    uint64_t lease = info[1].ToBoolean() ? mempool::sync_stamp() : 0;
    mempool::Waiter w = js_waiter(*memory_, arg_deadline(info, 2));
    uint64_t position = 0;
    mempool::NamedBlock block;
    bool is_block = false;
    QueueResult r = QueueResult::ok;
    mempool::Status s = memory_->shared->queue_pop(queue_, &out, lease, &position, &block, &is_block, w, info[3].ToBoolean(), &r);
    if (s != mempool::Status::ok || r != QueueResult::ok) {
      if (r == QueueResult::too_small) {
        Napi::Array need = Napi::Array::New(env, 1);
        need.Set(0u, Napi::Number::New(env, static_cast<double>(out.length)));
        return need;  // [length]: grow scratch to it and ask again
      }
      return verdict(env, s, r);
    }
    const double fields[] = {double(out.length), double(position), is_block ? 1.0 : 0.0,
                             double(block.offset), double(block.gen), double(block.length)};
    Napi::Array a = Napi::Array::New(env, std::size(fields));
    for (uint32_t i = 0; i < std::size(fields); ++i) a.Set(i, Napi::Number::New(env, fields[i]));
    return a;
  }

  // ackShared(position) -> -status or QueueResult (a block message's block is freed)
  Napi::Value AckShared(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    uint64_t position = arg_uint(info, 0, "position", kMaxSafe);
    mempool::Waiter w = js_waiter(*memory_, mempool::kNoDeadline);
    QueueResult r = QueueResult::ok;
    mempool::Status s = memory_->shared->queue_ack(queue_, position, mempool::sync_stamp(), w, &r);
    return verdict(env, s, r);
  }

  Napi::Value CloseQueue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    mempool::Waiter w = js_waiter(*memory_, mempool::kNoDeadline);
    return result_number(env, static_cast<int32_t>(queue_.close(w)));
  }

  // queueStats() -> Float64Array [count, leased, usedBytes, pushed, popped, redelivered, recoveries, closed] or QueueResult
  Napi::Value QueueStats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    require(info, Kind::queue);
    if (!usable()) return Napi::Number::New(env, kClosedResult);
    mempool::QueueStats st;
    mempool::Waiter w = js_waiter(*memory_, mempool::deadline_after_ms(5000));
    QueueResult r = queue_.stats(&st, w);
    if (r != QueueResult::ok) return result_number(env, static_cast<int32_t>(r));
    const double fields[] = {double(st.count), double(st.leased), double(st.used_bytes), double(st.pushed),
                             double(st.popped), double(st.redelivered), double(st.recoveries), st.closed ? 1.0 : 0.0};
    Napi::Float64Array out = Napi::Float64Array::New(env, std::size(fields));
    for (size_t i = 0; i < std::size(fields); ++i) out[i] = fields[i];
    return out;
  }

  // geometry -> [permits] for a semaphore, [maxBytes, maxMessages, maxMessageBytes] for a queue
  Napi::Value Geometry(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    if (kind_ == Kind::semaphore) out.Set(0u, Napi::Number::New(env, permits_));
    if (kind_ == Kind::queue) {
      out.Set(0u, Napi::Number::New(env, static_cast<double>(queue_.ring_bytes())));
      out.Set(1u, Napi::Number::New(env, static_cast<double>(queue_.max_messages())));
      out.Set(2u, Napi::Number::New(env, static_cast<double>(queue_.max_message())));
    }
    return out;
  }

  std::shared_ptr<ExternalMemory> memory_;
  FastLink<NativeSync>* link_ = nullptr;  // shared with the fast functions (glue.h)
  Kind kind_ = Kind::mutex;
  mempool::RobustMutex* mutex_ = nullptr;
  mempool::RobustSemaphore* semaphore_ = nullptr;
  uint32_t permits_ = 0;
  mempool::SharedQueue queue_;
};

}  // namespace

Napi::Function define_native_sync(Napi::Env env) {
  Napi::Function ctor = NativeSync::Define(env);
  data_of(env)->native_sync = Napi::Persistent(ctor);
  return ctor;
}

Napi::Value make_native_sync(Napi::Env env, const std::shared_ptr<ExternalMemory>& memory, const std::string& kind,
                             const std::string& name, uint64_t a, uint64_t b) {
  Napi::Object obj = data_of(env)->native_sync.New({});
  NativeSync* sync = NativeSync::Unwrap(obj);
  mempool::Status s = sync->Open(memory, kind, name, a, b);
  if (s != mempool::Status::ok) return status_number(env, s);
  sync->DefineFast(env, obj);
  return obj;
}

// wait(offset, expected, timeoutMs) -> SyncResult; waitAsync(...) -> Promise<SyncResult>
Napi::Value region_wait(const Napi::CallbackInfo& info, const std::shared_ptr<ExternalMemory>& memory, bool async) {
  Napi::Env env = info.Env();
  uint32_t* word = region_word(info, *memory);
  uint32_t expected = static_cast<uint32_t>(static_cast<int32_t>(info[1].As<Napi::Number>().Int32Value()));
  uint64_t deadline = arg_deadline(info, 2);
  if (!async) {
    // No cancel flag: nothing can close this pool while its own thread is blocked here.
    return result_number(env, static_cast<int32_t>(mempool::futex_wait(word, expected, deadline, nullptr)));
  }
  auto job = std::make_unique<WaitJob>();
  job->memory = memory;
  job->word = word;
  job->expected = expected;
  job->deadline = deadline;
  return start_async(env, std::move(job));
}

// notify(offset, count) -> how many waiters were woken
Napi::Value region_notify(const Napi::CallbackInfo& info, const std::shared_ptr<ExternalMemory>& memory) {
  uint32_t* word = region_word(info, *memory);
  uint64_t count = info[1].IsNumber() ? arg_uint(info, 1, "count", kMaxSafe) : UINT32_MAX;
  uint32_t woken = mempool::futex_wake(word, count > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(count));
  return Napi::Number::New(info.Env(), woken);
}

}  // namespace mempool_addon
