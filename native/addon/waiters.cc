// Waiter threads for async waits: waiters.h.
#include "waiters.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

namespace mempool_addon {

// Shared by a job's thread and its environment cleanup hook: the hook waits until the thread is done with
// the job's thread-safe function.
struct Teardown {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::shared_ptr<ExternalMemory> memory;
};

namespace {

void on_teardown(void* arg) {
  auto* t = static_cast<std::shared_ptr<Teardown>*>(arg);
  (*t)->memory->closing.store(true);  // the job's cancel flag: its wait ends within 100 ms
  std::unique_lock<std::mutex> l((*t)->m);
  (*t)->cv.wait(l, [&] { return (*t)->done; });
  l.unlock();
  delete t;
}

class WaiterThreads {
 public:
  void submit(AsyncJob* job) {
    std::lock_guard<std::mutex> g(m_);
    jobs_.push_back(job);
    // Every job needs a thread of its own (it may block for ever): wake an idle one only if there are at
    // least as many idle threads as jobs nobody has taken yet.
    if (idle_ >= jobs_.size()) {
      cv_.notify_one();
    } else {
      std::thread([this] { loop(); }).detach();
    }
  }

 private:
  void loop() {
    for (;;) {
      AsyncJob* job = nullptr;
      {
        std::unique_lock<std::mutex> l(m_);
        while (jobs_.empty()) {
          ++idle_;
          bool woken = cv_.wait_for(l, std::chrono::seconds(30), [this] { return !jobs_.empty(); });
          --idle_;
          if (!woken) return;  // idle for 30 s: this thread ends
        }
        job = jobs_.front();
        jobs_.pop_front();
      }
      execute(job);
    }
  }

  static void execute(AsyncJob* job) {
    std::shared_ptr<Teardown> teardown = *static_cast<std::shared_ptr<Teardown>*>(job->teardown);
    if (job->memory->enter()) {
      job->run();
      job->memory->leave();
    } else {
      job->cancelled = true;
    }
    // The JavaScript thread may delete the job as soon as the call is queued: keep the handle apart.
    napi_threadsafe_function tsfn = job->tsfn;
    if (napi_call_threadsafe_function(tsfn, job, napi_tsfn_blocking) != napi_ok) delete job;  // environment gone
    napi_release_threadsafe_function(tsfn, napi_tsfn_release);
    std::lock_guard<std::mutex> g(teardown->m);
    teardown->done = true;
    teardown->cv.notify_all();
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<AsyncJob*> jobs_;
  size_t idle_ = 0;
};

WaiterThreads& waiter_threads() {
  static WaiterThreads* threads = new WaiterThreads();  // never destroyed: detached threads use it to the end
  return *threads;
}

// On the JavaScript thread (env null when the environment is being torn down: just free the job).
void settle_job(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<AsyncJob> job(static_cast<AsyncJob*>(data));
  if (env == nullptr) return;  // torn down: the cleanup hook has run (and freed its data)
  auto* t = static_cast<std::shared_ptr<Teardown>*>(job->teardown);
  napi_remove_env_cleanup_hook(env, on_teardown, t);
  delete t;
  Napi::Env e(env);
  Napi::HandleScope scope(e);
  try {
    Napi::Value v = job->settle(e, job->cancelled);
    napi_resolve_deferred(env, job->deferred, v);
  } catch (const Napi::Error& err) {
    napi_reject_deferred(env, job->deferred, err.Value());
  }
}

}  // namespace

Napi::Value start_async(Napi::Env env, std::unique_ptr<AsyncJob> job) {
  napi_value promise = nullptr;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) throw Napi::Error::New(env, "cannot create a promise");
  napi_value name = Napi::String::New(env, "mempool.wait");
  // One thread-safe function per wait: it keeps the event loop alive while the wait is pending (as a timer
  // does) and goes when the wait is settled.
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, nullptr, settle_job, &job->tsfn) !=
      napi_ok) {
    throw Napi::Error::New(env, "cannot start an async wait");
  }
  auto* t = new std::shared_ptr<Teardown>(std::make_shared<Teardown>());
  (*t)->memory = job->memory;
  job->teardown = t;
  napi_add_env_cleanup_hook(env, on_teardown, t);
  waiter_threads().submit(job.release());
  return Napi::Value(env, promise);
}

}  // namespace mempool_addon
