// The N-API glue of raw segments (native/core/raw_segment.h): one NativeSegment per mapping, its bytes as
// an external ArrayBuffer, and wait/notify on its words through the same code as a SharedPool's
// (sync_glue.cc). Checks and conversions only.
#include <string>

#include "glue.h"

namespace mempool_addon {
namespace {

using mempool::RawSegment;
using mempool::Status;

constexpr double kClosedResult = -100;  // as sync_glue.cc: lib/ reads it as "closed"

class NativeSegment : public Napi::ObjectWrap<NativeSegment> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeSegment",
                       {
                           InstanceMethod<&NativeSegment::Close>("close"),
                           InstanceMethod<&NativeSegment::Wait>("wait"),
                           InstanceMethod<&NativeSegment::WaitAsync>("waitAsync"),
                           InstanceMethod<&NativeSegment::Notify>("notify"),
                           InstanceAccessor<&NativeSegment::GetBuffer>("buffer"),
                           InstanceAccessor<&NativeSegment::GetReadOnly>("readOnly"),
                       });
  }

  // new NativeSegment('create', name, size, mode, exclusive) / new NativeSegment('open', name, readOnly)
  explicit NativeSegment(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSegment>(info) {
    Napi::Env env = info.Env();
    std::string kind = arg_string(info, 0, "kind");
    std::string name = arg_string(info, 1, "name");
    std::unique_ptr<RawSegment> segment;
    int err = 0;
    Status s = Status::ok;
    if (kind == "create") {
      uint64_t size = arg_uint(info, 2, "size", kMaxRegionBytes);
      uint32_t mode = static_cast<uint32_t>(arg_uint(info, 3, "mode", 0777));
      uint64_t found = 0;
      s = RawSegment::create(name, size, mode, info[4].ToBoolean(), &segment, &err, &found);
      if (s == Status::invalid_argument) {
        throw_coded(env, "RangeError", "ERR_OUT_OF_RANGE",
                    "Expected a size of 1 to " + std::to_string(kMaxRegionBytes) + " bytes for options.size but received " + std::to_string(size));
      }
      if (s == Status::size_mismatch) throw_shm(env, s, name, err, found, size);
    } else if (kind == "open") {
      s = RawSegment::open(name, info[2].ToBoolean(), &segment, &err);
    } else {
      throw_coded(env, "TypeError", "ERR_INVALID_ARG_TYPE", "Expected 'create' or 'open' for kind");
    }
    if (s != Status::ok) throw_shm(env, s, name, err);
    check_region_size(env, name, segment->size());
    read_only_ = segment->read_only();
    memory_ = std::make_shared<ExternalMemory>();
    memory_->data = segment->data();
    memory_->size = segment->size();
    memory_->raw = std::move(segment);
    buffer_ = Napi::Persistent(external_array_buffer(env, memory_));
  }

 private:
  bool closed() const { return !memory_->usable(); }

  // Unmaps now and detaches the ArrayBuffer, so every view of it becomes length 0 (as NativePool's
  // close). A pending waitAsync ends as closed first (ExternalMemory::release). Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed()) {
      Napi::ArrayBuffer ab = buffer_.Value();
      if (!ab.IsDetached()) ab.Detach();
      memory_->release();
    }
    return info.Env().Undefined();
  }

  // wait(offset, expected, timeoutMs) -> SyncResult; waitAsync -> Promise<SyncResult>; notify(offset,
  // count) -> woken. -100 once closed.
  Napi::Value Wait(const Napi::CallbackInfo& info) { return WaitOn(info, false); }
  Napi::Value WaitAsync(const Napi::CallbackInfo& info) { return WaitOn(info, true); }
  Napi::Value WaitOn(const Napi::CallbackInfo& info, bool async) {
    if (closed()) return Napi::Number::New(info.Env(), kClosedResult);
    return region_wait(info, memory_, async);
  }
  Napi::Value Notify(const Napi::CallbackInfo& info) {
    if (closed()) return Napi::Number::New(info.Env(), kClosedResult);
    return region_notify(info, memory_);
  }

  Napi::Value GetBuffer(const Napi::CallbackInfo&) { return buffer_.Value(); }
  Napi::Value GetReadOnly(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), read_only_); }

  std::shared_ptr<ExternalMemory> memory_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
  bool read_only_ = false;
};

}  // namespace

Napi::Function define_native_segment(Napi::Env env) { return NativeSegment::Define(env); }

}  // namespace mempool_addon
