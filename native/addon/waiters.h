// Threads that wait on behalf of JavaScript. An async call (waitAsync, lockAsync, acquireAsync, pushAsync,
// popAsync) runs its blocking core call on one of these threads and settles its Promise on the JavaScript
// thread, so the event loop never blocks and nothing polls.
//
// Why not the libuv thread pool (napi_async_work): its four threads serve fs and dns too, and a fifth
// concurrent wait would queue behind four that may never end. A waiter thread is started when no idle one is
// free and ends after 30 s idle; each pending wait holds exactly one.
//
// Lifetime: a job holds the region's memory (ExternalMemory) and touches it only between enter() and leave(),
// so closing the pool under a pending wait raises the job's cancel flag instead of unmapping under it; the
// core waits in slices of at most 100 ms, so the job ends soon, and the Promise settles as cancelled.
// An environment torn down (a worker's exit) under a pending wait: a cleanup hook per job, registered after
// its thread-safe function and so run before that function is destroyed, cancels the job and waits for its
// thread to let go of both.
#pragma once

#include <memory>

#include "glue.h"

namespace mempool_addon {

struct AsyncJob {
  virtual ~AsyncJob() = default;
  // On a waiter thread, with the memory entered. May block; must honour memory->closing.
  virtual void run() = 0;
  // On the JavaScript thread: what the Promise resolves to. `cancelled` says the pool closed first.
  virtual Napi::Value settle(Napi::Env env, bool cancelled) = 0;

  std::shared_ptr<ExternalMemory> memory;
  napi_deferred deferred = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  bool cancelled = false;
  void* teardown = nullptr;  // the cleanup hook's data: a std::shared_ptr<Teardown>* (waiters.cc)
};

// Starts `job` (its memory set) on a waiter thread; returns its Promise.
Napi::Value start_async(Napi::Env env, std::unique_ptr<AsyncJob> job);

}  // namespace mempool_addon
